import Testing
@testable import Machine

@Suite("Boot structures and guest memory (no KVM)")
struct BootStructureTests {
    @Test func bootInfoLayout() throws {
        let mem = try GuestMemory(bytes: 64 << 20)
        try BootStructures.writeBootInfo(mem, cpuCount: 3, cmdline: "a b c")
        let b = BootLayout.bootInfo
        #expect(try mem.read(UInt32.self, at: b) == 0x4942564d)
        #expect(try mem.read(UInt32.self, at: b + 4) == 1)
        #expect(try mem.read(UInt32.self, at: b + 8) == 72)
        #expect(try mem.read(UInt32.self, at: b + 12) == 3)
        #expect(try mem.readCString(at: try mem.read(UInt64.self, at: b + 16)) == "a b c")
        #expect(try mem.read(UInt32.self, at: b + 24) == 5)
        let count: UInt32 = try mem.read(at: b + 28)
        #expect(count == 2)
        let map: UInt64 = try mem.read(at: b + 32)
        #expect(try mem.read(UInt64.self, at: map + 24) == 0x100000)
        #expect(try mem.read(UInt64.self, at: map + 32) == (64 << 20) - 0x100000)
        #expect(try mem.read(UInt32.self, at: map + 40) == 1)
        #expect(try mem.read(UInt32.self, at: map + 16) == 2)   // low MiB reserved
        #expect(try mem.read(UInt64.self, at: b + 40) == 64 << 20)
        #expect(try mem.read(UInt64.self, at: b + 48) == 0x6000)
        #expect(try mem.read(UInt32.self, at: b + 56) == 8)
        #expect(try mem.read(UInt64.self, at: b + 64) == 0x9fc00)
    }

    @Test func pageTablesIdentityMapLowFourGiBWithUserBit() throws {
        let mem = try GuestMemory(bytes: 16 << 20)
        let gib = try BootStructures.writePageTables(mem)
        #expect(gib == 4)
        #expect(try mem.read(UInt64.self, at: BootLayout.pml4) == BootLayout.pdpt | 7)
        #expect(try mem.read(UInt64.self, at: BootLayout.pdpt + 3 * 8) == (BootLayout.pageDirectories + 3 * 0x1000) | 7)
        // 3 GiB + 2 MiB: in the MMIO hole (where prefetchable BARs go), write-back
        let pde: UInt64 = try mem.read(at: BootLayout.pageDirectories + 3 * 0x1000 + 8)
        #expect(pde == (3 << 30 | 2 << 20) | 0x87)
        // 0xfee00000 (LAPIC): uncached
        let lapic: UInt64 = try mem.read(at: BootLayout.pageDirectories + 3 * 0x1000 + 8 * 503)
        #expect(lapic == 0xfee0_0000 | 0x87 | 0x18)
        #expect(try mem.read(UInt64.self, at: BootLayout.pageDirectories + 8) == (2 << 20) | 0x87)
    }

    @Test func memoryAboveTheHoleContinuesAtFourGiB() throws {
        let mem = try GuestMemory(bytes: 5 << 30)   // virtual reservation only; pages are never touched
        #expect(mem.regions.count == 2)
        #expect(mem.regions[0].end == MemoryLayout.mmioHoleStart)
        #expect(mem.regions[1].guestAddress == 1 << 32 && mem.regions[1].size == (5 << 30) - MemoryLayout.mmioHoleStart)
        #expect(!mem.contains(MemoryLayout.mmioHoleStart))
        #expect(mem.contains((1 << 32) + 4096))
        #expect(try BootStructures.writePageTables(mem) == 6)
    }

    @Test func outOfRangeAccessIsAnErrorValue() throws {
        let mem = try GuestMemory(bytes: 8 << 20)
        #expect(throws: GuestMemoryError.outOfRange(address: 8 << 20, length: 4)) { try mem.read(UInt32.self, at: 8 << 20) }
        #expect(throws: GuestMemoryError.self) { try mem.write(UInt64(1), at: (8 << 20) - 4) }   // straddles the end
        #expect(throws: GuestMemoryError.self) { try mem.pointer(UInt64.max - 2, length: 8) }
        try mem.write(UInt32(0xdeadbeef), at: (8 << 20) - 4)
        #expect(try mem.read(UInt32.self, at: (8 << 20) - 4) == 0xdeadbeef)
    }

    @Test func mpTableChecksumsAndEntries() {
        let t = BootStructures.mpTable(cpuCount: 4)
        #expect(Array(t[0..<4]) == Array("_MP_".utf8))
        #expect(t[0..<16].reduce(0) { $0 &+ $1 } == 0)
        let table = Array(t[16...])
        #expect(Array(table[0..<4]) == Array("PCMP".utf8))
        let length = Int(table[4]) | Int(table[5]) << 8
        #expect(length == table.count)
        #expect(table.reduce(0) { $0 &+ $1 } == 0)
        let entries = Int(table[34]) | Int(table[35]) << 8
        #expect(entries == 4 + 2 + 1 + 16 + 2)
        // processor entries: type 0, APIC ids 0..3, BSP flag only on the first
        for cpu in 0..<4 {
            let e = 44 + cpu * 20
            #expect(table[e] == 0 && table[e + 1] == UInt8(cpu))
            #expect(table[e + 3] == (cpu == 0 ? 3 : 1))
        }
    }
}
