import Machine
import SoftGPU

extension VGPU {
    /// The vGPU's current scanout: its virtual primary plane (and cursor) read through the GTT. Pages the
    /// display cannot read show black (primary) or nothing (cursor), as on the GPU.
    public func scanout() -> Image {
        let (ctl, size, stride, surf, curCtl, curBase, curPos) = state.withLock { s in
            (s.regs[Reg.priCtl] ?? 0, s.regs[Reg.priSize] ?? 0, s.regs[Reg.priStride] ?? 0, s.regs[Reg.priSurf] ?? 0,
             s.regs[Reg.curCtl] ?? 0, s.regs[Reg.curBase] ?? 0, s.regs[Reg.curPos] ?? 0)
        }
        let width = min(Int(size & 0xffff), 8192), height = min(Int(size >> 16), 8192)
        guard ctl & Reg.planeEnable != 0, (ctl >> 26) & 0xf == Reg.formatXRGB8888, width > 0, height > 0,
              Int(stride) >= width * 4 else {
            return Image(width: 0, height: 0, pixels: [])
        }
        let gtt = host.gpu.gtt
        var pixels = [UInt32](repeating: 0, count: width * height)
        var row = [UInt32](repeating: 0, count: width)
        var invalid = 0
        for y in 0..<height {
            let gm = UInt64(surf) + UInt64(y) * UInt64(stride)
            guard slices.contains(gm, length: UInt64(width * 4)) else { invalid += 1; continue }
            do {
                try row.withUnsafeMutableBytes { try gtt.read(into: $0, at: gm) }
                for x in 0..<width { pixels[y * width + x] = row[x] & 0x00ff_ffff }
            } catch { invalid += 1 }
        }
        if curCtl & Reg.planeEnable != 0, slices.contains(UInt64(curBase), length: 64 * 64 * 4) {
            var cursor = [UInt32](repeating: 0, count: 64 * 64)
            if (try? cursor.withUnsafeMutableBytes { try gtt.read(into: $0, at: UInt64(curBase)) }) != nil {
                let cx = Int(Int16(truncatingIfNeeded: curPos & 0xffff)), cy = Int(Int16(truncatingIfNeeded: curPos >> 16))
                for j in 0..<64 {
                    let y = cy + j
                    guard y >= 0 && y < height else { continue }
                    for i in 0..<64 {
                        let x = cx + i
                        guard x >= 0 && x < width else { continue }
                        let c = cursor[j * 64 + i], a = c >> 24
                        let p = pixels[y * width + x]
                        var out: UInt32 = 0
                        for shift: UInt32 in [0, 8, 16] {
                            let cc = (c >> shift) & 0xff, pc = (p >> shift) & 0xff
                            out |= ((cc * a + pc * (255 - a) + 127) / 255) << shift
                        }
                        pixels[y * width + x] = out
                    }
                }
            }
        }
        return Image(width: width, height: height, pixels: pixels, invalidPages: invalid)
    }
}

/// The screenshot request port (0xf5): any write asks the VMM to save the current scanout.
public final class ScreenshotPort: BusDevice {
    public static let port: UInt64 = 0xf5
    private let action: @Sendable () -> Void
    public init(action: @escaping @Sendable () -> Void) { self.action = action }
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(UInt64.max) }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) { action() }
}
