import Testing
@testable import Machine

@Suite("Resource allocator (no KVM)")
struct ResourceAllocatorTests {
    @Test func pciDevicesRunOutWithAClearErrorAndAreReused() throws {
        let a = ResourceAllocator(pciDevices: 1..<4)
        #expect(try a.allocatePCIDevice() == 1)
        #expect(try a.allocatePCIDevice(3) == 3)
        #expect(try a.allocatePCIDevice() == 2)
        #expect(throws: ResourceError.exhausted(resource: "PCI device number", pool: "1-3")) { try a.allocatePCIDevice() }
        #expect("\(ResourceError.exhausted(resource: "PCI device number", pool: "1-3"))" == "no PCI device number left in 1-3: give the machine fewer devices")
        #expect(throws: ResourceError.unavailable(resource: "PCI device number", what: "3")) { try a.allocatePCIDevice(3) }
        a.releasePCIDevice(2)
        #expect(try a.allocatePCIDevice() == 2)
    }

    @Test func gsisAreTheEightPCILinesByDefault() throws {
        let a = ResourceAllocator()
        let gsis = try (0..<8).map { _ in try a.allocateGSI() }
        #expect(gsis == Array(16..<24))
        #expect(throws: ResourceError.self) { try a.allocateGSI() }
        a.releaseGSI(19)
        #expect(try a.allocateGSI() == 19)
    }

    @Test func memorySlotsAreHandedOutOnceAndReused() throws {
        let a = ResourceAllocator(memorySlots: 0..<3)
        #expect(try a.allocateMemorySlot(0) == 0)
        #expect(try a.allocateMemorySlot() == 1)
        #expect(try a.allocateMemorySlot() == 2)
        #expect(throws: ResourceError.exhausted(resource: "KVM memory slot", pool: "0-2")) { try a.allocateMemorySlot() }
        a.releaseMemorySlot(1)
        #expect(try a.allocateMemorySlot() == 1)
    }

    @Test func mmioRangesAreAlignedInsideTheWindowAndNeverOverlap() throws {
        let a = ResourceAllocator()
        #expect(a.mmioWindow == MemoryLayout.pciMMIOStart..<MemoryLayout.pciMMIOEnd)
        let sizes: [UInt64] = [0x1000, 0x1000_0000, 0x20_0000, 0x1000, 0x400_0000, 0x10]
        var got: [Range<UInt64>] = []
        for s in sizes {
            let b = try a.allocateMMIO(size: s)
            #expect(b % s == 0, "0x\(String(b, radix: 16)) is not aligned to 0x\(String(s, radix: 16))")
            #expect(a.mmioWindow.contains(b) && b + s <= a.mmioWindow.upperBound)
            got.append(b..<(b + s))
        }
        for (i, r) in got.enumerated() { for q in got[(i + 1)...] { #expect(!r.overlaps(q), "\(r) overlaps \(q)") } }
        #expect(a.mmioAllocations.count == sizes.count)
    }

    @Test func mmioExhaustionReleaseAndReuse() throws {
        let a = ResourceAllocator(mmioWindow: 0x1000_0000..<0x1000_4000)
        let b = try (0..<4).map { _ in try a.allocateMMIO(size: 0x1000) }
        #expect(b == [0x1000_0000, 0x1000_1000, 0x1000_2000, 0x1000_3000])
        #expect(throws: ResourceError.self) { try a.allocateMMIO(size: 0x1000) }
        do { _ = try a.allocateMMIO(size: 0x1000); Issue.record("no error") } catch {
            #expect("\(error)" == "no PCI MMIO range of 4096 bytes left in 0x10000000-0x10003fff: give the machine fewer devices")
        }
        a.releaseMMIO(base: 0x1000_2000)
        #expect(try a.allocateMMIO(size: 0x1000) == 0x1000_2000)
        // Larger than the window, or not a power of two.
        #expect(throws: ResourceError.self) { try a.allocateMMIO(size: 0x8000) }
        #expect(throws: ResourceError.badSize(resource: "PCI MMIO range", size: 0x3000)) { try a.allocateMMIO(size: 0x3000) }
        #expect(throws: ResourceError.badSize(resource: "PCI MMIO range", size: 0)) { try a.allocateMMIO(size: 0) }
    }

    @Test func alignmentSkipsTheHoleLeftBySmallRanges() throws {
        let a = ResourceAllocator(mmioWindow: 0..<0x10000)
        #expect(try a.allocateMMIO(size: 0x100) == 0)
        #expect(try a.allocateMMIO(size: 0x8000) == 0x8000)   // not 0x100: natural alignment
        #expect(try a.allocateMMIO(size: 0x100) == 0x100)     // the hole before it is still used
        #expect(throws: ResourceError.self) { try a.allocateMMIO(size: 0x8000) }
    }

    @Test func portRangesComeFromThePortWindow() throws {
        let a = ResourceAllocator()
        let p = try a.allocatePorts(size: 0x100)
        #expect(a.portWindow.contains(p) && p % 0x100 == 0)
        let q = try a.allocatePorts(size: 0x100)
        #expect(q != p)
        a.releasePorts(base: p)
        #expect(try a.allocatePorts(size: 0x100) == p)
    }
}
