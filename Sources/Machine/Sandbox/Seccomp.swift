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
/// The lists were found with `strace -f` over the test suite, `minivisor bench` and the CLI, not by
/// guessing (docs: `Seccomp` below says how to redo that after a change).
public enum SeccompFilter: String, Sendable, CaseIterable {
    /// A vCPU thread, from just before its first KVM_RUN: vCPU and VM ioctls, device emulation on the
    /// exit path (serial output, eventfds, vGPU: MSI, BAR placement, aperture remapping, PNG screenshots).
    case vcpu
    /// A device thread before its loop (vGPU mediator and executors, serial stdin reader).
    case device
    /// The thread that called `Machine.run()`, from when the vCPU threads started: waits, kicks, joins,
    /// then (in the CLI) writes the last screenshot, releases the vGPU and exits.
    case monitor

    /// System calls allowed with any arguments.
    var systemCalls: [String] {
        // Memory, locks, time, signals and stdio: the Swift runtime, Glibc's malloc and swift-log.
        let common = [
            "futex", "mmap", "munmap", "mremap", "madvise", "mprotect", "brk",
            "clock_gettime", "clock_nanosleep", "nanosleep", "sched_yield", "gettid", "getpid",
            "rt_sigprocmask", "rt_sigaction", "tgkill",
            "read", "write", "writev", "pread64", "pwrite64", "lseek", "close", "fstat", "newfstatat",
            "poll", "ppoll",
        ]
        switch self {
        case .vcpu:
            // Screenshots (PNG files) are written on the vCPU that asks for them.
            return common + ["openat", "fcntl", "unlink", "fsync", "ftruncate"]
        case .device:
            return common
        case .monitor:
            return common + ["openat", "fcntl", "fsync", "ftruncate"]
        }
    }

    /// ioctl requests allowed (any file descriptor).
    var ioctls: [UInt] {
        let vm: [UInt] = [CKVM_KVM_IRQ_LINE, CKVM_KVM_IRQ_LINE_STATUS, CKVM_KVM_SIGNAL_MSI, CKVM_KVM_IOEVENTFD,
                          CKVM_KVM_IRQFD, CKVM_KVM_SET_USER_MEMORY_REGION]
        switch self {
        case .vcpu:
            return vm + [CKVM_KVM_RUN, CKVM_KVM_GET_REGS, CKVM_KVM_SET_REGS, CKVM_KVM_GET_SREGS, CKVM_KVM_GET_MP_STATE,
                         CKVM_KVM_GET_VCPU_EVENTS, CKVM_KVM_SET_VCPU_EVENTS, CKVM_KVM_TRANSLATE]
        case .device, .monitor:
            return vm
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
        for name in filter.systemCalls {
            let nr = cseccomp_syscall_number(name)
            guard nr >= 0 else { throw .unknownSystemCall(name) }
            let r = cseccomp_allow(f, nr)
            guard r == 0 else { throw .libseccomp(operation: "build", thread: label, errno: -r) }
        }
        let ioctl = cseccomp_syscall_number("ioctl")
        for request in filter.ioctls {
            // The kernel's ioctl command is 32 bits wide; compare only those (no sign-extension surprises).
            let r = cseccomp_allow_masked(f, ioctl, 1, 0xffff_ffff, UInt64(request))
            guard r == 0 else { throw .libseccomp(operation: "build", thread: label, errno: -r) }
        }
        _ = cseccomp_prioritize(f, ioctl)   // KVM_RUN: the hottest call on a vCPU thread
        let r = cseccomp_load(f, label)
        guard r == 0 else { throw .libseccomp(operation: "load", thread: label, errno: -r) }
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
        do {
            try Seccomp.install(filter, thread: thread)
            return true
        } catch {
            requestStop(.hostError("\(error)"))
            return false
        }
    }
}
