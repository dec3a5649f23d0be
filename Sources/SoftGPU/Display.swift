import Glibc
import Synchronization

/// A composed picture: XRGB8888 pixels (bits 31:24 are always zero), row-major, `width * height`.
public struct Image: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt32]
    /// Distinct GM pages that could not be read (invalid GTT entry, unmapped bus address, beyond GM);
    /// they read as black (primary) or transparent (cursor).
    public var invalidPages: Int

    public init(width: Int, height: Int, pixels: [UInt32], invalidPages: Int = 0) {
        self.width = width
        self.height = height
        self.pixels = pixels
        self.invalidPages = invalidPages
    }

    public subscript(x: Int, y: Int) -> UInt32 { pixels[y * width + x] }
}

/// The display engine: one pipe (`DisplayPipe`: planes, flips, vblank counter) with a primary plane
/// (XRGB8888) and a 64x64 ARGB8888 cursor, and the pipe's vblank timer.
///
/// - Plane registers take effect immediately for `scanout()`. A write of PRI_SURF (register or
///   LOAD_REGISTER_IMM) or a DISPLAY_FLIP of the primary plane arms a flip; the next vblank completes
///   it (FLIP_COUNT + 1, FLIP_DONE interrupt), or at once while PIPE_CONF is off. Same for CUR_BASE /
///   cursor flips (CURSOR_FLIP_DONE).
/// - Vblanks come from `tickVBlank()` or, when a refresh rate is configured, from a timer thread that
///   ticks while PIPE_CONF bit 31 is set.
///
/// Threads and ownership: the pipe is behind one Mutex (`state`), never held while raising interrupts;
/// any thread may write registers, flip, tick or scan out; the timer thread (if any) is joined by `stop()`.
public final class DisplayEngine: @unchecked Sendable {
    public typealias Plane = DisplayPipe.Plane

    /// Largest width or height scanned out; larger planes are clipped.
    public let maxDimension: Int
    let gtt: GTT
    let interrupts: InterruptController
    private let state = Mutex(DisplayPipe())

    // vblank timer
    private let timerMonitor = Monitor()
    private var timerStop = false          // guarded by timerMonitor
    private var timerThread: pthread_t?    // set once in init, joined in stop()
    private let refreshRate: Double?

    init(gtt: GTT, interrupts: InterruptController, refreshRate: Double?, maxDimension: Int) {
        self.gtt = gtt
        self.interrupts = interrupts
        self.refreshRate = refreshRate.flatMap { $0 > 0 ? $0 : nil }
        self.maxDimension = maxDimension
        if self.refreshRate != nil {
            timerThread = OSThread.spawn(name: "softgpu-vblank") { [self] in timerLoop() }
        }
    }

    func stop() {
        timerMonitor.withLock { timerStop = true; timerMonitor.broadcast() }
        if let t = timerThread { OSThread.join(t); timerThread = nil }
    }

    private func timerLoop() {
        let period = UInt64(1e9 / refreshRate!)
        var next = monotonicNanos() &+ period
        timerMonitor.lock()
        while !timerStop {
            if !state.withLock({ $0.isEnabled }) {
                // Pipe off: poll the enable bit at the refresh period without ticking.
                timerMonitor.wait(deadline: monotonicNanos() &+ period)
                next = monotonicNanos() &+ period
                continue
            }
            if !timerMonitor.wait(deadline: next) {
                timerMonitor.unlock()
                tickVBlank()
                timerMonitor.lock()
                next &+= period
                let now = monotonicNanos()
                if next < now { next = now &+ period }   // fell behind: skip missed frames
            }
        }
        timerMonitor.unlock()
    }

    /// One vertical blank: completes armed flips and raises VBLANK (+ FLIP_DONE / CURSOR_FLIP_DONE).
    public func tickVBlank() {
        interrupts.raise(state.withLock { $0.vblank() })
    }

    /// DISPLAY_FLIP: new surface (and, for the primary plane, stride); completes at the next vblank.
    func flip(_ plane: Plane, base: UInt64, stride: UInt32) {
        let bits = state.withLock { $0.flip(plane, surface: base, stride: stride) }
        if bits != 0 { interrupts.raise(bits) }
    }

    static func handles(_ offset: UInt32) -> Bool { DisplayPipe.handles(offset) }

    func read(_ offset: UInt32) -> UInt32 { state.withLock { $0.read(offset) } }

    func write(_ offset: UInt32, _ value: UInt32) {
        let bits = state.withLock { $0.write(offset, value) }
        if bits != 0 { interrupts.raise(bits) }
        if offset == Reg.pipeConf { timerMonitor.withLock { timerMonitor.broadcast() } }
    }

    /// The composed picture (primary + cursor), read through the GTT. Size = PRI_SIZE (clipped to
    /// `maxDimension`); a disabled primary plane or unsupported format scans out black.
    public func scanout() -> Image {
        let planes = state.withLock { $0.planes }
        let image = Self.compose(planes, gtt: gtt, maxDimension: maxDimension)
        if image.invalidPages > 0 {
            let n = UInt32(truncatingIfNeeded: image.invalidPages)
            state.withLock { $0.faults &+= n }
        }
        return image
    }

    /// The plane registers scanout composes from (softgpu.md section 4.4).
    public struct Planes: Sendable, Equatable {
        public var priCtl: UInt32, priStride: UInt32, priSize: UInt32, priSurf: UInt32
        public var curCtl: UInt32, curBase: UInt32, curPos: UInt32
        public init(priCtl: UInt32, priStride: UInt32, priSize: UInt32, priSurf: UInt32,
                    curCtl: UInt32, curBase: UInt32, curPos: UInt32) {
            self.priCtl = priCtl; self.priStride = priStride; self.priSize = priSize; self.priSurf = priSurf
            self.curCtl = curCtl; self.curBase = curBase; self.curPos = curPos
        }
    }

    /// Composes `planes` from GM through `gtt`, as the display engine does. `readable`, when given, is asked
    /// for every GM range before it is read (a mediator passes its vGPU's slices): refused ranges count as
    /// invalid pages and show black (primary) or nothing (cursor).
    public static func compose(_ s: Planes, gtt: GTT, maxDimension: Int = 8192,
                               readable: ((UInt64, UInt64) -> Bool)? = nil) -> Image {
        let width = min(Int(s.priSize & 0xFFFF), maxDimension)
        let height = min(Int(s.priSize >> 16), maxDimension)
        var pixels = [UInt32](repeating: 0, count: width * height)
        var acc = gtt.accessor(honorReadOnly: false)
        var invalid = Set<UInt64>()

        let priOn = s.priCtl & Reg.planeEnable != 0 && (s.priCtl >> 26) & 0xF == Reg.formatXRGB8888
        if priOn && width > 0 {
            let base = UInt64(s.priSurf)
            let rowBytes = width * 4
            pixels.withUnsafeMutableBytes { out in
                for y in 0..<height {
                    let gm = base + UInt64(y) * UInt64(s.priStride)
                    if let ok = readable, !ok(gm, UInt64(rowBytes)) { invalid.insert(gm >> 12); continue }
                    readRow(&acc, gm: gm, bytes: rowBytes, into: out.baseAddress! + y * rowBytes, invalid: &invalid)
                }
            }
            for i in pixels.indices { pixels[i] &= 0x00FF_FFFF }
        }

        if s.curCtl & Reg.planeEnable != 0 && width > 0 && height > 0
            && (readable?(UInt64(s.curBase), 64 * 64 * 4) ?? true) {
            var cursor = [UInt32](repeating: 0, count: 64 * 64)
            cursor.withUnsafeMutableBytes { out in
                readRow(&acc, gm: UInt64(s.curBase), bytes: 64 * 64 * 4, into: out.baseAddress!, invalid: &invalid)
            }
            let (cx, cy) = xy(s.curPos)
            let j0 = max(0, -cy), j1 = min(64, height - cy)
            let i0 = max(0, -cx), i1 = min(64, width - cx)
            for j in j0..<max(j0, j1) {
                for i in i0..<max(i0, i1) {
                    let src = cursor[j * 64 + i]
                    let a = src >> 24
                    guard a != 0 else { continue }
                    let idx = (cy + j) * width + cx + i
                    pixels[idx] = a == 255 ? src & 0x00FF_FFFF : Self.blend(src, over: pixels[idx], alpha: a)
                }
            }
        }
        return Image(width: width, height: height, pixels: pixels, invalidPages: invalid.count)
    }

    /// Straight-alpha blend of ARGB `src` over XRGB `dst`.
    static func blend(_ src: UInt32, over dst: UInt32, alpha a: UInt32) -> UInt32 {
        var out: UInt32 = 0
        for shift: UInt32 in [0, 8, 16] {
            let s = (src >> shift) & 0xFF, d = (dst >> shift) & 0xFF
            out |= ((s * a + d * (255 - a) + 127) / 255) << shift
        }
        return out
    }

    /// Copies `bytes` from GM into `dst`; unreadable pages leave zeros and are recorded.
    private static func readRow(_ acc: inout GMAccessor, gm: UInt64, bytes: Int, into dst: UnsafeMutableRawPointer, invalid: inout Set<UInt64>) {
        var done = 0
        while done < bytes {
            let addr = gm &+ UInt64(done)
            let off = Int(addr & 0xFFF)
            let n = min(bytes - done, 4096 - off)
            if addr >= gm, let p = try? acc.page(addr, write: false) {
                memcpy(dst + done, p + off, n)
            } else {
                invalid.insert(addr >> 12)
            }
            done += n
        }
    }
}
