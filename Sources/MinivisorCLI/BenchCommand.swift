import ArgumentParser
import Foundation
import Glibc
import Minivisor
import MinivisorBench

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure exit costs against a minimal C KVM loop in the same run, and start-to-exit time.",
        discussion: """
        Each exit workload (trapped port write, trapped MMIO write, ioeventfd doorbell) runs the same guest
        bytes under minivisor and under a minimal C KVM loop, interleaved; per-iteration cost is the median of
        (t(2N) - t(N)) / N over the rounds. Start-to-exit spawns 'minivisor run IMAGE --serial none' and times
        the whole process. Targets: exit handling within 1.15x of the C loop; start-to-exit under 20 ms.
        """)

    @Option(help: "Iterations N per measurement (each round also runs 2N).")
    var iterations: UInt32 = 20000

    @Option(help: "Rounds per workload (the median is reported).")
    var rounds: Int = 5

    @Option(help: "Guest image for the start-to-exit measurement (default: Guests/build/hello.elf, else the built-in demo).")
    var image: String?

    @Option(help: "Start-to-exit repetitions (the median is reported).")
    var startupRuns: Int = 11

    func run() throws {
        print("minivisor bench: exit costs vs a minimal C KVM loop (same guest bytes, same run)")
        print("host KVM: \(HostProfile.detect().softwareKVM ? "kvm-pvm (software, nested)" : "hardware-assisted")")
        var worst = 0.0
        for w in ExitBenchmark.Workload.allCases {
            let r = try ExitBenchmark.measure(w, iterations: iterations, rounds: rounds)
            worst = max(worst, r.ratio)
            print(String(format: "  %@ minivisor %8.2f us   C loop %8.2f us   ratio %.3f",
                         w.rawValue.padding(toLength: 52, withPad: " ", startingAt: 0), r.minivisorMicroseconds, r.baselineMicroseconds, r.ratio))
        }
        print(String(format: "  worst ratio %.3f (target <= 1.15)", worst))

        let exe = selfExecutable()
        var args = ["run", "--serial", "none"]
        let hello = image ?? "Guests/build/hello.elf"
        let label: String
        if access(hello, R_OK) == 0 { args.append(hello); label = hello } else { label = "built-in demo guest" }
        var times: [Double] = []
        for _ in 0..<max(startupRuns, 1) {
            let (t, status) = try StartupBenchmark.processSeconds(executable: exe, arguments: args)
            guard status == 0 else { throw BenchError.unexpected("\(label) exited with status \(status)") }
            times.append(t)
        }
        times.sort()
        print(String(format: "  start-to-exit, %@: median %.1f ms, min %.1f ms over %d runs (target < 20 ms)",
                     label, times[times.count / 2] * 1000, times[0] * 1000, times.count))
    }

    func selfExecutable() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(cString: buf) : CommandLine.arguments[0]
    }
}

