import Glibc
import Minivisor
import Testing

/// The command-line tool: bad input gets one line naming cause and fix, and status 2.
@Suite("CLI", .serialized)
struct CLITests {
    func mv(_ args: [String], env: [String: String] = [:]) -> (Int32, String) {
        Support.run(Support.minivisor, args, environment: env)
    }

    func expectUsageError(_ args: [String], mentions: String, env: [String: String] = [:],
                          sourceLocation: SourceLocation = #_sourceLocation) {
        let (status, out) = mv(args, env: env)
        #expect(status == 2, "status for \(args): \(out)", sourceLocation: sourceLocation)
        let lines = out.split(separator: "\n")
        #expect(lines.count == 1, "one line expected: \(out)", sourceLocation: sourceLocation)
        #expect(out.hasPrefix("minivisor: "), sourceLocation: sourceLocation)
        #expect(out.contains(mentions), "\(out)", sourceLocation: sourceLocation)
    }

    @Test func helpExplainsEveryFlag() {
        let (status, out) = mv(["run", "--help"])
        #expect(status == 0)
        for flag in ["--memory", "--cpus", "--cmdline", "--serial", "--module", "--timeout", "--log-level"] {
            #expect(out.contains(flag), "help lacks \(flag)")
        }
    }

    @Test func unknownFlag() { expectUsageError(["run", "--frobnicate"], mentions: "--frobnicate") }
    @Test func missingImage() { expectUsageError(["run", "/nonexistent/guest.elf"], mentions: "does not exist") }
    @Test func notELF() { expectUsageError(["run", Support.root + "/Package.swift"], mentions: "neither an ELF64") }
    @Test func unreadableImage() { expectUsageError(["run", "/"], mentions: "cannot read") }
    @Test func sharedObjectIsNotAnExecutable() { expectUsageError(["run", "/bin/ls"], mentions: "not an executable") }
    @Test func badMemorySize() { expectUsageError(["run", "--memory", "lots"], mentions: "--memory") }
    @Test func memoryTooSmall() { expectUsageError(["run", "--memory", "1M"], mentions: "too small") }
    @Test func memoryTooLarge() { expectUsageError(["run", "--memory", "64T"], mentions: "physical memory") }
    @Test func badCPUCount() { expectUsageError(["run", "--cpus", "0"], mentions: "--cpus") }
    @Test func badSerial() { expectUsageError(["run", "--serial", "tcp:1234"], mentions: "--serial") }
    @Test func unwritableSerialFile() { expectUsageError(["run", "--serial", "file:/nonexistent/dir/out"], mentions: "--serial file:'/nonexistent/dir/out' cannot be created") }
    @Test func noKVMDevice() { expectUsageError(["run"], mentions: "/nonexistent/kvm", env: ["MINIVISOR_KVM_DEVICE": "/nonexistent/kvm"]) }

    /// True when this process can run the CLI as 'nobody' and 'nobody' may not open /dev/kvm.
    static let kvmRefusesNobody: Bool = {
        var st = stat()
        return getuid() == 0 && access("/usr/bin/setpriv", X_OK) == 0 && stat("/dev/kvm", &st) == 0 && st.st_mode & 0o006 != 0o006
    }()

    @Test(.enabled(if: CLITests.kvmRefusesNobody, "needs root, setpriv and a /dev/kvm that other users may not open"))
    func noPermissionForKVM() {
        let (status, out) = Support.run("/usr/bin/setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                                             Support.minivisor, "run", "--serial", "none"])
        #expect(status == 2, "\(out)")
        #expect(out.contains("no permission to open '/dev/kvm'"), "\(out)")
        #expect(out.split(separator: "\n").count == 1)
    }

    @Test func wrongMachineType() {
        let path = Support.tempPath("aarch64.elf")
        var h: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        h += [2, 0, 183, 0] + [UInt8](repeating: 0, count: 44)
        Support.writeFile(path, h)
        defer { unlink(path) }
        expectUsageError(["run", path], mentions: "machine type 183")
    }

    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func segmentsOutsideRAM() throws {
        let path = Support.tempPath("high.elf")
        // ELF64 with one PT_LOAD at 256 MiB; run with 16 MiB of RAM.
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        var e: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        e += le(UInt16(2)) + le(UInt16(62)) + le(UInt32(1)) + le(UInt64(0x1000_0000)) + le(UInt64(64)) + le(UInt64(0))
        e += le(UInt32(0)) + le(UInt16(64)) + le(UInt16(56)) + le(UInt16(1)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
        e += le(UInt32(1)) + le(UInt32(5)) + le(UInt64(120)) + le(UInt64(0x1000_0000)) + le(UInt64(0x1000_0000))
        e += le(UInt64(2)) + le(UInt64(2)) + le(UInt64(0x1000))
        e += [0xeb, 0xfe]
        Support.writeFile(path, e)
        defer { unlink(path) }
        expectUsageError(["run", "--memory", "16M", path], mentions: "outside guest RAM")
    }

    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func guestStatusesReachTheShell() throws {
        #expect(mv(["run", "--serial", "none", try Support.guest("hello")]).0 == 0)
        #expect(mv(["run", "--serial", "none", "--cmdline", "code=3", try Support.guest("exitcode")]).0 == 7)
        let (tf, out) = mv(["run", "--serial", "none", try Support.guest("triplefault")])
        #expect(tf == 6)
        #expect(out.contains("triple-faulted") && out.contains("rip="))
        let spin = Support.tempPath("spin.bin")
        Support.writeFile(spin, Support.multibootBlob([0xeb, 0xfe]))
        defer { unlink(spin) }
        let (to, tout) = mv(["run", "--serial", "none", "--timeout", "0.3", spin])
        #expect(to == 12, "\(tout)")
    }

    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func serialToFileAndDefaultGuest() throws {
        let path = Support.tempPath("serial.txt")
        defer { unlink(path) }
        let (status, out) = mv(["--serial", "file:\(path)", "--cmdline", "to a file"])
        #expect(status == 0, "\(out)")
        let fd = open(path, O_RDONLY)
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = read(fd, &buf, 4096)
        close(fd)
        let text = String(decoding: buf[0..<max(n, 0)], as: UTF8.self)
        #expect(text.contains("built-in demo guest") && text.contains("cmdline: to a file"))
    }
}
