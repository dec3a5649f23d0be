import Minivisor
import MinivisorBench
import Testing

/// The GPU scheduler benchmarks' arithmetic, and one short run of the `vgpu_bench only=load` guests in a
/// VM group: every VM loads the GPU, reports its work, and the engine's counters see each vGPU's share.
@Suite struct SchedulerBenchArithmeticTests {
    @Test func jainsIndexAndShareDeviation() {
        #expect(SchedulerBenchmark.jain([2, 2, 2, 2]) == 1)
        #expect(SchedulerBenchmark.jain([1, 0, 0, 0]) == 0.25)
        #expect(abs(SchedulerBenchmark.jain([1, 2]) - 0.9) < 1e-12)
        #expect(abs(SchedulerBenchmark.worstDeviation([0.15, 0.25, 0.6], [1.0 / 7, 2.0 / 7, 4.0 / 7]) - 0.125) < 1e-12)
    }
}

@Suite("GPU scheduler benchmark (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct SchedulerBenchTests {
    @Test func twoVMsLoadTheGPUAndTheHeavierWeightGetsMore() throws {
        let image = try Support.guest("vgpu_bench")
        let r = try SchedulerBenchmark.run(image: image, scheduler: .weighted, types: [.small, .large], window: 0.5, n: 256)
        #expect(r.vms.count == 2)
        for (i, vm) in r.vms.enumerated() {
            #expect(vm.completed > 0 && vm.busy > 0 && vm.guestSGEMMs > 0 && vm.guestRate > 0, "VM \(i + 1): \(vm)")
        }
        #expect(abs(r.busyShares.reduce(0, +) - 1) < 1e-9)
        #expect(r.entitlements == [0.2, 0.8])
        // Weights 1 and 4: the large vGPU holds the engine for most of the window.
        #expect(r.busyShares[1] > r.busyShares[0], "engine shares \(r.busyShares)")
    }
}
