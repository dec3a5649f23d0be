import Glibc
import Minivisor
import MinivisorBench
import Testing

/// What the review of issue 7 found still missing on the merged main: signals to a running minivisor,
/// arguments that are not UTF-8, a file-size limit below guest RAM, KVM device paths in messages, and
/// library configurations at their extremes.
@Suite("CLI signals, encodings and limits", .serialized)
struct CLISignalAndEncodingTests {
    static let deadline = 60.0

    func scratch(_ name: String) -> String {
        let dir = Support.tempPath("review-\(name)")
        _ = Support.run("/bin/rm", ["-rf", dir])
        mkdir(dir, 0o755)
        return dir
    }

    /// Waits until `pid` has created its VM (an anon_inode:kvm-vm descriptor), at most the deadline.
    func waitForVM(_ pid: pid_t) -> Bool {
        let until = ContinuousClock.now + .seconds(Self.deadline)
        while ContinuousClock.now < until {
            for fd in 0..<64 {
                var buf = [CChar](repeating: 0, count: 256)
                let n = readlink("/proc/\(pid)/fd/\(fd)", &buf, 255)
                if n > 0 && String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:kvm-vm" { return true }
            }
            usleep(1000)
        }
        return false
    }

    /// SIGINT, SIGTERM and SIGHUP used to kill minivisor outright (status 130, 143, 129: no line, no final
    /// screenshot, the guest's end unreported). Now the VM stops, one line names the signal and the status
    /// is 18, for a running guest (under the default seccomp filters) and for one stopped for a debugger.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func terminationSignalsStopTheVM() {
        let dir = scratch("signals")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let spin = dir + "/spin.bin"
        Support.writeFile(spin, Support.multibootBlob([0xeb, 0xfe]))
        for (signal, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT"), (SIGHUP, "SIGHUP")] {
            for args in [["run", "--timeout", "50", spin], ["run", "--gdb", "0", "--gdb-wait", "--timeout", "50", spin]] {
                let c = Child(Support.minivisor, args, stdout: .devNull)
                #expect(waitForVM(c.pid))
                usleep(200_000)   // into the run loop (or the wait for the debugger)
                kill(c.pid, signal)
                let (status, _, err) = c.collect(seconds: Self.deadline)
                #expect(status == 18, "\(name) \(args): \(err)")
                let lines = err.split(separator: "\n").filter { !$0.contains("gdb stub listening") }
                #expect(lines == ["minivisor: stopped by \(name)"], "\(name) \(args): \(err)")
            }
        }
    }

    /// An argument that is not UTF-8 used to be decoded with replacement characters: the image "\xff"
    /// was reported missing, and `--serial file:\xff` wrote the guest's output to a file nobody named
    /// (status 0). Now it is refused with one line (status 2) and nothing is created.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func argumentsThatAreNotUTF8AreRefused() throws {
        let dir = scratch("utf8")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let hello = try Support.guest("hello")
        // The shell makes the byte 0xff (Swift strings cannot hold it).
        let (status, out) = Support.run("/bin/sh", ["-c", "cd \"$1\" && exec \"$0\" run --serial \"file:$(printf '\\377')\" \"$2\"",
                                                    Support.minivisor, dir, hello])
        #expect(status == 2, "\(out)")
        #expect(out == "minivisor: argument 3, 'file:\\xff', is not UTF-8: give file names in UTF-8 (rename the file, or link to it under a UTF-8 name)\n")
        let (_, listing) = Support.run("/bin/ls", ["-A", dir])
        #expect(listing.isEmpty, "created: \(listing)")
        let (envStatus, envOut) = Support.run("/bin/sh", ["-c", "MINIVISOR_KVM_DEVICE=\"$(printf '/dev/\\377')\" exec \"$0\" run \"$1\"",
                                                          Support.minivisor, hello])
        #expect(envStatus == 2 && envOut.hasPrefix("minivisor: MINIVISOR_KVM_DEVICE '/dev/\\xff' is not UTF-8"), "\(envOut)")
    }

    /// A file-size limit (ulimit -f) below guest RAM used to end in "cannot create the VM: ftruncate(guest
    /// RAM, ...) failed: File too large" with status 14: guest RAM is a memfd, which the limit applies to.
    /// Now one line names RLIMIT_FSIZE and the fix, status 2.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func fileSizeLimitBelowGuestRAM() throws {
        let hello = try Support.guest("hello")
        let (status, out) = Support.run("/bin/sh", ["-c", "ulimit -f 1024 && exec \"$0\" run --memory 16M \"$1\"", Support.minivisor, hello])
        #expect(status == 2, "\(out)")
        #expect(out.components("\n") == 1 && out.contains("RLIMIT_FSIZE") && out.contains("ulimit -f unlimited"), "\(out)")
        // Enough for guest RAM (32 MiB in 512-byte blocks for dash, 64 MiB for bash): the guest runs.
        let (ok, okOut) = Support.run("/bin/sh", ["-c", "ulimit -f 65536 && exec \"$0\" run --memory 16M \"$1\"", Support.minivisor, hello])
        #expect(ok == 0, "\(okOut)")
    }

    /// MINIVISOR_KVM_DEVICE naming something that cannot be opened (here a symbolic link loop) with a
    /// line break in its name used to give a two-line message: the KVM layer did not quote paths.
    @Test func kvmDeviceThatCannotBeOpenedIsQuoted() {
        let dir = scratch("kvmloop")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let loop = dir + "/k\nvm"
        symlink(loop, loop)
        let (status, out) = Support.run(Support.minivisor, ["run"], environment: ["MINIVISOR_KVM_DEVICE": loop])
        #expect(status == 2, "\(out)")
        #expect(out.components("\n") == 1 && out.contains("'\(dir)/k\\nvm'"), "\(out)")
    }
}

/// `MachineConfiguration` at its extremes through the library: refused with an error or run, never a trap.
@Suite("Library configuration extremes (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct LibraryConfigurationTests {
    func run(_ change: (inout MachineConfiguration) -> Void) throws -> ExitReason {
        var c = MachineConfiguration()
        c.memoryBytes = 16 << 20
        c.serialOutput = .none
        c.cmdline = "code=3"
        change(&c)
        return try VirtualMachine(image: .file(try Support.guest("exitcode")), configuration: c).run()
    }

    /// A haltPollInterval beyond ~292 years used to trap (Int overflow turning it into nanoseconds).
    @Test func extremeDurationsRun() throws {
        #expect(try run { $0.haltPollInterval = .seconds(Int64.max); $0.timeout = .seconds(Int64.max) } == .debugExit(3))
        #expect(try run { $0.haltPollInterval = .zero } == .debugExit(3))
        #expect(try run { $0.haltPollInterval = .seconds(-5) } == .debugExit(3))
        #expect(try run { $0.timeout = .seconds(-1) } == .timeout)
    }

    @Test func impossibleSizesAreErrors() {
        for bytes: UInt64 in [0, 4095, UInt64.max, UInt64.max & ~4095, 1 << 62] {
            #expect(throws: ConfigurationError.self, "memoryBytes \(bytes)") { try run { $0.memoryBytes = bytes } }
        }
        for cpus in [0, -1, Int.min, Int.max, 256] {
            #expect(throws: ConfigurationError.self, "cpuCount \(cpus)") { try run { $0.cpuCount = cpus } }
        }
    }

    /// `ExitBenchmark.measure` with more than UInt32.max / 2 iterations used to trap computing 2N (the
    /// CLI range-checks --iterations; the library did not). It throws now, before any VM is built.
    @Test func benchmarkIterationsOutOfRangeThrow() {
        for n: UInt32 in [0, UInt32.max / 2 + 1, UInt32.max] {
            #expect(throws: BenchError.self, "iterations \(n)") { try ExitBenchmark.measure(.portWrite, iterations: n, minRounds: 1, budgetSeconds: 1) }
        }
    }
}
