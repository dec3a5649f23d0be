import Testing
@testable import Machine

/// The ACPI tables' bytes (no KVM): checksums, lengths, pointers, entries per vCPU, the MADT next to the
/// MP table, the AML encodings, and where the boot protocols put the block.
@Suite("ACPI tables (no KVM)")
struct ACPITableTests {
    func le(_ b: [UInt8], _ offset: Int, _ n: Int) -> UInt64 {
        (0..<n).reduce(UInt64(0)) { $0 | UInt64(b[offset + $1]) << (8 * UInt64($1)) }
    }
    func sum(_ b: some Collection<UInt8>) -> UInt8 { b.reduce(0, &+) }

    static let routes = [PCIBus.InterruptRoute(device: 1, pin: 1, gsi: 16), PCIBus.InterruptRoute(device: 3, pin: 4, gsi: 19)]

    @Test(arguments: [1, 2, 8, 255])
    func checksumsLengthsAndPointers(cpus: Int) throws {
        let base: UInt64 = 0xe0000
        let t = ACPITables(inventory: ACPIInventory(cpuCount: cpus, pciInterrupts: Self.routes), at: base)
        #expect(UInt64(t.bytes.count) <= ACPITables.maximumSize(cpuCount: cpus))
        let rsdp = try #require(t.table("RSD PTR "))
        #expect(rsdp.count == 36 && Array(rsdp[0..<8]) == Array("RSD PTR ".utf8) && rsdp[15] == 2)
        #expect(sum(rsdp[0..<20]) == 0 && sum(rsdp) == 0 && le(rsdp, 20, 4) == 36)
        for sig in ["XSDT", "FACP", "APIC", "DSDT"] {
            let table = try #require(t.table(sig))
            #expect(Array(table[0..<4]) == Array(sig.utf8))
            #expect(le(table, 4, 4) == UInt64(table.count), "\(sig) length field")
            #expect(sum(table) == 0, "\(sig) checksum")
        }
        let facs = try #require(t.table("FACS"))
        #expect(le(facs, 4, 4) == 64 && facs.count == 64)
        // Pointers: RSDP -> XSDT -> FADT, MADT; FADT -> FACS (64-byte aligned), DSDT (32- and 64-bit fields agree).
        func address(_ sig: String) -> UInt64 { base + UInt64(t.tables.first { $0.signature == sig }!.offset) }
        #expect(le(rsdp, 24, 8) == address("XSDT"))
        let xsdt = try #require(t.table("XSDT"))
        #expect(xsdt.count == 52 && le(xsdt, 36, 8) == address("FACP") && le(xsdt, 44, 8) == address("APIC"))
        let fadt = try #require(t.table("FACP"))
        #expect(fadt.count == 276 && fadt[8] == 6)
        #expect(le(fadt, 36, 4) == address("FACS") && le(fadt, 132, 8) == address("FACS") && address("FACS") % 64 == 0)
        #expect(le(fadt, 40, 4) == address("DSDT") && le(fadt, 140, 8) == address("DSDT"))
        #expect(le(fadt, 56, 4) == PMDevice.eventBlock && le(fadt, 64, 4) == PMDevice.controlBlock && fadt[88] == 4 && fadt[89] == 2)
        #expect(le(fadt, 46, 2) == 9 && le(fadt, 48, 4) == 0)                       // SCI 9, no SMI command port
        #expect(le(fadt, 112, 4) & (1 << 20) == 0 && le(fadt, 112, 4) & (1 << 10) != 0)   // not HW-reduced; reset reg supported
        #expect(Array(fadt[116..<120]) == [1, 8, 0, 1] && le(fadt, 120, 8) == 0xcf9 && fadt[128] == 6)
        #expect(t.bytes.count + Int(base) <= 0x100000)
    }

    /// One enabled local APIC per vCPU (UID = APIC ID = index) and the IOAPIC, matching the MP table's
    /// processor and IOAPIC entries; the SCI override and LINT1 NMI.
    @Test(arguments: [1, 2, 5, 8])
    func madtMatchesTheMPTable(cpus: Int) throws {
        let madt = try #require(ACPITables(inventory: ACPIInventory(cpuCount: cpus), at: 0xe0000).table("APIC"))
        #expect(le(madt, 36, 4) == MemoryLayout.lapic && le(madt, 40, 4) == 1)
        var lapics: [UInt8] = [], ioapics: [(UInt8, UInt64, UInt64)] = [], overrides: [[UInt8]] = [], nmis: [[UInt8]] = []
        var i = 44
        while i < madt.count {
            let type = madt[i], len = Int(madt[i + 1])
            #expect(len >= 2 && i + len <= madt.count)
            let e = Array(madt[i..<i + len])
            switch type {
            case 0: #expect(e[2] == e[3] && le(e, 4, 4) == 1); lapics.append(e[3])
            case 1: ioapics.append((e[2], le(e, 4, 4), le(e, 8, 4)))
            case 2: overrides.append(e)
            case 4: nmis.append(e)
            default: Issue.record("unexpected MADT entry type \(type)")
            }
            i += len
        }
        #expect(i == madt.count)
        // The MP table for the same machine (its entries: processor = 20 bytes, others 8).
        let mp = BootStructures.mpTable(cpuCount: cpus)
        var mpCPUs: [UInt8] = [], mpIOAPIC: (UInt8, UInt64)? = nil
        var j = 16 + 44
        while j < mp.count {
            switch mp[j] {
            case 0: mpCPUs.append(mp[j + 1]); j += 20
            case 2: mpIOAPIC = (mp[j + 1], le(mp, j + 4, 4)); j += 8
            default: j += 8
            }
        }
        #expect(lapics == mpCPUs && lapics == (0..<cpus).map { UInt8($0) })
        #expect(ioapics.count == 1 && ioapics[0].0 == mpIOAPIC?.0 && ioapics[0].1 == mpIOAPIC?.1 && ioapics[0].2 == 0)
        #expect(overrides == [[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]])
        #expect(nmis == [[4, 6, 0xff, 0, 0, 1]])
    }

    @Test func amlEncodings() {
        #expect(AML.pkgLength(0) == [1] && AML.pkgLength(62) == [63])
        #expect(AML.pkgLength(63) == [0x41, 0x04])           // 65 = 0x41: two bytes, low nibble 1, then 4
        #expect(AML.pkgLength(0xffd) == [0x4f, 0xff])        // 0xfff: the most two bytes hold
        #expect(AML.pkgLength(0xffe) == [0x81, 0x00, 0x01])  // 0x1001 needs three
        #expect(AML.integer(0) == [0] && AML.integer(1) == [1] && AML.integer(5) == [0x0a, 5])
        #expect(AML.integer(0x1234) == [0x0b, 0x34, 0x12] && AML.integer(0x1_0000_0000) == [0x0e, 0, 0, 0, 0, 1, 0, 0, 0])
        #expect(AML.nameString("\\_S5") == Array("\\_S5_".utf8))
        #expect(AML.nameString("_SB.PCI0") == [0x2e] + Array("_SB_PCI0".utf8))
        #expect(AML.eisaID("PNP0A03") == 0x030A_D041)
        #expect(AML.package([AML.integer(0), AML.integer(0)]) == [0x12, 4, 2, 0, 0])
        #expect(AML.name("\\_S5", AML.package([])) == [0x08] + Array("\\_S5_".utf8) + [0x12, 2, 0])
    }

    /// The DSDT's `\_S5` carries the SLP_TYP the PM1 control block powers off for.
    @Test func dsdtS5MatchesThePMDevice() throws {
        let dsdt = try #require(ACPITables(inventory: ACPIInventory(cpuCount: 1), at: 0xe0000).table("DSDT"))
        let s5 = [0x08] + Array("\\_S5_".utf8) + [0x12]
        let at = try #require(dsdt.indices.first { dsdt[$0...].starts(with: s5) })
        let element = dsdt[at + s5.count + 2]                 // after PkgLength (1 byte) and NumElements
        #expect(element == (PMDevice.s5SleepType == 0 ? 0x00 : 0x0a))
    }

    /// The boot protocols reserve the block at 0xe0000 and report it in the plan; an image covering
    /// 0xe0000 moves it to the next free 64-byte boundary of 0xe0000-0xfffff.
    @Test func placement() throws {
        let memory = try GuestMemory(bytes: 16 << 20)
        let context = ImageLoader.Context(memory: memory, cpuCount: 4, cmdline: "", modules: [])
        var ranges = AddressRanges()
        #expect(try context.placeACPITables(name: "x", in: &ranges) == BootLayout.acpiRSDP)
        var covered = AddressRanges()
        covered.claim(0xe0000, 0xe1000, "image")
        #expect(try context.placeACPITables(name: "x", in: &covered) == 0xe1000)
        var full = AddressRanges()
        full.claim(0xe0000, 0x100000, "image")
        #expect(throws: ImageError.self) { try context.placeACPITables(name: "x", in: &full) }
        #expect(BootLayout.firmwareReserved.contains(BootLayout.acpiRSDP) && BootLayout.firmwareReserved.contains(BootLayout.mpTable))
    }

    @Test func e820Map() throws {
        let small = try GuestMemory(bytes: 64 << 20)
        #expect(E820Entry.map(small) == [E820Entry(address: 0, length: 0x9fc00, type: 1), E820Entry(address: 0x9fc00, length: 0x60400, type: 2),
                                         E820Entry(address: 0x100000, length: (64 << 20) - 0x100000, type: 1)])
        let big = try GuestMemory(bytes: 4 << 30)
        let map = E820Entry.map(big)
        #expect(map.count == 4 && map[2].address + map[2].length == MemoryLayout.mmioHoleStart && map[3].address == MemoryLayout.fourGiB)
        #expect(map.filter { $0.type == 1 }.reduce(0) { $0 + $1.length } == (4 << 30) - 0x100000 + 0x9fc00)
    }
}
