import Glibc
import SoftGPU
import Synchronization
import Testing
@testable import VGPU

/// The GPU watchdog and the per-vGPU reset after a hang; the guest's device-level reset
/// (docs/vgpu.md section 4, "Hangs" and "Device reset"); trace events of both.
@Suite("vGPU hang recovery and device reset (fake device context)", .serialized)
struct HangRecoveryTests {
    /// A batch of `count` 1024 x 1024 x 1024 SGEMMs (2 GFLOP each, far over 100 ms together on the
    /// software GPU) in `rig`'s hidden slice, then a fence store of 7; returns the ring dwords, the ring's GPA
    /// and the fence's GPA.
    static func longJob(_ rig: Rig, count: Int, n: UInt32 = 1024) throws -> (ring: UInt64, dwords: [UInt32], fence: UInt64) {
        let s = rig.vgpu.slices
        let aGM = s.hidden.lowerBound, bGM = aGM + UInt64(n * n * 4), cGM = bGM + UInt64(n * n * 4)
        let aGPA = rig.back(gm: aGM, pages: Int(n * n / 1024)), bGPA = rig.back(gm: bGM, pages: Int(n * n / 1024))
        rig.back(gm: cGM, pages: Int(n * n / 1024))
        try rig.fillFloats(aGPA, count: Int(n * n), 1)
        try rig.fillFloats(bGPA, count: Int(n * n), 1)
        let fenceGM = s.hidden.lowerBound + (64 << 20)
        let fenceGPA = rig.back(gm: fenceGM, pages: 1)
        let batchGM = s.aperture.lowerBound + 0x10000
        let batchGPA = rig.back(gm: batchGM, pages: 4)
        var batch = CommandBuilder()
        for _ in 0..<count { batch.sgemm(m: n, n: n, k: n, alpha: 1, beta: 1, a: aGM, lda: n, b: bGM, ldb: n, c: cGM, ldc: n) }
        batch.storeDataImm(gm: fenceGM, 7)
        batch.batchBufferEnd()
        try rig.put(batch.dwords, at: batchGPA)
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound)
        var r = CommandBuilder()
        r.batchBufferStart(gm: batchGM, length: UInt32(batch.dwords.count * 4))
        r.alignToQword()
        return (ring, r.dwords, fenceGPA)
    }

    /// Programs the RCS ring again (docs/vgpu.md section 8, step 5) and runs a fence store of `value`.
    static func recoverAndStore(_ rig: Rig, ring: UInt64, value: UInt32) throws -> UInt32 {
        let s = rig.vgpu.slices
        rig.w32(Reg.ringStart(.rcs), UInt32(s.aperture.lowerBound))
        rig.w32(Reg.ringHead(.rcs), 0)
        rig.w32(Reg.ringTail(.rcs), 0)
        rig.w32(Reg.ringCtl(.rcs), Reg.ringCtl(pages: 1))
        let fenceGM = s.hidden.lowerBound + (65 << 20)
        let fenceGPA = rig.back(gm: fenceGM, pages: 1)
        var b = CommandBuilder()
        b.storeDataImm(gm: fenceGM, value)
        try rig.submit(.rcs, ringGPA: ring, at: 0, b.dwords)
        return try rig.context.memory.read(UInt32.self, at: fenceGPA)
    }

    @Test func theWatchdogResetsTheHungVGPUAloneAndItWorksAgainAfterTheRecipe() throws {
        let trace = GPUTrace()
        let host = GPUHost(hangLimit: .milliseconds(100))
        let hung = try Rig(host: host, trace: trace), other = try Rig(host: host, trace: trace)
        hung.w32(Reg.imr, 0)
        hung.w32(Reg.ier, VGPURegs.rcsHang)
        let job = try Self.longJob(hung, count: 64)
        try hung.put(job.dwords, at: job.ring)
        hung.w32(Reg.ringTail(.rcs), UInt32(job.dwords.count * 4))

        // The other vGPU's work queues behind the hung pass and runs once the watchdog has reset it.
        let otherValue = try other.storeThroughRCS(ringGM: other.vgpu.slices.aperture.lowerBound,
                                                   fenceGM: other.vgpu.slices.hidden.lowerBound, value: 5)
        #expect(otherValue == 5, "the other vGPU's work did not run after the hang")

        #expect(hung.waitFor { hung.vgpu.resets.hangs == 1 }, "the watchdog never reset the hung vGPU")
        let report = try #require(hung.vgpu.hangReports.first)
        print("vGPU hang: watchdog limit 100 ms, reset \(milliseconds(report.timeToReset)) ms after the limit "
              + "(noticed after \(milliseconds(report.detected - report.limitExceeded)) ms)")
        #expect(report.engine == .rcs && report.submission == 1)
        #expect(report.timeToReset < .seconds(2))
        // The guest's view: the hang interrupt, the error block, an idle engine with a disabled ring.
        #expect(hung.r32(Reg.iir) & VGPURegs.rcsHang != 0)
        #expect(hung.r32(VGPURegs.errStatus) == VGPURegs.errStatusHang)
        #expect(hung.r32(VGPURegs.errReason) == VGPURegs.hangReason)
        #expect(hung.r32(VGPURegs.errEngine) == 0)
        #expect(UInt64(hung.r32(VGPURegs.errCommandGM)) == hung.vgpu.slices.aperture.lowerBound)
        #expect(hung.r32(VGPURegs.errOperand) >= 100_000, "ERR_OPERAND: microseconds held")
        #expect(hung.r32(VGPURegs.errHangCount) == 1)
        #expect(hung.r32(VGPURegs.errCount) == 0, "a hang is not a rejection")
        let status = hung.r32(Reg.status(.rcs))
        #expect(status & Reg.statusIdle != 0 && status & (Reg.statusBusy | Reg.statusRingEnabled | Reg.statusError) == 0)
        #expect(hung.r32(Reg.ringCtl(.rcs)) == 0)
        #expect(try hung.context.memory.read(UInt32.self, at: job.fence) == 0, "the hung batch ran to its end")
        #expect(other.vgpu.resets.hangs == 0 && other.r32(VGPURegs.errStatus) == 0)

        // Recovery: clear the error block and the interrupt, program the ring again, submit.
        hung.w32(VGPURegs.errStatus, VGPURegs.errStatusHang)
        hung.w32(Reg.iir, VGPURegs.rcsHang)
        #expect(try Self.recoverAndStore(hung, ring: job.ring, value: 9) == 9)
        #expect(hung.r32(VGPURegs.errStatus) == 0)
        #expect(hung.vgpu.resets.hangs == 1)

        // The trace: the hung turn ended as "hang", the other vGPU's turn completed, one hang instant.
        let events = trace.events
        #expect(events.contains { $0.kind == .turn(.hang) && $0.vgpu == hung.vgpu.id })
        #expect(events.contains { $0.kind == .turn(.completed) && $0.vgpu == other.vgpu.id })
        #expect(events.filter { $0.kind == .instant && $0.name == "hang" }.map(\.vgpu) == [hung.vgpu.id])
    }

    @Test func workWithinTheLimitIsNotReset() throws {
        // No limit at all: the same kind of job runs to its end (a short one: two 256 x 256 x 256 SGEMMs).
        let host = GPUHost(hangLimit: nil)
        let rig = try Rig(host: host)
        let job = try Self.longJob(rig, count: 2, n: 256)
        try rig.submit(.rcs, ringGPA: job.ring, at: 0, job.dwords)
        #expect(try rig.context.memory.read(UInt32.self, at: job.fence) == 7)
        #expect(rig.vgpu.resets.hangs == 0 && rig.r32(VGPURegs.errStatus) == 0)
    }

    @Test func deviceResetStopsBothEnginesClearsInterruptsAndErrorsAndKeepsTheGTT() throws {
        let trace = GPUTrace()
        let rig = try Rig(host: GPUHost(hangLimit: nil), trace: trace)
        rig.w32(Reg.imr, 0)
        rig.w32(Reg.ier, 0x0707)
        // A rejected BCS submission fills the error block.
        let bcsRing = rig.setUpRing(.bcs, gm: rig.vgpu.slices.aperture.lowerBound + 0x8000)
        try rig.put([0xffff_ffff, 0], at: bcsRing)
        rig.w32(Reg.ringTail(.bcs), 8)
        #expect(rig.r32(VGPURegs.errStatus) == VGPURegs.errStatusRejected)
        let job = try Self.longJob(rig, count: 64)
        try rig.put(job.dwords, at: job.ring)
        rig.w32(Reg.ringTail(.rcs), UInt32(job.dwords.count * 4))
        #expect(rig.waitFor { rig.host.gpu.engine(.rcs).commandsExecuted > 0 }, "the job never started")
        let gttBefore = rig.gttRead(gm: rig.vgpu.slices.aperture.lowerBound)

        let t0 = ContinuousClock.now
        rig.w32(VGPURegs.pvDeviceReset, 1)
        print("vGPU device reset during SGEMM: \(milliseconds(ContinuousClock.now - t0)) ms")
        #expect(rig.host.gpu.engine(.rcs).isIdle)
        for e in EngineID.allCases {
            for r in [Reg.ringHead(e), Reg.ringTail(e), Reg.ringStart(e), Reg.ringCtl(e), Reg.errorCode(e)] {
                #expect(rig.r32(r) == 0, "register 0x\(String(r, radix: 16)) after the device reset")
            }
            #expect(rig.r32(Reg.status(e)) == Reg.statusIdle)
        }
        #expect(rig.r32(Reg.iir) == 0 && rig.r32(Reg.ier) == 0 && rig.r32(Reg.imr) == 0xffff_ffff && rig.r32(Reg.isr) == 0)
        #expect(rig.r32(VGPURegs.errStatus) == 0 && rig.r32(VGPURegs.errReason) == 0)
        #expect(rig.r32(VGPURegs.errCount) == 1, "ERR_COUNT counts on")
        #expect(rig.gttRead(gm: rig.vgpu.slices.aperture.lowerBound) == gttBefore, "the GTT stays")
        #expect(rig.r32(VGPURegs.pvDeviceReset) == 0)
        usleep(100_000)
        #expect(try rig.context.memory.read(UInt32.self, at: job.fence) == 0, "the aborted job ran on")
        #expect(try Self.recoverAndStore(rig, ring: job.ring, value: 3) == 3)
        #expect(rig.vgpu.resets.device == 1)
        #expect(trace.events.contains { $0.kind == .instant && $0.name == "device reset" })
        #expect(trace.events.contains { $0.kind == .instant && $0.name == "rejected" && $0.engine == .bcs })
        #expect(trace.events.contains { $0.kind == .turn(.aborted) && $0.engine == .rcs })
    }
}

/// The watchdog's decisions, with fake clients and no GPU.
@Suite("GPU watchdog decisions (fake clients)")
struct WatchdogTests {
    final class FakeClient: WatchdogClient, @unchecked Sendable {
        let running: RunningSubmission?
        let verdicts = Mutex<[(EngineID, UInt64)]>([])
        init(_ running: RunningSubmission?) { self.running = running }
        func runningSubmission(on e: EngineID, now: ContinuousClock.Instant) -> RunningSubmission? { e == .rcs ? running : nil }
        func hung(on e: EngineID, _ s: RunningSubmission, limit: Duration, exceededAt: ContinuousClock.Instant) {
            verdicts.withLock { $0.append((e, s.submission)) }
        }
    }

    @Test func onlyASubmissionPastTheLimitIsReportedAndTheSleepIsBounded() throws {
        let w = try GPUWatchdog(limit: .milliseconds(500))
        let now = ContinuousClock.now
        let old = FakeClient(RunningSubmission(submission: 3, since: now - .milliseconds(600), pass: 1))
        let young = FakeClient(RunningSubmission(submission: 4, since: now - .milliseconds(100), pass: 1))
        let idle = FakeClient(nil)
        let sleep = w.look([old, young, idle], limit: .milliseconds(500))
        #expect(old.verdicts.withLock { $0.map(\.1) } == [3])
        #expect(young.verdicts.withLock { $0.isEmpty } && idle.verdicts.withLock { $0.isEmpty })
        #expect(sleep == .zero, "after a reset the watchdog looks again at once")
        let next = w.look([young, idle], limit: .milliseconds(500))
        #expect(next == GPUWatchdog.tick(for: .milliseconds(500)))
        #expect(w.look([idle], limit: .milliseconds(500)) == nil, "no work on any engine: sleep until notified")
        #expect(GPUWatchdog.tick(for: .milliseconds(20)) == .milliseconds(5))
        #expect(GPUWatchdog.tick(for: .seconds(10)) == GPUWatchdog.maximumTick)
        w.stop()
    }
}
