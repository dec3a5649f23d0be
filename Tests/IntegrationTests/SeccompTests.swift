import Glibc
import Minivisor
import Synchronization
import Testing

/// Seccomp: vCPU, device and (in the CLI) main threads run under allow lists; a refused system call ends
/// the process with one line naming the thread and the call, and status 16.
@Suite("Seccomp (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct SeccompTests {
    /// The SeccompProbe executable next to the test bundle (see Sources/SeccompProbe).
    static var probe: String {
        var path = Support.minivisor
        path.removeLast("minivisor".count)
        return path + "SeccompProbe"
    }

    @Test func forbiddenCallOnAVCPUThreadEndsTheProcessWithOneLine() {
        let (status, out) = Support.run(Self.probe, [])
        #expect(status == Seccomp.exitStatus, "\(out)")
        #expect(status == 16)
        let lines = out.split(separator: "\n")
        #expect(lines == ["minivisor: seccomp refused system call 41 (socket) on thread vcpu0 (vcpu filter): rerun with --no-seccomp and report a bug"],
                "\(out)")
    }

    @Test func withoutSeccompTheSameCallSucceeds() {
        let (status, out) = Support.run(Self.probe, ["--no-seccomp"])
        #expect(status == (0x21 << 1) | 1, "\(out)")
        #expect(out.contains("probe: socket(2) on the vcpu thread returned a descriptor"), "\(out)")
        #expect(!out.contains("seccomp"), "\(out)")
    }

    @Test func forbiddenCallOnTheMonitorThreadIsReported() {
        let (status, out) = Support.run(Self.probe, ["--from", "monitor"])
        #expect(status == 16, "\(out)")
        #expect(out.contains("refused system call 41 (socket) on thread monitor (monitor filter)"), "\(out)")
        #expect(out.split(separator: "\n").count == 1, "\(out)")
    }

    /// Records the seccomp label of the thread that handles a port write.
    final class LabelPort: BusDevice {
        let label = Mutex<String??>(nil)
        func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(UInt64.max) }
        func write(offset: UInt64, data: UnsafeRawBufferPointer) {
            let l = Seccomp.currentThreadLabel
            label.withLock { $0 = .some(l) }
        }
    }

    func labelSeenOnTheVCPU(_ policy: SeccompPolicy) throws -> String?? {
        var c = MachineConfiguration()
        c.memoryBytes = 16 << 20
        c.serialOutput = .none
        c.timeout = .seconds(60)
        c.seccomp = policy
        // out 0x99, al; mov al, 1; out 0xf4, al; jmp $
        let vm = try VirtualMachine(image: .realModeBlob([0xe6, 0x99, 0xb0, 0x01, 0xe6, 0xf4, 0xeb, 0xfe], loadAddress: 0x7c00),
                                    configuration: c)
        let port = LabelPort()
        try vm.machine.pioBus.register(port, base: 0x99, size: 1, name: "label")
        #expect(vm.run() == .debugExit(1))
        return port.label.withLock { $0 }
    }

    /// The library filters vCPU threads by default, and never the caller's thread. (`.vmThreadsAndMonitor`
    /// would filter this test's thread for good: the probe covers it in a child process.)
    @Test func libraryFiltersVCPUThreadsButNotTheCaller() throws {
        #expect(try labelSeenOnTheVCPU(.vmThreads) == .some("vcpu0 (vcpu filter)"))
        #expect(try labelSeenOnTheVCPU(.off) == .some(nil))
        #expect(MachineConfiguration().seccomp == .vmThreads)
        #expect(Self.seccompMode(task: "thread-self") == 0, "the test's own thread must stay unfiltered")
    }

    /// The vGPU's mediator thread and its GPU's engine dispatcher threads run under a filter (kernel's view: Seccomp: 2).
    @Test func vgpuDeviceThreadsAreFiltered() throws {
        var c = MachineConfiguration()
        c.memoryBytes = 16 << 20
        c.serialOutput = .none
        let host = GPUHost()
        let vm = try VirtualMachine(image: .realModeBlob([0xfa, 0xf4], loadAddress: 0x7c00), configuration: c,
                                    vgpu: VGPUOptions(host: host))
        let mediator = "vgpu\(vm.vgpu!.id)-mediator"
        let dispatchers = ["gpu\(host.number)-rcs", "gpu\(host.number)-bcs"]
        // The threads load their filter as their first act; wait for the kernel to show it (bounded).
        var modes: [String: Int] = [:]
        for _ in 0..<1000 {
            modes = Self.threads().filter { $0.key == mediator || dispatchers.contains($0.key) }
            if modes.count == 3 && modes.values.allSatisfy({ $0 == 2 }) { break }
            usleep(10_000)
        }
        #expect(modes == [mediator: 2, dispatchers[0]: 2, dispatchers[1]: 2], "\(modes)")
        #expect(vm.run() == .powerOff)
    }

    @Test func cliHasNoSeccompFlag() throws {
        let (helpStatus, help) = Support.run(Support.minivisor, ["run", "--help"])
        #expect(helpStatus == 0)
        #expect(help.contains("--no-seccomp"))
        let hello = try Support.guest("hello")
        for args in [["run", hello], ["run", "--no-seccomp", hello]] {
            let (status, out) = Support.run(Support.minivisor, args)
            #expect(status == 0, "\(args): \(out)")
            #expect(out.contains("hello from minivisor guest"), "\(args): \(out)")
        }
    }

    /// The "Seccomp:" field of /proc/self/task/TASK/status (0 none, 2 filter), or nil.
    static func seccompMode(task: String) -> Int? {
        let path = task == "thread-self" ? "/proc/thread-self/status" : "/proc/self/task/\(task)/status"
        guard let text = readSmallFile(path) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("Seccomp:") {
            return Int(line.dropFirst("Seccomp:".count).trimmingCharacters(in: " \t"))
        }
        return nil
    }

    /// This process's threads by name (comm) with their seccomp mode.
    static func threads() -> [String: Int] {
        var out: [String: Int] = [:]
        guard let dir = opendir("/proc/self/task") else { return out }
        defer { closedir(dir) }
        while let e = readdir(dir) {
            let tid = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            guard tid.first?.isNumber == true, let name = readSmallFile("/proc/self/task/\(tid)/comm"),
                  let mode = seccompMode(task: tid) else { continue }
            out[name.trimmingCharacters(in: "\n")] = mode
        }
        return out
    }

    static func readSmallFile(_ path: String) -> String? {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 8192)
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, 8192) }
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : nil
    }
}

private extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var s = self
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}

private extension String {
    func trimmingCharacters(in set: String) -> String { Substring(self).trimmingCharacters(in: set) }
}
