import Glibc
import Minivisor
import Testing

/// What a vGPU costs in resident memory: the peak RSS (/usr/bin/time's %M) of `minivisor run --vgpu`
/// against the same run without a vGPU, and the increments of VMs with vGPUs built through the library.
/// Graphics memory, the GTT, the shadow arenas and scratch are mapped MAP_NORESERVE and touched on demand;
/// when they were allocated and zeroed eagerly, one vGPU added about 19 MiB to a hello-world run (16 MiB
/// per further vGPU).
@Suite("Resident memory (needs /dev/kvm and /usr/bin/time)", .serialized,
       .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"),
       .enabled(if: access("/usr/bin/time", X_OK) == 0 || getenv("CI") != nil, "needs /usr/bin/time (Debian package time)"))
struct ResidentMemoryTests {
    /// Peak resident KiB and exit status of `minivisor ARGS`, as /usr/bin/time reports it. (Not wait4 on a
    /// child of this process: the kernel counts the pre-exec memory of a vfork child, i.e. the test
    /// process's, into its maxrss; /usr/bin/time forks from its own small image.)
    static func peakKiB(_ args: [String]) throws -> (kib: Int, status: Int32) {
        let out = Support.tempPath("maxrss-\(args.count)")
        defer { unlink(out) }
        let (status, text) = Support.run("/usr/bin/time", ["-f", "%M", "-o", out, Support.minivisor] + args)
        let fd = open(out, O_RDONLY)
        try #require(fd >= 0, "/usr/bin/time wrote nothing (status \(status)): \(text)")
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 256)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 256) }
        let last = String(decoding: buf[0..<max(n, 0)], as: UTF8.self).split(separator: "\n").last ?? ""
        return (try #require(Int(last), "/usr/bin/time output: \(last)"), status)
    }

    @Test func oneVGPUAddsLittleResidentMemory() throws {
        let hello = try Support.guest("hello")
        // Medians of 3 runs each, alternating, so that one disturbed run does not decide.
        var plain: [Int] = [], withGPU: [Int] = []
        for _ in 0..<3 {
            let a = try Self.peakKiB(["run", "--serial", "none", hello])
            let b = try Self.peakKiB(["run", "--serial", "none", "--vgpu", hello])
            #expect(a.status == 0 && b.status == 0, "exit statuses \(a.status), \(b.status)")
            plain.append(a.kib)
            withGPU.append(b.kib)
        }
        let increment = withGPU.sorted()[1] - plain.sorted()[1]
        print("peak RSS without a vGPU \(plain) KiB, with one \(withGPU) KiB: +\(increment) KiB")
        // Today about 1 MiB (thread stacks, the vGPU's tables, the few GTT and arena pages used);
        // the bound leaves room for allocator and toolchain differences.
        #expect(increment <= 6 << 10, "one vGPU adds \(increment) KiB of peak RSS (bound 6 MiB): something is allocated and touched eagerly")
    }
}

extension ResidentMemoryTests {
    /// This process's resident KiB outside shared memory (RssAnon + RssFile): guest RAM is a memfd (RssShmem),
    /// so VMs that other suites run meanwhile touching their RAM do not count.
    static func residentKiB() -> Int {
        let fd = open("/proc/self/status", O_RDONLY)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 8192) }
        guard n > 0 else { return 0 }
        var kib = 0
        for line in String(decoding: buf[0..<n], as: UTF8.self).split(separator: "\n")
        where line.hasPrefix("RssAnon:") || line.hasPrefix("RssFile:") {
            kib += Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
        }
        return kib
    }

    /// Sixteen VMs with a vGPU of the default type on one GPU, built through the library: what each one adds
    /// to this process's resident memory (printed), with a bound on the average.
    @Test func perVGPUIncrementThroughTheLibrary() throws {
        let host = GPUHost()
        let hello = try Support.guest("hello")
        var config = MachineConfiguration()
        config.memoryBytes = 16 << 20
        config.serialOutput = .none
        var vms: [VirtualMachine] = []
        var steps: [Int] = []
        let before = Self.residentKiB()
        var last = before
        for _ in 0..<16 {
            vms.append(try VirtualMachine(image: .file(hello), configuration: config, vgpu: VGPUOptions(host: host)))
            let now = Self.residentKiB()
            steps.append(now - last)
            last = now
        }
        let average = (last - before) / max(vms.count, 1)
        print("\(vms.count) vGPUs on one GPU: resident memory +\(last - before) KiB, per VM with a vGPU \(steps) KiB, average \(average) KiB")
        #expect(vms.count == 16)
        #expect(average <= 4 << 10, "each VM with a vGPU adds \(average) KiB on average (bound 4 MiB): \(steps)")
        vms.removeAll()
    }
}
