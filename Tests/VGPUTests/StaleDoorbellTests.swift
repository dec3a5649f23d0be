import Machine
import SoftGPU
import Testing
@testable import VGPU

/// A PV doorbell the guest rang before a RESET, picked up by the mediator thread only after it, must not
/// bring the old TAIL back (found by a CI run: the vgpu_stop guest read TAIL 0x80 after RESET).
@Suite("vGPU: stale PV doorbells")
struct StaleDoorbellTests {
    /// A vGPU with an enabled RCS ring and a PV shared page holding `sharedTail` as the RCS tail.
    static func rig(sharedTail: UInt32) throws -> Rig {
        let rig = try Rig()
        _ = rig.setUpRing(.rcs, gm: rig.vgpu.slices.aperture.lowerBound)
        let page = rig.nextPage
        rig.nextPage += 4096
        try rig.context.memory.write(sharedTail, at: page)
        rig.w32(VGPURegs.pvSharedPage, UInt32(truncatingIfNeeded: page))
        rig.w32(VGPURegs.pvSharedPage + 4, UInt32(truncatingIfNeeded: page >> 32))
        return rig
    }

    @Test func doorbellHandledAfterResetLeavesTheRingAlone() throws {
        let rig = try Self.rig(sharedTail: 0x80)
        rig.w32(Reg.reset(.rcs), 1)
        // The mediator thread handles the doorbell late, as it does when the host is busy.
        rig.vgpu.fastDoorbell(.rcs)
        #expect(rig.r32(Reg.ringTail(.rcs)) == 0)
        #expect(rig.r32(Reg.ringCtl(.rcs)) == 0)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusError == 0)
    }

    @Test func doorbellOnAnEnabledRingStillSetsTheTail() throws {
        let rig = try Self.rig(sharedTail: 0x10)
        rig.vgpu.fastDoorbell(.rcs)
        #expect(rig.r32(Reg.ringTail(.rcs)) == 0x10)
    }
}
