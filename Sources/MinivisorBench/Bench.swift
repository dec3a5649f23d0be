import CKVMBaseline
import Dispatch
import Glibc
import KVM
import Machine
import Synchronization

/// Exit-cost benchmarks: each workload runs as the same guest bytes under minivisor and under a minimal
/// C KVM loop (CKVMBaseline) in the same process, and is reported as a ratio. Fixed costs (VM creation,
/// thread start) cancel out: each side runs N and 2N iterations and the per-iteration cost is
/// (t(2N) - t(N)) / N; the median of several rounds is kept.
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

    /// Seconds to run `iterations` of `w` under minivisor (run() only, VM construction excluded).
    public static func minivisorSeconds(_ w: Workload, iterations: UInt32) throws -> Double {
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
        let t0 = DispatchTime.now().uptimeNanoseconds
        let reason = m.run()
        let t1 = DispatchTime.now().uptimeNanoseconds
        guard reason == .debugExit(0) else { throw BenchError.unexpected("minivisor \(w.rawValue): \(reason)") }
        return Double(t1 - t0) / 1e9
    }

    /// Seconds for the same under the C baseline loop.
    public static func baselineSeconds(_ w: Workload, iterations: UInt32) throws -> Double {
        let image = guestImage(w, iterations: iterations)
        var r = mv_baseline_result()
        let rc = image.bytes.withUnsafeBufferPointer {
            mv_baseline_run($0.baseAddress, $0.count, UInt64(image.entry), memoryBytes, UInt64(doorbellMMIO), &r)
        }
        guard rc == 0 else {
            let msg = withUnsafeBytes(of: r.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw BenchError.unexpected("C baseline: \(msg)")
        }
        return r.seconds
    }

    public struct Result: Sendable {
        public let workload: Workload
        public let minivisorMicroseconds: Double
        public let baselineMicroseconds: Double
        public var ratio: Double { minivisorMicroseconds / baselineMicroseconds }
    }

    /// Per-iteration cost of `w` on both sides: (min t(2N) - min t(N)) / N over `rounds` interleaved rounds.
    /// Noise on a shared (here: nested) host only ever adds time, so minima are the robust estimate.
    public static func measure(_ w: Workload, iterations: UInt32, rounds: Int) throws -> Result {
        guard iterations >= 1, iterations <= UInt32.max / 2 else {   // 2N must fit
            throw BenchError.outOfRange("iterations \(iterations) is out of range: give 1 to \(UInt32.max / 2) (each round also runs 2N)")
        }
        var c1 = Double.infinity, c2 = Double.infinity, m1 = Double.infinity, m2 = Double.infinity
        for _ in 0..<max(rounds, 1) {
            // Interleave the two sides so drifts in host load hit both alike.
            c1 = min(c1, try baselineSeconds(w, iterations: iterations))
            m1 = min(m1, try minivisorSeconds(w, iterations: iterations))
            c2 = min(c2, try baselineSeconds(w, iterations: 2 * iterations))
            m2 = min(m2, try minivisorSeconds(w, iterations: 2 * iterations))
        }
        return Result(workload: w, minivisorMicroseconds: (m2 - m1) / Double(iterations) * 1e6,
                      baselineMicroseconds: (c2 - c1) / Double(iterations) * 1e6)
    }

    /// The host's floor for creating and destroying a VM, measured by the C baseline.
    public static func vmLifecycleMilliseconds(memoryBytes: UInt64) -> Double {
        mv_baseline_vm_lifecycle_ms(memoryBytes)
    }

    public static func median(_ xs: [Double]) -> Double {
        let s = xs.sorted()
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
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
