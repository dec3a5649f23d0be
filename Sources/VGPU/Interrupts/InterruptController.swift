import Machine
import SoftGPU
import Synchronization

/// The vGPU's virtual interrupt registers (softgpu.md 4.3): ISR, IMR, IIR and IER. A value type kept in the
/// vGPU's locked state, so that an event is latched in the same critical section as the state change it
/// reports (a driver that sees the change, STATUS, HEAD or the error block, also sees the interrupt bit).
/// Delivery (MSI or INTA#) is `InterruptLine`'s.
struct VirtualInterrupts: Sendable, Equatable {
    var isr: UInt32 = 0, imr: UInt32 = 0xffff_ffff, iir: UInt32 = 0, ier: UInt32 = 0

    /// The engines' error bits are levels, read from the engines' state, not latched.
    static let levelBits = Interrupt.rcsError | Interrupt.bcsError

    /// Latches `bits` into ISR and (honouring IMR) IIR; returns the bits that newly became pending (IIR &
    /// IER), for which the owner signals the interrupt after dropping its lock.
    mutating func latch(_ bits: UInt32) -> UInt32 {
        let before = iir & ier
        isr |= bits & ~Self.levelBits
        iir |= bits & ~imr
        return (iir & ier) & ~before
    }

    /// An IIR write: write 1 to clear (pulse latches in ISR clear with it).
    mutating func acknowledge(_ bits: UInt32) {
        iir &= ~bits
        isr &= ~bits
    }

    /// An IER write; returns the bits that newly became pending.
    mutating func enable(_ bits: UInt32) -> UInt32 {
        let before = iir & ier
        ier = bits
        return (iir & ier) & ~before
    }

    /// Whether the interrupt line is up: IIR & IER != 0.
    var pending: Bool { iir & ier != 0 }
}

/// How the vGPU tells the guest: an MSI when the function's MSI capability is enabled, else INTA#, a level
/// (asserted while IIR & IER != 0, unless the command register's INTx-disable bit is set).
///
/// Threads and ownership: any thread (vCPU, mediator, dispatcher) may call `signal` and `update` after
/// dropping the vGPU's state lock. INTA# is decided and driven under `level`, a serialising lock held
/// across reading the pending state (the caller's `pending` closure takes its state lock briefly) and the IRQ
/// line call, so the line always follows the latest state. Lock order: `level`, then the state lock;
/// nothing takes them the other way round.
final class InterruptLine: @unchecked Sendable {   // context: weak, set once
    let config: PCIConfigSpace
    /// The machine or test context (weak: its PCI bus holds the vGPU that holds this).
    weak let context: (any DeviceContext)?
    /// The IOAPIC input INTA# is routed to (nil: no route); set once, before the first interrupt.
    private let gsi: Mutex<UInt32?> = Mutex(nil)
    /// Whether INTA# is asserted; the serialising lock of `update`.
    private let level = Mutex<Bool>(false)

    init(config: PCIConfigSpace, context: any DeviceContext) {
        self.config = config
        self.context = context
    }

    func route(gsi: UInt32?) { self.gsi.withLock { $0 = gsi } }

    /// The IOAPIC input INTA# is routed to (nil: none).
    var routedGSI: UInt32? { gsi.withLock { $0 } }
    /// Whether INTA# is asserted now.
    var asserted: Bool { level.withLock { $0 } }

    /// Newly pending bits: an MSI when MSI is enabled, else INTA# to its current level. `pending` reads
    /// IIR & IER != 0 from the owner's state.
    func signal(pending: () -> Bool) {
        if let msi = config.msiMessage {
            try? context?.signalMSI(address: msi.address, data: msi.data)
        } else {
            update(pending: pending)
        }
    }

    /// Drives INTA# to its current level (deasserted while MSI is on or INTx is disabled).
    func update(pending: () -> Bool) {
        guard let gsi = gsi.withLock({ $0 }) else { return }
        level.withLock { asserted in
            let up = pending() && config.msiMessage == nil && config.command & PCIConfigSpace.commandINTxDisable == 0
            guard up != asserted else { return }
            asserted = up
            try? context?.setIRQLine(gsi, level: up)
        }
    }
}
