import Glibc
import Minivisor
import MinivisorCommands
import Synchronization

/// SIGINT, SIGTERM and SIGHUP during `minivisor run`: the first one stops the VM, which ends as usual
/// (last screenshot, suppressed-log summaries) with `ExitReason.signal` and status 18; a second one while
/// the VM is still stopping ends the process at once, also with status 18, after restoring the terminal's
/// settings (`ConsoleTerminal`; the first signal's way out restores them through `exit`).
///
/// Threads and ownership: `start(seccomp:)` runs on the main thread before any other thread exists, and
/// blocks the three signals there, so every thread created later inherits the blocked mask and only the
/// "signals" thread takes them (sigwait), under its own seccomp filter. The VM to stop and the first signal
/// seen are in one `State` behind one Mutex, never held while calling out.
enum TerminationSignals {
    static let handled: [Int32] = [SIGINT, SIGTERM, SIGHUP]

    private struct State {
        var vms: [VirtualMachine] = []
        var received: Int32?
    }
    private static let state = Mutex(State())

    /// Blocks the signals for this thread and those it creates, and starts the thread that waits for them.
    static func start(seccomp: Bool) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let waiting = set
        let thread = OSThread.spawn(name: "signals") {
            if seccomp {
                do { try Seccomp.install(.signals, thread: "signals") } catch {
                    writeStderr("minivisor: \(error)\n")
                    _exit(CLIStatus.hostError)
                }
            }
            var set = waiting
            while true {
                var n: Int32 = 0
                guard sigwait(&set, &n) == 0 else { continue }
                received(n)
            }
        }
        if let thread { pthread_detach(thread) } else { fail("cannot create the signal thread", status: CLIStatus.hostError) }
    }

    /// Stops `vm` on the first signal; stops it now when one came while it was being built.
    static func register(_ vm: VirtualMachine) { register([vm]) }

    /// Stops every one of `vms` on the first signal (`--config`).
    static func register(_ vms: [VirtualMachine]) {
        let pending = state.withLock { s -> Int32? in
            s.vms += vms
            return s.received
        }
        if let n = pending { for vm in vms { vm.stop(.signal(n)) } }
    }

    private static func received(_ n: Int32) {
        let (first, vms) = state.withLock { s -> (Bool, [VirtualMachine]) in
            let first = s.received == nil
            if first { s.received = n }
            return (first, s.vms)
        }
        guard first else {
            writeStderr("minivisor: \(signalName(n)) while the VM was stopping: exiting now\n")
            ConsoleTerminal.restore()
            _exit(ExitReason.signalStatus)
        }
        for vm in vms { vm.stop(.signal(n)) }
    }
}
