import Glibc
import Minivisor
import Synchronization

/// The terminal on standard input while `minivisor run` attaches it to the guest's serial port: raw
/// mode (no echo, no line editing, no signal keys, so Ctrl-C and Ctrl-Z reach the guest; output
/// processing stays on, as QEMU leaves it, so minivisor's own lines end in CR LF), and the saved settings
/// restored on every way out: `exit()` (the guest's end, `fail()`) through an atexit handler, the signal
/// thread's immediate exit (`restore()` before `_exit`), and a seccomp refusal (the SIGSYS reporter,
/// `Seccomp.restoreStandardInputTerminalOnRefusal`).
///
/// Threads and ownership: `attach()` runs on the main thread before the VM starts; `restore()` on any
/// thread (the main thread's exit, the signal thread). The saved settings are in one `State` behind one
/// Mutex, copied out before tcsetattr.
enum ConsoleTerminal {
    private struct State {
        var saved: termios?
        var atexitInstalled = false
    }
    private static let state = Mutex(State())

    /// Whether standard input is a terminal whose foreground process group is ours (a background job
    /// changing the settings would be stopped with SIGTTOU).
    static var canAttach: Bool { isatty(0) != 0 && tcgetpgrp(0) == getpgrp() }

    /// Saves the settings and enters raw mode; false (settings untouched) when stdin is no terminal of
    /// ours or the settings cannot be read or changed.
    @discardableResult
    static func attach() -> Bool {
        guard canAttach else { return false }
        var saved = termios()
        guard tcgetattr(0, &saved) == 0 else { return false }
        var raw = saved
        cfmakeraw(&raw)
        raw.c_oflag = saved.c_oflag   // keep OPOST/ONLCR: stderr lines and guests printing bare LF stay readable
        let install = state.withLock { s -> Bool in
            s.saved = saved
            defer { s.atexitInstalled = true }
            return !s.atexitInstalled
        }
        if install { atexit { ConsoleTerminal.restore() } }
        Seccomp.restoreStandardInputTerminalOnRefusal(saved)
        guard tcsetattr(0, TCSANOW, &raw) == 0 else {
            state.withLock { $0.saved = nil }
            Seccomp.restoreStandardInputTerminalOnRefusal(nil)
            return false
        }
        return true
    }

    /// Puts the saved settings back (TCSANOW: never waits for output a paused terminal holds). Safe to
    /// call more than once and when `attach()` did nothing.
    static func restore() {
        guard var saved = state.withLock({ $0.saved }) else { return }
        _ = tcsetattr(0, TCSANOW, &saved)
    }
}
