import TestSupport
import Glibc
import KVM
import Machine
import SoftGPU
import Testing
@testable import VGPU

extension Rig {
    /// Writes exactly `dwords` into the ring at byte `at`, rings the trapped TAIL doorbell with the end of
    /// them and waits (bounded) until the mediator has consumed it. Returns the new tail.
    @discardableResult
    func submitExactly(_ e: EngineID, ringGPA: UInt64, at: UInt32, _ dwords: [UInt32]) throws -> UInt32 {
        for (i, d) in dwords.enumerated() { try context.memory.write(d, at: ringGPA + UInt64(at) + UInt64(i * 4)) }
        let tail = at + UInt32(dwords.count * 4)
        w32(Reg.ringTail(e), tail)
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            let status = r32(Reg.status(e))
            if status & Reg.statusBusy == 0 && (r32(Reg.ringHead(e)) == tail || status & Reg.statusError != 0) { return tail }
            usleep(200)
        }
        Issue.record("submission on \(e) did not complete")
        return tail
    }
}

/// docs/vgpu.md section 7: HEAD may be any dword inside the ring, TAIL must be qword aligned. A fragment that
/// starts at HEAD 4 mod 8 therefore holds an odd number of dwords; the mediator must still run it (it pads
/// the physical ring) instead of failing with engine error 17 (invalid ring state).
@Suite("vGPU ring HEAD at a dword that is not a qword", .serialized)
struct RingHeadAlignmentTests {
    @Test func fragmentsOfAnOddNumberOfDwordsRun() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound)
        let fenceGM = s.hidden.lowerBound
        let fence = rig.back(gm: fenceGM, pages: 1)
        rig.w32(Reg.ringHead(.rcs), 4)
        #expect(rig.r32(Reg.ringHead(.rcs)) == 4)

        // The finding: HEAD 4, TAIL 8, one NOOP.
        var noop = CommandBuilder()
        noop.noop()
        try rig.submitExactly(.rcs, ringGPA: ring, at: 4, noop.dwords)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusError == 0, "engine error \(rig.r32(Reg.errorCode(.rcs)))")
        #expect(rig.r32(Reg.ringHead(.rcs)) == 8)
        #expect(rig.r32(Reg.commandCount(.rcs)) == 1)

        // Back to HEAD 4 mod 8: STORE_DATA_IMM + NOOP (5 dwords) from byte 12 to 32.
        rig.w32(Reg.ringHead(.rcs), 12)
        rig.w32(Reg.ringTail(.rcs), 12)
        var store = CommandBuilder()
        store.storeDataImm(gm: fenceGM, 0x600d_f00d)
        store.noop()
        try rig.submitExactly(.rcs, ringGPA: ring, at: 12, store.dwords)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusError == 0, "engine error \(rig.r32(Reg.errorCode(.rcs)))")
        #expect(try rig.context.memory.read(UInt32.self, at: fence) == 0x600d_f00d)
        #expect(rig.r32(Reg.ringHead(.rcs)) == 32)
        // COMMAND_COUNT counts the guest's commands only, not the NOOPs the mediator pads with.
        #expect(rig.r32(Reg.commandCount(.rcs)) == 3)

        // The ring goes on from the qword-aligned tail as usual.
        var next = CommandBuilder()
        next.storeDataImm(gm: fenceGM + 4, 0x1234)
        try rig.submitExactly(.rcs, ringGPA: ring, at: 32, next.dwords)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusError == 0, "engine error \(rig.r32(Reg.errorCode(.rcs)))")
        #expect(try rig.context.memory.read(UInt32.self, at: fence + 4) == 0x1234)
        #expect(rig.r32(Reg.commandCount(.rcs)) == 4)
    }
}
