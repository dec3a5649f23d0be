import CKVM

/// One KVM_RUN exit, decoded. Payload pointers point into the vCPU's kvm_run page and are valid until
/// the next `run()` on the same vCPU; devices fill `data` for reads before the vCPU runs again.
public enum VMExit {
    /// Port I/O. `data` holds `size * count` bytes (count > 1 for rep ins/outs).
    case io(port: UInt16, size: Int, isWrite: Bool, count: Int, data: UnsafeMutableRawPointer)
    /// A guest-physical access no memory slot backs.
    case mmio(address: UInt64, size: Int, isWrite: Bool, data: UnsafeMutableRawPointer)
    /// HLT (only seen without an in-kernel irqchip).
    case halt
    /// Triple fault or other shutdown condition.
    case shutdown
    /// VM entry failed (hardware_entry_failure_reason).
    case failEntry(reason: UInt64, cpu: UInt32)
    /// KVM could not handle the exit (suberror 1 = emulation failure, with instruction bytes if KVM gave them).
    case internalError(InternalError)
    /// KVM_EXIT_SYSTEM_EVENT (shutdown, reset, crash).
    case systemEvent(type: UInt32)
    /// KVM_RUN returned EINTR (a kick from another thread or immediate_exit).
    case interrupted
    /// A debug exit (KVM_SET_GUEST_DEBUG): exception 1 (#DB: single-step, hardware breakpoint or
    /// watchpoint, told apart by `dr6`) or 3 (#BP), at linear address `pc`.
    case debug(DebugExit)
    /// Any other exit reason.
    case unknown(reason: UInt32)

    public struct DebugExit: Sendable, Equatable {
        public let exception: UInt32
        public let pc: UInt64
        public let dr6: UInt64
        public let dr7: UInt64
        public init(exception: UInt32, pc: UInt64, dr6: UInt64, dr7: UInt64) {
            self.exception = exception; self.pc = pc; self.dr6 = dr6; self.dr7 = dr7
        }
    }

    public struct InternalError: Sendable, CustomStringConvertible {
        public let suberror: UInt32
        public let data: [UInt64]
        public let instructionBytes: [UInt8]

        public static let emulationFailure: UInt32 = UInt32(KVM_INTERNAL_ERROR_EMULATION)

        public var description: String {
            var s: String
            switch suberror {
            case UInt32(KVM_INTERNAL_ERROR_EMULATION): s = "emulation failure"
            case UInt32(KVM_INTERNAL_ERROR_SIMUL_EX): s = "exception during exception delivery"
            case UInt32(KVM_INTERNAL_ERROR_DELIVERY_EV): s = "event delivery failure"
            default: s = "suberror \(suberror)"
            }
            if !instructionBytes.isEmpty {
                s += ", instruction bytes " + instructionBytes.map { hex($0, 2) }.joined(separator: " ")
            }
            return s
        }
    }
}

@inline(__always)
func hex<T: BinaryInteger>(_ v: T, _ width: Int) -> String {
    let s = String(v, radix: 16)
    return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
}
