import SoftGPU

/// SoftGPU's SGEMM kernel on host memory, before (the hand-written SIMD kernel, `Kernels.sgemmSIMD`) and
/// after (OpenBLAS in row blocks, `Kernels.sgemm`), on one thread, interleaved in the same run.
public enum SGEMMKernelBenchmark {
    public struct Result: Sendable {
        public let n: Int
        public let simdGFLOPS: Double
        /// nil when OpenBLAS is not loaded (`Kernels.blasDescription` says why).
        public let blasGFLOPS: Double?
        /// BLAS time / SIMD time inverted (speed-up), one sample per round.
        public let speedup: Spread?
    }

    public static func run(n: Int = 512, rounds: Int = 9) -> Result {
        let a = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
        let b = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
        let c = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
        defer { a.deallocate(); b.deallocate(); c.deallocate() }
        for i in 0..<(n * n) {
            a[i] = Float(i % 17 - 8) / 16
            b[i] = Float(i % 13 - 6) / 8
            c[i] = 0
        }
        let blas = Kernels.blasLoaded
        var simd: [Double] = [], fast: [Double] = []
        for round in 0...rounds {    // round 0 warms up (packing buffers, OpenBLAS's first allocation) and is dropped
            let t0 = threadCPUSeconds()
            Kernels.sgemmSIMD(m: n, n: n, k: n, alpha: 1, a: a, lda: n, b: b, ldb: n, beta: 0, c: c, ldc: n)
            let t1 = threadCPUSeconds()
            if blas { Kernels.sgemm(m: n, n: n, k: n, alpha: 1, a: a, lda: n, b: b, ldb: n, beta: 0, c: c, ldc: n) }
            let t2 = threadCPUSeconds()
            if round == 0 { continue }
            simd.append(t1 - t0)
            fast.append(t2 - t1)
        }
        let flop = 2 * Double(n) * Double(n) * Double(n) / 1e9
        return Result(n: n, simdGFLOPS: flop / Spread(simd).median, blasGFLOPS: blas ? flop / Spread(fast).median : nil,
                      speedup: blas ? Spread(zip(simd, fast).map { $0 / $1 }) : nil)
    }
}
