import Glibc
import Testing
@testable import SoftGPU

private let D = Rig.dataGM

/// Suspend and resume (`Engine.suspend`, `saveContext`, `restoreContext`): work parked at a command
/// boundary, inside SGEMM and SAXPY between row blocks and inside a second-level batch, resumes exactly
/// where it stopped after another context used the engine, and the GPRs travel with the context.
@Suite("Engine context switches: suspend at command boundaries, resume exactly", .serialized)
struct ContextSwitchTests {
    /// Programs `e`'s ring at `gm` (one page in the data buffer) with `dwords` and rings the doorbell.
    static func runRing(_ rig: Rig, _ e: EngineID, gm: UInt64, _ dwords: [UInt32]) {
        for (i, d) in dwords.enumerated() { rig.setU32(gm + UInt64(i * 4), d) }
        rig.gpu.engine(e).configureRing(start: UInt32(gm), pages: 1)
        rig.gpu.submit(e, tail: UInt32(dwords.count * 4))
    }

    static func gpr(_ i: UInt32) -> UInt32 { Reg.gpr(.rcs, dword: i) }

    @Test func sgemmInANestedBatchAndSAXPYInTheRingResumeExactlyAfterAnotherContextRan() throws {
        let rig = try Rig(sgemmOnBLAS: false)   // the SIMD kernel stops every 16 rows: room to stop inside
        let engine = rig.gpu.engine(.rcs)
        let m = 96, n = 64, k = 288
        let aGM = D + 0x100000, bGM = D + 0x180000, cGM = D + 0x200000
        let xGM = D + 0x300000, yGM = D + 0x460000, sn = 5 * Compute.saxpyBlock + 123   // 0x1401ec bytes each
        let fences = D + 0x5e0000
        let a = randomFloats(m * k, seed: 1), b = randomFloats(k * n, seed: 2), c0 = randomFloats(m * n, seed: 3)
        let x = randomFloats(sn, seed: 4), y = randomFloats(sn, seed: 5)
        rig.setFloats(aGM, a); rig.setFloats(bGM, b); rig.setFloats(cGM, c0)
        rig.setFloats(xGM, x); rig.setFloats(yGM, y)
        rig.fill32(fences, count: 4, 0)

        // The reference: the same kernels, uninterrupted.
        var cRef = c0
        a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in cRef.withUnsafeMutableBufferPointer { cp in
            _ = Kernels.sgemmSIMD(m: m, n: n, k: k, alpha: 0.75, a: ap.baseAddress!, lda: k, b: bp.baseAddress!, ldb: n,
                                  beta: -0.5, c: cp.baseAddress!, ldc: n)
        } } }
        var yRef = y
        x.withUnsafeBufferPointer { xp in yRef.withUnsafeMutableBufferPointer { yp in
            Kernels.saxpy(n: sn, a: 1.5, x: xp.baseAddress!, y: yp.baseAddress!)
        } }

        // Ring: LRI GPR0/1; BB_START level 1 -> { STORE 1; BB_START level 2 -> { SGEMM; BB_END }; STORE 2; BB_END };
        // SAXPY (in the ring); STORE 3.
        let l2GM = D + 0x5b0000, l1GM = D + 0x5b8000, ringGM = D + 0x5c0000, otherRingGM = D + 0x5d0000
        var l2 = CommandBuilder()
        l2.sgemm(m: UInt32(m), n: UInt32(n), k: UInt32(k), alpha: 0.75, beta: -0.5, a: aGM, lda: UInt32(k), b: bGM, ldb: UInt32(n), c: cGM, ldc: UInt32(n))
        l2.batchBufferEnd()
        var l1 = CommandBuilder()
        l1.storeDataImm(gm: fences, 1)
        l1.batchBufferStart(gm: l2GM, length: UInt32(l2.dwords.count * 4), secondLevel: true)
        l1.storeDataImm(gm: fences + 4, 2)
        l1.batchBufferEnd()
        for (i, d) in l2.dwords.enumerated() { rig.setU32(l2GM + UInt64(i * 4), d) }
        for (i, d) in l1.dwords.enumerated() { rig.setU32(l1GM + UInt64(i * 4), d) }
        var ring = CommandBuilder()
        ring.loadRegisterImm([(Self.gpr(0), 0x1111_2222), (Self.gpr(1), 0x3333_4444)])
        ring.batchBufferStart(gm: l1GM, length: UInt32(l1.dwords.count * 4))
        ring.saxpy(n: UInt32(sn), a: 1.5, x: xGM, y: yGM)
        ring.storeDataImm(gm: fences + 8, 3)
        ring.alignToQword()
        Self.runRing(rig, .rcs, gm: ringGM, ring.dwords)

        // Suspend it again and again; between two turns another context clobbers the GPRs and runs a SAXPY
        // of its own on the same engine.
        var suspensions = 0, insideSGEMM = 0, insideSAXPY = 0
        var context: EngineContext? = nil
        var result = EngineWaitResult.timedOut
        for turn in 0..<5_000 {
            if let c = context { engine.restoreContext(c) }
            usleep(turn < 4 ? 0 : 1000)
            engine.suspend()
            result = engine.waitIdle(timeout: 30)
            let saved = engine.saveContext()
            guard result == .suspended else { break }
            suspensions += 1
            #expect(saved.gprs[0] == 0x1111_2222 || saved.gprs[0] == 0, "the GPRs travel with the context: \(saved.gprs[0])")
            if let x = saved.execution {
                if x.partial?.command.first == CommandTable.info(.sgemm).header(dwords: 15) { insideSGEMM += 1 }
                if x.partial?.command.first == CommandTable.info(.saxpy).header(dwords: 7) { insideSAXPY += 1 }
            }
            context = saved
            // Another context: GPR0 = 0xdead, a small SAXPY elsewhere.
            var other = CommandBuilder()
            other.loadRegisterImm([(Self.gpr(0), 0xdead)])
            other.saxpy(n: 1000, a: 2, x: D + 0x600000, y: D + 0x610000)
            other.alignToQword()
            engine.restoreContext(EngineContext())
            Self.runRing(rig, .rcs, gm: otherRingGM, other.dwords)
            #expect(engine.waitIdle(timeout: 30) == .idle)
            #expect(engine.saveContext().gprs[0] == 0xdead)
        }
        #expect(result == .idle)
        #expect(engine.lastError == nil)
        #expect(suspensions >= 3, "the work was never suspended more than \(suspensions) times")
        #expect(insideSGEMM >= 1, "no suspension landed inside the SGEMM (\(suspensions) suspensions)")
        #expect(insideSAXPY >= 1 || sn <= Compute.saxpyBlock, "no suspension landed inside the SAXPY")
        // Bit-identical to the uninterrupted kernels, every command ran once, in order.
        let sameC = rig.floats(cGM, m * n) == cRef, sameY = rig.floats(yGM, sn) == yRef
        #expect(sameC, "SGEMM's result differs from the uninterrupted kernel's")
        #expect(sameY, "SAXPY's result differs from the uninterrupted kernel's")
        #expect((0..<3).map { rig.u32(fences + UInt64($0 * 4)) } == [1, 2, 3])
        let final = engine.saveContext()
        #expect(final.execution == nil)
        #expect(Array(final.gprs[0..<2]) == [0x1111_2222, 0x3333_4444])
    }

    /// A suspension request that comes after the work ended leaves nothing behind: the next context's work
    /// runs to its end.
    @Test func aLateSuspensionDoesNotLeakIntoTheNextContext() throws {
        let rig = try Rig()
        let engine = rig.gpu.engine(.rcs)
        var b = CommandBuilder()
        b.storeDataImm(gm: D, 7)
        b.alignToQword()
        Self.runRing(rig, .rcs, gm: D + 0x5a0000, b.dwords)
        #expect(engine.waitIdle(timeout: 30) == .idle)
        engine.suspend()   // too late: nothing runs
        #expect(engine.saveContext().execution == nil)
        var s = CommandBuilder()
        s.saxpy(n: UInt32(4 * Compute.saxpyBlock), a: 1, x: D + 0x100000, y: D + 0x200000)
        s.storeDataImm(gm: D + 4, 8)
        s.alignToQword()
        Self.runRing(rig, .rcs, gm: D + 0x5b0000, s.dwords)
        #expect(engine.waitIdle(timeout: 30) == .idle)
        #expect(rig.u32(D + 4) == 8)
    }
}
