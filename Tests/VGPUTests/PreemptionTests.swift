import Glibc
import SoftGPU
import Testing
@testable import VGPU

/// vGPUs sharing an engine under the weighted scheduler: each vGPU's engine context (GPRs) is its own, and a
/// long SGEMM is preempted between row blocks for another vGPU's work and resumed to the exact result.
@Suite("Per-vGPU engine context and preemption on a shared engine (fake device context)", .serialized)
struct PreemptionTests {
    static func gpr(_ i: UInt32) -> UInt32 { Reg.gpr(.rcs, dword: i) }

    static func lri(_ pairs: [(UInt32, UInt32)]) -> [UInt32] {
        var b = CommandBuilder()
        b.loadRegisterImm(pairs.map { (offset: $0.0, value: $0.1) })
        b.alignToQword()
        return b.dwords
    }

    /// Two vGPUs take turns on RCS, each loading its own GPRs with LOAD_REGISTER_IMM; each reads back only
    /// what its own commands (and its own MMIO writes) put there. (Before engine contexts, the MMIO view
    /// never saw a command's load, and the engine's GPRs were whatever the last vGPU left.)
    @Test func gprsAreSavedAndRestoredPerVGPUAcrossSwitches() throws {
        let host = GPUHost()
        let a = try Rig(host: host), b = try Rig(host: host)
        let aRing = a.setUpRing(.rcs, gm: a.vgpu.slices.aperture.lowerBound)
        let bRing = b.setUpRing(.rcs, gm: b.vgpu.slices.aperture.lowerBound)
        var at = (a: UInt32(0), b: UInt32(0))
        at.a = try a.submit(.rcs, ringGPA: aRing, at: at.a, Self.lri([(Self.gpr(0), 0xa0), (Self.gpr(1), 0xa1)]))
        at.b = try b.submit(.rcs, ringGPA: bRing, at: at.b, Self.lri([(Self.gpr(0), 0xb0)]))
        // A's MMIO write of GPR3 is its context too: loaded for its next pass, saved after it.
        a.w32(Self.gpr(3), 0xa3)
        at.a = try a.submit(.rcs, ringGPA: aRing, at: at.a, Self.lri([(Self.gpr(2), 0xa2)]))
        at.b = try b.submit(.rcs, ringGPA: bRing, at: at.b, Self.lri([(Self.gpr(1), 0xb1)]))
        _ = try a.submit(.rcs, ringGPA: aRing, at: at.a, Self.lri([(Self.gpr(4), 0xa4)]))
        #expect((0..<5).map { a.r32(Self.gpr($0)) } == [0xa0, 0xa1, 0xa2, 0xa3, 0xa4])
        #expect((0..<5).map { b.r32(Self.gpr($0)) } == [0xb0, 0xb1, 0, 0, 0])
        // RESET clears the vGPU's GPRs (its context), not the other's.
        a.w32(Reg.reset(.rcs), 1)
        #expect((0..<5).map { a.r32(Self.gpr($0)) } == [0, 0, 0, 0, 0])
        #expect(b.r32(Self.gpr(0)) == 0xb0)
    }

    /// B's long SGEMM (in a batch, after a GPR load) holds RCS; A's store arrives: the weighted scheduler
    /// preempts B's pass inside the SGEMM at the end of its slice, runs A's store, and resumes B exactly
    /// where it stopped: every element of C is right and B's GPRs are B's.
    @Test func aLongSGEMMIsPreemptedForAnotherVGPUAndResumesToTheExactResult() throws {
        let host = GPUHost()
        let log = PassLog()
        host.dispatcher(.rcs).setPolicy(RecordingPolicy(inner: WeightedPolicy(period: .milliseconds(4), minimumSlice: .milliseconds(1)), log: log))
        let a = try Rig(host: host), b = try Rig(host: host)
        let m: UInt32 = 2048, n: UInt32 = 512
        let job = try SharedEngineTests.sgemmJob(b, m: m, n: n) { $0.loadRegisterImm([(offset: Self.gpr(5), value: 0xb5)]) }
        let cGPA = job.c
        try b.put(job.dwords, at: job.ring)
        b.w32(Reg.ringTail(.rcs), UInt32(job.dwords.count * 4))
        #expect(try b.waitFor { try b.float(cGPA + UInt64(n - 1) * 4) != 0 }, "B's SGEMM never started")

        // A's store (and a GPR load of its own) while B's SGEMM runs.
        let aRing = a.setUpRing(.rcs, gm: a.vgpu.slices.aperture.lowerBound)
        let af = SharedEngineTests.fence(a, at: 0)
        let aWork = Self.lri([(Self.gpr(5), 0xa5)]) + SharedEngineTests.store(af.gm, 1)
        try a.put(aWork, at: aRing)
        a.w32(Reg.ringTail(.rcs), UInt32(aWork.count * 4))
        #expect(try a.waitFor { try a.context.memory.read(UInt32.self, at: af.gpa) == 1 })
        let bStillBusy = b.r32(Reg.status(.rcs)) & Reg.statusBusy != 0
        #expect(bStillBusy, "A's store waited for B's whole SGEMM: no preemption")

        #expect(b.waitFor { b.r32(Reg.status(.rcs)) & Reg.statusIdle != 0 })
        #expect(b.r32(Reg.status(.rcs)) & Reg.statusError == 0)
        #expect(b.r32(Reg.ringHead(.rcs)) == UInt32(job.dwords.count * 4))
        let c = try b.context.memory.pointer(cGPA, length: UInt64(m * n * 4)).assumingMemoryBound(to: Float.self)
        let wrong = (0..<Int(m * n)).filter { c[$0] != Float(n) }.count
        #expect(wrong == 0, "\(wrong) elements of C are not \(n) after the resumed SGEMM")
        #expect(b.r32(Self.gpr(5)) == 0xb5)
        #expect(a.r32(Self.gpr(5)) == 0xa5)
        let (ia, ib) = (a.vgpu.id, b.vgpu.id)
        let starts = log.all.filter { $0.hasPrefix("start") }
        #expect(Array(starts.prefix(3)) == ["start \(ib)", "start \(ia)", "start \(ib)"], "\(log.all)")
        #expect(log.all.contains("end \(ib) 0 true"), "B's first pass was not preempted: \(log.all)")
        #expect(log.all.contains("end \(ib) 1 true"), "B's resumed pass did not complete its submission: \(log.all)")
    }
}
