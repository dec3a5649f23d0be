import Glibc
import Minivisor
import MinivisorBench
import MinivisorCommands

/// `minivisor bench`.
func runBench(_ request: BenchRequest) -> Never {
    do { try BenchRunner(request: request).measure() } catch { fail("benchmark failed: \(error)", status: CLIStatus.hostError) }
    Glibc.exit(0)
}

struct BenchRunner {
    let request: BenchRequest
    var iterations: UInt32 { request.iterations }
    var rounds: Int { request.rounds }
    var image: String? { request.image }
    var guests: String { request.guests }
    var startupRuns: Int { request.startupRuns }

    func measure() throws {
        print("minivisor bench: exit costs vs a minimal C KVM loop (same guest bytes, same run)")
        print("host KVM: \(HostProfile.detect().softwareKVM ? "kvm-pvm (software, nested)" : "hardware-assisted")")
        var worst = 0.0
        for w in ExitBenchmark.Workload.allCases {
            let r = try ExitBenchmark.measure(w, iterations: iterations, rounds: rounds)
            worst = max(worst, r.ratio)
            print("  \(pad(w.rawValue, 52)) minivisor \(pad(fixed(r.minivisorMicroseconds, 2), 8, left: false)) us   C loop \(pad(fixed(r.baselineMicroseconds, 2), 8, left: false)) us   ratio \(fixed(r.ratio, 3))")
        }
        print("  worst ratio \(fixed(worst, 3)) (target <= 1.15)")

        print("vGPU command scanner (host, same run):")
        let sc = try ScannerBenchmark.run()
        print("  scanned \(fixed(sc.megabytes, 1)) MB (\(sc.commands) commands): \(fixed(sc.scanMBps, 0)) MB/s; plain copy of the same bytes \(fixed(sc.copyMBps, 0)) MB/s; scan/copy \(fixed(sc.scanMBps / sc.copyMBps, 3))")

        try vgpuBenchmarks()

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
        var floor: [Double] = []
        for _ in 0..<max(startupRuns, 1) { floor.append(ExitBenchmark.vmLifecycleMilliseconds(memoryBytes: 256 << 20)) }
        floor.sort()
        print("  start-to-exit, \(label): median \(fixed(times[times.count / 2] * 1000, 1)) ms, min \(fixed(times[0] * 1000, 1)) ms over \(times.count) runs (target < 20 ms)")
        print("    host floor: a C program creating and destroying the same VM (irqchip, 256 MiB slot, 1 vCPU): median \(fixed(floor[floor.count / 2], 1)) ms")
    }

    func vgpuBenchmarks() throws {
        let image = guests + "/vgpu_bench.elf"
        guard access(image, R_OK) == 0 else {
            print("vGPU guest benchmarks: skipped, \(image) is missing (build the guests: make -C Guests)")
            return
        }
        print("vGPU, measured by the vgpu_bench guest and by the host in the same run:")
        let host = GPUHost()
        // Best of three guest runs per side (each run already interleaves thirty rounds of both).
        var apBest = UInt64.max, ramBest = UInt64.max, mib: UInt64 = 0
        for _ in 0..<3 {
            let ap = try VGPUBenchmark.runGuest(image, cmdline: "only=aperture", host: host).values
            if let a = ap["aperture_write_cycles_per_mib"], let r = ap["ram_write_cycles_per_mib"], a > 0, r > 0 {
                apBest = min(apBest, a)
                ramBest = min(ramBest, r)
                mib = ap["write_mib"] ?? 0
            }
        }
        if apBest != .max {
            print("  guest ring-3 writes, \(mib) MiB, best of 3 runs: aperture \(apBest) cycles/MiB, ordinary RAM \(ramBest) cycles/MiB; aperture/RAM throughput \(fixed(Double(ramBest) / Double(apBest), 3)) (target >= 0.95)")
        }
        let db = try VGPUBenchmark.runGuest(image, cmdline: "only=doorbells", host: host).values
        if let pv = db["pv_doorbell_cycles"], let tr = db["trapped_write_cycles"], pv > 0 {
            print("  doorbell (ioeventfd) \(pv) cycles vs trapped register write \(tr) cycles: \(fixed(Double(tr) / Double(pv), 2))x cheaper")
        }
        // Native and mediated runs alternate, `rounds` times each; medians are compared.
        let n = 512, reps = 8
        var sgNative: [Double] = [], sgMediated: [Double] = [], sgBusy: [Double] = []
        for _ in 0..<max(rounds, 1) {
            let sg = try VGPUBenchmark.runGuest(image, cmdline: "only=sgemm sgemm=\(n) reps=\(reps)", host: host)
            guard let w = sg.window else { throw BenchError.unexpected("no SGEMM submissions seen") }
            sgMediated.append(VGPUBenchmark.seconds(w))
            sgBusy.append(VGPUBenchmark.seconds(sg.engineBusy))
            sgNative.append(try VGPUBenchmark.nativeSGEMM(host: host, n: n, reps: reps))
        }
        let native = sgNative.min()!, mediated = sgMediated.min()!
        let gflop = Double(2 * n * n * n * reps) / 1e9
        print("  SGEMM \(n)^3 x \(reps), best of \(sgNative.count): native \(fixed(native * 1000, 1)) ms (\(fixed(gflop / native, 1)) GFLOPS), through the mediator \(fixed(mediated * 1000, 1)) ms (engine busy \(fixed(sgBusy.min()! * 1000, 1)) ms of it); native/mediated \(fixed(native / mediated, 3)) (target >= 0.98)")
        let fills = 16384, batch = 256
        var flNative: [Double] = [], flMediated: [Double] = [], flBusy: [Double] = []
        for _ in 0..<max(rounds, 1) {
            // Trapped TAIL doorbells: each batch is scanned on the submitting vCPU (which would otherwise spin
            // waiting for a free buffer), not on a thread competing with the software GPU for a core.
            let fl = try VGPUBenchmark.runGuest(image, cmdline: "only=fills fills=\(fills) batch=\(batch) singles=0 pv=0", host: host)
            guard let w = fl.window else { throw BenchError.unexpected("no fill submissions seen") }
            flMediated.append(VGPUBenchmark.seconds(w))
            flBusy.append(VGPUBenchmark.seconds(fl.engineBusy))
            flNative.append(try VGPUBenchmark.nativeFills(host: host, fills: fills, perBatch: batch))
        }
        let fn = flNative.min()!, fm = flMediated.min()!
        print("  \(fills) 16x16 fills built in guest ring 3, \(batch) per batch (TAIL doorbell), best of \(flNative.count): native \(fixed(fn * 1000, 1)) ms, through the mediator \(fixed(fm * 1000, 1)) ms (engine busy \(fixed(flBusy.min()! * 1000, 1)) ms of it); native/mediated \(fixed(fn / fm, 3)) (target >= 0.80)")
    }

    func selfExecutable() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
    }
}


/// `v` with `precision` digits after the point.
func fixed(_ v: Double, _ precision: Int) -> String {
    var scale = 1.0
    for _ in 0..<precision { scale *= 10 }
    let n = Int64((abs(v) * scale).rounded())
    let whole = n / Int64(scale), frac = n % Int64(scale)
    var f = String(frac)
    while f.count < precision { f = "0" + f }
    return (v < 0 && n != 0 ? "-" : "") + String(whole) + (precision > 0 ? "." + f : "")
}

func pad(_ s: String, _ width: Int, left: Bool = true) -> String {
    guard s.count < width else { return s }
    let p = String(repeating: " ", count: width - s.count)
    return left ? s + p : p + s
}
