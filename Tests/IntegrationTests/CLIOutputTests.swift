import Glibc
import Minivisor
import Synchronization
import Testing

/// A child process with its standard descriptors set up by the test, waited for with a deadline (a
/// minivisor that hangs fails the test instead of hanging it).
final class Child {
    enum Descriptor {
        case devNull
        case closed
        /// A pipe; the test gets the other end.
        case pipe
    }

    let pid: pid_t
    /// The test's ends of `.pipe` descriptors, by child descriptor number.
    var ends: [Int32: Int32] = [:]

    init(_ path: String, _ args: [String], stdin: Descriptor = .devNull, stdout: Descriptor = .pipe,
         stderr: Descriptor = .pipe, environment: [String: String] = [:]) {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        var childEnds: [Int32] = []
        var ends: [Int32: Int32] = [:]
        for (fd, d) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch d {
            case .devNull: posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
            case .closed: posix_spawn_file_actions_addclose(&actions, fd)
            case .pipe:
                var p: [Int32] = [0, 0]
                pipe(&p)
                p.forEach { _ = fcntl($0, F_SETFD, FD_CLOEXEC) }
                let (mine, theirs) = fd == 0 ? (p[1], p[0]) : (p[0], p[1])
                posix_spawn_file_actions_adddup2(&actions, theirs, fd)
                childEnds.append(theirs)
                ends[fd] = mine
            }
        }
        let argv = ([path] + args).map { strdup($0) } + [nil]
        let envp = Support.environment(adding: environment).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        // Default signal dispositions, as from a shell: the test runner may ignore some (SIGXFSZ).
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attr, argv, envp)
        posix_spawnattr_destroy(&attr)
        posix_spawn_file_actions_destroy(&actions)
        childEnds.forEach { close($0) }
        self.pid = rc == 0 ? pid : -1
        self.ends = ends
    }

    /// Reads what the child writes on its `.pipe` stdout and stderr until it exits and they close, or
    /// until `seconds` have passed (the child is then killed). Returns (status or nil when it had to be
    /// killed, stdout, stderr); 128 + signal when the child died of a signal. Closes the test's ends.
    func collect(seconds: Double) -> (status: Int32?, out: String, err: String) {
        var open = ends.filter { $0.key != 0 }
        var bytes: [Int32: [UInt8]] = [1: [], 2: []]
        let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
        var status: Int32? = nil
        var raw: Int32 = 0
        var buf = [UInt8](repeating: 0, count: 65536)
        while pid > 0 {
            var pfds = open.map { pollfd(fd: $0.value, events: Int16(POLLIN), revents: 0) }
            if pfds.isEmpty { usleep(5000) } else { _ = poll(&pfds, nfds_t(pfds.count), 10) }
            for p in pfds where p.revents != 0 {
                let n = buf.withUnsafeMutableBytes { read(p.fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard let (fd, _) = open.first(where: { $0.value == p.fd }) else { continue }
                if n <= 0 { open[fd] = nil; close(p.fd) } else { bytes[fd, default: []] += buf[0..<n] }
            }
            if status == nil && waitpid(pid, &raw, WNOHANG) == pid {
                status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
            }
            if status != nil && open.isEmpty { break }
            if ContinuousClock.now > deadline {
                if status == nil {
                    kill(pid, SIGKILL)
                    while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
                }
                break
            }
        }
        open.values.forEach { close($0) }
        ends = ends.filter { $0.key == 0 }
        func text(_ fd: Int32) -> String { String(decoding: (bytes[fd] ?? []).filter { $0 != 13 }, as: UTF8.self) }
        return (status, text(1), text(2))
    }

    func closeEnd(_ fd: Int32) {
        if let e = ends[fd] { close(e) }
        ends[fd] = nil
    }

    /// The exit status (128 + signal when killed), or nil when the child was still running after
    /// `seconds` (it is then killed). For children whose stdout and stderr are not pipes.
    func wait(seconds: Double) -> Int32? { collect(seconds: seconds).status }
}

/// What minivisor does with its outputs, its numeric flags and its standard descriptors (issue 7).
@Suite("CLI outputs and process", .serialized)
struct CLIOutputTests {
    /// How long any one minivisor run may take before the test calls it hung.
    static let deadline = 60.0

    /// Runs minivisor; returns (status, stdout, stderr). Status -1 when it hung past the deadline.
    func mv(_ args: [String], env: [String: String] = [:], stdin: Child.Descriptor = .devNull) -> (Int32, String, String) {
        let r = Child(Support.minivisor, args, stdin: stdin, environment: env).collect(seconds: Self.deadline)
        return (r.status ?? -1, r.out, r.err)
    }

    func expectRefusal(_ args: [String], mentions: [String], env: [String: String] = [:],
                       sourceLocation: SourceLocation = #_sourceLocation) {
        let (status, out, err) = mv(args, env: env)
        #expect(status == 2, "status \(status) for \(args): \(out)\(err)", sourceLocation: sourceLocation)
        #expect(err.split(separator: "\n", omittingEmptySubsequences: false).count == 2 && err.hasSuffix("\n"),
                "one line expected: \(err)", sourceLocation: sourceLocation)
        #expect(err.hasPrefix("minivisor: "), "\(err)", sourceLocation: sourceLocation)
        for m in mentions { #expect(err.contains(m), "'\(m)' missing in: \(err)", sourceLocation: sourceLocation) }
    }

    /// A fresh directory for one test.
    func scratch(_ name: String) -> String {
        let dir = Support.tempPath("out-\(name)")
        _ = Support.run("/bin/rm", ["-rf", dir])
        mkdir(dir, 0o755)
        return dir
    }

    func contents(_ path: String) -> [UInt8] { Support.readBytes(path) }

    /// A multiboot guest (32-bit code) that writes `count` bytes 'x' to COM1, then `code` to the debug-exit
    /// port (status (code << 1) | 1).
    func writerGuest(_ dir: String, count: UInt32, code: UInt8) -> String {
        var c: [UInt8] = [0x66, 0xba, 0xf8, 0x03]                          // mov dx, 0x3f8
        c += [0xb9] + withUnsafeBytes(of: count.littleEndian) { Array($0) } // mov ecx, count
        c += [0xb0, 0x78, 0xee, 0x49, 0x75, 0xfa]                           // l: mov al, 'x'; out dx, al; dec ecx; jnz l
        c += [0x66, 0xba, 0xf4, 0x00, 0xb0, code, 0xee]                     // mov dx, 0xf4; mov al, code; out dx, al
        c += [0xf4, 0xeb, 0xfd]                                             // hlt; jmp hlt
        let path = dir + "/writer.bin"
        Support.writeFile(path, Support.multibootBlob(c))
        return path
    }

    // MARK: 1. numeric flags

    /// `--timeout 1e16` used to die of SIGILL (Double to Int64 overflow); `bench --iterations 4294967295`
    /// trapped on 2N after a long run. Every numeric flag is range-checked first: status 2, one line.
    @Test func numericFlagsOutOfRange() {
        let env = ["MINIVISOR_KVM_DEVICE": "/nonexistent/kvm"]   // must be refused before KVM is needed
        for t in ["1e16", "1e400", "nan", "inf", "-1", "0"] {
            expectRefusal(["run", "--serial", "none", "--timeout", t], mentions: ["--timeout", "0.001 to 31536000"], env: env)
        }
        for m in ["99999999999999T", "18446744073709551616", "0"] {
            expectRefusal(["run", "--memory", m], mentions: ["--memory", "give 4M to"], env: env)
        }
        for c in ["0", "-1", "256", "99999999999999999999"] {
            expectRefusal(["run", "--cpus", c], mentions: ["--cpus", "from 1 to 255"], env: env)
        }
        expectRefusal(["bench", "--iterations", "4294967295"], mentions: ["--iterations", "from 1 to 10000000"], env: env)
        expectRefusal(["bench", "--rounds", "-3"], mentions: ["--rounds", "from 1 to 1000"], env: env)
        expectRefusal(["bench", "--startup-runs", "0"], mentions: ["--startup-runs", "from 1 to 1000"], env: env)
    }

    // MARK: 2. outputs that are inputs

    /// `--serial file:IMAGE` used to truncate the image before reading it. Outputs are compared with every
    /// input by device and inode (hard links, ../ and symbolic links) and with each other, before anything
    /// is opened; the input is left as it was.
    @Test func outputsThatAreInputsAreRefused() throws {
        let dir = scratch("same")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let image = dir + "/guest.elf"
        Support.writeFile(image, contents(try Support.guest("hello")))
        let original = contents(image)
        #expect(!original.isEmpty)
        link(image, dir + "/hard.elf")
        symlink(image, dir + "/soft.elf")
        mkdir(dir + "/sub", 0o755)
        for out in [image, dir + "/hard.elf", dir + "/sub/../guest.elf", dir + "/soft.elf"] {
            expectRefusal(["run", "--serial", "file:\(out)", image], mentions: ["same file as the guest image"])
            #expect(contents(image) == original, "\(out) destroyed the image")
        }
        let module = dir + "/module.txt"
        Support.writeFile(module, Array("module bytes".utf8))
        let mb = writerGuest(dir, count: 1, code: 0)
        expectRefusal(["run", "--module", "\(dir)/sub/../module.txt arg", "--serial", "file:\(module)", mb],
                      mentions: ["same file as the module"])
        #expect(contents(module) == Array("module bytes".utf8))
        expectRefusal(["run", "--vgpu", "--screenshot", image, image], mentions: ["--screenshot", "same file as the guest image"])
        #expect(contents(image) == original)
        // Two outputs, the same new file, or the same existing file.
        expectRefusal(["run", "--vgpu", "--serial", "file:\(dir)/both", "--screenshot", "\(dir)/sub/../both"],
                      mentions: ["same file as --serial file:"])
        #expect(access(dir + "/both", F_OK) != 0, "an output was created before the VM was built")
        Support.writeFile(dir + "/both", [1, 2, 3])
        expectRefusal(["run", "--vgpu", "--serial", "file:\(dir)/both", "--screenshot", "\(dir)/both"],
                      mentions: ["same file as --serial file:"])
        #expect(contents(dir + "/both") == [1, 2, 3])
    }

    /// The library behaves the same: VirtualMachine refuses a `.file` serial output that is its image.
    @Test func libraryRefusesOutputThatIsAnInput() throws {
        let dir = scratch("lib")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let image = dir + "/guest.elf"
        Support.writeFile(image, contents(try Support.guest("hello")))
        let original = contents(image)
        link(image, dir + "/hard.elf")
        var config = MachineConfiguration()
        config.memoryBytes = 16 << 20
        config.serialOutput = .file(dir + "/hard.elf")
        #expect(throws: OutputError.self) { _ = try VirtualMachine(image: .file(image), configuration: config) }
        config.serialOutput = .file(dir + "/serial.txt")
        #expect(throws: OutputError.self) {
            _ = try VirtualMachine(image: .file(image), configuration: config, vgpu: VGPUOptions(screenshotPath: dir + "/serial.txt"))
        }
        #expect(contents(image) == original)
        #expect(access(dir + "/serial.txt", F_OK) != 0)
    }

    /// Outputs are created or truncated only once the VM is built: a bad image leaves them alone.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func outputsUntouchedWhenTheVMCannotBeBuilt() {
        let dir = scratch("untouched")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        Support.writeFile(dir + "/serial.txt", Array("keep".utf8))
        expectRefusal(["run", "--serial", "file:\(dir)/serial.txt", Support.root + "/Package.swift"], mentions: ["neither an ELF64"])
        #expect(contents(dir + "/serial.txt") == Array("keep".utf8))
        expectRefusal(["run", "--serial", "file:\(dir)/new.txt", Support.root + "/Package.swift"], mentions: ["neither an ELF64"])
        #expect(access(dir + "/new.txt", F_OK) != 0)
    }

    // MARK: 3. blocking opens

    /// A FIFO without a reader as `--serial file:` used to block forever in open(), past --timeout.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func fifoWithoutReader() throws {
        let dir = scratch("fifo")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        mkfifo(dir + "/fifo", 0o644)
        expectRefusal(["run", "--serial", "file:\(dir)/fifo", "--timeout", "5", try Support.guest("hello")],
                      mentions: ["FIFO with no reader"])
        // With a reader, the guest's output arrives through the FIFO.
        let reader = open(dir + "/fifo", O_RDONLY | O_NONBLOCK)
        defer { close(reader) }
        let (status, _, err) = mv(["run", "--serial", "file:\(dir)/fifo", try Support.guest("hello")])
        #expect(status == 0, "\(err)")
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = read(reader, &buf, 4096)
        #expect(String(decoding: buf[0..<max(n, 0)], as: UTF8.self).contains("hello from"))
        // MINIVISOR_KVM_DEVICE naming a FIFO is refused before it is opened.
        expectRefusal(["run"], mentions: ["MINIVISOR_KVM_DEVICE", "not a character device"],
                      env: ["MINIVISOR_KVM_DEVICE": dir + "/fifo"])
    }

    /// --timeout bounds a vCPU that waits to write serial output to a full pipe nobody reads.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func timeoutBoundsABlockedSerialWrite() {
        let dir = scratch("full")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let guest = writerGuest(dir, count: 1_000_000, code: 3)
        let c = Child(Support.minivisor, ["run", "--timeout", "2", guest], stderr: .devNull)
        _ = fcntl(c.ends[1]!, 1031 /* F_SETPIPE_SZ */, 4096)   // fills after 4 KiB; never read
        // Wait without reading: poll the status only.
        var raw: Int32 = 0
        var status: Int32? = nil
        let until = ContinuousClock.now + .seconds(Self.deadline)
        while status == nil && ContinuousClock.now < until {
            if waitpid(c.pid, &raw, WNOHANG) == c.pid { status = (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f) }
            usleep(5000)
        }
        if status == nil { kill(c.pid, SIGKILL); _ = c.wait(seconds: Self.deadline) }
        c.closeEnd(1)
        #expect(status == 12, "status \(String(describing: status)) (nil: still running past the deadline)")
    }

    /// A slow reader loses nothing: writes that find the pipe full wait (poll) and resume, and a kick
    /// signal (EINTR) is retried. The old sink dropped the byte whenever the monitor's halt-query kick
    /// interrupted a blocked write to stdout.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func slowReaderLosesNothing() throws {
        let dir = scratch("slow")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let count = 12_000
        let guest = writerGuest(dir, count: UInt32(count), code: 3)
        /// Reads `fd` 64 bytes at a time with pauses until `done()` and end of file; returns the byte count.
        func drain(_ fd: Int32, done: () -> Bool) -> Int {
            var total = 0
            var buf = [UInt8](repeating: 0, count: 64)
            let until = ContinuousClock.now + .seconds(Self.deadline)
            while ContinuousClock.now < until {
                let n = read(fd, &buf, 64)
                if n > 0 { total += buf[0..<n].filter { $0 == 0x78 }.count; usleep(3000); continue }
                if n == 0 && done() { break }
                if n < 0 && errno != EAGAIN && errno != EINTR { break }
                usleep(3000)
            }
            return total
        }
        // Standard output, a blocking pipe.
        let c = Child(Support.minivisor, ["run", guest], stderr: .devNull)
        _ = fcntl(c.ends[1]!, 1031 /* F_SETPIPE_SZ */, 4096)
        let viaStdout = drain(c.ends[1]!) { true }
        #expect(c.wait(seconds: Self.deadline) == 7)
        #expect(viaStdout == count)
        // A FIFO as --serial file: (opened O_NONBLOCK by minivisor).
        mkfifo(dir + "/fifo", 0o644)
        let reader = open(dir + "/fifo", O_RDONLY | O_NONBLOCK)
        defer { close(reader) }
        _ = fcntl(reader, 1031 /* F_SETPIPE_SZ */, 4096)
        let f = Child(Support.minivisor, ["run", "--serial", "file:\(dir)/fifo", guest], stdout: .devNull, stderr: .devNull)
        var status: Int32? = nil
        var raw: Int32 = 0
        let viaFIFO = drain(reader) {
            if status == nil && waitpid(f.pid, &raw, WNOHANG) == f.pid { status = (raw >> 8) & 0xff }
            return status != nil
        }
        #expect(status == 7)
        #expect(viaFIFO == count)
    }

    // MARK: 4. sinks that go away

    /// `minivisor run ... | head -c 0`: SIGPIPE used to kill minivisor (status 141) and the guest's status
    /// was lost. Now EPIPE is reported once and the guest's status stays.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func brokenPipeKeepsTheGuestStatus() throws {
        let c = Child(Support.minivisor, ["run", "--cmdline", "code=3", try Support.guest("exitcode")])
        c.closeEnd(1)   // the reader goes away before the guest writes
        let (status, _, err) = c.collect(seconds: Self.deadline)
        #expect(status == 7, "\(err)")
        #expect(err.components("EPIPE") == 1 && err.components("\n") == 1 && err.contains("standard output"), "\(err)")
    }

    /// A full device (ENOSPC) as the serial file: reported once, the guest's status stays. It used to be
    /// dropped silently.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func fullDeviceIsReportedOnce() throws {
        var st = stat()
        try #require(stat("/dev/full", &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR, "/dev/full is not the full device on this host")
        let (status, _, err) = mv(["run", "--serial", "file:/dev/full", "--cmdline", "code=3", try Support.guest("exitcode")])
        #expect(status == 7, "\(err)")
        #expect(err.components("ENOSPC") == 1 && err.components("\n") == 1 && err.contains("'/dev/full'"), "\(err)")
    }

    /// A file-size limit (RLIMIT_FSIZE) reached by the serial file: SIGXFSZ used to kill minivisor (status
    /// 153; where SIGXFSZ was ignored, output was dropped silently). The limit is set on the running process (prlimit(1)) once output flows: guest RAM is a memfd,
    /// which the same limit would refuse at start-up.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func fileSizeLimitIsReportedOnce() {
        let dir = scratch("fsize")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let guest = writerGuest(dir, count: 200_000, code: 3)
        let out = dir + "/serial.txt"
        let c = Child(Support.minivisor, ["run", "--serial", "file:\(out)", guest], stdout: .devNull)
        var st = stat()
        let until = ContinuousClock.now + .seconds(Self.deadline)
        while ContinuousClock.now < until && !(stat(out, &st) == 0 && st.st_size > 0) { usleep(1000) }
        let (set, setOut) = Support.run("/usr/bin/prlimit", ["--pid", "\(c.pid)", "--fsize=1:1"])   // util-linux
        #expect(set == 0, "\(setOut)")
        let (status, _, err) = c.collect(seconds: Self.deadline)
        #expect(status == 7, "\(err)")
        #expect(err.components("EFBIG") == 1 && err.components("\n") == 1, "\(err)")
        #expect(contents(out).count < 200_000)
    }

    // MARK: 5. closed standard descriptors

    /// Started with 0, 1 and 2 closed, minivisor used to open /dev/kvm, the VM and the guest-RAM memfd as
    /// 0, 1 and 2 (log lines went into guest RAM). Now they are /dev/null while it runs.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func closedStandardDescriptors() throws {
        let dir = scratch("closed")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let spin = dir + "/spin.bin"
        Support.writeFile(spin, Support.multibootBlob([0xeb, 0xfe]))
        let c = Child(Support.minivisor, ["run", "--timeout", "3", spin], stdin: .closed, stdout: .closed, stderr: .closed)
        func target(_ fd: Int) -> String {
            var buf = [CChar](repeating: 0, count: 256)
            let n = readlink("/proc/\(c.pid)/fd/\(fd)", &buf, 255)
            return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "closed"
        }
        // Once the VM exists, look at what 0, 1 and 2 are.
        let until = ContinuousClock.now + .seconds(Self.deadline)
        while ContinuousClock.now < until && !(0..<64).contains(where: { target($0) == "anon_inode:kvm-vm" }) { usleep(1000) }
        for fd in 0...2 { #expect(target(fd) == "/dev/null", "descriptor \(fd) is \(target(fd))") }
        #expect(c.wait(seconds: Self.deadline) == 12)
        // The guest still ends correctly, with all three closed or with only stdout closed.
        let exitcode = try Support.guest("exitcode")
        let all = Child(Support.minivisor, ["run", "--cmdline", "code=5", exitcode], stdin: .closed, stdout: .closed, stderr: .closed)
        #expect(all.wait(seconds: Self.deadline) == 11)
        let (status, _, err) = Child(Support.minivisor, ["run", "--cmdline", "code=5", exitcode], stdout: .closed)
            .collect(seconds: Self.deadline)
        #expect(status == 11 && err.isEmpty, "\(err)")
    }

    // MARK: 6. screenshot output

    /// `--screenshot` to an unwritable place used to run the whole VM and exit 0 without a PNG. It is
    /// checked up front like `--serial file:` (before /dev/kvm is opened).
    @Test func screenshotCheckedUpFront() {
        let dir = scratch("shot")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let env = ["MINIVISOR_KVM_DEVICE": "/nonexistent/kvm"]
        expectRefusal(["run", "--vgpu", "--screenshot", "/nonexistent/dir/out.png"], mentions: ["--screenshot", "not an existing directory"], env: env)
        expectRefusal(["run", "--vgpu", "--screenshot", dir], mentions: ["--screenshot", "is a directory"], env: env)
        mkfifo(dir + "/fifo", 0o644)
        expectRefusal(["run", "--vgpu", "--screenshot", dir + "/fifo"], mentions: ["--screenshot", "is a FIFO"], env: env)
        if getuid() != 0 {
            mkdir(dir + "/ro", 0o555)
            expectRefusal(["run", "--vgpu", "--screenshot", dir + "/ro/out.png"], mentions: ["--screenshot", "not writable"], env: env)
        }
    }

    /// A final screenshot that cannot be written (a full device) is said once and the exit status is 14
    /// (it used to be a warning and status 0). The output is left in place: libpng's own file writer
    /// removed a file it failed to write, and so, run as root, deleted /dev/full.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func finalScreenshotFailureSetsTheStatus() throws {
        func isCharacterDevice(_ path: String) -> Bool {
            var st = stat()
            return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR
        }
        try #require(isCharacterDevice("/dev/full"), "/dev/full is not the full device on this host")
        let (status, _, err) = mv(["run", "--vgpu", "--serial", "none", "--screenshot", "/dev/full", try Support.guest("vgpu_fill")])
        #expect(status == 14, "\(err)")
        let finalLines = err.split(separator: "\n").filter { $0.hasPrefix("minivisor: cannot write screenshot '/dev/full'") }
        #expect(finalLines.count == 1 && err.contains("ENOSPC") && err.contains("exit status 14"), "\(err)")
        #expect(isCharacterDevice("/dev/full"), "the failed screenshot removed /dev/full")
    }

    // MARK: 7. one line

    /// Paths with line breaks are quoted and escaped: still one line.
    @Test func pathsWithLineBreaksStayOnOneLine() throws {
        let dir = scratch("newline")
        defer { _ = Support.run("/bin/rm", ["-rf", dir]) }
        let env = ["MINIVISOR_KVM_DEVICE": "/nonexistent/kvm"]
        expectRefusal(["run", "--serial", "file:/nonexistent/a\nb"], mentions: ["'/nonexistent/a\\nb'"], env: env)
        expectRefusal(["run", "--vgpu", "--screenshot", "/nonexistent/a\nb.png"], mentions: ["'/nonexistent/a\\nb.png'"], env: env)
        expectRefusal(["run", "--cpus", "1\n2"], mentions: ["'1\\n2'"], env: env)
        expectRefusal(["run", "--frob\nnicate"], mentions: ["--frob\\nnicate"], env: env)
        let image = dir + "/guest\n.elf"
        Support.writeFile(image, contents(try Support.guest("hello")))
        expectRefusal(["run", "--serial", "file:\(image)", image], mentions: ["'\(dir)/guest\\n.elf'", "same file"], env: env)
        expectRefusal(["run"], mentions: ["MINIVISOR_KVM_DEVICE", "'\(dir)/guest\\n.elf'"], env: ["MINIVISOR_KVM_DEVICE": image])
        expectRefusal(["run"], mentions: ["MINIVISOR_KVM_DEVICE", "'/nonexistent/k\\nvm'", "does not exist"],
                      env: ["MINIVISOR_KVM_DEVICE": "/nonexistent/k\nvm"])
    }
}

extension String {
    /// How many times `s` occurs.
    func components(_ s: String) -> Int { split(separator: s, omittingEmptySubsequences: false).count - 1 }
}
