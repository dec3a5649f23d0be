import Testing
@testable import SoftGPU

private let D = Rig.dataGM

/// Maps `pages` GM pages at `gm` to freshly allocated host pages in reverse order, so no two
/// consecutive GM pages are host-contiguous.
private func mapReversed(_ rig: Rig, gm: UInt64, pages: Int) throws {
    let r = try rig.gpu.systemMemory.allocate(bytes: UInt64(pages) * 4096, name: "reversed")
    for i in 0..<pages {
        rig.gpu.gtt.setEntry(Int(gm / 4096) + i, GTTEntry.make(bus: r.base + UInt64(pages - 1 - i) * 4096))
    }
}

private func close(_ a: Float, _ b: Float, tol: Float) -> Bool { abs(a - b) <= tol }

@Suite struct SaxpyTests {
    @Test(arguments: [0, 1, 7, 8, 9, 31, 32, 33, 100, 1000, 5003])
    func saxpyMatchesReference(n: Int) throws {
        let rig = try Rig()
        let x = randomFloats(n + 1, seed: UInt64(n))
        let y = randomFloats(n + 1, seed: UInt64(n) + 99)
        let xGM = D + 0x100004, yGM = D + 0x200008           // deliberately not 32-byte aligned
        rig.setFloats(xGM, x)
        rig.setFloats(yGM, y)
        let a: Float = -1.75
        #expect(try rig.ring(.rcs, builder { $0.saxpy(n: UInt32(n), a: a, x: xGM, y: yGM) }) == .idle)
        let got = rig.floats(yGM, n + 1)
        for i in 0..<n {
            let want = a * x[i] + y[i]
            #expect(close(got[i], want, tol: 1e-6 * max(1, abs(want))), "y[\(i)] = \(got[i]), want \(want)")
        }
        #expect(got[n] == y[n])                                // one past the end untouched
    }

    @Test func saxpyAcrossNonContiguousPages() throws {
        let rig = try Rig()
        let n = 3000                                           // 12000 bytes: spans 4 pages
        let xGM = Rig.unmappedGM + 100, yGM = Rig.unmappedGM + 0x10000 + 2000
        try mapReversed(rig, gm: Rig.unmappedGM, pages: 4)
        try mapReversed(rig, gm: Rig.unmappedGM + 0x10000, pages: 4)
        let x = randomFloats(n, seed: 1), y = randomFloats(n, seed: 2)
        try rig.gpu.gtt.write(x, at: xGM)
        try rig.gpu.gtt.write(y, at: yGM)
        #expect(try rig.ring(.rcs, builder { $0.saxpy(n: UInt32(n), a: 0.5, x: xGM, y: yGM) }) == .idle)
        let got = try rig.gpu.gtt.read(Float.self, count: n, at: yGM)
        for i in 0..<n { #expect(close(got[i], 0.5 * x[i] + y[i], tol: 1e-6), "y[\(i)]") }
    }
}

@Suite struct SgemmTests {
    struct Case: Sendable, CustomStringConvertible {
        var m: Int, n: Int, k: Int
        var alpha: Float = 1, beta: Float = 0
        var padA = 0, padB = 0, padC = 0
        var description: String { "\(m)x\(n)x\(k) a=\(alpha) b=\(beta) pads=\(padA),\(padB),\(padC)" }
    }

    static let cases: [Case] = [
        Case(m: 1, n: 1, k: 1),
        Case(m: 3, n: 5, k: 7, alpha: 2, beta: 1),
        Case(m: 4, n: 16, k: 8, alpha: 1, beta: 0.5),
        Case(m: 17, n: 33, k: 9, alpha: -0.5, beta: 2, padA: 3, padB: 1, padC: 5),
        Case(m: 9, n: 20, k: 300, alpha: 1, beta: -1),         // K crosses the k-block (256)
        Case(m: 6, n: 270, k: 5, alpha: 1.5, beta: 0, padC: 2), // N crosses the n-block (256)
        Case(m: 5, n: 7, k: 3, alpha: 0, beta: 3),             // alpha 0: C = beta*C
        Case(m: 64, n: 64, k: 64, alpha: 1, beta: 1),
    ]

    func run(_ c: Case, rig: Rig, aGM: UInt64, bGM: UInt64, cGM: UInt64, nanC: Bool = false) throws {
        let lda = c.k + c.padA, ldb = c.n + c.padB, ldc = c.n + c.padC
        let a = randomFloats(c.m * lda, seed: 11), b = randomFloats(c.k * ldb, seed: 12)
        var cm = randomFloats(c.m * ldc, seed: 13)
        if nanC { cm = cm.map { _ in Float.nan } }
        try rig.gpu.gtt.write(a, at: aGM)
        try rig.gpu.gtt.write(b, at: bGM)
        try rig.gpu.gtt.write(cm, at: cGM)
        let ref = referenceSgemm(m: c.m, n: c.n, k: c.k, alpha: c.alpha, a: a, lda: lda, b: b, ldb: ldb,
                                 beta: c.beta, c: cm, ldc: ldc)
        #expect(try rig.ring(.rcs, builder {
            $0.sgemm(m: UInt32(c.m), n: UInt32(c.n), k: UInt32(c.k), alpha: c.alpha, beta: c.beta,
                     a: aGM, lda: UInt32(lda), b: bGM, ldb: UInt32(ldb), c: cGM, ldc: UInt32(ldc))
        }) == .idle)
        let got = try rig.gpu.gtt.read(Float.self, count: c.m * ldc, at: cGM)
        let tol = Float(c.k) * 4e-7 * max(1, abs(c.alpha)) + 1e-6
        var bad = 0
        for i in 0..<c.m {
            for j in 0..<ldc {
                let idx = i * ldc + j
                if j >= c.n {
                    // Padding columns are never touched (bitwise, NaN included).
                    if got[idx].bitPattern != cm[idx].bitPattern { bad += 1 }
                } else if !close(got[idx], ref[idx], tol: tol * max(1, abs(ref[idx]))) {
                    bad += 1
                    if bad < 5 { Issue.record("C[\(i),\(j)] = \(got[idx]), want \(ref[idx]) (\(c))") }
                }
            }
        }
        #expect(bad == 0, "\(c)")
    }

    @Test(arguments: cases)
    func sgemmMatchesReference(_ c: Case) throws {
        let rig = try Rig()
        try run(c, rig: rig, aGM: D, bGM: D + 0x100000, cGM: D + 0x200000)
    }

    @Test func betaZeroIgnoresNaNInC() throws {
        let rig = try Rig()
        try run(Case(m: 7, n: 9, k: 4, alpha: 1, beta: 0, padC: 3), rig: rig, aGM: D, bGM: D + 0x10000, cGM: D + 0x20000, nanC: true)
    }

    @Test func sgemmAcrossNonContiguousPages() throws {
        let rig = try Rig()
        // Each operand spans several reversed pages and starts mid-page.
        try mapReversed(rig, gm: Rig.unmappedGM, pages: 16)
        try mapReversed(rig, gm: Rig.unmappedGM + 0x100000, pages: 16)
        try mapReversed(rig, gm: Rig.unmappedGM + 0x200000, pages: 16)
        try run(Case(m: 33, n: 40, k: 35, alpha: 0.75, beta: 0.25, padA: 1, padC: 4), rig: rig,
                aGM: Rig.unmappedGM + 512, bGM: Rig.unmappedGM + 0x100000 + 36, cGM: Rig.unmappedGM + 0x200000 + 4092)
    }

    @Test func kernelsDirectly() {
        // The host-native kernels used by the engine (what benchmarks call for the native baseline).
        let m = 13, n = 19, k = 21
        let a = randomFloats(m * k, seed: 5), b = randomFloats(k * n, seed: 6), c0 = randomFloats(m * n, seed: 7)
        var c = c0
        _ = a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    Kernels.sgemm(m: m, n: n, k: k, alpha: 1.25, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                  beta: -0.5, c: cp.baseAddress!, ldc: n)
                }
            }
        }
        let ref = referenceSgemm(m: m, n: n, k: k, alpha: 1.25, a: a, lda: k, b: b, ldb: n, beta: -0.5, c: c0, ldc: n)
        for i in 0..<(m * n) { #expect(close(c[i], ref[i], tol: 1e-4), "C[\(i)]") }
    }
}

@Suite struct ComputeResetTests {
    @Test func resetAbortsALongSgemm() throws {
        let rig = try Rig()
        let n: UInt32 = 384                        // 3 x 576 KiB operands
        let a = D, b = D + 0x100000, c = D + 0x200000
        rig.setFloats(a, [Float](repeating: 1, count: Int(n * n)))
        rig.setFloats(b, [Float](repeating: 1, count: Int(n * n)))
        _ = try rig.rcs.submit(builder { $0.sgemm(m: n, n: n, k: n, alpha: 1, beta: 0, a: a, lda: n, b: b, ldb: n, c: c, ldc: n) })
        rig.gpu.resetEngine(.rcs)                  // returns: the kernel polls the abort flag
        #expect(rig.gpu.waitIdle(.rcs, timeout: 60) == .idle)
        #expect(rig.gpu.engine(.rcs).lastError == nil)
        rig.rcs.recover()
        try rig.rcs.run(builder { $0.sgemm(m: 2, n: 2, k: 2, alpha: 1, beta: 0, a: a, lda: n, b: b, ldb: n, c: c, ldc: n) }, timeout: 60)
        #expect(rig.floats(c, 2) == [2, 2])
    }
}

/// Long commands stop between row blocks when the engine's abort flag is raised (reset, stop): the kernels
/// poll an abort hook, and what ran before the poll that aborted stays done.
@Suite struct AbortBetweenRowBlocksTests {
    @Test func saxpyStopsAfterTheBlockBeforeTheAbort() throws {
        let rig = try Rig()
        let n = 3 * Compute.saxpyBlock + 100
        let x = D, y = D + 0x100000
        rig.setFloats(x, [Float](repeating: 1, count: n))
        rig.setFloats(y, [Float](repeating: 0, count: n))
        var b = CommandBuilder()
        b.saxpy(n: UInt32(n), a: 2, x: x, y: y)
        var acc = rig.gpu.gtt.accessor()
        var polls = 0
        let done = try Compute.saxpy(b.dwords, &acc) { polls += 1; return polls == 2 }
        #expect(!done)
        let out = rig.floats(y, n)
        #expect(out[0..<Compute.saxpyBlock].allSatisfy { $0 == 2 })
        #expect(out[Compute.saxpyBlock...].allSatisfy { $0 == 0 })
        // Without an abort every block runs, and the hook is polled once per block.
        polls = 0
        #expect(try Compute.saxpy(b.dwords, &acc) { polls += 1; return false })
        #expect(polls == 4)
        #expect(rig.floats(y, n).allSatisfy { $0 == 2 || $0 == 4 })
        #expect(rig.floats(y, n).last == 2)
    }

    /// Both kernels stop between row blocks: the SIMD kernel's blocks are 16 rows; OpenBLAS's are
    /// blockWork / (n * k) rows, here 16 too.
    @Test(arguments: [false, true])
    func sgemmStopsBetweenRowBlocks(blas: Bool) {
        guard !blas || Kernels.blasLoaded else {
            print("skipped: OpenBLAS is not loaded (\(Kernels.blasDescription))")
            return
        }
        let m = 64, n = 16, k = 8
        let a = [Float](repeating: 1, count: m * k), b = [Float](repeating: 1, count: k * n)
        var c = [Float](repeating: 0, count: m * n)
        var polls = 0
        let done = a.withUnsafeBufferPointer { ap in
            b.withUnsafeBufferPointer { bp in
                c.withUnsafeMutableBufferPointer { cp in
                    blas
                        ? Kernels.sgemm(m: m, n: n, k: k, alpha: 1, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                        beta: 1, c: cp.baseAddress!, ldc: n, blockWork: 16 * n * k) { polls += 1; return polls == 2 }
                        : Kernels.sgemmSIMD(m: m, n: n, k: k, alpha: 1, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                            beta: 1, c: cp.baseAddress!, ldc: n) { polls += 1; return polls == 2 }
                }
            }
        }
        #expect(!done)
        #expect(c[0..<(16 * n)].allSatisfy { $0 == Float(k) })   // the first 16-row block ran
        #expect(c[(16 * n)...].allSatisfy { $0 == 0 })           // nothing after the abort
    }

    @Test func blitsStopBetweenRows() throws {
        let rig = try Rig()
        let src = BlitSurface(gm: D + 0x200000, pitch: 256, width: 64, height: 200)
        var b = CommandBuilder()
        b.colorBlt(dst: src, x1: 0, y1: 0, x2: 64, y2: 200, color: 0x1234_5678)
        var acc = rig.gpu.gtt.accessor()
        var polls = 0
        #expect(try !Blitter.colorBlt(b.dwords, &acc) { polls += 1; return polls == 2 })
        #expect(rig.u32(src.gm + 63 * 256) == 0x1234_5678)    // rows 0..<64 filled
        #expect(rig.u32(src.gm + 64 * 256) == 0)              // the rest not
        // Destination below the source: rows are copied top-down.
        var copy = CommandBuilder()
        copy.srcCopyBlt(dst: BlitSurface(gm: D, pitch: 256, width: 64, height: 200), x1: 0, y1: 0, x2: 64, y2: 200,
                        src: src, srcX: 0, srcY: 0)
        polls = 0
        #expect(try !Blitter.srcCopyBlt(copy.dwords, &acc) { polls += 1; return polls == 2 })
        #expect(rig.u32(D + 63 * 256) == 0x1234_5678)
        #expect(rig.u32(D + 64 * 256) == 0)
    }
}
