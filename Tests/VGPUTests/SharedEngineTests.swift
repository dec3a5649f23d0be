import Glibc
import SoftGPU
import Testing
@testable import VGPU

/// Two vGPUs on one GPU, their work run by the engine's dispatcher; and the virtual display's flips.
@Suite("vGPUs sharing an engine through its dispatcher; virtual flips (fake device context)", .serialized)
struct SharedEngineTests {
    /// An SGEMM job in `rig`'s hidden slice (m x n x n, A and B all ones, beta 0: every C element = n) in a
    /// batch; returns the ring's GPA, the dwords to submit and C's GPA.
    /// `before` adds commands to the batch ahead of the SGEMM.
    static func sgemmJob(_ rig: Rig, m: UInt32, n: UInt32,
                         before: (inout CommandBuilder) -> Void = { _ in }) throws -> (ring: UInt64, dwords: [UInt32], c: UInt64) {
        let s = rig.vgpu.slices
        let aGM = s.hidden.lowerBound, bGM = aGM + UInt64(m * n * 4), cGM = bGM + UInt64(n * n * 4)
        let aGPA = rig.back(gm: aGM, pages: Int(m * n / 1024)), bGPA = rig.back(gm: bGM, pages: Int(n * n / 1024))
        let cGPA = rig.back(gm: cGM, pages: Int(m * n / 1024))
        try rig.fillFloats(aGPA, count: Int(m * n), 1)
        try rig.fillFloats(bGPA, count: Int(n * n), 1)
        let batchGM = s.aperture.lowerBound + 0x10000
        let batchGPA = rig.back(gm: batchGM, pages: 1)
        var batch = CommandBuilder()
        before(&batch)
        batch.sgemm(m: m, n: n, k: n, alpha: 1, beta: 0, a: aGM, lda: n, b: bGM, ldb: n, c: cGM, ldc: n)
        batch.batchBufferEnd()
        try rig.put(batch.dwords, at: batchGPA)
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound)
        var r = CommandBuilder()
        r.batchBufferStart(gm: batchGM, length: UInt32(batch.dwords.count * 4))
        r.alignToQword()
        return (ring, r.dwords, cGPA)
    }

    /// A store of `value` to a fresh fence page, as ring dwords.
    static func fence(_ rig: Rig, at offset: UInt64) -> (gpa: UInt64, gm: UInt64) {
        let gm = rig.vgpu.slices.hidden.lowerBound + (32 << 20) + offset
        return (rig.back(gm: gm, pages: 1), gm)
    }

    static func store(_ gm: UInt64, _ v: UInt32) -> [UInt32] {
        var b = CommandBuilder()
        b.storeDataImm(gm: gm, v)
        b.alignToQword()
        return b.dwords
    }

    /// While B's long pass holds the engine, A and then B and then A ring: FIFO runs A's two (one pass)
    /// before B's second, whose doorbell came between them.
    @Test func twoVGPUsInterleaveInArrivalOrder() throws {
        let host = GPUHost()
        let log = PassLog()
        host.dispatcher(.rcs).setPolicy(RecordingPolicy(inner: FIFOPolicy(), log: log))
        let a = try Rig(host: host), b = try Rig(host: host)
        let job = try Self.sgemmJob(b, m: 1024, n: 512)
        try b.put(job.dwords, at: job.ring)
        b.w32(Reg.ringTail(.rcs), UInt32(job.dwords.count * 4))
        #expect(try b.waitFor { try b.float(job.c) != 0 }, "B's SGEMM never started")
        let aRing = a.setUpRing(.rcs, gm: a.vgpu.slices.aperture.lowerBound)
        let af = Self.fence(a, at: 0), bf = Self.fence(b, at: 0)
        let a1 = Self.store(af.gm, 1), a2 = Self.store(af.gm + 4, 2), b2 = Self.store(bf.gm, 3)
        try a.put(a1 + a2, at: aRing)
        a.w32(Reg.ringTail(.rcs), UInt32(a1.count * 4))
        try b.put(b2, at: job.ring + UInt64(job.dwords.count * 4))
        b.w32(Reg.ringTail(.rcs), UInt32((job.dwords.count + b2.count) * 4))
        a.w32(Reg.ringTail(.rcs), UInt32((a1.count + a2.count) * 4))
        #expect(try a.waitFor { try a.context.memory.read(UInt32.self, at: af.gpa + 4) == 2 })
        #expect(try b.waitFor { try b.context.memory.read(UInt32.self, at: bf.gpa) == 3 })
        #expect(try b.float(job.c + UInt64(1024 * 512 - 1) * 4) == 512)
        let starts = log.all.filter { $0.hasPrefix("start") }
        let (ia, ib) = (a.vgpu.id, b.vgpu.id)
        #expect(starts == ["start \(ib)", "start \(ia)", "start \(ib)"], "\(log.all)")
        #expect(log.all.contains("end \(ia) 2 true"), "A's two submissions ran in one pass: \(log.all)")
    }

    /// RESET of vGPU A while B's pass runs on the shared engine drops A's queued work and leaves B's pass
    /// (and its result) intact: only a vGPU's own pass is ever aborted.
    @Test func resetOfOneVGPUWhileTheOthersPassRunsLeavesTheOthersWorkIntact() throws {
        let host = GPUHost()
        let a = try Rig(host: host), b = try Rig(host: host)
        let job = try Self.sgemmJob(b, m: 1024, n: 512)
        try b.put(job.dwords, at: job.ring)
        b.w32(Reg.ringTail(.rcs), UInt32(job.dwords.count * 4))
        #expect(try b.waitFor { try b.float(job.c) != 0 }, "B's SGEMM never started")
        // A queues a store behind B's pass, then RESETs.
        let aRing = a.setUpRing(.rcs, gm: a.vgpu.slices.aperture.lowerBound)
        let af = Self.fence(a, at: 0)
        let a1 = Self.store(af.gm, 1)
        try a.put(a1, at: aRing)
        a.w32(Reg.ringTail(.rcs), UInt32(a1.count * 4))
        #expect(a.r32(Reg.status(.rcs)) & Reg.statusBusy != 0, "A's store should wait behind B's pass")
        let bBusy = b.r32(Reg.status(.rcs)) & Reg.statusBusy != 0
        a.w32(Reg.reset(.rcs), 1)
        #expect(a.r32(Reg.status(.rcs)) & Reg.statusIdle != 0)
        // B's pass runs to its end: every element of C, no error, HEAD past the submission.
        #expect(b.waitFor { b.r32(Reg.status(.rcs)) & Reg.statusIdle != 0 })
        #expect(b.r32(Reg.status(.rcs)) & Reg.statusError == 0)
        #expect(b.r32(Reg.ringHead(.rcs)) == UInt32(job.dwords.count * 4))
        let c = try b.context.memory.pointer(job.c, length: UInt64(1024 * 512 * 4)).assumingMemoryBound(to: Float.self)
        #expect((0..<(1024 * 512)).allSatisfy { c[$0] == 512 }, "B's SGEMM was cut short")
        #expect(bBusy, "B's pass had ended before A's RESET: the test did not overlap them")
        usleep(50_000)
        #expect(try a.context.memory.read(UInt32.self, at: af.gpa) == 0, "A's dropped work ran")
        // A's engine works again after the recovery recipe.
        #expect(try a.storeThroughRCS(ringGM: a.vgpu.slices.aperture.lowerBound + 0x100000,
                                       fenceGM: a.vgpu.slices.hidden.lowerBound + (48 << 20), value: 7) == 7)
    }

    /// docs/vgpu.md section 4: FLIP_DONE follows at the next virtual vblank, at once while PIPE_CONF is off.
    /// (The vGPU used to keep such a flip armed until the pipe was on and a vblank came.)
    @Test func aFlipWhileThePipeIsOffCompletesAtOnce() throws {
        let rig = try Rig()
        let surface = UInt32(rig.vgpu.slices.aperture.lowerBound)
        rig.w32(Reg.imr, 0)
        rig.w32(Reg.ier, Interrupt.flipDone | Interrupt.cursorFlipDone)
        rig.w32(Reg.priSurf, surface)
        #expect(rig.r32(Reg.flipCount) == 1)
        #expect(rig.r32(Reg.iir) & Interrupt.flipDone != 0)
        // A DISPLAY_FLIP in a submission, pipe off: done when the submission completes.
        rig.w32(Reg.iir, 0xffff_ffff)
        let ring = rig.setUpRing(.rcs, gm: rig.vgpu.slices.aperture.lowerBound + 0x100000)
        var b = CommandBuilder()
        b.displayFlip(plane: .cursor, gm: UInt64(surface))
        try rig.submit(.rcs, ringGPA: ring, at: 0, b.dwords)
        #expect(rig.r32(Reg.cursorFlipCount) == 1)
        #expect(rig.r32(Reg.iir) & Interrupt.cursorFlipDone != 0)
        // Pipe on: armed until the vblank.
        rig.w32(Reg.pipeConf, Reg.pipeConfEnable)
        let vblanks = rig.r32(Reg.vblankCount)
        rig.w32(Reg.priSurf, surface)
        let flips = rig.r32(Reg.flipCount)
        #expect(flips == 1 || rig.r32(Reg.vblankCount) != vblanks, "completed without a vblank")
        #expect(rig.waitFor { rig.r32(Reg.flipCount) == 2 })
        #expect(rig.r32(Reg.vblankCount) > vblanks)
        rig.w32(Reg.pipeConf, 0)
    }
}
