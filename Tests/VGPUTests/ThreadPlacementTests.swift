import Glibc
import Machine
import SoftGPU
import Synchronization
import Testing
@testable import VGPU

/// A client that records the CPUs its dispatcher thread may run on during its pass.
final class PlacementProbe: DispatchClient, Sendable {
    let dispatchID = 1
    let pending = Mutex(true)
    let seen = Mutex<[Int]?>(nil)
    func readyWork(on engine: EngineID) -> QueueView? {
        pending.withLock { $0 } ? QueueView(client: 1, queued: 1, oldestTicket: 1) : nil
    }
    func runPass(on engine: EngineID, slice: PassSlice) -> PassResult {
        seen.withLock { $0 = ThreadPlacement.allowedCPUs }
        pending.withLock { $0 = false }
        return PassResult(submissions: 1)
    }
}

/// `ThreadPlacement`: the benchmark pins device threads to a CPU other than the vCPU's, so that a PV
/// doorbell's cost does not depend on where the kernel woke the mediator (the trapped/doorbell ratio was
/// bimodal). Device threads started while a device CPU is set run only on it; the setting is then cleared.
@Suite(.serialized) struct ThreadPlacementTests {
    @Test func engineDispatcherThreadIsPinnedToTheDeviceCPU() throws {
        let cpus = ThreadPlacement.allowedCPUs
        try #require(!cpus.isEmpty)
        let device = cpus.last!
        ThreadPlacement.deviceCPU = device
        let d = try EngineDispatcher(engine: .rcs, threadName: "placement-test")
        ThreadPlacement.deviceCPU = nil
        defer { d.stop() }
        // The thread starts at the first attach: set the device CPU again for it, clear it once it ran.
        ThreadPlacement.deviceCPU = device
        let probe = PlacementProbe()
        d.attach(probe)
        defer { d.detach(probe) }
        #expect(waitUntil { probe.seen.withLock { $0 } != nil })
        ThreadPlacement.deviceCPU = nil
        #expect(probe.seen.withLock { $0 } == [device], "the dispatcher thread may run on \(String(describing: probe.seen.withLock { $0 })), not only CPU \(device)")
    }

    @Test func asDeviceThreadRestoresTheCallersCPUs() {
        let before = ThreadPlacement.allowedCPUs
        #expect(ThreadPlacement.deviceCPU == nil)
        ThreadPlacement.asDeviceThread { #expect(ThreadPlacement.allowedCPUs == before) }   // nothing set: unchanged
        ThreadPlacement.deviceCPU = before.first!
        let inside = ThreadPlacement.asDeviceThread { ThreadPlacement.allowedCPUs }
        ThreadPlacement.deviceCPU = nil
        #expect(inside == [before.first!])
        #expect(ThreadPlacement.allowedCPUs == before)
    }
}
