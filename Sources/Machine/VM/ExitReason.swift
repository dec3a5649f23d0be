import Glibc

/// Why a VM ended. Each reason maps to one documented process exit status; statuses minivisor picks
/// itself are even, so they never collide with isa-debug-exit's odd `(V << 1) | 1`.
public enum ExitReason: Sendable, Equatable, CustomStringConvertible {
    /// The guest powered off (power-off port, or every vCPU halted with interrupts disabled).
    case powerOff
    /// The guest wrote V to the debug-exit port.
    case debugExit(UInt32)
    /// The guest asked for a reset (i8042 0xFE, RST_CPU to port 0xcf9 (the FADT reset register), or KVM reported a reset event).
    case reboot
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    case tripleFault(cpu: UInt32, registers: String)
    /// KVM could not run or emulate guest code (KVM_EXIT_INTERNAL_ERROR), after recovery failed.
    case internalError(cpu: UInt32, detail: String, registers: String)
    /// VM entry failed (KVM_EXIT_FAIL_ENTRY).
    case entryFailure(cpu: UInt32, reason: UInt64, registers: String)
    /// `timeout` expired before the guest ended.
    case timeout
    /// The host failed while running the VM (an unexpected ioctl error).
    case hostError(String)
    /// The guest kernel panicked and said so on the pvpanic port (0x505).
    case guestPanic
    /// The process was asked to end (SIGINT, SIGTERM, SIGHUP: the CLI stops the VM and exits).
    case signal(Int32)
    /// The user typed the console's quit escape (Ctrl-A x) on the terminal attached to the serial port.
    case consoleQuit

    /// Process exit status for this reason (see README "Exit status").
    public var exitStatus: Int32 {
        switch self {
        case .powerOff: return 0
        case .debugExit(let v): return Int32(truncatingIfNeeded: ((v << 1) | 1) & 0xff)
        case .reboot: return 4
        case .tripleFault: return 6
        case .internalError: return 8
        case .entryFailure: return 10
        case .timeout: return 12
        case .hostError: return 14
        case .signal, .consoleQuit: return ExitReason.signalStatus
        case .guestPanic: return ExitReason.guestPanicStatus
        }
    }

    public static let configurationErrorStatus: Int32 = 2
    /// The VM was stopped because the process got SIGINT, SIGTERM or SIGHUP, or the user typed Ctrl-A x.
    public static let signalStatus: Int32 = 18
    /// The guest kernel panicked (pvpanic).
    public static let guestPanicStatus: Int32 = 20

    public var description: String {
        switch self {
        case .powerOff: return "guest powered off"
        case .debugExit(let v): return "guest wrote \(v) to the debug-exit port"
        case .reboot: return "guest requested a reset"
        case .tripleFault(let c, _): return "vCPU \(c) triple-faulted (shutdown)"
        case let .internalError(c, d, _): return "KVM internal error on vCPU \(c): \(d)"
        case let .entryFailure(c, r, _): return "VM entry failed on vCPU \(c), hardware reason 0x\(String(r, radix: 16))"
        case .timeout: return "timeout expired"
        case .hostError(let s): return "host error: \(s)"
        case .signal(let n): return "stopped by \(signalName(n))"
        case .consoleQuit: return "stopped from the console (Ctrl-A x)"
        case .guestPanic: return "the guest kernel panicked (pvpanic port 0x505)"
        }
    }

    /// The register dump that goes with a failure, if any.
    public var registerDump: String? {
        switch self {
        case .tripleFault(_, let r), .internalError(_, _, let r), .entryFailure(_, _, let r): return r
        default: return nil
        }
    }
}

/// What devices may ask of the machine. Implemented by `Machine`.
public protocol MachineControl: AnyObject, Sendable {
    /// Ends the VM; the first reason wins.
    func requestStop(_ reason: ExitReason)
}

/// "SIGTERM" for the signals the CLI stops on, else "signal N".
public func signalName(_ n: Int32) -> String {
    switch n {
    case SIGINT: return "SIGINT"
    case SIGTERM: return "SIGTERM"
    case SIGHUP: return "SIGHUP"
    default: return "signal \(n)"
    }
}
