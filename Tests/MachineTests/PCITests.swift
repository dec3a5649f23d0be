import Testing
@testable import Machine

final class TestFunction: PCIFunction {
    let config = PCIConfigSpace(vendorID: 0x1234, deviceID: 0x5678, classCode: 0x03, subclass: 0x80, interruptPin: 1)
    init() {
        config.addBar(PCIBar(index: 0, size: 0x100000, kind: .memory32))
        config.addBar(PCIBar(index: 2, size: 0x10000000, kind: .memory64, prefetchable: true))
        config.addMSICapability()
    }
}

@Suite("PCI configuration space and mechanism #1 (no KVM)")
struct PCITests {
    func confAddress(_ dev: Int, _ reg: Int, fn: Int = 0, enable: Bool = true) -> UInt32 {
        (enable ? 0x8000_0000 : 0) | UInt32(dev) << 11 | UInt32(fn) << 8 | UInt32(reg & 0xfc)
    }
    func out(_ bus: PCIBus, _ port: UInt64, _ value: UInt32, size: Int = 4) {
        var v = value
        withUnsafeBytes(of: &v) { bus.write(offset: port - 0xcf8, data: UnsafeRawBufferPointer(rebasing: $0.prefix(size))) }
    }
    func inp(_ bus: PCIBus, _ port: UInt64, size: Int = 4) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { bus.read(offset: port - 0xcf8, data: UnsafeMutableRawBufferPointer(rebasing: $0.prefix(size))) }
        return v
    }

    @Test func hostBridgeAndAbsentDevices() {
        let bus = PCIBus()
        out(bus, 0xcf8, confAddress(0, 0))
        #expect(inp(bus, 0xcf8) == confAddress(0, 0))
        #expect(inp(bus, 0xcfc) == 0x1237_8086)
        #expect(inp(bus, 0xcfe, size: 2) == 0x1237)
        #expect(inp(bus, 0xcfc, size: 1) == 0x86)
        out(bus, 0xcf8, confAddress(5, 0))
        #expect(inp(bus, 0xcfc) == 0xffff_ffff)
        #expect(inp(bus, 0xcfc, size: 2) == 0xffff)
        out(bus, 0xcf8, confAddress(0, 0, enable: false))
        #expect(inp(bus, 0xcfc) == 0xffff_ffff)
    }

    @Test func malformedAccessesReadAllOnes() {
        let bus = PCIBus()
        out(bus, 0xcf8, confAddress(0, 0))
        #expect(inp(bus, 0xcfd, size: 2) == 0xffff)        // misaligned word
        #expect(inp(bus, 0xcfe, size: 4) == 0xffff_ffff)   // crosses the data window
        #expect(inp(bus, 0xcf9, size: 1) == 0xff)           // byte of the address register
    }

    @Test func barSizingAndProgramming() throws {
        let bus = PCIBus()
        let f = TestFunction()
        try bus.add(f, device: 3)
        #expect(throws: PCIBus.PCIError.self) { try bus.add(TestFunction(), device: 3) }
        out(bus, 0xcf8, confAddress(3, 0x10))
        out(bus, 0xcfc, 0xffff_ffff)
        #expect(inp(bus, 0xcfc) == 0xfff0_0000)             // 1 MiB, memory32
        out(bus, 0xcfc, 0xe000_0000)
        #expect(f.config.barAddress(0) == 0xe000_0000)
        out(bus, 0xcf8, confAddress(3, 0x18))
        out(bus, 0xcfc, 0xffff_ffff)
        #expect(inp(bus, 0xcfc) == 0xf000_000c)             // 256 MiB, 64-bit, prefetchable
        out(bus, 0xcf8, confAddress(3, 0x1c))
        out(bus, 0xcfc, 0xffff_ffff)
        #expect(inp(bus, 0xcfc) == 0xffff_ffff)             // upper half fully writable
        out(bus, 0xcfc, 0x1)
        #expect(f.config.barAddress(2) == 0x1_f000_0000)
        // Unimplemented BAR reads 0 and ignores writes.
        out(bus, 0xcf8, confAddress(3, 0x14))
        out(bus, 0xcfc, 0xffff_ffff)
        #expect(inp(bus, 0xcfc) == 0)
    }

    @Test func readOnlyFieldsAndCommand() throws {
        let cs = TestFunction().config
        cs.write(offset: 0, size: 4, value: 0)
        #expect(cs.read(offset: 0, size: 4) == 0x5678_1234)
        cs.write(offset: 4, size: 2, value: 0xffff)
        #expect(cs.command == 0x0407)
        #expect(cs.read(offset: 0x3d, size: 1) == 1)         // interrupt pin read-only
        cs.write(offset: 0x3c, size: 1, value: 11)
        #expect(cs.read(offset: 0x3c, size: 1) == 11)
        #expect(cs.read(offset: 0x3e, size: 4) == 0xffff_ffff) // misaligned dword
    }

    @Test func capabilityListAndMSI() {
        let cs = TestFunction().config
        #expect(cs.read(offset: 6, size: 2) & 0x10 != 0)
        let cap = Int(cs.read(offset: 0x34, size: 1))
        #expect(cap == 0x40)
        #expect(cs.read(offset: cap, size: 1) == 0x05)
        #expect(cs.read(offset: cap + 1, size: 1) == 0)      // end of list
        #expect(cs.read(offset: cap + 2, size: 2) == 0x80)   // 64-bit capable, disabled
        #expect(cs.msiMessage == nil)
        cs.write(offset: cap + 4, size: 4, value: 0xfee0_0000)
        cs.write(offset: cap + 8, size: 4, value: 0)
        cs.write(offset: cap + 12, size: 2, value: 0x41)
        cs.write(offset: cap + 2, size: 2, value: 0xffff)
        #expect(cs.read(offset: cap + 2, size: 2) == 0x81)   // only the enable bit is writable
        #expect(cs.msiMessage?.address == 0xfee0_0000)
        #expect(cs.msiMessage?.data == 0x41)
    }
}
