import TestSupport
import Glibc
import KVM
import Testing
@testable import Machine

/// A device that only declares its BARs: BAR0 (memory, 64 KiB) traps registers at 0 and has a doorbell
/// ioeventfd at 0x100 and a page of host memory at 0x8000; BAR1 is 256 I/O ports; BAR2 holds an MSI-X
/// table (4 vectors) at 0 and its PBA at 0x800.
final class ToyDevice: PCIFunction, BusDevice, @unchecked Sendable {
    let config = PCIConfigSpace(vendorID: 0x1234, deviceID: 0x5678, classCode: 0xff, subclass: 0, interruptPin: 1)
    let page: UnsafeMutableRawPointer
    let slot: UInt32
    let doorbell: Int32 = 77
    let msixTable: MSIXTable
    var msix: MSIXTable? { msixTable }

    init(context: any DeviceContext) throws {
        page = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
        slot = try context.allocateMemorySlot()
        config.addBar(PCIBar(index: 0, size: 0x10000, kind: .memory32))
        config.addBar(PCIBar(index: 1, size: 0x100, kind: .io))
        config.addBar(PCIBar(index: 2, size: 0x1000, kind: .memory32))
        msixTable = MSIXTable(config: config, context: context, vectors: 4, tableBAR: 2, tableOffset: 0, pbaBAR: 2, pbaOffset: 0x800)
    }
    deinit { page.deallocate() }

    func barRegions(_ index: Int) -> [PCIBarRegion] {
        switch index {
        case 0: return [PCIBarRegion(size: 0x100, name: "toy-regs", backing: .trap(self)),
                        PCIBarRegion(offset: 0x100, size: 4, name: "toy-doorbell", backing: .ioEventFD(doorbell)),
                        PCIBarRegion(offset: 0x8000, size: 0x1000, name: "toy-page", backing: .memory(slot: slot, host: page))]
        case 1: return [PCIBarRegion(size: 0x100, name: "toy-ports", backing: .trap(self))]
        default: return []
        }
    }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0x70c0_0000 | offset) }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {}
}

@Suite("PCI bus: BARs placed from the allocator and mapped by the bus; MSI-X (fake context, no KVM)")
struct PCIBARPlacementTests {
    func cfg(_ c: FakeDeviceContext, _ d: Int, _ offset: Int, _ value: UInt32, size: Int = 4) {
        c.pciBus.configWrite(bus: 0, device: d, function: 0, offset: offset, size: size, value: value)
    }
    func mmio32(_ c: FakeDeviceContext, _ a: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { _ = c.mmioBus.read(a, $0) }
        return v
    }
    func mmioWrite32(_ c: FakeDeviceContext, _ a: UInt64, _ value: UInt32) {
        var v = value
        withUnsafeBytes(of: &v) { _ = c.mmioBus.write(a, $0) }
    }

    @Test func addGivesBARsAddressesInTheWindowsAndAnINTxRoute() throws {
        let c = try FakeDeviceContext()
        let a = try ToyDevice(context: c), b = try ToyDevice(context: c)
        let pa = try c.addPCIFunction(a), pb = try c.addPCIFunction(b)
        #expect(pa.device == 1 && pb.device == 2)
        var ranges: [Range<UInt64>] = []
        for d in [a, b] {
            for (i, size) in [(0, UInt64(0x10000)), (2, 0x1000)] {
                let base = try #require(d.config.barAddress(i))
                #expect(c.resources.mmioWindow.contains(base) && base % size == 0)
                ranges.append(base..<(base + size))
            }
            #expect(c.resources.portWindow.contains(try #require(d.config.barAddress(1))))
        }
        for (i, r) in ranges.enumerated() { for q in ranges[(i + 1)...] { #expect(!r.overlaps(q)) } }
        #expect(c.pciBus.interruptRoutes == [.init(device: 1, pin: 1, gsi: try #require(pa.gsi)), .init(device: 2, pin: 1, gsi: try #require(pb.gsi))])
        #expect(a.config.read(offset: 0x3c, size: 1) == pa.gsi!)
        // Decoding stays off until the guest turns it on: nothing is mapped yet.
        #expect(c.mmioBus.registrations.isEmpty && c.slot(a.slot) == nil)
        // A taken device number is a clear error, and nothing leaks: the next add still gets device 3.
        #expect(throws: PCIBus.PCIError.self) { try c.addPCIFunction(try ToyDevice(context: c), device: 2) }
        #expect(try c.addPCIFunction(try ToyDevice(context: c)).device == 3)
    }

    @Test func theBusMapsMovesAndUnmapsEveryPartOfABAR() throws {
        let c = try FakeDeviceContext()
        let t = try ToyDevice(context: c)
        let d = try c.addPCIFunction(t).device
        let first = try #require(t.config.barAddress(0))
        cfg(c, d, 4, 0x3, size: 2)   // memory + I/O decoding
        #expect(mmio32(c, first + 0x10) == 0x70c0_0010)
        #expect(c.ioeventfd(at: first + 0x100) == t.doorbell)
        #expect(c.slot(t.slot)?.gpa == first + 0x8000)
        let ports = try #require(t.config.barAddress(1))
        #expect(c.pioBus.registrations.contains { $0.base == ports && $0.device === t })
        // The guest moves BAR0: everything follows; nothing stays at the old place.
        let moved: UInt64 = 0xE000_0000
        cfg(c, d, 0x10, UInt32(moved))
        #expect(mmio32(c, moved + 0x10) == 0x70c0_0010)
        #expect(!c.mmioBus.read(first + 0x10, UnsafeMutableRawBufferPointer.allocate(byteCount: 4, alignment: 4)))
        #expect(c.ioeventfd(at: first + 0x100) == nil && c.ioeventfd(at: moved + 0x100) == t.doorbell)
        #expect(c.slot(t.slot)?.gpa == moved + 0x8000)
        // Memory decoding off: BAR0 and BAR2 disappear, the I/O BAR stays.
        cfg(c, d, 4, 0x1, size: 2)
        #expect(!c.mmioBus.registrations.contains { $0.device === t })
        #expect(c.ioeventfd(at: moved + 0x100) == nil && c.slot(t.slot) == nil)
        #expect(c.pioBus.registrations.contains { $0.base == ports })
    }

    @Test func aBARThatCannotBePlacedLeavesNothingBehindAndTheNextMoveWorks() throws {
        let c = try FakeDeviceContext()
        let t = try ToyDevice(context: c)
        let d = try c.addPCIFunction(t).device
        cfg(c, d, 4, 0x2, size: 2)
        // Over guest RAM (slot 0): the page's memory slot is refused, so the whole BAR is taken down.
        cfg(c, d, 0x10, 0x10_0000)
        #expect(!c.mmioBus.registrations.contains { $0.name.hasPrefix("toy") })
        #expect(c.ioeventfd(at: 0x10_0100) == nil && c.slot(t.slot) == nil)
        cfg(c, d, 0x10, 0xE000_0000)
        #expect(mmio32(c, 0xE000_0004) == 0x70c0_0004)
        #expect(c.ioeventfd(at: 0xE000_0100) == t.doorbell && c.slot(t.slot)?.gpa == 0xE000_8000)
    }

    @Test func gsiExhaustionLeavesTheDeviceWithoutINTxButOnTheBus() throws {
        let c = try FakeDeviceContext()
        for _ in 0..<8 { _ = try c.resources.allocateGSI() }
        let t = try ToyDevice(context: c)
        let p = try c.addPCIFunction(t)
        #expect(p.gsi == nil)
        #expect(c.pciBus.interruptRoutes.isEmpty)
        #expect(c.pciBus.function(device: p.device) === t)
    }

    @Test func msixVectorsAreMaskedPendingAndDeliveredOnUnmask() throws {
        let c = try FakeDeviceContext()
        let t = try ToyDevice(context: c)
        let d = try c.addPCIFunction(t).device
        cfg(c, d, 4, 0x2, size: 2)
        let bar2 = try #require(t.config.barAddress(2))
        // The capability describes the table: 4 vectors, table BIR 2 offset 0, PBA BIR 2 offset 0x800.
        var cap = Int(t.config.read(offset: 0x34, size: 1))
        while cap != 0 && t.config.read(offset: cap, size: 1) != 0x11 { cap = Int(t.config.read(offset: cap + 1, size: 1)) }
        #expect(cap != 0)
        #expect(t.config.read(offset: cap + 2, size: 2) == 3)
        #expect(t.config.read(offset: cap + 4, size: 4) == 2)
        #expect(t.config.read(offset: cap + 8, size: 4) == 0x802)
        // Disabled: signalling does nothing (the device falls back to MSI or INTx).
        #expect(!t.msixTable.signal(1))
        cfg(c, d, cap, 0x8000_0000 | UInt32(t.config.read(offset: cap, size: 2)))   // MSI-X enable
        #expect(t.msixTable.isEnabled)
        // Program vector 1 through the BAR; entries start masked, so a signal only sets the pending bit.
        mmioWrite32(c, bar2 + 16, 0xFEE0_1000)
        mmioWrite32(c, bar2 + 20, 0)
        mmioWrite32(c, bar2 + 24, 0x41)
        #expect(mmio32(c, bar2 + 28) == 1)
        #expect(t.msixTable.signal(1))
        #expect(c.msis.isEmpty)
        #expect(mmio32(c, bar2 + 0x800) == 0b10)
        // Unmasking the vector delivers it and clears the pending bit.
        mmioWrite32(c, bar2 + 28, 0)
        #expect(c.msis.map(\.address) == [0xFEE0_1000] && c.msis.map(\.data) == [0x41])
        #expect(mmio32(c, bar2 + 0x800) == 0)
        // Unmasked: delivered at once.
        #expect(t.msixTable.signal(1))
        #expect(c.msis.count == 2)
        // The function mask holds every vector; clearing it delivers what became pending.
        cfg(c, d, cap, 0xC000_0000 | UInt32(t.config.read(offset: cap, size: 2)))
        #expect(t.msixTable.signal(1))
        #expect(c.msis.count == 2 && t.msixTable.isPending(1))
        cfg(c, d, cap, 0x8000_0000 | UInt32(t.config.read(offset: cap, size: 2)))
        #expect(c.msis.count == 3 && !t.msixTable.isPending(1))
        // Out-of-range and odd-sized table accesses read all ones and change nothing.
        var b: UInt16 = 0
        withUnsafeMutableBytes(of: &b) { _ = c.mmioBus.read(bar2 + 16, $0) }
        #expect(b == 0xffff)
        #expect(mmio32(c, bar2 + 4 * 16) == 0xffff_ffff)
    }
}
