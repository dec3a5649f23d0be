import Glibc
import Testing

/// The serial console on a terminal (issue 9): `minivisor run` under a pseudo-terminal
/// (Tests/Scripts/console_pty.py, python3's `pty`), typing to Guests/echo, which reports each byte it
/// reads from COM1. minivisor used to leave the terminal cooked: the guest saw nothing before Enter, the
/// terminal echoed the keys itself and Ctrl-C killed minivisor. Now the terminal is raw while the guest
/// runs and `stty -g` is the same before and after, whichever way minivisor ends.
@Suite("Serial console on a terminal", .serialized)
struct ConsoleTerminalTests {
    /// Runs the driver in `mode`; nil (after saying why) when this machine has no pseudo-terminals and
    /// this is not CI.
    func drive(_ mode: String) throws -> [String: String]? {
        let guest = try Support.guest("echo")
        let (status, output) = Support.run("/usr/bin/python3", [Support.root + "/Tests/Scripts/console_pty.py",
                                                                Support.minivisor, guest, mode])
        if status == 3 && getenv("CI").map({ String(cString: $0) }) != "true" {
            print("ConsoleTerminalTests: skipped, no pseudo-terminal here: \(output)")
            return nil
        }
        #expect(status == 0, "\(mode): driver failed: \(output)")
        var facts: [String: String] = [:]
        for line in output.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            facts[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return facts
    }

    func expectRawThenRestored(_ f: [String: String], _ mode: String) {
        #expect(f["raw"] == "off,off,off", "\(mode): ECHO,ICANON,ISIG while the guest ran: \(f)")
        #expect(f["before"].map { !$0.isEmpty } == true, "\(mode): \(f)")
        #expect(f["after"] == f["before"], "\(mode): terminal settings not restored: \(f)")
    }

    /// Keys reach the guest one by one, unechoed; Ctrl-C goes to the guest, Ctrl-A Ctrl-A sends one
    /// Ctrl-A; the guest powers off on "q" (status 0).
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func keysReachTheGuestAndTheTerminalIsRestoredOnPowerOff() throws {
        guard let f = try drive("normal") else { return }
        expectRawThenRestored(f, "normal")
        #expect(f["rx"] == "61,62,03,01,71", "\(f)")
        #expect(f["status"] == "0", "\(f)")
        #expect(f["transcript"].map { !$0.contains("^C") } == true, "the terminal echoed Ctrl-C itself: \(f)")
    }

    /// Ctrl-A x stops the VM: status 18, one line, terminal restored.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func ctrlAXQuitsAndRestoresTheTerminal() throws {
        guard let f = try drive("quit") else { return }
        expectRawThenRestored(f, "quit")
        #expect(f["rx"] == "61", "Ctrl-A x must not reach the guest: \(f)")
        #expect(f["status"] == "18", "\(f)")
        #expect(f["transcript"]?.contains("minivisor: stopped from the console (Ctrl-A x)") == true, "\(f)")
    }

    /// SIGTERM (through the signal thread, under its seccomp filter) stops the VM and restores the terminal.
    @Test(.enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
    func sigtermRestoresTheTerminal() throws {
        guard let f = try drive("sigterm") else { return }
        expectRawThenRestored(f, "sigterm")
        #expect(f["status"] == "18", "\(f)")
        #expect(f["transcript"]?.contains("minivisor: stopped by SIGTERM") == true, "\(f)")
    }
}
