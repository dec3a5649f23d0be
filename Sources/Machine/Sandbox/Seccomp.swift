import CKVM
import CSeccomp
import Glibc

/// Which threads run under seccomp filters (`MachineConfiguration.seccomp`).
public enum SeccompPolicy: String, Sendable, CaseIterable {
    /// No filters (the CLI's `--no-seccomp`, for debugging).
    case off
    /// vCPU threads and device threads (vGPU mediator and executors, the serial stdin reader) install
    /// their filter before their loop. The library's default: the thread that calls `run()` is the
    /// caller's and is left alone.
    case vmThreads
    /// As `vmThreads`, and the thread that calls `Machine.run()` installs the monitor filter once the
    /// vCPU threads have started. Irreversible: for a thread that only ends the process after `run()`
    /// (the CLI's default).
    case vmThreadsAndMonitor
}

/// The allow list a thread runs under. Every system call not listed makes the process print one line
/// naming the thread and the call, and exit with `Seccomp.exitStatus` (see `CSeccomp`).
///
/// The lists are what `strace -f` showed these threads doing over the test suite, `minivisor bench` and
/// the CLI on every test guest (with and without --vgpu, --screenshot, a terminal on stdin, --timeout,
/// --log-level trace), plus the error paths that end a VM (register dumps, #BP injection). `Seccomp`
/// says how to redo that after a change.
public enum SeccompFilter: String, Sendable, CaseIterable {
    /// A vCPU thread, from just before its first KVM_RUN: vCPU ioctls, and device emulation on the exit
    /// path (serial output, eventfds, interrupts, vGPU BAR placement and aperture remapping, PNG
    /// screenshots written on the vCPU that asks for them).
    case vcpu
    /// A device thread, before its loop: vGPU mediator and executors, the serial stdin reader.
    case device
    /// The thread that called `Machine.run()`, from when the vCPU threads started: waits, kicks and joins
    /// them; in the CLI it then writes the last screenshot, releases the vGPU and exits.
    case monitor
    /// The gdb stub's thread (`--gdb`): accepts the debugger's connection and speaks the remote protocol;
    /// vCPU state goes through the vCPU threads' mailboxes; write watchpoints change RAM's memory slots.
    case gdb
    /// The VNC server's thread (`--vnc`): the listening socket is made before it starts; it accepts
    /// clients, reads their messages and sends framebuffer updates (libvncserver's event processing, with
    /// select), copies the display (guest memory, no system call) and queues key presses.
    case vnc
    /// The CLI's signal thread: waits for SIGINT, SIGTERM or SIGHUP (blocked everywhere else) and stops
    /// the VM (`Machine.requestStop`: a lock, kicks, a wake-up).
    case signals

    /// One allowed system call, with an optional condition on one argument: (argument & mask) == value.
    struct Rule: Sendable {
        let name: String
        let condition: (arg: UInt32, mask: UInt64, value: UInt64)?
        /// ioctl only: the descriptor (argument 0) must be this one, and the request is `condition`'s value.
        let descriptor: Int32?
        init(_ name: String) { self.name = name; condition = nil; descriptor = nil }
        init(_ name: String, arg: UInt32, mask: UInt64, value: UInt64, descriptor: Int32? = nil) {
            self.name = name
            condition = (arg, mask, value)
            self.descriptor = descriptor
        }
        /// ioctl with this request (the kernel's command is 32 bits: only those are compared).
        static func ioctl(_ request: UInt) -> Rule { Rule("ioctl", arg: 1, mask: 0xffff_ffff, value: UInt64(request)) }
        /// ioctl with this request on descriptor `fd` only.
        static func ioctl(_ request: UInt, on fd: Int32) -> Rule {
            Rule("ioctl", arg: 1, mask: 0xffff_ffff, value: UInt64(request), descriptor: fd)
        }
    }

    /// What every filtered thread needs: the Swift runtime, Glibc's malloc and locks (futex, mmap family,
    /// gettid for Mutex owners), time, eventfd and serial reads/writes, swift-log's timestamps
    /// (strftime's tzset stats /etc/localtime), kicks (pthread_kill = getpid + tgkill), signal returns
    /// and thread exit (rt_sigprocmask, madvise of the stack; exit and exit_group are always allowed), and
    /// restart_syscall: a timed wait (futex, nanosleep, poll) interrupted by a stop (Ctrl-Z and fg, a
    /// tracer attaching, a cgroup freezer) resumes through it. And restoring the terminal on standard input
    /// (tcsetattr TCSANOW = ioctl(0, TCSETS)) on the way out: the CLI's exit after `run()` on the monitor
    /// thread, the signal thread's immediate exit, and the SIGSYS reporter on whichever thread was refused.
    static let common: [Rule] = [Rule.ioctl(UInt(TCSETS), on: 0)] + [
        "futex", "gettid", "getpid", "tgkill", "sched_yield",
        "mmap", "munmap", "mremap", "madvise", "mprotect", "brk",
        "clock_gettime", "clock_nanosleep", "nanosleep",
        "rt_sigprocmask", "rt_sigreturn", "restart_syscall",
        "read", "write", "close", "newfstatat", "fstat", "lseek",
    ].map(Rule.init)

    /// The VM-level ioctls device emulation makes from any thread: interrupts.
    static let interrupts: [Rule] = [CKVM_KVM_IRQ_LINE, CKVM_KVM_IRQ_LINE_STATUS, CKVM_KVM_SIGNAL_MSI].map(Rule.ioctl)

    /// Writing a screenshot: create and truncate the checked file, fdopen it (fcntl F_GETFL) and let stdio
    /// ask whether it is a terminal (ioctl TCGETS) before its first write.
    static let screenshotFile: [Rule] = [
        Rule("openat"), Rule("ftruncate"),
        Rule("fcntl", arg: 1, mask: 0xffff_ffff, value: UInt64(F_GETFL)),
        Rule.ioctl(UInt(TCGETS)),
    ]
    /// The serial sink: waits for a full pipe or terminal to drain (poll, in 100 ms slices) and sends to a
    /// socket without blocking (send = sendto).
    static let serialSink: [Rule] = [Rule("poll"), Rule("ppoll"), Rule("sendto")]
    /// openat with flags that only read (tz data for log timestamps, read on first use).
    static let readOnlyOpen = Rule("openat", arg: 2, mask: UInt64(O_ACCMODE | O_CREAT | O_TRUNC), value: UInt64(O_RDONLY))

    var rules: [Rule] {
        switch self {
        case .vcpu:
            return Self.common + Self.interrupts + [
                // KVM_RUN and the exits' needs: I/O data is in the mmapped kvm_run; halt queries, register
                // dumps, #BP injection (events), instruction bytes through the page tables (translate).
                CKVM_KVM_RUN, CKVM_KVM_GET_REGS, CKVM_KVM_SET_REGS, CKVM_KVM_GET_SREGS, CKVM_KVM_GET_MP_STATE,
                CKVM_KVM_GET_VCPU_EVENTS, CKVM_KVM_SET_VCPU_EVENTS, CKVM_KVM_TRANSLATE,
                // The mailbox (pause/resume, full state read and write) and the gdb stub (guest debug).
                CKVM_KVM_SET_SREGS, CKVM_KVM_GET_FPU, CKVM_KVM_SET_FPU, CKVM_KVM_GET_XSAVE, CKVM_KVM_SET_XSAVE, CKVM_KVM_GET_MSRS, CKVM_KVM_SET_MSRS,
                CKVM_KVM_GET_LAPIC, CKVM_KVM_SET_LAPIC, CKVM_KVM_SET_MP_STATE, CKVM_KVM_SET_GUEST_DEBUG,
                // vGPU BAR placement: the aperture slot and the PV doorbells move with the BARs.
                CKVM_KVM_SET_USER_MEMORY_REGION, CKVM_KVM_IOEVENTFD,
            ].map(Rule.ioctl) + Self.screenshotFile + Self.serialSink   // screenshots on port 0xf5; serial output
        case .device:
            return Self.common + Self.interrupts + [Self.readOnlyOpen, Rule("poll"), Rule("ppoll")]
        case .monitor:
            return Self.common + Self.screenshotFile + [   // the CLI writes the last screenshot after run()
                Rule("pread64"),  // the vCPUs' KVM statistics (halt detection without exits)
            ]
        case .gdb:
            // The listening socket is made before the thread starts; the thread accepts one debugger at
            // a time and talks to it; guest memory is read through the mapping (no system call); write
            // watchpoints make RAM pages read-only (memory slots of the VM).
            return Self.common + [
                Rule("accept4"), Rule("accept"), Rule("setsockopt"), Rule("poll"), Rule("ppoll"),
                Rule("recvfrom"), Rule("sendto"), Rule("shutdown"),
            ] + [CKVM_KVM_SET_USER_MEMORY_REGION].map(Rule.ioctl)
        case .signals:
            return Self.common + [Rule("rt_sigtimedwait")]
        case .vnc:
            return Self.common + Self.interrupts + [
                Rule("select"), Rule("pselect6"), Rule("poll"), Rule("ppoll"), Rule("accept"), Rule("accept4"),
                Rule("recvfrom"), Rule("sendto"), Rule("sendmsg"), Rule("recvmsg"), Rule("setsockopt"), Rule("getsockopt"),
                Rule("getpeername"), Rule("getsockname"), Rule("shutdown"), Rule("fcntl"), Rule("gettimeofday"),
                Self.readOnlyOpen,
                // getrlimit(RLIMIT_NOFILE) when a client connects: reading limits only (new_limit NULL).
                Rule("prlimit64", arg: 2, mask: UInt64.max, value: 0),
            ]
        }
    }
}

/// A filter could not be built or loaded. The VM stops with a host error (status 14).
public enum SeccompError: Error, Equatable, CustomStringConvertible, Sendable {
    case unknownSystemCall(String)
    case libseccomp(operation: String, thread: String, errno: Int32)

    public var description: String {
        switch self {
        case .unknownSystemCall(let name):
            return "libseccomp does not know the system call \(name): update libseccomp or rerun with --no-seccomp"
        case let .libseccomp(operation, thread, e):
            return "cannot \(operation) the seccomp filter for thread \(thread): \(String(cString: strerror(e))): rerun with --no-seccomp"
        }
    }
}

/// Per-thread seccomp filters (libseccomp through `CSeccomp`), as Firecracker installs them: each thread
/// loads its own filter (no TSYNC) right before its loop, after its set-up; a refused system call
/// prints one line on stderr naming the thread, its filter and the call, then the process exits with
/// status 16 (`exitStatus`).
///
/// After changing what a filtered thread does, find the system calls it makes with
/// `strace -f -o trace -ff .build/debug/minivisor run ...` (and over `swift test` and `minivisor bench`):
/// each thread's file shows its `seccomp(SECCOMP_SET_MODE_FILTER, ...)`; what follows it must be allowed.
/// `MINIVISOR_SECCOMP_AUDIT=1` makes the filters allow and log (kernel audit log) instead of trapping,
/// so one strace run lists everything.
public enum Seccomp {
    /// The process's exit status after a refused system call (README "Exit status").
    public static let exitStatus: Int32 = CSECCOMP_EXIT_STATUS

    /// Loads `filter` for the calling thread. `thread` names it in the report of a refused call.
    public static func install(_ filter: SeccompFilter, thread: String) throws(SeccompError) {
        let label = "\(thread) (\(filter.rawValue) filter)"
        guard let f = cseccomp_filter_new() else { throw .libseccomp(operation: "allocate", thread: label, errno: ENOMEM) }
        defer { cseccomp_filter_free(f) }
        for rule in filter.rules {
            guard let nr = systemCallNumber(rule.name) else { throw .unknownSystemCall(rule.name) }
            let r: Int32
            if let fd = rule.descriptor, let c = rule.condition {
                r = cseccomp_allow_ioctl_on(f, fd, UInt(c.value))
            } else {
                r = rule.condition.map { cseccomp_allow_masked(f, nr, $0.arg, $0.mask, $0.value) } ?? cseccomp_allow(f, nr)
            }
            guard r == 0 else { throw .libseccomp(operation: "build", thread: label, errno: -r) }
        }
        let ioctl = cseccomp_syscall_number("ioctl")
        _ = cseccomp_prioritize(f, ioctl)   // KVM_RUN: the hottest call on a vCPU thread
        let r = cseccomp_load(f, label)
        guard r == 0 else { throw .libseccomp(operation: "load", thread: label, errno: -r) }
    }

    /// The x86-64 number of system call `name`, or nil when libseccomp does not know it.
    static func systemCallNumber(_ name: String) -> Int32? {
        let nr = cseccomp_syscall_number(name)
        return nr >= 0 ? nr : nil
    }

    /// Makes a refused system call's report restore the terminal on standard input (the one descriptor
    /// every filter allows TCSETS on) to `saved` before the process exits; nil forgets it. Call before
    /// the terminal leaves `saved`'s mode.
    public static func restoreStandardInputTerminalOnRefusal(_ saved: termios?) {
        if var t = saved { cseccomp_restore_terminal_on_report(0, &t) } else { cseccomp_restore_terminal_on_report(0, nil) }
    }

    /// The label ("vcpu0 (vcpu filter)") of the filter the calling thread loaded, or nil.
    public static var currentThreadLabel: String? {
        cseccomp_thread_label().map { String(cString: $0) }
    }
}

extension Machine {
    /// Loads `filter` for the calling thread when the configuration asks for filters (`seccomp` is not
    /// `.off`; the monitor filter only with `.vmThreadsAndMonitor`). On failure the VM stops with a host
    /// error naming the thread. Device threads call this once, before their loop.
    @discardableResult
    public func enterSeccomp(_ filter: SeccompFilter, thread: String) -> Bool {
        switch (configuration.seccomp, filter) {
        case (.off, _), (.vmThreads, .monitor): return true
        default: break
        }
        // The thread already runs under this filter (one thread monitoring several VMs in turn, `VMGroup`):
        // loading it again would be refused, and would change nothing.
        if let label = Seccomp.currentThreadLabel, label.hasSuffix("(\(filter.rawValue) filter)") { return true }
        do {
            try Seccomp.install(filter, thread: thread)
            return true
        } catch {
            requestStop(.hostError("\(error)"))
            return false
        }
    }
}
