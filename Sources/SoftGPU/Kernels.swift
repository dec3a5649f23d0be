import CBLAS
import Glibc

/// The arithmetic of the compute commands on host pointers ("the hardware's ALUs"). Public so that
/// benchmarks can run the same kernels natively. Pointers need only 4-byte alignment.
public enum Kernels {
    /// y[i] = a * x[i] + y[i] for i in 0..<n.
    public static func saxpy(n: Int, a: Float, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>) {
        let av = SIMD8<Float>(repeating: a)
        let xr = UnsafeRawPointer(x)
        let yr = UnsafeMutableRawPointer(y)
        var i = 0
        while i + 32 <= n {
            let o = i * 4
            let x0 = xr.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
            let x1 = xr.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self)
            let x2 = xr.loadUnaligned(fromByteOffset: o + 64, as: SIMD8<Float>.self)
            let x3 = xr.loadUnaligned(fromByteOffset: o + 96, as: SIMD8<Float>.self)
            let y0 = yr.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
            let y1 = yr.loadUnaligned(fromByteOffset: o + 32, as: SIMD8<Float>.self)
            let y2 = yr.loadUnaligned(fromByteOffset: o + 64, as: SIMD8<Float>.self)
            let y3 = yr.loadUnaligned(fromByteOffset: o + 96, as: SIMD8<Float>.self)
            yr.storeBytes(of: av * x0 + y0, toByteOffset: o, as: SIMD8<Float>.self)
            yr.storeBytes(of: av * x1 + y1, toByteOffset: o + 32, as: SIMD8<Float>.self)
            yr.storeBytes(of: av * x2 + y2, toByteOffset: o + 64, as: SIMD8<Float>.self)
            yr.storeBytes(of: av * x3 + y3, toByteOffset: o + 96, as: SIMD8<Float>.self)
            i += 32
        }
        while i + 8 <= n {
            let o = i * 4
            let xv = xr.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
            let yv = yr.loadUnaligned(fromByteOffset: o, as: SIMD8<Float>.self)
            yr.storeBytes(of: av * xv + yv, toByteOffset: o, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n {
            y[i] = a * x[i] + y[i]
            i += 1
        }
    }

    /// Where a long command (SGEMM, SAXPY, a blit) stopped between row blocks, to resume it exactly there:
    /// `phase` (SGEMM: 0 scaling C, 1 the blocks), `j` and `k` (SGEMM: the column and depth block), `i`
    /// (the row, element or row count done). Opaque to callers: only a kernel's own result is passed back.
    public struct KernelProgress: Sendable, Equatable {
        var phase = 0, j = 0, k = 0, i = 0
        init(phase: Int = 0, j: Int = 0, k: Int = 0, i: Int = 0) {
            self.phase = phase; self.j = j; self.k = k; self.i = i
        }
        /// The start of a command.
        public static let start = KernelProgress()
    }

    // Blocking parameters: a packed B panel is kc x nc floats (256 KiB), the micro-tile 4 x 16.
    static let kc = 256
    static let nc = 256
    static let mr = 4
    static let nr = 16

    /// Whether SGEMM runs on OpenBLAS: loads it (once; false when the host lacks libopenblas.so.0, and then
    /// `sgemm` is `sgemmSIMD`). SoftGPU asks when it is created, before any engine thread starts.
    public static var blasLoaded: Bool { blasReady }
    private static let blasReady = mv_blas_load() == 0
    /// OpenBLAS's configuration (version and the core it chose), or why it is not loaded.
    public static var blasDescription: String {
        blasReady ? String(cString: mv_blas_config()) : "not loaded: " + String(cString: mv_blas_error())
    }

    /// Multiply-adds per SGEMM row block (the default of `sgemm`'s `blockWork`): `shouldAbort` is polled
    /// between blocks of max(1, blockWork / (n * k)) rows, about 0.3 ms of OpenBLAS on the development host.
    public static let blockWork = 1 << 24

    /// Row-major C[m x n] = alpha * A[m x k] * B[k x n] + beta * C. Leading dimensions are in elements.
    /// beta == 0 overwrites C without reading it, and alpha == 0 or k == 0 reads neither A nor B (C is only
    /// scaled by beta), as `sgemmSIMD`. Runs on OpenBLAS (one cblas_sgemm per row block) when it is loaded
    /// and every dimension fits its 32-bit integers, else `sgemmSIMD`. `shouldAbort` is polled between row
    /// blocks; returns false when it aborted (the blocks before it are done, the rest of C is untouched).
    @discardableResult
    public static func sgemm(m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                             blockWork: Int = Kernels.blockWork,
                             shouldAbort: () -> Bool = { false }) -> Bool {
        sgemm(m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
              blockWork: blockWork, from: .start, shouldStop: shouldAbort) == nil
    }

    /// `KernelProgress.phase` of an SGEMM running on OpenBLAS: `i` rows are done.
    static let blasPhase = 9

    /// Whether this SGEMM runs on OpenBLAS (see `sgemm`).
    static func onBLAS(m: Int, n: Int, k: Int, alpha: Float, lda: Int, ldb: Int, ldc: Int) -> Bool {
        let int32 = Int(Int32.max)
        return blasReady && k > 0 && alpha != 0 && m <= int32 && n <= int32 && k <= int32 && lda <= int32
            && ldb <= int32 && ldc <= int32
    }

    /// The resumable SGEMM the engine runs: starts at `from` (a progress an earlier call returned, C holding
    /// that call's partial result) and returns nil when done, or where it stopped when `shouldStop` said so.
    /// On OpenBLAS it stops between row blocks (each block is final: beta is applied by the block itself), so
    /// resuming runs exactly the blocks an uninterrupted run would and the result is bit-identical; otherwise
    /// it is `sgemmSIMD`'s resumable form.
    public static func sgemm(m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                             blockWork: Int = Kernels.blockWork, useBLAS: Bool = true,
                             from: KernelProgress, shouldStop: () -> Bool) -> KernelProgress? {
        guard m > 0 && n > 0 else { return nil }
        guard useBLAS, onBLAS(m: m, n: n, k: k, alpha: alpha, lda: lda, ldb: ldb, ldc: ldc),
              from == .start || from.phase == blasPhase else {
            return sgemmSIMD(m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
                             from: from, shouldStop: shouldStop)
        }
        let rows = max(1, blockWork / max(n * k, 1))
        var i = from.phase == blasPhase ? from.i : 0
        while i < m {
            if shouldStop() { return KernelProgress(phase: blasPhase, i: i) }
            let r = min(rows, m - i)
            mv_blas_sgemm(Int32(r), Int32(n), Int32(k), alpha, a + i * lda, Int32(lda), b, Int32(ldb),
                          beta, c + i * ldc, Int32(ldc))
            i += r
        }
        return nil
    }

    /// The hand-written SIMD SGEMM (the reference `sgemm` is tested against, and its fallback). Same
    /// contract, but polls `shouldAbort` every 64 rows of the beta pass and every 16 rows of each block.
    @discardableResult
    public static func sgemmSIMD(m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                             shouldAbort: () -> Bool = { false }) -> Bool {
        sgemmSIMD(m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb, beta: beta, c: c, ldc: ldc,
                  from: KernelProgress(), shouldStop: shouldAbort) == nil
    }

    /// The SIMD SGEMM, resumable: starts at `from` (a progress an earlier call returned, C holding that
    /// call's partial result) and returns nil when done, or where it stopped when `shouldStop` said so
    /// (polled every 64 rows while scaling C, every 16 rows of each column-and-depth block after). The
    /// arithmetic and its order are those of an uninterrupted run, so the result is bit-identical.
    public static func sgemmSIMD(m: Int, n: Int, k: Int, alpha: Float,
                             a: UnsafePointer<Float>, lda: Int,
                             b: UnsafePointer<Float>, ldb: Int,
                             beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int,
                             from: KernelProgress, shouldStop: () -> Bool) -> KernelProgress? {
        guard m > 0 && n > 0 else { return nil }
        // Phase 0: C = beta * C
        if from.phase == 0 {
            if beta == 0 {
                for i in from.i..<max(m, from.i) {
                    if i & 63 == 0 && shouldStop() { return KernelProgress(phase: 0, i: i) }
                    (c + i * ldc).update(repeating: 0, count: n)
                }
            } else if beta != 1 {
                for i in from.i..<max(m, from.i) {
                    if i & 63 == 0 && shouldStop() { return KernelProgress(phase: 0, i: i) }
                    scale(c + i * ldc, count: n, by: beta)
                }
            }
        }
        guard k > 0 && alpha != 0 else { return nil }

        // Phase 1: the blocks, from (from.j, from.k, from.i) when resuming there.
        let resume = from.phase == 1 ? from : KernelProgress(phase: 1)
        let packed = UnsafeMutablePointer<Float>.allocate(capacity: kc * nc)
        defer { packed.deallocate() }
        var jj = resume.j
        var firstBlock = true
        while jj < n {
            let nb = min(nc, n - jj)
            let panels = (nb + nr - 1) / nr
            var kk = firstBlock ? resume.k : 0
            while kk < k {
                let kb = min(kc, k - kk)
                // Pack B[kk..<kk+kb, jj..<jj+nb] as panels of 16 columns: panel p, row q at p*kb*16 + q*16.
                for p in 0..<panels {
                    let cols = min(nr, nb - p * nr)
                    let dst = packed + p * kb * nr
                    for q in 0..<kb {
                        let src = b + (kk + q) * ldb + jj + p * nr
                        let d = dst + q * nr
                        if cols == nr {
                            UnsafeMutableRawPointer(d).storeBytes(of: UnsafeRawPointer(src).loadUnaligned(as: SIMD16<Float>.self), as: SIMD16<Float>.self)
                        } else {
                            for t in 0..<cols { d[t] = src[t] }
                            for t in cols..<nr { d[t] = 0 }
                        }
                    }
                }
                var i = firstBlock ? resume.i : 0
                firstBlock = false
                while i < m {
                    if i & 15 == 0 && shouldStop() { return KernelProgress(phase: 1, j: jj, k: kk, i: i) }
                    let rows = min(mr, m - i)
                    for p in 0..<panels {
                        let cols = min(nr, nb - p * nr)
                        let bp = UnsafePointer(packed + p * kb * nr)
                        let cp = c + i * ldc + jj + p * nr
                        let ap = a + i * lda + kk
                        if rows == 4 {
                            micro4x16(kb: kb, a: ap, lda: lda, b: bp, c: cp, ldc: ldc, cols: cols, alpha: alpha)
                        } else {
                            for r in 0..<rows {
                                micro1x16(kb: kb, a: ap + r * lda, b: bp, c: cp + r * ldc, cols: cols, alpha: alpha)
                            }
                        }
                    }
                    i += rows
                }
                kk += kb
            }
            jj += nb
        }
        return nil
    }

    @inline(__always)
    static func scale(_ p: UnsafeMutablePointer<Float>, count: Int, by s: Float) {
        let sv = SIMD8<Float>(repeating: s)
        let r = UnsafeMutableRawPointer(p)
        var i = 0
        while i + 8 <= count {
            r.storeBytes(of: r.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * sv, toByteOffset: i * 4, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count { p[i] *= s; i += 1 }
    }

    @inline(__always)
    static func accumulate(_ c: UnsafeMutablePointer<Float>, _ v0: SIMD8<Float>, _ v1: SIMD8<Float>, cols: Int, alpha: Float) {
        let al = SIMD8<Float>(repeating: alpha)
        let r = UnsafeMutableRawPointer(c)
        if cols == 16 {
            r.storeBytes(of: r.loadUnaligned(as: SIMD8<Float>.self) + al * v0, as: SIMD8<Float>.self)
            r.storeBytes(of: r.loadUnaligned(fromByteOffset: 32, as: SIMD8<Float>.self) + al * v1, toByteOffset: 32, as: SIMD8<Float>.self)
        } else {
            for t in 0..<min(cols, 8) { c[t] += alpha * v0[t] }
            if cols > 8 { for t in 8..<cols { c[t] += alpha * v1[t - 8] } }
        }
    }

    /// 4 rows x 16 columns: 8 SIMD8 accumulators.
    @inline(__always)
    static func micro4x16(kb: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>,
                          c: UnsafeMutablePointer<Float>, ldc: Int, cols: Int, alpha: Float) {
        var c00 = SIMD8<Float>(), c01 = SIMD8<Float>()
        var c10 = SIMD8<Float>(), c11 = SIMD8<Float>()
        var c20 = SIMD8<Float>(), c21 = SIMD8<Float>()
        var c30 = SIMD8<Float>(), c31 = SIMD8<Float>()
        let a0 = a, a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda
        let br = UnsafeRawPointer(b)
        for q in 0..<kb {
            let b0 = br.loadUnaligned(fromByteOffset: q * 64, as: SIMD8<Float>.self)
            let b1 = br.loadUnaligned(fromByteOffset: q * 64 + 32, as: SIMD8<Float>.self)
            let x0 = SIMD8<Float>(repeating: a0[q])
            c00 += x0 * b0; c01 += x0 * b1
            let x1 = SIMD8<Float>(repeating: a1[q])
            c10 += x1 * b0; c11 += x1 * b1
            let x2 = SIMD8<Float>(repeating: a2[q])
            c20 += x2 * b0; c21 += x2 * b1
            let x3 = SIMD8<Float>(repeating: a3[q])
            c30 += x3 * b0; c31 += x3 * b1
        }
        accumulate(c, c00, c01, cols: cols, alpha: alpha)
        accumulate(c + ldc, c10, c11, cols: cols, alpha: alpha)
        accumulate(c + 2 * ldc, c20, c21, cols: cols, alpha: alpha)
        accumulate(c + 3 * ldc, c30, c31, cols: cols, alpha: alpha)
    }

    @inline(__always)
    static func micro1x16(kb: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                          c: UnsafeMutablePointer<Float>, cols: Int, alpha: Float) {
        var c0 = SIMD8<Float>(), c1 = SIMD8<Float>()
        let br = UnsafeRawPointer(b)
        for q in 0..<kb {
            let x = SIMD8<Float>(repeating: a[q])
            c0 += x * br.loadUnaligned(fromByteOffset: q * 64, as: SIMD8<Float>.self)
            c1 += x * br.loadUnaligned(fromByteOffset: q * 64 + 32, as: SIMD8<Float>.self)
        }
        accumulate(c, c0, c1, cols: cols, alpha: alpha)
    }
}
