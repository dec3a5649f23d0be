import Dispatch
import Glibc
import Machine
import Minivisor
import VGPU

/// The GPU scheduler benchmarks (issue 8): N VMs in one `VMGroup`, their vGPUs sharing one `GPUHost` with
/// a given policy, each running the `vgpu_bench` guest's `only=load` workload (SGEMM batches on RCS, two
/// groups in flight, the driver sleeping in `hlt` until its interrupt). Once every vGPU has completed work
/// the host takes a measurement window in which all of them are loading, and reads from the engine's side
/// each vGPU's engine busy time and completed submissions over it; each guest also reports its own count.
public enum SchedulerBenchmark {
    /// One VM's part of a run.
    public struct VMResult: Sendable {
        public let type: VGPUType
        /// Seconds its passes held the engine during the window.
        public let busy: Double
        /// Submissions (one SGEMM each) completed during the window.
        public let completed: UInt64
        /// What the guest reported for its whole run: SGEMMs, and SGEMMs per second.
        public let guestSGEMMs: UInt64
        public let guestRate: Double
    }

    public struct Result: Sendable {
        public let scheduler: SchedulerKind
        public let vms: [VMResult]
        /// The window's length in seconds.
        public let window: Double
        /// Aggregate throughput in SGEMMs per second (engine's view, over the window).
        public var throughput: Double { Double(vms.reduce(0) { $0 + $1.completed }) / window }
        /// The sum of the guests' own rates (SGEMMs per second over each guest's run).
        public var guestThroughput: Double { vms.reduce(0) { $0 + $1.guestRate } }
        /// Each VM's share of the engine time the VMs held in the window.
        public var busyShares: [Double] { shares(vms.map(\.busy)) }
        /// Each VM's share of the submissions completed in the window.
        public var workShares: [Double] { shares(vms.map { Double($0.completed) }) }
        /// Each VM's share of the guest-reported rates.
        public var guestShares: [Double] { shares(vms.map(\.guestRate)) }
        /// Each VM's entitlement: its weight over the sum of the weights.
        public var entitlements: [Double] { shares(vms.map { Double($0.type.weight) }) }
    }

    static func shares(_ x: [Double]) -> [Double] {
        let t = x.reduce(0, +)
        return x.map { t > 0 ? $0 / t : 0 }
    }

    /// Jain's fairness index of `x`: (sum x)^2 / (n sum x^2); 1 when all are equal, 1/n when one has all.
    public static func jain(_ x: [Double]) -> Double {
        let s = x.reduce(0, +), s2 = x.reduce(0) { $0 + $1 * $1 }
        return s2 > 0 ? s * s / (Double(x.count) * s2) : .nan
    }

    /// The largest |share / entitlement - 1| over the VMs (0.05: every VM within 5% of its entitlement).
    public static func worstDeviation(_ shares: [Double], _ entitlements: [Double]) -> Double {
        zip(shares, entitlements).map { abs($0 / $1 - 1) }.max() ?? .nan
    }

    /// Runs one VM per entry of `types` (each with the `only=load` workload of SGEMMs of `n` cubed) on a
    /// fresh GPU with `scheduler`, and measures a window of `window` seconds once all are loading.
    public static func run(image: String, scheduler: SchedulerKind, types: [VGPUType], window: Double,
                           n: Int = 512, group: Int = 4) throws -> Result {
        let host = GPUHost(scheduler: scheduler)
        // Each guest loads long enough for every VM to boot, a settling time, the window and a margin.
        let settle = 0.2
        let guestMillis = Int((settle + window + 0.5 + 0.15 * Double(types.count)) * 1000)
        var captures: [SerialCapture] = []
        var members: [VMGroup.Member] = []
        for (i, t) in types.enumerated() {
            var c = MachineConfiguration()
            c.memoryBytes = 64 << 20
            c.cmdline = "only=load load=\(n) group=\(group) ms=\(guestMillis)"
            c.timeout = .seconds(120)
            let capture = SerialCapture()
            c.serialOutput = .callback { capture.append($0) }
            captures.append(capture)
            members.append(VMGroup.Member(name: "vm\(i + 1)", image: .file(image), configuration: c, vgpu: VGPUOptions(type: t)))
        }
        let g = try VMGroup(members, gpu: host)
        try g.start()
        var outcomes: [VMGroup.Outcome] = []
        defer { if outcomes.isEmpty { g.stop(); _ = g.wait() } }
        let vgpus = g.vms.compactMap(\.vgpu)
        guard vgpus.count == types.count else { throw BenchError.unexpected("a VM of the scheduler benchmark has no vGPU") }
        let start = now()
        // Every vGPU has completed work: all are loading.
        while vgpus.contains(where: { $0.completedSubmissions == 0 }) {
            guard now() - start < 60 else { throw BenchError.unexpected("the scheduler benchmark's VMs did not all start loading within 60 s") }
            usleep(2000)
        }
        let allLoading = now()
        usleep(UInt32(settle * 1e6))
        let busy0 = vgpus.map { VGPUBenchmark.seconds($0.engineBusy) }, done0 = vgpus.map(\.completedSubmissions)
        let t0 = now()
        usleep(UInt32(window * 1e6))
        let busy1 = vgpus.map { VGPUBenchmark.seconds($0.engineBusy) }, done1 = vgpus.map(\.completedSubmissions)
        let t1 = now()
        guard t1 - start < Double(guestMillis) / 1000 else {
            throw BenchError.unexpected("the scheduler benchmark's \(types.count) VMs took \(fixed(allLoading - start, 2)) s to start loading: the window was not covered (the host is too busy)")
        }
        outcomes = g.wait()
        var vms: [VMResult] = []
        for (i, t) in types.enumerated() {
            let out = captures[i].text
            let run = VGPUBenchmark.GuestRun(serialOutput: out)
            guard outcomes[i].reason == .powerOff, out.contains("vgpu bench ok"), let count = run.values["load_sgemms"],
                  let ms = run.values["load_ms"], ms > 0 else {
                throw BenchError.unexpected("scheduler benchmark VM \(i + 1) of \(types.count) ended with \(outcomes[i].reason): \(out.split(separator: "\n").suffix(3).joined(separator: " | "))")
            }
            vms.append(VMResult(type: t, busy: busy1[i] - busy0[i], completed: done1[i] - done0[i], guestSGEMMs: count,
                                guestRate: Double(count) / (Double(ms) / 1000)))
        }
        return Result(scheduler: scheduler, vms: vms, window: t1 - t0)
    }

    static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
}
