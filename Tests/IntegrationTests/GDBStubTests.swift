import Glibc
import Minivisor
import Testing

/// `minivisor run --gdb PORT --gdb-wait` with Debian's gdb in batch mode: attach, break on a function
/// by symbol, stop there, read and change a variable, step, continue to the guest's normal exit. gdb is
/// a test dependency (scripts/install-deps.sh): its absence fails the test, it is never skipped.
@Suite("gdb stub (needs /dev/kvm and gdb)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct GDBStubTests {
    /// A port nobody listens on right now (the kernel's pick, released again).
    static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var len = socklen_t(Swift.MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
            bind(fd, p, len)
            return getsockname(fd, p, &len)
        } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Runs minivisor with the stub in the background and gdb with `commands` against it; returns
    /// (minivisor's status, its output, gdb's status, gdb's output).
    static func debug(_ guest: String, _ commands: [String], extra: [String] = []) throws -> (Int32, String, Int32, String) {
        #expect(access("/usr/bin/gdb", X_OK) == 0, "gdb is missing: run scripts/install-deps.sh (apt-get install gdb)")
        let image = try Support.guest(guest)
        let port = freePort()
        let vmOutput = Support.tempPath("gdb-vm-\(port).txt")
        defer { unlink(vmOutput) }
        // minivisor in the background through the shell, so the test can run gdb meanwhile.
        let vm = Support.spawnShell("\(Support.minivisor) run \(image) --gdb \(port) --gdb-wait --timeout 120 \(extra.joined(separator: " ")) > \(vmOutput) 2>&1")
        let script = ["set pagination off", "set confirm off", "target remote 127.0.0.1:\(port)"] + commands
        var args = ["-nx", "-batch"]
        for c in script { args += ["-ex", c] }
        // gdb may start before the stub listens: retry the connection a few times.
        var gdbStatus: Int32 = -1, gdbOutput = ""
        for _ in 0..<50 {
            (gdbStatus, gdbOutput) = Support.run("/usr/bin/gdb", args + [image])
            if !gdbOutput.contains("Connection refused") { break }
            usleep(100_000)
        }
        let vmStatus = Support.waitFor(vm)
        let out = Support.readFile(vmOutput)
        return (vmStatus, out, gdbStatus, gdbOutput)
    }

    @Test func breakReadChangeStepContinue() throws {
        let (status, vmOut, gdbStatus, gdb) = try Self.debug("debugme", [
            "break compute",
            "continue",
            "print secret",
            "set var secret = 5",
            "next",
            "print progress",
            "stepi",
            "info registers rip",
            "continue",
        ])
        #expect(gdbStatus == 0, "\(gdb)")
        #expect(gdb.contains("Breakpoint 1, compute"), "\(gdb)")
        #expect(gdb.contains("$1 = 7"), "\(gdb)")
        #expect(gdb.contains("$2 = 1"), "next ran `progress = 1`: \(gdb)")
        #expect(gdb.contains("exited with code 075"), "\(gdb)")    // gdb prints it in octal: 61
        #expect(vmOut.contains("debugme: secret=5 result=30 progress=2"), "\(vmOut)")
        #expect(status == 61, "\(vmOut)")                           // (30 << 1) | 1: the change took
    }

    @Test func hardwareBreakpointAndRegisterChange() throws {
        // Break with DR0, then skip compute's body by returning from it with a chosen result (RAX).
        let (status, vmOut, gdbStatus, gdb) = try Self.debug("debugme", [
            "hbreak compute",
            "continue",
            "info registers rip",
            "set var $rax = 21",
            "set var $rip = *(unsigned long *)$rsp",
            "set var $rsp = $rsp + 8",
            "delete",
            "continue",
        ])
        #expect(gdbStatus == 0, "\(gdb)")
        #expect(gdb.contains("Hardware assisted breakpoint 1 at 0x100020"), "\(gdb)")
        #expect(gdb.contains("Breakpoint 1, compute"), "\(gdb)")
        #expect(gdb.contains("rip            0x100020"), "\(gdb)")
        #expect(vmOut.contains("result=21 progress=0"), "\(vmOut)")
        #expect(status == 43, "\(vmOut)")                           // (21 << 1) | 1
    }

    /// `watch` on a variable the guest writes: on this software-KVM host too (read-only pages, not debug
    /// registers), gdb stops after each write with the old and new values; deleted, the guest runs to its end.
    @Test func writeWatchpointStopsWithOldAndNewValues() throws {
        let (status, vmOut, gdbStatus, gdb) = try Self.debug("debugme", [
            "watch rounds",
            "continue",
            "continue",
            "print progress",
            "delete",
            "continue",
        ])
        #expect(gdbStatus == 0, "\(gdb)")
        #expect(gdb.contains("Hardware watchpoint 1: rounds"), "\(gdb)")
        #expect(gdb.contains("Old value = 0\nNew value = 1"), "first write: \(gdb)")
        #expect(gdb.contains("Old value = 1\nNew value = 2"), "second write: \(gdb)")
        #expect(!gdb.contains("New value = 3"), "deleted before the third write: \(gdb)")
        #expect(gdb.contains("$1 = 0"), "stopped before compute ran: \(gdb)")
        #expect(gdb.contains("exited with code 0125"), "\(gdb)")   // 85 in octal
        #expect(vmOut.contains("debugme: secret=7 result=42 progress=2"), "\(vmOut)")
        #expect(status == 85, "\(vmOut)")
    }

    /// gdb's `detach` with a write watchpoint set (gdb removes it, z2, then D): the guest runs to its end
    /// instead of stopping, with nobody to continue it, at the next write. A watchpoint on an address that
    /// is not RAM (the IOAPIC's registers) is refused with an error packet.
    @Test func detachRemovesWriteWatchpointsAndNonRAMIsRefused() throws {
        let (status, vmOut, gdbStatus, gdb) = try Self.debug("debugme", [
            "watch *(int *)0xfec00000",
            "continue",
            "delete",
            "watch rounds",
            "continue",
            "detach",
        ])
        #expect(gdbStatus == 0, "\(gdb)")
        #expect(gdb.contains("Could not insert hardware watchpoint"), "\(gdb)")
        #expect(gdb.contains("Old value = 0\nNew value = 1"), "\(gdb)")
        #expect(vmOut.contains("debugme: secret=7 result=42 progress=2"), "\(vmOut)")
        #expect(status == 85, "not the --timeout (12): \(vmOut)")
    }

    /// A debugger that vanishes (no z2, no D: the connection just closes) while a write watchpoint is set:
    /// the stub removes it itself, and the guest runs to its end instead of stopping at the next write.
    @Test func aVanishedDebuggerLeavesNoWriteWatchpoint() throws {
        let image = try Support.guest("debugme")
        let (_, nm) = Support.run("/usr/bin/nm", [image])
        let rounds = try #require(nm.split(separator: "\n").first { $0.hasSuffix(" B rounds") }.map { String($0.prefix(16)) })
        let port = Self.freePort()
        let vmOutput = Support.tempPath("gdb-vanish-\(port).txt")
        defer { unlink(vmOutput) }
        let vm = Support.spawnShell("\(Support.minivisor) run \(image) --gdb \(port) --gdb-wait --timeout 30 > \(vmOutput) 2>&1")
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var connected = false
        for _ in 0..<50 where !connected {
            connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(Swift.MemoryLayout<sockaddr_in>.size)) == 0 } }
            if !connected { usleep(100_000) }
        }
        #expect(connected)
        let wire = "$Z2,\(rounds),4#00$c#00"   // the stub does not check checksums
        _ = wire.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        var received = ""
        var buf = [UInt8](repeating: 0, count: 4096)
        while !received.contains("watch:") {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            received += String(decoding: buf[0..<n], as: UTF8.self)
        }
        close(fd)
        let status = Support.waitFor(vm)
        let trimmed = rounds.drop { $0 == "0" }
        #expect(received.contains("$OK#"), "\(received)")
        #expect(received.contains("watch:\(trimmed);"), "\(received)")
        #expect(status == 85, "not the --timeout (12): \(Support.readFile(vmOutput))")
    }

    @Test func detachLetsTheGuestFinish() throws {
        let (status, vmOut, gdbStatus, gdb) = try Self.debug("debugme", ["break compute", "continue", "detach"])
        #expect(gdbStatus == 0, "\(gdb)")
        #expect(gdb.contains("Breakpoint 1, compute"), "\(gdb)")
        #expect(vmOut.contains("secret=7 result=42"), "the int3 is gone after detach: \(vmOut)")
        #expect(status == 85, "\(vmOut)")
    }

    /// Packets come from the network: out-of-range offsets and lengths, a breakpoint without a kind and
    /// an endless packet are refused, and the stub keeps answering.
    @Test func malformedPacketsAreRefused() throws {
        let image = try Support.guest("debugme")
        let port = Self.freePort()
        let vmOutput = Support.tempPath("gdb-raw-\(port).txt")
        defer { unlink(vmOutput) }
        let vm = Support.spawnShell("\(Support.minivisor) run \(image) --gdb \(port) --gdb-wait --timeout 120 > \(vmOutput) 2>&1")
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        var connected = false
        for _ in 0..<50 where !connected {
            connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(Swift.MemoryLayout<sockaddr_in>.size)) == 0 } }
            if !connected { usleep(100_000) }
        }
        #expect(connected)
        let packets = [
            "qXfer:features:read:target.xml:-1,10",
            "qXfer:features:read:target.xml:1,7fffffffffffffff",
            "qXfer:features:read:target.xml:7fffffffffffffff,7fffffffffffffff",
            "Z0,0,;",
            "m0,-1",
        ]
        // The stub does not check checksums; "00" stands for any. Then a "packet" without an end, longer
        // than the announced PacketSize, which the stub drops.
        let wire = packets.map { "$\($0)#00" }.joined() + "$" + String(repeating: "x", count: 0xc000) + "$?#00$k#00"
        _ = wire.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        var received: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            received += buf[0..<n]
        }
        close(fd)
        let out = String(decoding: received, as: UTF8.self)
        let status = Support.waitFor(vm)
        #expect(out.contains("$E01#"), "\(out)")
        #expect(out.contains("$l#"), "past the end: \(out)")
        #expect(out.contains("$T05thread:01;"), "the stub still answers `?`: \(out)")
        #expect(status < 128, "not killed by a signal: \(Support.readFile(vmOutput))")
    }

    @Test func multibootGuestGetsThe32BitView() throws {
        let (_, vmOut, gdbStatus, gdb) = try Self.debug("multiboot", ["info registers eip", "x/i $pc", "kill"])
        #expect(gdbStatus == 0, "\(gdb)")
        #expect(gdb.contains("eip            0x"), "\(gdb)")
        #expect(!gdb.contains("rip"), "\(gdb)")
        _ = vmOut
    }
}
