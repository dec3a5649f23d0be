import Glibc
import Testing
import Synchronization
import TestSupport
import VNC
@testable import Machine

/// The bochs-display's register model, BAR plumbing and scanout, the EDID block, the i8042 keyboard
/// and the VNC key map, without /dev/kvm.
@Suite("bochs-display, i8042 and key map (no KVM)")
struct BochsDisplayTests {
    func make() throws -> (FakeDeviceContext, BochsDisplay, UInt64, UInt64) {
        let ctx = try FakeDeviceContext()
        let d = try BochsDisplay(context: ctx)
        let dev = 1   // the first free device number
        // Memory decoding on: the bus maps both BARs where it placed them.
        ctx.pciBus.configWrite(bus: 0, device: dev, function: 0, offset: 4, size: 2, value: 0x2)
        let fb = UInt64(ctx.pciBus.configRead(bus: 0, device: dev, function: 0, offset: 0x10, size: 4) & ~0xf)
        let regs = UInt64(ctx.pciBus.configRead(bus: 0, device: dev, function: 0, offset: 0x18, size: 4) & ~0xf)
        return (ctx, d, fb, regs)
    }
    func r16(_ ctx: FakeDeviceContext, _ a: UInt64) -> UInt16 {
        var v: UInt16 = 0
        withUnsafeMutableBytes(of: &v) { _ = ctx.mmioBus.read(a, $0) }
        return v
    }
    func r32(_ ctx: FakeDeviceContext, _ a: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { _ = ctx.mmioBus.read(a, $0) }
        return v
    }
    func w16(_ ctx: FakeDeviceContext, _ a: UInt64, _ value: UInt16) {
        var v = value
        withUnsafeBytes(of: &v) { _ = ctx.mmioBus.write(a, $0) }
    }
    func w32(_ ctx: FakeDeviceContext, _ a: UInt64, _ value: UInt32) {
        var v = value
        withUnsafeBytes(of: &v) { _ = ctx.mmioBus.write(a, $0) }
    }
    func dispi(_ regs: UInt64, _ i: BochsDisplay.Index) -> UInt64 { regs + 0x500 + UInt64(i.rawValue) * 2 }

    @Test func identityAndBARsAreWhatTheDriverProbes() throws {
        let (ctx, d, fb, regs) = try make()
        #expect(ctx.pciBus.configRead(bus: 0, device: 1, function: 0, offset: 0, size: 4) == 0x1111_1234)
        #expect(ctx.pciBus.configRead(bus: 0, device: 1, function: 0, offset: 8, size: 4) == 0x0300_0002)   // VGA, rev 2
        #expect(ctx.pciBus.configRead(bus: 0, device: 1, function: 0, offset: 0x2c, size: 4) == 0x1100_1af4)
        #expect(ctx.pciBus.configRead(bus: 0, device: 1, function: 0, offset: 0x10, size: 4) & 0xf == 0x8)   // mem32, prefetchable
        #expect(ctx.pciBus.configRead(bus: 0, device: 1, function: 0, offset: 0x18, size: 4) & 0xf == 0x0)
        #expect(fb != 0 && regs != 0)
        // BAR0 is a memory slot at the BAR (no exits), BAR2 traps.
        #expect(ctx.slot(d.slot).map { $0.gpa == fb && $0.size == 16 << 20 } == true)
        #expect(ctx.mmioBus.registrations.contains { $0.base == regs && $0.size == 4096 && $0.device === d })
        #expect(r16(ctx, dispi(regs, .id)) == 0xB0C5)
        #expect(Int(r16(ctx, dispi(regs, .videoMemory64K))) * 64 * 1024 == 16 << 20)
        #expect(r32(ctx, regs + 0x600) == 8)                                    // QEMU ext size
        #expect(r32(ctx, regs + 0x604) == 0x1e1e_1e1e)
        // Decoding off again: the slot goes away.
        ctx.pciBus.configWrite(bus: 0, device: 1, function: 0, offset: 4, size: 2, value: 0)
        #expect(ctx.slot(d.slot) == nil)
    }

    @Test func edidIsAValidBaseBlockWithThePreferredMode() throws {
        let (ctx, _, _, regs) = try make()
        var bytes: [UInt8] = []
        for i in 0..<128 {
            var b: UInt8 = 0
            withUnsafeMutableBytes(of: &b) { _ = ctx.mmioBus.read(regs + UInt64(i), $0) }
            bytes.append(b)
        }
        #expect(Array(bytes[0..<8]) == EDID.header)
        #expect(bytes.reduce(0) { $0 &+ $1 } == 0, "checksum")
        #expect(bytes[18] == 1 && bytes[19] == 4)
        // The first detailed timing: 1024 x 768 active.
        #expect(Int(bytes[56]) | Int(bytes[58] >> 4) << 8 == 1024)
        #expect(Int(bytes[59]) | Int(bytes[61] >> 4) << 8 == 768)
        #expect(Int(bytes[54]) | Int(bytes[55]) << 8 > 0, "pixel clock")
        #expect(String(decoding: bytes[77..<86], as: UTF8.self) == "minivisor")
    }

    @Test func dispiRegistersFollowTheVBEModel() throws {
        let (ctx, d, _, regs) = try make()
        w16(ctx, dispi(regs, .id), 0xB0C0)
        #expect(r16(ctx, dispi(regs, .id)) == 0xB0C0)
        w16(ctx, dispi(regs, .id), 0x1234)                                      // not an ID: ignored
        #expect(r16(ctx, dispi(regs, .id)) == 0xB0C0)
        w16(ctx, dispi(regs, .videoMemory64K), 1)                               // read-only
        #expect(r16(ctx, dispi(regs, .videoMemory64K)) == 256)
        w16(ctx, dispi(regs, .enable), BochsDisplay.getCaps)
        #expect(r16(ctx, dispi(regs, .xres)) == 8192 && r16(ctx, dispi(regs, .bpp)) == 32)
        w16(ctx, dispi(regs, .enable), 0)
        // Enabling a mode: the virtual screen starts as the visible one, offsets 0, and is cleared.
        d.framebufferPointer.storeBytes(of: 0xdead_beef, as: UInt32.self)
        w16(ctx, dispi(regs, .bpp), 32); w16(ctx, dispi(regs, .xres), 320); w16(ctx, dispi(regs, .yres), 200)
        w16(ctx, dispi(regs, .virtWidth), 999); w16(ctx, dispi(regs, .xOffset), 7)
        w16(ctx, dispi(regs, .enable), BochsDisplay.enabled | BochsDisplay.lfbEnabled)
        #expect(r16(ctx, dispi(regs, .virtWidth)) == 320 && r16(ctx, dispi(regs, .virtHeight)) == 200)
        #expect(r16(ctx, dispi(regs, .xOffset)) == 0)
        #expect(d.framebufferPointer.load(as: UInt32.self) == 0)
        #expect(d.statistics.modeSets == 1)
        // A 32-bit access covers two registers (YRES, BPP); VGA ports are accepted and counted.
        #expect(r32(ctx, dispi(regs, .yres)) == 32 << 16 | 200)
        w16(ctx, regs + 0x400, 0x20)
        #expect(d.statistics.vgaAccesses == 1)
    }

    @Test func scanoutHonoursVirtualWidthOffsetsAndEndianness() throws {
        let (ctx, d, _, regs) = try make()
        #expect(d.scanout() == .off)
        w16(ctx, dispi(regs, .bpp), 32); w16(ctx, dispi(regs, .xres), 4); w16(ctx, dispi(regs, .yres), 2)
        w16(ctx, dispi(regs, .enable), BochsDisplay.enabled | BochsDisplay.lfbEnabled)
        w16(ctx, dispi(regs, .virtWidth), 8); w16(ctx, dispi(regs, .xOffset), 1); w16(ctx, dispi(regs, .yOffset), 1)
        let fb = d.framebufferPointer.assumingMemoryBound(to: UInt32.self)
        for i in 0..<32 { fb[i] = 0xff00_0000 | UInt32(i) }                     // pixel i holds i (alpha dropped)
        let f = d.scanout()
        #expect(f.width == 4 && f.height == 2)
        #expect(f.pixels == [9, 10, 11, 12, 17, 18, 19, 20])
        w32(ctx, regs + 0x604, BochsDisplay.bigEndianMagic)
        #expect(d.scanout().pixels[0] == UInt32(0xff00_0009).byteSwapped & 0x00ff_ffff)
        w16(ctx, dispi(regs, .bpp), 16)                                         // not scanned out
        #expect(d.scanout() == .off)
    }

    @Test func scanoutBeyondTheFramebufferReadsBlack() throws {
        let (ctx, d, _, regs) = try make()
        w16(ctx, dispi(regs, .bpp), 32); w16(ctx, dispi(regs, .xres), 8192); w16(ctx, dispi(regs, .yres), 8192)
        w16(ctx, dispi(regs, .enable), BochsDisplay.enabled | BochsDisplay.noClearMem)
        memset(d.framebufferPointer, 0x11, 16 << 20)
        let f = d.scanout()
        #expect(f.width == 8192 && f.height == 8192)
        #expect(f.pixels[0] == 0x111111 && f.pixels[8192 * 8192 - 1] == 0)       // 16 MiB hold 512 rows
    }

    @Test func badFramebufferSizesAreRefused() throws {
        let ctx = try FakeDeviceContext()
        #expect(throws: DisplayError.badFramebufferSize(3 << 20)) { try BochsDisplay(context: ctx, framebufferBytes: 3 << 20) }
        #expect(throws: DisplayError.badFramebufferSize(2 << 20)) { try BochsDisplay(context: ctx, framebufferBytes: 2 << 20) }
    }

    // MARK: i8042

    final class Lines: Sendable {
        let levels = Mutex<[Bool]>([])
        var last: Bool? { levels.withLock { $0.last } }
    }
    func kbd() -> (I8042, Lines) {
        let lines = Lines()
        return (I8042 { l in lines.levels.withLock { $0.append(l) } }, lines)
    }
    func inb(_ d: I8042, _ port: UInt64) -> UInt8 {
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { d.read(offset: port - 0x60, data: $0) }
        return v
    }
    func outb(_ d: I8042, _ port: UInt64, _ value: UInt8) {
        var v = value
        withUnsafeBytes(of: &v) { d.write(offset: port - 0x60, data: $0) }
    }

    @Test func i8042AnswersTheControllerAndKeyboardProbe() {
        let (k, _) = kbd()
        outb(k, 0x64, 0xaa); #expect(inb(k, 0x64) & 1 == 1); #expect(inb(k, 0x60) == 0x55)
        #expect(inb(k, 0x64) & 1 == 0)
        outb(k, 0x64, 0x20); #expect(inb(k, 0x60) == 0x45)
        outb(k, 0x64, 0x60); outb(k, 0x60, 0x47)
        outb(k, 0x64, 0x20); #expect(inb(k, 0x60) == 0x47)
        outb(k, 0x64, 0xab); #expect(inb(k, 0x60) == 0x00)
        outb(k, 0x64, 0xa9); #expect(inb(k, 0x60) == 0x01)                     // no mouse
        outb(k, 0x60, 0xff); #expect([inb(k, 0x60), inb(k, 0x60)] == [0xfa, 0xaa])
        outb(k, 0x60, 0xf2); #expect([inb(k, 0x60), inb(k, 0x60), inb(k, 0x60)] == [0xfa, 0xab, 0x41])
        outb(k, 0x60, 0xed); outb(k, 0x60, 0x07); #expect([inb(k, 0x60), inb(k, 0x60)] == [0xfa, 0xfa])
    }

    @Test func i8042DeliversKeysWithIRQ1Edges() {
        let (k, lines) = kbd()
        k.keyboardInput([0x1e, 0x9e])
        #expect(lines.last == true)
        #expect(inb(k, 0x60) == 0x1e)
        // The next byte waits: the line dropped and rose again (a new edge).
        #expect(lines.levels.withLock { $0 } == [true, false, true])
        #expect(inb(k, 0x60) == 0x9e)
        #expect(lines.last == false)
        // Keyboard interrupts off in the command byte: data but no IRQ.
        outb(k, 0x64, 0x60); outb(k, 0x60, 0x44)
        k.keyboardInput([0x1e])
        #expect(lines.last == false && inb(k, 0x64) & 1 == 1)
        // Keyboard disabled (0xAD): input is dropped.
        _ = inb(k, 0x60)
        outb(k, 0x64, 0xad)
        k.keyboardInput([0x1e])
        #expect(k.pendingOutput.isEmpty)
    }

    @Test func i8042ResetCommandReboots() {
        let rec = StopRecorder()
        let k = I8042(control: rec)
        outb(k, 0x64, 0xfe)
        #expect(rec.reasons.withLock { $0 } == [.reboot])
    }

    @Test func keysymsMapToSet1() {
        #expect(KeyboardMap.set1(keysym: 0x61, down: true) == [0x1e])          // a
        #expect(KeyboardMap.set1(keysym: 0x41, down: true) == [0x1e])          // A: same key
        #expect(KeyboardMap.set1(keysym: 0x61, down: false) == [0x9e])
        #expect(KeyboardMap.set1(keysym: 0x21, down: true) == [0x02])          // ! on the 1 key
        #expect(KeyboardMap.set1(keysym: 0xff0d, down: true) == [0x1c])        // Return
        #expect(KeyboardMap.set1(keysym: 0xff52, down: false) == [0xe0, 0xc8]) // Up released
        #expect(KeyboardMap.set1(keysym: 0x20ac, down: true) == [])            // unknown: dropped
    }
}
