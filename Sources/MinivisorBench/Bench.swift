import CKVMBaseline
import Dispatch
import Glibc
import KVM
import Machine
import Synchronization

/// Exit-cost benchmarks: each workload runs as the same guest bytes under minivisor and under a minimal
/// C KVM loop (CKVMBaseline) in the same process, and is reported as a ratio. Fixed costs (VM creation,
/// thread start) cancel out: each side runs N and 2N iterations and the per-iteration cost is
/// (t(2N) - t(N)) / N; each round gives a ratio, and the median of the rounds' ratios is reported with its
/// spread (see `estimate` and `measure`).
public enum ExitBenchmark {
    public enum Workload: String, CaseIterable, Sendable {
        case portWrite = "trapped port write"
        case mmioWrite = "trapped MMIO write"
        case doorbell = "ioeventfd doorbell (MMIO write, no userspace exit)"
    }

    public static let benchPort: UInt32 = 0x500
    public static let benchMMIO: UInt32 = 0xd000_0000
    public static let doorbellMMIO: UInt32 = 0xd000_1000
    static let loadAddress: UInt32 = 0x10_0000
    static let memoryBytes: UInt64 = 16 << 20

    /// A multiboot (a.out kludge) image: 32-bit code that runs `iterations` of the workload, then writes
    /// 0 to the debug-exit port. The C baseline loads the same bytes at 1 MiB.
    public static func guestImage(_ w: Workload, iterations: UInt32) -> (bytes: [UInt8], entry: UInt32) {
        func le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
        var code: [UInt8] = [0xb9] + le(iterations)                 // mov ecx, N
        switch w {
        case .portWrite:
            code += [0xba] + le(benchPort)                          // mov edx, port
            code += [0xee, 0x49, 0x75, 0xfc]                        // 1: out dx, al; dec ecx; jnz 1b
        case .mmioWrite, .doorbell:
            code += [0xbb] + le(w == .mmioWrite ? benchMMIO : doorbellMMIO)   // mov ebx, addr
            code += [0x89, 0x03, 0x49, 0x75, 0xfb]                  // 1: mov [ebx], eax; dec ecx; jnz 1b
        }
        code += [0xba] + le(0xf4) + [0xb0, 0x00, 0xee]              // mov edx, 0xf4; mov al, 0; out dx, al
        code += [0xfa, 0xf4, 0xeb, 0xfc]                            // cli; hlt; jmp
        return MultibootHeader.aoutImage(code: code, loadAddress: loadAddress)
    }

    /// A device that accepts anything, for the trapped port and MMIO workloads.
    final class Sink: BusDevice {
        func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0) }
        func write(offset: UInt64, data: UnsafeRawBufferPointer) {}
    }

    /// One run's cost: wall time, and the CPU time the whole process used meanwhile (which a busy host's other
    /// processes, holding the CPU between our time slices, do not add to).
    public struct Sample: Sendable {
        public let seconds: Double
        public let cpuSeconds: Double
        public init(seconds: Double, cpuSeconds: Double) { self.seconds = seconds; self.cpuSeconds = cpuSeconds }
    }

    /// `iterations` of `w` under minivisor (run() only, VM construction excluded).
    public static func minivisorSample(_ w: Workload, iterations: UInt32) throws -> Sample {
        let image = guestImage(w, iterations: iterations)
        var config = MachineConfiguration()
        config.memoryBytes = memoryBytes
        config.serialOutput = .none
        config.haltPollInterval = .seconds(1)
        let m = try Machine(configuration: config, image: .bytes(image.bytes, name: "bench-\(w)"))
        let sink = Sink()
        try m.pioBus.register(sink, base: UInt64(benchPort), size: 4, name: "bench-port")
        try m.mmioBus.register(sink, base: UInt64(benchMMIO), size: 0x1000, name: "bench-mmio")
        let doorbell = try EventFD()
        try m.vm.registerIOEventFD(doorbell.fd, address: UInt64(doorbellMMIO), length: 4)
        let c0 = processCPUSeconds()
        let t0 = DispatchTime.now().uptimeNanoseconds
        let reason = m.run()
        let t1 = DispatchTime.now().uptimeNanoseconds
        let c1 = processCPUSeconds()
        guard reason == .debugExit(0) else { throw BenchError.unexpected("minivisor \(w.rawValue): \(reason)") }
        return Sample(seconds: Double(t1 - t0) / 1e9, cpuSeconds: c1 - c0)
    }

    /// The same under the C baseline loop.
    public static func baselineSample(_ w: Workload, iterations: UInt32) throws -> Sample {
        let image = guestImage(w, iterations: iterations)
        var r = mv_baseline_result()
        let rc = image.bytes.withUnsafeBufferPointer {
            mv_baseline_run($0.baseAddress, $0.count, UInt64(image.entry), memoryBytes, UInt64(doorbellMMIO), &r)
        }
        guard rc == 0 else {
            let msg = withUnsafeBytes(of: r.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw BenchError.unexpected("C baseline: \(msg)")
        }
        return Sample(seconds: r.seconds, cpuSeconds: r.cpu_seconds)
    }

    static func processCPUSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// One interleaved round: each side ran N and 2N iterations.
    public struct Round: Sendable {
        public var minivisorN: Sample, minivisor2N: Sample, baselineN: Sample, baseline2N: Sample
        public init(minivisorN: Sample, minivisor2N: Sample, baselineN: Sample, baseline2N: Sample) {
            self.minivisorN = minivisorN; self.minivisor2N = minivisor2N
            self.baselineN = baselineN; self.baseline2N = baseline2N
        }
    }

    public struct Result: Sendable {
        public let workload: Workload
        /// Per-iteration CPU cost in microseconds, (t(2N) - t(N)) / N of each round.
        public let minivisorMicroseconds: Spread
        public let baselineMicroseconds: Spread
        /// minivisor / C loop per round, from CPU time (the reported ratio) and from wall time.
        public let ratio: Spread
        public let wallRatio: Spread
        /// The CPU both sides' threads were pinned to, or nil if pinning failed.
        public let cpu: Int?
    }

    /// The estimator: each round gives its own per-iteration costs, (t(2N) - t(N)) / N, on both sides, and its
    /// own ratio; the result is the median of the rounds' ratios with its spread. (Comparing minima taken
    /// over all rounds instead mixes rounds: min t(2N) and min t(N) come from different moments of a
    /// drifting host, and one lucky or unlucky run moves the difference by its whole error.)
    public static func estimate(_ w: Workload, rounds: [Round], iterations: UInt32, cpu: Int? = nil) -> Result {
        let n = Double(iterations)
        func per(_ a: Sample, _ b: Sample, wall: Bool) -> Double { ((wall ? b.seconds - a.seconds : b.cpuSeconds - a.cpuSeconds)) / n * 1e6 }
        var mv: [Double] = [], c: [Double] = [], ratio: [Double] = [], wall: [Double] = []
        for r in rounds {
            let m = per(r.minivisorN, r.minivisor2N, wall: false), b = per(r.baselineN, r.baseline2N, wall: false)
            mv.append(m); c.append(b); ratio.append(m / b)
            wall.append(per(r.minivisorN, r.minivisor2N, wall: true) / per(r.baselineN, r.baseline2N, wall: true))
        }
        return Result(workload: w, minivisorMicroseconds: Spread(mv), baselineMicroseconds: Spread(c),
                      ratio: Spread(ratio), wallRatio: Spread(wall), cpu: cpu)
    }

    /// Measures `w` in interleaved rounds until the ratio's 95% interval is within -+`target` of its median
    /// (after at least `minRounds`), or `budgetSeconds` have passed. For the measurement the calling thread is
    /// pinned to the CPU it is on, and minivisor's vCPU thread (created by it) inherits the pin, so both
    /// sides run on the same CPU and neither migrates. One discarded warm-up run per side comes first
    /// (first-touch of code, page tables and KVM's caches).
    public static func measure(_ w: Workload, iterations: UInt32, minRounds: Int, budgetSeconds: Double,
                               target: Double = 0.02) throws -> Result {
        guard iterations >= 1, iterations <= UInt32.max / 2 else {   // 2N must fit
            throw BenchError.outOfRange("iterations \(iterations) is out of range: give 1 to \(UInt32.max / 2) (each round also runs 2N)")
        }
        let cpu = mv_baseline_pin_here()
        defer { if cpu >= 0 { mv_baseline_unpin() } }
        _ = try baselineSample(w, iterations: iterations)
        _ = try minivisorSample(w, iterations: iterations)
        let start = DispatchTime.now().uptimeNanoseconds
        var rounds: [Round] = []
        while true {
            // A-B-B-A within the round, and the side that goes first alternates between rounds, so that
            // drifts and order effects hit both sides alike.
            let r: Round
            if rounds.count % 2 == 0 {
                let c1 = try baselineSample(w, iterations: iterations)
                let m1 = try minivisorSample(w, iterations: iterations)
                let m2 = try minivisorSample(w, iterations: 2 * iterations)
                let c2 = try baselineSample(w, iterations: 2 * iterations)
                r = Round(minivisorN: m1, minivisor2N: m2, baselineN: c1, baseline2N: c2)
            } else {
                let m1 = try minivisorSample(w, iterations: iterations)
                let c1 = try baselineSample(w, iterations: iterations)
                let c2 = try baselineSample(w, iterations: 2 * iterations)
                let m2 = try minivisorSample(w, iterations: 2 * iterations)
                r = Round(minivisorN: m1, minivisor2N: m2, baselineN: c1, baseline2N: c2)
            }
            rounds.append(r)
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            guard rounds.count >= max(minRounds, 1) else { continue }
            if elapsed >= budgetSeconds || rounds.count >= 1000 { break }
            if estimate(w, rounds: rounds, iterations: iterations).ratio.relativeHalfWidth <= target { break }
        }
        return estimate(w, rounds: rounds, iterations: iterations, cpu: cpu >= 0 ? Int(cpu) : nil)
    }

    /// The host's floor for creating and destroying a VM, measured by the C baseline.
    public static func vmLifecycleMilliseconds(memoryBytes: UInt64) -> Double {
        mv_baseline_vm_lifecycle_ms(memoryBytes)
    }
}

public enum BenchError: Error, CustomStringConvertible {
    case unexpected(String)
    /// An argument outside what the benchmark can run (one line, cause and fix).
    case outOfRange(String)
    public var description: String {
        switch self { case .unexpected(let s), .outOfRange(let s): return s }
    }
}

/// Wall time from process start to process exit for `minivisor run ARGS`, via posix_spawn.
public enum StartupBenchmark {
    public static func processSeconds(executable: String, arguments: [String]) throws -> (seconds: Double, status: Int32) {
        var pid: pid_t = 0
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        let t0 = DispatchTime.now().uptimeNanoseconds
        let rc = posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard rc == 0 else { throw BenchError.unexpected("posix_spawn \(executable): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let t1 = DispatchTime.now().uptimeNanoseconds
        return (Double(t1 - t0) / 1e9, (status >> 8) & 0xff)
    }
}
