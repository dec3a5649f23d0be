import Glibc
import Testing
import TestSupport
@testable import SoftGPU

/// `Kernels.sgemm` (OpenBLAS in row blocks) against the hand-written SIMD kernel it replaced
/// (`Kernels.sgemmSIMD`, the reference), with the commands' semantics: alpha, beta, leading dimensions,
/// C not read when beta is 0, A and B not read when alpha is 0, padding columns untouched.
@Suite struct BLASKernelTests {
    /// Under CI=true a missing OpenBLAS fails; elsewhere the comparisons are skipped with the reason.
    static var blasRequired: Bool { getenv("CI").map { String(cString: $0) == "true" } ?? false }

    @Test func openBLASIsLoaded() {
        if !Kernels.blasLoaded && !Self.blasRequired {
            print("skipped: OpenBLAS is not loaded (\(Kernels.blasDescription)); scripts/install-deps.sh installs libopenblas0")
            return
        }
        #expect(Kernels.blasLoaded, "\(Kernels.blasDescription): install libopenblas0 (scripts/install-deps.sh)")
    }

    struct Case: Sendable, CustomStringConvertible {
        var m: Int, n: Int, k: Int
        var alpha: Float = 1, beta: Float = 0
        var padA = 0, padB = 0, padC = 0
        var nanC = false, nanAB = false
        var description: String { "\(m)x\(n)x\(k) a=\(alpha) b=\(beta) pads=\(padA),\(padB),\(padC)\(nanC ? " NaN C" : "")\(nanAB ? " NaN A,B" : "")" }
    }

    static let cases: [Case] = [
        Case(m: 1, n: 1, k: 1),
        Case(m: 3, n: 5, k: 7, alpha: 2, beta: 1),
        Case(m: 17, n: 33, k: 9, alpha: -0.5, beta: 2, padA: 3, padB: 1, padC: 5),
        Case(m: 9, n: 20, k: 300, alpha: 1, beta: -1),
        Case(m: 6, n: 270, k: 5, alpha: 1.5, beta: 0, padC: 2),
        Case(m: 100, n: 129, k: 257, alpha: 0.75, beta: 0.25, padA: 1, padB: 7, padC: 3),
        Case(m: 7, n: 9, k: 4, alpha: 1, beta: 0, padC: 3, nanC: true),        // beta 0: C is not read
        Case(m: 5, n: 7, k: 3, alpha: 0, beta: 3, nanAB: true),                 // alpha 0: A, B are not read
        Case(m: 5, n: 7, k: 0, alpha: 1, beta: 0.5, nanAB: true),               // k 0: C = beta * C
        Case(m: 40, n: 24, k: 16, alpha: 1, beta: 0, nanC: true),
    ]

    @Test(arguments: cases)
    func blasMatchesTheSIMDKernel(_ c: Case) {
        guard Kernels.blasLoaded || Self.blasRequired else {
            print("skipped: OpenBLAS is not loaded (\(Kernels.blasDescription))")
            return
        }
        let lda = c.k + c.padA, ldb = c.n + c.padB, ldc = c.n + c.padC
        var a = randomFloats(max(c.m * lda, 1), seed: 21), b = randomFloats(max(c.k * ldb, 1), seed: 22)
        if c.nanAB { a = a.map { _ in .nan }; b = b.map { _ in .nan } }
        var c0 = randomFloats(c.m * ldc, seed: 23)
        if c.nanC { c0 = c0.map { _ in .nan } }
        func run(_ blas: Bool) -> [Float] {
            var out = c0
            a.withUnsafeBufferPointer { ap in
                b.withUnsafeBufferPointer { bp in
                    out.withUnsafeMutableBufferPointer { cp in
                        if blas {
                            Kernels.sgemm(m: c.m, n: c.n, k: c.k, alpha: c.alpha, a: ap.baseAddress!, lda: lda,
                                          b: bp.baseAddress!, ldb: ldb, beta: c.beta, c: cp.baseAddress!, ldc: ldc,
                                          blockWork: 4 * c.n * max(c.k, 1))    // several row blocks
                        } else {
                            Kernels.sgemmSIMD(m: c.m, n: c.n, k: c.k, alpha: c.alpha, a: ap.baseAddress!, lda: lda,
                                              b: bp.baseAddress!, ldb: ldb, beta: c.beta, c: cp.baseAddress!, ldc: ldc)
                        }
                    }
                }
            }
            return out
        }
        let got = run(true), want = run(false)
        // Tolerance: each kernel's element differs from the exact alpha * sum_p a_ip * b_pj + beta * c_ij by
        // at most gamma(k + 2) * (|alpha| * sum_p |a_ip * b_pj| + |beta * c_ij|), gamma(j) = j*u / (1 - j*u),
        // u = 2^-24, whatever the summation order or FMA use (the standard dot-product bound, plus the
        // roundings of the alpha and beta products and the final add); two such results differ by at most
        // twice that.
        let u = 1.0 / Double(1 << 24)
        let gamma = Double(c.k + 2) * u / (1 - Double(c.k + 2) * u)
        var bad = 0
        for i in 0..<c.m {
            for j in 0..<ldc {
                let idx = i * ldc + j
                if j >= c.n {
                    if got[idx].bitPattern != c0[idx].bitPattern { bad += 1; Issue.record("padding C[\(i),\(j)] changed (\(c))") }
                    continue
                }
                var s = 0.0
                if c.alpha != 0 { for p in 0..<c.k { s += abs(Double(a[i * lda + p]) * Double(b[p * ldb + j])) } }
                let betaC = c.beta == 0 ? 0 : abs(Double(c.beta) * Double(c0[idx]))
                let tol = 2 * gamma * (abs(Double(c.alpha)) * s + betaC) + Double(Float.leastNormalMagnitude)
                let ok = got[idx].isNaN == want[idx].isNaN && (got[idx].isNaN || abs(Double(got[idx]) - Double(want[idx])) <= tol)
                if !ok {
                    bad += 1
                    if bad < 5 { Issue.record("C[\(i),\(j)]: OpenBLAS \(got[idx]), SIMD \(want[idx]), tolerance \(tol) (\(c))") }
                }
            }
        }
        #expect(bad == 0, "\(c)")
        if c.nanC || c.nanAB {
            let nan = (0..<c.m).contains { i in (0..<c.n).contains { got[i * ldc + $0].isNaN } }
            #expect(!nan, "a NaN that must not be read reached C (\(c))")
        }
    }

    /// Leading dimensions beyond OpenBLAS's 32-bit integers (legal for a one-row matrix, whose extent does
    /// not depend on them) take the SIMD kernel.
    /// The engine's resumable SGEMM on OpenBLAS (preemption): stopped before every other row block and
    /// resumed from the progress it returned, the result is bit for bit that of an uninterrupted run.
    @Test func resumableBLASSGEMMStopsBetweenBlocksAndResumesExactly() {
        guard Kernels.blasLoaded || Self.blasRequired else { return }
        let m = 300, n = 70, k = 130, blockWork = 70 * 130 * 7   // blocks of 7 rows: 43 of them
        var rng = SplitMix64(seed: 42)
        let a = (0..<(m * k)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 256 }
        let b = (0..<(k * n)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 256 }
        let c0 = (0..<(m * n)).map { _ in Float(Int(rng.next() % 2001) - 1000) / 64 }
        var whole = c0, pieces = c0
        var stops = 0
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in
            whole.withUnsafeMutableBufferPointer { cp in
                _ = Kernels.sgemm(m: m, n: n, k: k, alpha: 0.75, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                  beta: -0.5, c: cp.baseAddress!, ldc: n, blockWork: blockWork, from: .start, shouldStop: { false })
            }
            pieces.withUnsafeMutableBufferPointer { cp in
                var progress = KernelProgress.start
                var polls = 0
                while let p = Kernels.sgemm(m: m, n: n, k: k, alpha: 0.75, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                            beta: -0.5, c: cp.baseAddress!, ldc: n, blockWork: blockWork, from: progress,
                                            shouldStop: { polls += 1; return polls % 2 == 0 }) {
                    progress = p
                    stops += 1
                }
            }
        } }
        #expect(stops >= 20, "stopped only \(stops) times")
        #expect(whole.map(\.bitPattern) == pieces.map(\.bitPattern), "resumed SGEMM differs from the uninterrupted one")
    }

    @Test func hugeLeadingDimensionsFallBack() {
        let n = 5, k = 3
        let a = randomFloats(k, seed: 1), b = randomFloats(k * n, seed: 2)
        var c = [Float](repeating: 0, count: n)
        let huge = Int(Int32.max) + 8
        a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    Kernels.sgemm(m: 1, n: n, k: k, alpha: 1, a: ap.baseAddress!, lda: huge, b: bp.baseAddress!, ldb: n,
                                  beta: 0, c: cp.baseAddress!, ldc: huge)
                }
            }
        }
        for j in 0..<n {
            let want = (0..<k).reduce(Float(0)) { $0 + a[$1] * b[$1 * n + j] }
            #expect(abs(c[j] - want) <= 1e-5, "C[\(j)]")
        }
    }
}
