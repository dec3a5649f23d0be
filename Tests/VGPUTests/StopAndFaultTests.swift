import Glibc
import KVM
import Machine
import SoftGPU
import Testing
@testable import VGPU

extension Rig {
    /// Writes `dwords` into guest RAM at `gpa` (a ring or batch page the guest owns).
    func put(_ dwords: [UInt32], at gpa: UInt64) throws {
        for (i, d) in dwords.enumerated() { try context.memory.write(d, at: gpa + UInt64(i * 4)) }
    }

    /// Fills `count` floats of guest RAM at `gpa` with `value`.
    func fillFloats(_ gpa: UInt64, count: Int, _ value: Float) throws {
        let p = try context.memory.pointer(gpa, length: UInt64(count * 4)).assumingMemoryBound(to: Float.self)
        p.update(repeating: value, count: count)
    }

    func float(_ gpa: UInt64) throws -> Float { Float(bitPattern: try context.memory.read(UInt32.self, at: gpa)) }

    /// Polls `condition` every 100 µs for up to `seconds`; false on time-out.
    func waitFor(seconds: Double = 20, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        while ContinuousClock.now < deadline {
            if try condition() { return true }
            usleep(100)
        }
        return try condition()
    }
}

func milliseconds(_ d: Duration) -> Double {
    Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
}

/// RESET of a busy engine, rejected GTT entries behind rings, batches and operands, execution-time faults,
/// and the statistics block (docs/vgpu.md sections 3, 4, 7, 8).
@Suite("vGPU RESET, rejected GTT entries and faults (fake device context)", .serialized)
struct StopAndFaultTests {
    @Test func resetOfABusyEngineAbortsInsideSGEMMAndTheRecoveryRunsOnlyWhatComesNext() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        // A 2048 x 1024 x 1024 SGEMM (4 GFLOP, well over 100 ms on the software GPU) four times in one batch,
        // then a fence store; then a second fence store in the ring.
        let m: UInt32 = 2048, n: UInt32 = 1024, k: UInt32 = 1024
        let aGM = s.hidden.lowerBound, bGM = aGM + UInt64(m * k * 4), cGM = bGM + UInt64(k * n * 4)
        let aGPA = rig.back(gm: aGM, pages: Int(m * k / 1024))
        let bGPA = rig.back(gm: bGM, pages: Int(k * n / 1024))
        let cGPA = rig.back(gm: cGM, pages: Int(m * n / 1024))
        try rig.fillFloats(aGPA, count: Int(m * k), 1)
        try rig.fillFloats(bGPA, count: Int(k * n), 1)
        let fenceGM = s.hidden.lowerBound + (64 << 20)
        let fenceGPA = rig.back(gm: fenceGM, pages: 1)
        let batchGM = s.aperture.lowerBound + 0x10000
        let batchGPA = rig.back(gm: batchGM, pages: 1)
        var batch = CommandBuilder()
        for _ in 0..<4 {
            batch.sgemm(m: m, n: n, k: k, alpha: 1, beta: 1, a: aGM, lda: k, b: bGM, ldb: n, c: cGM, ldc: n)
        }
        batch.storeDataImm(gm: fenceGM, 1)
        batch.batchBufferEnd()
        try rig.put(batch.dwords, at: batchGPA)
        let ringGM = s.aperture.lowerBound
        let ring = rig.setUpRing(.rcs, gm: ringGM)
        var first = CommandBuilder()
        first.batchBufferStart(gm: batchGM, length: UInt32(batch.dwords.count * 4))
        first.storeDataImm(gm: fenceGM + 4, 2)
        first.alignToQword()
        try rig.put(first.dwords, at: ring)
        rig.w32(Reg.ringTail(.rcs), UInt32(first.dwords.count * 4))

        // Wait until the first SGEMM has written its first row block, then RESET.
        let lastC = cGPA + UInt64((m - 1) * n + (n - 1)) * 4
        #expect(try rig.waitFor { try rig.float(cGPA) != 0 }, "the SGEMM never started")
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusBusy != 0)
        let t0 = ContinuousClock.now
        rig.w32(Reg.reset(.rcs), 1)
        let resetTime = ContinuousClock.now - t0
        print("vGPU RESET of an engine busy in SGEMM: RESET write to idle in \(milliseconds(resetTime)) ms")

        // The engine is idle at once, the ring is cleared, the physical engine stopped inside the SGEMM.
        let status = rig.r32(Reg.status(.rcs))
        #expect(status & Reg.statusIdle != 0 && status & (Reg.statusBusy | Reg.statusError) == 0, "STATUS 0x\(String(status, radix: 16))")
        for r in [Reg.ringHead(.rcs), Reg.ringTail(.rcs), Reg.ringStart(.rcs), Reg.ringCtl(.rcs), Reg.errorCode(.rcs)] {
            #expect(rig.r32(r) == 0, "register 0x\(String(r, radix: 16)) after RESET")
        }
        #expect(rig.host.gpu.engine(.rcs).isIdle)
        #expect(try rig.float(lastC) == 0, "the first SGEMM ran to its end")
        #expect(milliseconds(resetTime) < 2000)
        // Nothing of the aborted job resumes later.
        usleep(300_000)
        #expect(try rig.float(lastC) == 0)
        #expect(try rig.context.memory.read(UInt32.self, at: fenceGPA) == 0)
        #expect(try rig.context.memory.read(UInt32.self, at: fenceGPA + 4) == 0)

        // The recovery recipe of docs/vgpu.md (section 8, step 8): program the ring again and submit.
        let submissionsBefore = rig.vgpu.statistics.submissions
        rig.w32(VGPURegs.errStatus, 1)
        rig.w32(Reg.ringStart(.rcs), UInt32(ringGM))
        rig.w32(Reg.ringHead(.rcs), 0)
        rig.w32(Reg.ringTail(.rcs), 0)
        rig.w32(Reg.ringCtl(.rcs), Reg.ringCtl(pages: 1))
        var next = CommandBuilder()
        next.storeDataImm(gm: fenceGM + 8, 3)
        try rig.submit(.rcs, ringGPA: ring, at: 0, next.dwords)
        #expect(try rig.context.memory.read(UInt32.self, at: fenceGPA + 8) == 3)
        #expect(rig.r32(Reg.ringHead(.rcs)) == 16)
        #expect(rig.r32(Reg.commandCount(.rcs)) == 1, "commands other than the one submitted ran")
        #expect(rig.vgpu.statistics.submissions == submissionsBefore + 1)
        #expect(try rig.context.memory.read(UInt32.self, at: fenceGPA) == 0)
        #expect(try rig.context.memory.read(UInt32.self, at: fenceGPA + 4) == 0)
        #expect(try rig.float(lastC) == 0)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusError == 0)
    }

    @Test func resetDropsAcceptedSubmissionsThatHaveNotRun() throws {
        // Two doorbells: the first runs a long SGEMM, the second (queued behind it) a fence store. RESET
        // during the first: the second never runs.
        let rig = try Rig()
        let s = rig.vgpu.slices
        let dim: UInt32 = 1024
        let aGM = s.hidden.lowerBound, cGM = aGM + UInt64(dim * dim * 4)
        let aGPA = rig.back(gm: aGM, pages: Int(dim))
        let cGPA = rig.back(gm: cGM, pages: Int(dim))
        try rig.fillFloats(aGPA, count: Int(dim * dim), 1)
        let fenceGM = s.hidden.lowerBound + (32 << 20)
        let fenceGPA = rig.back(gm: fenceGM, pages: 1)
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound)
        var long = CommandBuilder()
        for _ in 0..<8 { long.sgemm(m: dim, n: dim, k: dim, alpha: 1, beta: 1, a: aGM, lda: dim, b: aGM, ldb: dim, c: cGM, ldc: dim) }
        long.alignToQword()
        try rig.put(long.dwords, at: ring)
        rig.w32(Reg.ringTail(.rcs), UInt32(long.dwords.count * 4))
        var fence = CommandBuilder()
        fence.storeDataImm(gm: fenceGM, 1)
        try rig.put(fence.dwords, at: ring + UInt64(long.dwords.count * 4))
        rig.w32(Reg.ringTail(.rcs), UInt32((long.dwords.count + fence.dwords.count) * 4))
        #expect(try rig.waitFor { try rig.float(cGPA) != 0 }, "the SGEMM never started")
        rig.w32(Reg.reset(.rcs), 1)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusIdle != 0)
        usleep(300_000)
        #expect(try rig.context.memory.read(UInt32.self, at: fenceGPA) == 0, "a submission queued before RESET ran after it")
        #expect(rig.host.gpu.engine(.rcs).isIdle)
    }

    @Test func shutdownAbortsQueuedWorkPromptly() throws {
        // VM teardown with a long job on the engine and more queued: shutdown() returns within the bound.
        let host = GPUHost()
        let rig = try Rig(host: host)
        let s = rig.vgpu.slices
        let dim: UInt32 = 1024
        let aGM = s.hidden.lowerBound, cGM = aGM + UInt64(dim * dim * 4)
        let aGPA = rig.back(gm: aGM, pages: Int(dim))
        let cGPA = rig.back(gm: cGM, pages: Int(dim))
        try rig.fillFloats(aGPA, count: Int(dim * dim), 1)
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound)
        var tail: UInt32 = 0
        for _ in 0..<4 {
            var b = CommandBuilder()
            for _ in 0..<16 { b.sgemm(m: dim, n: dim, k: dim, alpha: 1, beta: 1, a: aGM, lda: dim, b: aGM, ldb: dim, c: cGM, ldc: dim) }
            b.alignToQword()
            try rig.put(b.dwords, at: ring + UInt64(tail))
            tail += UInt32(b.dwords.count * 4)
            rig.w32(Reg.ringTail(.rcs), tail)
        }
        #expect(try rig.waitFor { try rig.float(cGPA) != 0 }, "the SGEMM never started")
        let t0 = ContinuousClock.now
        rig.vgpu.shutdown()
        let d = ContinuousClock.now - t0
        print("vGPU shutdown with 64 SGEMMs 1024^3 queued: \(milliseconds(d)) ms")
        #expect(milliseconds(d) < 2000)
        #expect(host.gpu.engine(.rcs).isIdle)
    }

    @Test func ringsAndBatchesBehindRejectedEntriesAreRefused() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        // The ring's page names the MMIO hole: rejected. A submission from it is refused with reason 12.
        let ringGM = s.aperture.lowerBound
        rig.gttWrite(gm: ringGM, 0xd000_0000 | 1)
        rig.w32(Reg.ringStart(.rcs), UInt32(ringGM))
        rig.w32(Reg.ringHead(.rcs), 0)
        rig.w32(Reg.ringTail(.rcs), 0)
        rig.w32(Reg.ringCtl(.rcs), Reg.ringCtl(pages: 1))
        rig.w32(Reg.ringTail(.rcs), 16)
        #expect(rig.r32(VGPURegs.errStatus) == 1)
        #expect(rig.r32(VGPURegs.errReason) == RejectReason.unreadable.rawValue)
        #expect(UInt64(rig.r32(VGPURegs.errOperand)) == ringGM)
        #expect(rig.r32(Reg.errorCode(.rcs)) == VGPURegs.rejectedErrorBase + 12)
        #expect(rig.vgpu.statistics.submissions == 0)

        // A batch on a page beyond guest RAM (rejected), started from a good ring: reason 12, the batch's GM.
        rig.w32(Reg.reset(.rcs), 1)
        rig.w32(VGPURegs.errStatus, 1)
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound + 0x10000)
        let batchGM = s.hidden.lowerBound + 0x4000
        rig.gttWrite(gm: batchGM, (1 << 40) | 1)
        var start = CommandBuilder()
        start.batchBufferStart(gm: batchGM, length: 64)
        try rig.submit(.rcs, ringGPA: ring, at: 0, start.dwords)
        #expect(rig.r32(VGPURegs.errReason) == RejectReason.unreadable.rawValue)
        #expect(UInt64(rig.r32(VGPURegs.errOperand)) == batchGM)
        #expect(UInt64(rig.r32(VGPURegs.errCommandGM)) == s.aperture.lowerBound + 0x10000)
        #expect(rig.vgpu.statistics.submissions == 0)

        // A batch whose second page is rejected (the first is good RAM): refused too.
        rig.w32(Reg.reset(.rcs), 1)
        let ring2 = rig.setUpRing(.rcs, gm: s.aperture.lowerBound + 0x20000)
        let batch2GM = s.hidden.lowerBound + 0x10000
        rig.back(gm: batch2GM, pages: 1)
        rig.gttWrite(gm: batch2GM + 0x1000, 0xd000_0000 | 1)
        var start2 = CommandBuilder()
        start2.batchBufferStart(gm: batch2GM, length: 0x1008)
        try rig.submit(.rcs, ringGPA: ring2, at: 0, start2.dwords)
        #expect(rig.r32(VGPURegs.errReason) == RejectReason.unreadable.rawValue)
        #expect(UInt64(rig.r32(VGPURegs.errOperand)) == batch2GM)
        #expect(rig.vgpu.statistics.submissions == 0)
    }

    @Test func rejectedEntriesOfTwoVGPUsNeverSharePages() throws {
        // vGPU A fills a page behind a rejected entry; vGPU B copies from a page behind its own rejected
        // entry into good RAM. B must not see A's bytes (they used to share one GPU-wide scratch page).
        let host = GPUHost()
        let a = try Rig(host: host)
        let b = try Rig(host: host)
        let aPage = a.vgpu.slices.hidden.lowerBound
        a.gttWrite(gm: aPage, 0xd000_0000 | 1)
        let aRing = a.setUpRing(.bcs, gm: a.vgpu.slices.aperture.lowerBound)
        var fill = CommandBuilder()
        fill.colorBlt(dst: BlitSurface(gm: aPage, pitch: 4096, width: 1024, height: 1), x1: 0, y1: 0, x2: 1024, y2: 1,
                      color: 0xa5a5_a5a5)
        try a.submit(.bcs, ringGPA: aRing, at: 0, fill.dwords)
        #expect(a.r32(Reg.status(.bcs)) & Reg.statusError == 0, "A's fill failed: \(a.r32(Reg.errorCode(.bcs)))")
        #expect(a.vgpu.statistics.gttRejected == 1)

        let bPage = b.vgpu.slices.hidden.lowerBound
        b.gttWrite(gm: bPage, (1 << 40) | 1)
        let dstGM = b.vgpu.slices.hidden.lowerBound + 0x10000
        let dstGPA = b.back(gm: dstGM, pages: 1)
        try b.fillFloats(dstGPA, count: 1024, 1)
        let bRing = b.setUpRing(.bcs, gm: b.vgpu.slices.aperture.lowerBound)
        var copy = CommandBuilder()
        copy.srcCopyBlt(dst: BlitSurface(gm: dstGM, pitch: 4096, width: 1024, height: 1), x1: 0, y1: 0, x2: 1024, y2: 1,
                        src: BlitSurface(gm: bPage, pitch: 4096, width: 1024, height: 1), srcX: 0, srcY: 0)
        try b.submit(.bcs, ringGPA: bRing, at: 0, copy.dwords)
        #expect(b.r32(Reg.status(.bcs)) & Reg.statusError == 0, "B's copy failed: \(b.r32(Reg.errorCode(.bcs)))")
        let seen = try b.context.memory.readBytes(at: dstGPA, count: 4096)
        #expect(!seen.contains(0xa5), "vGPU B read vGPU A's writes through a rejected GTT entry")
        #expect(seen.allSatisfy { $0 == 0 }, "B's own scratch page should read as zeros")
        // The shadow entries of the two rejected pages name different pages, neither the GPU-wide scratch page.
        let ea = host.gpu.gtt.entry(Int(aPage >> 12)) & GTTEntry.addressMask
        let eb = host.gpu.gtt.entry(Int(bPage >> 12)) & GTTEntry.addressMask
        #expect(ea != eb)
        #expect(ea != SystemMemory.scratchPageAddress && eb != SystemMemory.scratchPageAddress)
    }

    @Test func executionFaultsFillTheFaultRegisters() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        rig.w32(Reg.imr, 0)
        rig.w32(Reg.ier, 0xffff_ffff)
        // SAXPY inside a batch, 8 bytes in; y lies in the slices but its page was never mapped (invalid
        // entry). The scanner accepts it (addresses are checked against the slices); the engine faults.
        let xGM = s.hidden.lowerBound, yGM = s.hidden.lowerBound + 0x20000
        rig.back(gm: xGM, pages: 1)
        let batchGM = s.hidden.lowerBound + 0x40000
        let batchGPA = rig.back(gm: batchGM, pages: 1)
        var batch = CommandBuilder()
        batch.noop(count: 2)
        batch.saxpy(n: 1024, a: 2, x: xGM, y: yGM)
        batch.batchBufferEnd()
        try rig.put(batch.dwords, at: batchGPA)
        let ringGM = s.aperture.lowerBound
        let ring = rig.setUpRing(.rcs, gm: ringGM)
        var good = CommandBuilder()
        good.noop(count: 2)
        try rig.submit(.rcs, ringGPA: ring, at: 0, good.dwords)    // one submission that completes: HEAD 8
        var start = CommandBuilder()
        start.batchBufferStart(gm: batchGM, length: UInt32(batch.dwords.count * 4))
        try rig.submit(.rcs, ringGPA: ring, at: 8, start.dwords)
        let status = rig.r32(Reg.status(.rcs))
        #expect(status & Reg.statusError != 0 && status & Reg.statusBusy == 0)
        #expect(rig.r32(Reg.errorCode(.rcs)) == EngineErrorCode.gttInvalidEntry.rawValue)
        #expect(UInt64(rig.r32(Reg.faultAddressLo(.rcs))) | UInt64(rig.r32(Reg.faultAddressHi(.rcs))) << 32 == yGM)
        #expect(UInt64(rig.r32(Reg.errorIPLo(.rcs))) | UInt64(rig.r32(Reg.errorIPHi(.rcs))) << 32 == batchGM + 8)
        #expect(rig.r32(Reg.ringHead(.rcs)) == 8, "HEAD stays at the start of the failed submission")
        #expect(rig.r32(Reg.iir) & Interrupt.rcsError != 0)
        #expect(rig.r32(Reg.isr) & Interrupt.rcsError != 0)
        #expect(rig.r32(VGPURegs.errStatus) == 0, "an execution fault is not a rejection")
        // RESET clears the fault registers.
        rig.w32(Reg.reset(.rcs), 1)
        for r in [Reg.errorCode(.rcs), Reg.faultAddressLo(.rcs), Reg.errorIPLo(.rcs)] { #expect(rig.r32(r) == 0) }
        #expect(rig.r32(Reg.isr) & Interrupt.rcsError == 0)
    }

    @Test func statisticsBlockCountsWhatTheGuideSays() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        var h: UInt16 = 1
        withUnsafeBytes(of: &h) { rig.vgpu.write(offset: UInt64(Reg.scratch(0)), data: $0) }   // bad size
        rig.w32(0x1_0000, 1)                                                                   // privileged
        rig.w32(Reg.priSurf, 0)                                                                // refused GM address
        rig.gttWrite(gm: s.aperture.lowerBound, 0xd000_0000 | 1)                               // rejected entry
        rig.gttWrite(gm: 0, 0x10_0000 | 1)                                                     // outside: dropped
        rig.gttWrite(gm: s.aperture.upperBound, 0x10_0000 | 1)
        #expect(rig.r32(VGPURegs.statBadAccess) == 1)
        #expect(rig.r32(VGPURegs.statPrivilegedWrites) == 1)
        #expect(rig.r32(VGPURegs.statRefusedAddress) == 1)
        #expect(rig.r32(VGPURegs.statGTTRejected) == 1)
        #expect(rig.r32(VGPURegs.statGTTDropped) == 2)
        #expect(try rig.storeThroughRCS(ringGM: s.aperture.lowerBound + 0x10000, fenceGM: s.hidden.lowerBound, value: 5) == 5)
        #expect(rig.r32(VGPURegs.statSubmissions) == 1)
        #expect(rig.r32(VGPURegs.statRejections) == 0)
        rig.w32(VGPURegs.statSubmissions, 0)    // read-only, and not a privileged write
        #expect(rig.r32(VGPURegs.statSubmissions) == 1)
        #expect(rig.r32(VGPURegs.statPrivilegedWrites) == 1)
    }
}
