import Glibc
import KVM
import Logging
import Synchronization

/// A bochs-display compatible PCI display (QEMU's `bochs-display` / stdvga MMIO layout) that Linux's
/// in-tree `bochs` DRM driver (drivers/gpu/drm/tiny/bochs.c) drives unchanged. docs/bochs-display.md
/// is its programming guide.
///
/// - PCI 1234:1111, class 0x0300 (VGA-compatible display), revision 2, subsystem 1af4:1100, no interrupt.
/// - BAR0: the framebuffer, prefetchable 32-bit memory (16 MiB by default), host memory mapped straight
///   into the guest as a KVM memory slot: guest writes to it never exit.
/// - BAR2: 4 KiB of trapped registers: the EDID blob at 0x000-0x3ff, the VGA ports 0x3c0-0x3df at
///   0x400-0x41f (accepted, reads 0, counted), the DISPI (VBE) registers at 0x500 + index * 2 (16 bits
///   each), QEMU's extended registers at 0x600 (size, reads 8) and 0x604 (framebuffer endianness).
/// - The visible picture (`scanout()`): XRES x YRES pixels of 32 bpp XRGB8888, each row VIRT_WIDTH pixels
///   apart, starting at pixel (X_OFFSET, Y_OFFSET) of the framebuffer, while ENABLE has ENABLED set.
///
/// Threads and ownership:
/// - vCPU threads call the register handlers (`read`/`write`) concurrently; the register state is one
///   `State` behind one Mutex, never held while calling out (the framebuffer clear on enable runs after
///   the lock is dropped);
/// - `scanout()` may be called from any thread (a vCPU asking for a screenshot, the VNC thread, the
///   monitor at the VM's end): it copies the registers under the lock, then reads the framebuffer without
///   it, as a display controller reads memory the guest is writing;
/// - the framebuffer is host memory owned by the device (mapped until it is freed); the PCI bus maps and
///   moves it as the guest programs BAR0.
public final class BochsDisplay: PCIFunction, BusDevice, @unchecked Sendable {
    public static let vendorID: UInt16 = 0x1234
    public static let deviceID: UInt16 = 0x1111
    public static let defaultFramebufferBytes: UInt64 = 16 << 20
    public static let registerBytes: UInt64 = 4096
    /// Largest XRES/YRES a guest can set and the device scans out (the driver's limit without EDID modes).
    public static let maxDimension = 8192

    /// DISPI register indexes (register at BAR2 0x500 + index * 2).
    public enum Index: Int, CaseIterable, Sendable {
        case id = 0, xres, yres, bpp, enable, bank, virtWidth, virtHeight, xOffset, yOffset, videoMemory64K
    }
    /// ENABLE register bits.
    public static let enabled: UInt16 = 0x01
    public static let getCaps: UInt16 = 0x02
    public static let lfbEnabled: UInt16 = 0x40
    public static let noClearMem: UInt16 = 0x80
    /// The IDs a guest may select (0xB0C0-0xB0C5); reads give the one selected, 0xB0C5 at reset.
    public static let idRange: ClosedRange<UInt16> = 0xB0C0...0xB0C5
    public static let littleEndianMagic: UInt32 = 0x1e1e_1e1e
    public static let bigEndianMagic: UInt32 = 0xbebe_bebe

    /// BAR2 layout.
    public static let edidOffset: UInt64 = 0x000
    public static let vgaOffset: UInt64 = 0x400
    public static let dispiOffset: UInt64 = 0x500
    public static let qextOffset: UInt64 = 0x600
    public static let qextSize: UInt32 = 8

    /// A picture of the visible mode: `pixels` are XRGB8888 (0x00RRGGBB), row by row.
    public struct Frame: Sendable, Equatable {
        public let width: Int
        public let height: Int
        public var pixels: [UInt32]
        public init(width: Int, height: Int, pixels: [UInt32]) { self.width = width; self.height = height; self.pixels = pixels }
        /// No mode set (ENABLE off, or a mode the device does not scan out).
        public static let off = Frame(width: 0, height: 0, pixels: [])
    }

    /// What the guest has done that the device tolerates but does not model, for tests and `--log-level debug`.
    public struct Statistics: Sendable, Equatable {
        public var vgaAccesses: UInt64 = 0
        public var badAccesses: UInt64 = 0
        public var modeSets: UInt64 = 0
    }

    private struct State {
        var regs = [UInt16](repeating: 0, count: Index.allCases.count)
        var bigEndian = false
        var stats = Statistics()
    }

    public let config: PCIConfigSpace
    public let framebufferBytes: UInt64
    public let edid: [UInt8]
    let framebuffer: UnsafeMutableRawPointer
    let slot: UInt32
    private let state: Mutex<State>
    private let log: RateLimitedLog

    /// Creates the display and adds it to the context's PCI bus (at 00:`device`.0, or the lowest free
    /// device number); the bus places BAR0 and BAR2 in the PCI MMIO window. `framebufferBytes` is a power
    /// of two from 4 MiB (the driver refuses less) to 256 MiB; `preferred` is the mode the EDID offers first.
    public init(context: any DeviceContext, device: Int? = nil, framebufferBytes: UInt64 = defaultFramebufferBytes,
                preferred: (width: Int, height: Int) = (1024, 768), logger: Logger = Logger(label: "minivisor.bochs")) throws {
        guard framebufferBytes.nonzeroBitCount == 1, (4 << 20 ... 256 << 20).contains(framebufferBytes) else {
            throw DisplayError.badFramebufferSize(framebufferBytes)
        }
        self.framebufferBytes = framebufferBytes
        log = RateLimitedLog(logger: logger, source: "bochs-display")
        edid = EDID.make(preferredWidth: preferred.width, preferredHeight: preferred.height)
        config = PCIConfigSpace(vendorID: Self.vendorID, deviceID: Self.deviceID, classCode: 0x03, subclass: 0x00,
                                revision: 2, subsystemVendorID: 0x1af4, subsystemID: 0x1100)
        config.addBar(PCIBar(index: 0, size: framebufferBytes, kind: .memory32, prefetchable: true))
        config.addBar(PCIBar(index: 2, size: Self.registerBytes, kind: .memory32))
        var s = State()
        s.regs[Index.id.rawValue] = Self.idRange.upperBound
        s.regs[Index.bpp.rawValue] = 0
        s.regs[Index.videoMemory64K.rawValue] = UInt16(truncatingIfNeeded: framebufferBytes >> 16)
        state = Mutex(s)
        guard let fb = mmap(nil, Int(framebufferBytes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              fb != MAP_FAILED else {
            throw DisplayError.host("mmap of the \(framebufferBytes >> 20) MiB framebuffer failed: \(String(cString: strerror(errno)))")
        }
        framebuffer = fb
        do { slot = try context.allocateMemorySlot() } catch {
            munmap(fb, Int(framebufferBytes))
            throw error
        }
        do { try context.addPCIFunction(self, device: device) } catch {
            context.resources.releaseMemorySlot(slot)
            munmap(fb, Int(framebufferBytes))
            throw error
        }
    }

    deinit { munmap(framebuffer, Int(framebufferBytes)) }

    public func barRegions(_ index: Int) -> [PCIBarRegion] {
        switch index {
        case 0: return [PCIBarRegion(size: framebufferBytes, name: "bochs-fb", backing: .memory(slot: slot, host: framebuffer))]
        case 2: return [PCIBarRegion(size: Self.registerBytes, name: "bochs-regs", backing: .trap(self))]
        default: return []
        }
    }

    public var statistics: Statistics { state.withLock { $0.stats } }

    /// The DISPI register `index` as the guest reads it.
    public func register(_ index: Index) -> UInt16 { state.withLock { Self.readDispi($0, index.rawValue) } }

    /// The framebuffer bytes (host memory; the guest writes them through BAR0).
    public var framebufferPointer: UnsafeMutableRawPointer { framebuffer }

    // MARK: registers (BAR2)

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let size = UInt64(data.count)
        guard offset + size <= Self.registerBytes, [1, 2, 4].contains(size), offset % size == 0 else {
            bad("read", offset, size)
            data.storeLittleEndian(UInt64.max)
            return
        }
        switch offset {
        case Self.edidOffset..<Self.vgaOffset:
            var v: UInt64 = 0
            for i in 0..<Int(size) {
                let o = Int(offset) + i
                v |= UInt64(o < edid.count ? edid[o] : 0) << (8 * UInt64(i))
            }
            data.storeLittleEndian(v)
        case Self.vgaOffset..<(Self.vgaOffset + 0x20):
            state.withLock { $0.stats.vgaAccesses += 1 }
            data.storeLittleEndian(0)
        case Self.dispiOffset..<(Self.dispiOffset + UInt64(2 * Index.allCases.count)):
            let first = Int(offset - Self.dispiOffset) / 2
            let v = state.withLock { s -> UInt64 in
                if size == 1 {
                    let r = UInt64(Self.readDispi(s, first))
                    return offset % 2 == 0 ? r & 0xff : r >> 8
                }
                var v = UInt64(Self.readDispi(s, first))
                if size == 4 { v |= UInt64(Self.readDispi(s, first + 1)) << 16 }
                return v
            }
            data.storeLittleEndian(v)
        case Self.qextOffset..<(Self.qextOffset + 8):
            let endian = state.withLock { $0.bigEndian } ? Self.bigEndianMagic : Self.littleEndianMagic
            let qext = UInt64(Self.qextSize) | UInt64(endian) << 32
            data.storeLittleEndian(qext >> (8 * (offset - Self.qextOffset)))
        default:
            bad("read", offset, size)
            data.storeLittleEndian(UInt64.max)
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let size = UInt64(data.count)
        let value = data.littleEndianValue
        guard offset + size <= Self.registerBytes, [1, 2, 4].contains(size), offset % size == 0 else {
            bad("write", offset, size)
            return
        }
        switch offset {
        case Self.vgaOffset..<(Self.vgaOffset + 0x20):
            state.withLock { $0.stats.vgaAccesses += 1 }
        case Self.dispiOffset..<(Self.dispiOffset + UInt64(2 * Index.allCases.count)) where size >= 2:
            let first = Int(offset - Self.dispiOffset) / 2
            var clear: Int? = nil
            state.withLock { s in
                clear = Self.writeDispi(&s, first, UInt16(truncatingIfNeeded: value), framebufferBytes: framebufferBytes)
                if size == 4, first + 1 < Index.allCases.count {
                    if let c = Self.writeDispi(&s, first + 1, UInt16(truncatingIfNeeded: value >> 16), framebufferBytes: framebufferBytes) { clear = c }
                }
            }
            // Enabling a mode without NOCLEARMEM clears what it shows, as the VBE spec says.
            if let bytes = clear { memset(framebuffer, 0, min(bytes, Int(framebufferBytes))) }
        case Self.qextOffset + 4 where size == 4:
            let v = UInt32(truncatingIfNeeded: value)
            if v == Self.bigEndianMagic { state.withLock { $0.bigEndian = true } }
            else if v == Self.littleEndianMagic { state.withLock { $0.bigEndian = false } }
        default:
            bad("write", offset, size)
        }
    }

    private func bad(_ kind: String, _ offset: UInt64, _ size: UInt64) {
        state.withLock { $0.stats.badAccesses += 1 }
        log.log(.debug, "bad \(kind)", "bochs-display: ignored \(size)-byte \(kind) at BAR2+0x\(String(offset, radix: 16))")
    }

    private static func readDispi(_ s: State, _ index: Int) -> UInt16 {
        guard index < s.regs.count, let i = Index(rawValue: index) else { return 0 }
        if s.regs[Index.enable.rawValue] & getCaps != 0 {
            switch i {
            case .xres, .yres: return UInt16(maxDimension)
            case .bpp: return 32
            default: break
            }
        }
        return s.regs[index]
    }

    /// Applies a DISPI write as QEMU's VBE model does; returns how many framebuffer bytes to clear when
    /// it enabled a mode without NOCLEARMEM.
    private static func writeDispi(_ s: inout State, _ index: Int, _ v: UInt16, framebufferBytes: UInt64) -> Int? {
        guard let i = Index(rawValue: index) else { return nil }
        switch i {
        case .id:
            if idRange.contains(v) { s.regs[index] = v }
        case .videoMemory64K:
            break   // read-only
        case .bpp:
            s.regs[index] = v == 0 ? 8 : v
        case .xres, .yres, .virtWidth, .virtHeight:
            s.regs[index] = min(v, UInt16(maxDimension))
        case .bank, .xOffset, .yOffset:
            s.regs[index] = v
        case .enable:
            let was = s.regs[index] & enabled != 0
            s.regs[index] = v
            if v & enabled != 0 && !was {
                // A new mode: the virtual screen starts as the visible one, at the top left.
                s.regs[Index.virtWidth.rawValue] = s.regs[Index.xres.rawValue]
                s.regs[Index.virtHeight.rawValue] = s.regs[Index.yres.rawValue]
                s.regs[Index.xOffset.rawValue] = 0
                s.regs[Index.yOffset.rawValue] = 0
                s.stats.modeSets += 1
                if v & noClearMem == 0 {
                    let bpp = Int(s.regs[Index.bpp.rawValue])
                    return Int(s.regs[Index.xres.rawValue]) * ((bpp + 7) / 8) * Int(s.regs[Index.yres.rawValue])
                }
            }
        }
        _ = framebufferBytes
        return nil
    }

    // MARK: scanout

    /// The visible picture: XRES x YRES at 32 bpp, rows VIRT_WIDTH pixels apart from (X_OFFSET, Y_OFFSET);
    /// rows (or parts of rows) beyond the framebuffer read black. `Frame.off` while no mode is enabled or
    /// the mode is not 32 bpp.
    public func scanout() -> Frame {
        let (r, big) = state.withLock { ($0.regs, $0.bigEndian) }
        guard r[Index.enable.rawValue] & Self.enabled != 0, r[Index.bpp.rawValue] == 32 else { return .off }
        let w = Int(r[Index.xres.rawValue]), h = Int(r[Index.yres.rawValue])
        guard w > 0, h > 0 else { return .off }
        let stride = max(Int(r[Index.virtWidth.rawValue]), w) * 4
        let start = Int(r[Index.yOffset.rawValue]) * stride + Int(r[Index.xOffset.rawValue]) * 4
        let fbBytes = Int(framebufferBytes)
        var pixels = [UInt32](repeating: 0, count: w * h)
        pixels.withUnsafeMutableBytes { out in
            for y in 0..<h {
                let from = start + y * stride
                guard from < fbBytes else { break }
                let n = min(w * 4, fbBytes - from)
                memcpy(out.baseAddress! + y * w * 4, framebuffer + from, n)
            }
        }
        if big { for i in pixels.indices { pixels[i] = pixels[i].byteSwapped } }
        for i in pixels.indices { pixels[i] &= 0x00ff_ffff }
        return Frame(width: w, height: h, pixels: pixels)
    }
}

/// Errors building a display device.
public enum DisplayError: Error, Equatable, CustomStringConvertible, Sendable {
    case badFramebufferSize(UInt64)
    case host(String)
    public var description: String {
        switch self {
        case .badFramebufferSize(let b):
            return "a bochs-display framebuffer of \(b) bytes is not possible: give a power of two from 4 MiB to 256 MiB"
        case .host(let what): return "cannot create the bochs-display: \(what)"
        }
    }
}
