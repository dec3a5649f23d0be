import Dispatch
import Glibc
import Machine
import Minivisor
import SoftGPU
import Synchronization
import VGPU

/// vGPU benchmarks: the `vgpu_bench` guest measures from inside (ring 3), and for GPU workloads the host
/// times the guest's submissions through the mediator (first doorbell to last completion) and then the
/// same workload submitted by host code straight to the same software GPU ("native"), in the same run.
/// Guest-timed comparisons come as many pairs of short interleaved blocks; `pairRatios` takes their median.
public enum VGPUBenchmark {
    public struct GuestRun: Sendable {
        public let values: [String: UInt64]
        /// The guest's "pair NAME A B" lines: cycles of two interleaved blocks, in the order printed.
        public let pairs: [String: [Pair]]
        public let window: Duration?
        public let engineBusy: Duration

        /// Parses the guest's serial output: "bench NAME VALUE ..." and "pair NAME A B" lines.
        public init(serialOutput: String, window: Duration? = nil, engineBusy: Duration = .zero) {
            var values: [String: UInt64] = [:], pairs: [String: [Pair]] = [:]
            for line in serialOutput.split(separator: "\n") {
                let f = line.split(separator: " ")
                if f.first == "bench", f.count >= 3, let v = UInt64(f[2]) { values[String(f[1])] = v }
                if f.first == "pair", f.count == 4, let a = UInt64(f[2]), let b = UInt64(f[3]) {
                    pairs[String(f[1]), default: []].append(Pair(a: a, b: b))
                }
            }
            self.values = values
            self.pairs = pairs
            self.window = window
            self.engineBusy = engineBusy
        }
    }

    /// Cycles of one block of each kind, timed back to back by the guest.
    public struct Pair: Sendable, Equatable {
        public let a: UInt64, b: UInt64
        public init(a: UInt64, b: UInt64) { self.a = a; self.b = b }
    }

    /// The median and 95% interval of the pairs' ratios a / b (b / a with `inverted`) named `name`, pooled
    /// over `runs`: each pair's two blocks ran back to back, so one slow moment of the host spoils one pair
    /// and moves the median little, where a ratio of one block of each per run moves with it.
    public static func pairRatios(_ runs: [GuestRun], _ name: String, inverted: Bool = false) -> Spread {
        var ratios: [Double] = []
        for run in runs {
            for p in run.pairs[name] ?? [] where p.a > 0 && p.b > 0 {
                let a = Double(p.a), b = Double(p.b)
                ratios.append(inverted ? b / a : a / b)
            }
        }
        return Spread(ratios)
    }

    /// Boots `image` with a vGPU on `host`, with `cmdline`; returns its "bench NAME VALUE" and "pair" lines.
    public static func runGuest(_ image: String, cmdline: String, host: GPUHost) throws -> GuestRun {
        var c = MachineConfiguration()
        c.memoryBytes = 256 << 20
        c.cmdline = cmdline
        c.timeout = .seconds(300)
        let capture = SerialCapture()
        c.serialOutput = .callback { capture.append($0) }
        let vm = try VirtualMachine(image: .file(image), configuration: c, vgpu: VGPUOptions(host: host))
        let reason = vm.run()
        let out = capture.text
        guard reason == .powerOff, out.contains("vgpu bench ok") else {
            throw BenchError.unexpected("vgpu_bench (\(cmdline)) ended with \(reason): \(out.split(separator: "\n").suffix(3).joined(separator: " | "))")
        }
        return GuestRun(serialOutput: out, window: vm.vgpu?.activeWindow, engineBusy: vm.vgpu?.engineBusy ?? .zero)
    }

    /// One round of the hang benchmark: the victim (e.g. vgpu_victim, with `victimCmdline`) alone on a
    /// fresh GPU, then beside vgpu_hang on another, both with the watchdog at `limit`. Returns the victim's
    /// GPU work window (first doorbell to last completion) each time, the hang's time from passing the limit
    /// to the reset, and whether the hang fell inside the victim's window (else the round measured nothing).
    public static func hangRound(victim: String, victimCmdline: String, hang: String, limit: Duration) throws
        -> (alone: Double, beside: Double, timeToReset: Double, overlapped: Bool) {
        func member(_ name: String, _ image: String, _ cmdline: String) -> VMGroup.Member {
            var c = MachineConfiguration()
            c.memoryBytes = 256 << 20
            c.cmdline = cmdline
            c.timeout = .seconds(300)
            c.serialOutput = .none
            return VMGroup.Member(name: name, image: .file(image), configuration: c, vgpu: VGPUOptions())
        }
        func run(_ members: [VMGroup.Member]) throws -> VMGroup {
            let group = try VMGroup(members, gpu: GPUHost(hangLimit: limit))
            for o in group.run() where o.reason != .powerOff {
                throw BenchError.unexpected("\(o.name) ended with \(o.reason) in the hang benchmark")
            }
            return group
        }
        let alone = try run([member("victim", victim, victimCmdline)])
        guard let a = alone.vms[0].vgpu?.activeWindow else { throw BenchError.unexpected("the victim submitted nothing") }
        let beside = try run([member("victim", victim, victimCmdline), member("hang", hang, "")])
        guard let v = beside.vms[0].vgpu, let b = v.activeWindow, let span = v.activeInterval,
              let report = beside.vms[1].vgpu?.hangReports.first else {
            throw BenchError.unexpected("the hang guest was not reset (or the victim submitted nothing)")
        }
        return (seconds(a), seconds(b), seconds(report.timeToReset), span.contains(report.started) && span.contains(report.resetDone))
    }

    public static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    /// `reps` SGEMMs of n x n x n, each its own batch, submitted natively on RCS; seconds from the first
    /// submission to the last completion.
    public static func nativeSGEMM(host: GPUHost, n: Int, reps: Int) throws -> Double {
        let gpu = host.gpu
        let bytes = UInt64(n * n * 4)
        // The host's own aperture reserve (never given to a vGPU): queue, then the three matrices.
        let q = try NativeQueue(gpu: gpu, engine: .rcs, gm: 0, ringPages: 4, batchBytes: 64 << 10)
        let base: UInt64 = 2 << 20
        let a = try gpu.mapHostMemory(gm: base, bytes: bytes)
        let b = try gpu.mapHostMemory(gm: base + bytes, bytes: bytes)
        let c = try gpu.mapHostMemory(gm: base + 2 * bytes, bytes: bytes)
        defer { a.release(); b.release(); c.release() }
        let fa = a.floats(n * n), fb = b.floats(n * n)
        for i in 0..<(n * n) { fa[i] = Float(Int(i % 17) - 8) / 16; fb[i] = Float(Int(i % 13) - 6) / 8 }
        let t0 = DispatchTime.now().uptimeNanoseconds
        var seq: UInt32 = 0
        for _ in 0..<reps {
            var cmd = CommandBuilder()
            cmd.sgemm(m: UInt32(n), n: UInt32(n), k: UInt32(n), alpha: 1, beta: 0, a: a.gm, lda: UInt32(n),
                      b: b.gm, ldb: UInt32(n), c: c.gm, ldc: UInt32(n))
            seq = try q.submit(cmd)
        }
        try q.wait(for: seq, timeout: 300)
        let t1 = DispatchTime.now().uptimeNanoseconds
        return Double(t1 - t0) / 1e9
    }

    /// The guest's fill stream (same surface, positions, colours and batch size), submitted natively on BCS.
    public static func nativeFills(host: GPUHost, fills: Int, perBatch: Int) throws -> Double {
        let gpu = host.gpu
        let fw = 1024, fh = 768, fill = 16, slotsX = fw / fill, slots = slotsX * (fh / fill)
        let q = try NativeQueue(gpu: gpu, engine: .bcs, gm: 8 << 20, ringPages: 16, batchBytes: 4 << 20)
        let surface = try gpu.mapHostMemory(gm: 16 << 20, bytes: UInt64(fw * fh * 4))
        defer { surface.release() }
        let s = BlitSurface(gm: surface.gm, pitch: UInt32(fw * 4), width: UInt16(fw), height: UInt16(fh))
        let t0 = DispatchTime.now().uptimeNanoseconds
        var seq: UInt32 = 0
        var i = 0
        while i < fills {
            var cmd = CommandBuilder()
            for _ in 0..<perBatch where i < fills {
                let k = (i * 7) % slots
                let x = (k % slotsX) * fill, y = (k / slotsX) * fill
                cmd.colorBlt(dst: s, x1: x, y1: y, x2: x + fill, y2: y + fill,
                             color: UInt32(truncatingIfNeeded: i &* 0x0001_0203 &+ 0x0040_5060) & 0x00ff_ffff)
                i += 1
            }
            seq = try q.submit(cmd)
        }
        try q.wait(for: seq, timeout: 300)
        let t1 = DispatchTime.now().uptimeNanoseconds
        return Double(t1 - t0) / 1e9
    }
}
