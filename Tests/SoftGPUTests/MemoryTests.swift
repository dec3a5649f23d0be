import Glibc
import Testing
@testable import SoftGPU

@Suite struct SystemMemoryTests {
    @Test func registerResolveAndBounds() throws {
        let mem = SystemMemory()
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 3 * 4096, alignment: 4096)
        defer { buf.deallocate() }
        try mem.register(base: 0x10_0000, length: 3 * 4096, pointer: buf, name: "ram")
        #expect(mem.resolve(0x10_0000, length: 4) == buf)
        #expect(mem.resolve(0x10_2FFC, length: 4) == buf + 0x2FFC)
        #expect(mem.resolve(0x10_2FFD, length: 4) == nil)          // runs past the end
        #expect(mem.resolve(0x0F_F000, length: 4) == nil)          // below
        #expect(mem.resolve(0x10_3000, length: 1) == nil)          // just after
        #expect(mem.resolvePage(0x10_1000) == buf + 0x1000)
        #expect(mem.resolvePage(0x10_1004) == nil)                 // not page aligned
        #expect(mem.resolve(UInt64.max - 3, length: 4) == nil)
    }

    @Test func registrationErrors() throws {
        let mem = SystemMemory()
        let buf = UnsafeMutableRawPointer.allocate(byteCount: 8192, alignment: 4096)
        defer { buf.deallocate() }
        #expect(throws: SystemMemoryError.misaligned(base: 0x1001, length: 4096)) {
            try mem.register(base: 0x1001, length: 4096, pointer: buf, name: "x")
        }
        #expect(throws: SystemMemoryError.empty) { try mem.register(base: 0x1000, length: 0, pointer: buf, name: "x") }
        try mem.register(base: 0x2000, length: 8192, pointer: buf, name: "a")
        #expect(throws: SystemMemoryError.overlaps(base: 0x3000, length: 4096, existing: "a")) {
            try mem.register(base: 0x3000, length: 4096, pointer: buf, name: "b")
        }
        #expect(throws: SystemMemoryError.outOfBusRange(base: 1 << 52, length: 4096)) {
            try mem.register(base: 1 << 52, length: 4096, pointer: buf, name: "c")
        }
        #expect(mem.unregister(base: 0x2000))
        #expect(mem.resolve(0x2000) == nil)
        #expect(!mem.unregister(base: 0x2000))
    }

    @Test func scratchPageAndAllocations() throws {
        let mem = SystemMemory()
        let scratch = try #require(mem.resolvePage(SystemMemory.scratchPageAddress))
        #expect(scratch == mem.scratchPage)
        #expect(scratch.load(fromByteOffset: 100, as: UInt8.self) == 0)
        #expect(!mem.unregister(base: SystemMemory.scratchPageAddress))
        let r = try mem.allocate(bytes: 5000, name: "t")
        #expect(r.length == 8192)
        #expect(SystemMemory.hostWindow.contains(r.base))
        #expect(mem.resolve(r.base + 8000, length: 192) == r.pointer + 8000)
        let r2 = try mem.allocate(bytes: 4096, name: "u")
        #expect(r2.base >= r.end)
        #expect(mem.free(busAddress: r.base))
        #expect(mem.resolve(r.base) == nil)
        #expect(!mem.free(busAddress: r.base))
    }
}

@Suite struct GTTTests {
    @Test func entriesAndHostPointers() throws {
        let rig = try Rig()
        let gtt = rig.gpu.gtt
        #expect(gtt.pageCount == Int(Rig.gmSize / 4096))
        #expect(gtt.apertureRange == 0..<(16 << 20))
        #expect(gtt.hiddenRange == (16 << 20)..<Rig.gmSize)
        let page = Int(Rig.dataGM / 4096) + 3
        let e = gtt.entry(page)
        #expect(e & GTTEntry.valid != 0)
        #expect(e & GTTEntry.addressMask == rig.data.busAddress + 3 * 4096)
        #expect(gtt.hostPointer(forPage: page) == rig.data.pointer + 3 * 4096)
        #expect(gtt.entry(-1) == 0)
        #expect(gtt.entry(gtt.pageCount) == 0)
        #expect(!gtt.setEntry(gtt.pageCount, 1))
        #expect(gtt.hostPointer(forPage: Int(Rig.unmappedGM / 4096)) == nil)
        // A valid entry to an unregistered bus address has no host pointer.
        gtt.setEntry(Int(Rig.unmappedGM / 4096), GTTEntry.make(bus: 0x1234_5000))
        #expect(gtt.hostPointer(forPage: Int(Rig.unmappedGM / 4096)) == nil)
        // Scratch page mapping.
        gtt.setEntry(Int(Rig.unmappedGM / 4096) + 1, GTTEntry.make(bus: SystemMemory.scratchPageAddress))
        #expect(gtt.hostPointer(forPage: Int(Rig.unmappedGM / 4096) + 1) == rig.gpu.systemMemory.scratchPage)
    }

    @Test func hostRunsMergeAndSplit() throws {
        let rig = try Rig()
        let gtt = rig.gpu.gtt
        let runs = try gtt.hostRuns(gm: Rig.dataGM + 100, length: 3 * 4096)
        #expect(runs.count == 1)
        #expect(runs[0].pointer == rig.data.pointer + 100)
        #expect(runs[0].length == 3 * 4096)
        // Map two GM pages to bus pages in reverse order: two runs.
        let r = try rig.gpu.systemMemory.allocate(bytes: 8192, name: "rev")
        let p0 = Int(Rig.unmappedGM / 4096)
        gtt.setEntry(p0, GTTEntry.make(bus: r.base + 4096))
        gtt.setEntry(p0 + 1, GTTEntry.make(bus: r.base))
        let split = try gtt.hostRuns(gm: Rig.unmappedGM + 4000, length: 200)
        #expect(split.count == 2)
        #expect(split[0] == HostRun(gm: Rig.unmappedGM + 4000, pointer: r.pointer + 4096 + 4000, length: 96))
        #expect(split[1] == HostRun(gm: Rig.unmappedGM + 4096, pointer: r.pointer, length: 104))
    }

    @Test func faultKinds() throws {
        let rig = try Rig()
        let gtt = rig.gpu.gtt
        #expect(throws: GMFault(.invalidEntry, Rig.unmappedGM + 8)) { _ = try gtt.hostRuns(gm: Rig.unmappedGM + 8, length: 4) }
        #expect(throws: GMFault(.outOfRange, Rig.gmSize)) { _ = try gtt.hostRuns(gm: Rig.gmSize - 4, length: 8) }
        gtt.setEntry(Int(Rig.unmappedGM / 4096), GTTEntry.make(bus: 0x7777_0000))
        #expect(throws: GMFault(.unmappedBus, Rig.unmappedGM)) { _ = try gtt.hostRuns(gm: Rig.unmappedGM, length: 4) }
        gtt.setEntry(Int(Rig.unmappedGM / 4096), GTTEntry.make(bus: SystemMemory.scratchPageAddress, readOnly: true))
        #expect(throws: GMFault(.readOnly, Rig.unmappedGM)) { _ = try gtt.hostRuns(gm: Rig.unmappedGM, length: 4, write: true) }
        #expect(try gtt.hostRuns(gm: Rig.unmappedGM, length: 4, write: false).count == 1)
        // Bits above 51 make the bus address invalid.
        gtt.setEntry(Int(Rig.unmappedGM / 4096), GTTEntry.make(bus: SystemMemory.scratchPageAddress) | (1 << 60))
        #expect(throws: GMFault(.unmappedBus, Rig.unmappedGM)) { _ = try gtt.hostRuns(gm: Rig.unmappedGM, length: 4) }
    }

    @Test func hostHelpersRoundTrip() throws {
        let rig = try Rig()
        let gtt = rig.gpu.gtt
        try gtt.write([UInt32(1), 2, 3, 0xDEAD_BEEF], at: Rig.dataGM + 4094 * 1)
        #expect(try gtt.read(UInt32.self, count: 4, at: Rig.dataGM + 4094) == [1, 2, 3, 0xDEAD_BEEF])
        try gtt.write32(77, at: Rig.dataGM + 8)
        #expect(rig.u32(Rig.dataGM + 8) == 77)
        #expect(try gtt.read32(at: Rig.dataGM + 8) == 77)
        #expect(throws: GMFault(.invalidEntry, Rig.unmappedGM)) { try gtt.write32(1, at: Rig.unmappedGM) }
    }
}
