import Synchronization

/// The interrupt block: ISR / IMR / IIR / IER, one bit per source (`Interrupt`).
///
/// - **ISR** (read-only) is the raw status. Level sources (the engine error bits) show whether the
///   engine is in the error state. Pulse sources (user interrupts, idle, vblank, flip done) are latched
///   into ISR when they occur, whatever IMR says, and cleared by writing 1 to the same bit of IIR.
/// - **IMR** masks: an event whose IMR bit is set is not latched into IIR. Reset value: all ones.
///   Unmasking does not latch events that happened while masked (edge semantics).
/// - **IIR** latches every unmasked event (a pulse, or a rising edge of a level source). Writing 1
///   clears a bit (and the pulse latch in ISR); writing 0 has no effect.
/// - **IER** enables delivery: the interrupt line is `IIR & IER != 0`.
///
/// The handler is called with the bits that newly became set in `IIR & IER` (because an event latched
/// into IIR or because an IER write enabled a pending bit). It runs on the thread that caused it (an
/// engine worker, the vblank timer, or a register writer), never with a SoftGPU lock held, so it may
/// read and write GPU registers; it may run concurrently from different threads.
public final class InterruptController: @unchecked Sendable {
    struct State {
        var pulseLatch: UInt32 = 0
        var levels: UInt32 = 0
        var imr: UInt32 = 0xFFFF_FFFF
        var iir: UInt32 = 0
        var ier: UInt32 = 0
        var eventCounts = [UInt64](repeating: 0, count: 32)
    }

    private let state = Mutex(State())
    private let handler = Mutex<(@Sendable (UInt32) -> Void)?>(nil)

    init() {}

    /// Installs (or removes) the interrupt handler.
    public func setHandler(_ h: (@Sendable (UInt32) -> Void)?) { handler.withLock { $0 = h } }

    public var isr: UInt32 { state.withLock { $0.pulseLatch | $0.levels } }
    public var imr: UInt32 { state.withLock { $0.imr } }
    public var iir: UInt32 { state.withLock { $0.iir } }
    public var ier: UInt32 { state.withLock { $0.ier } }
    /// True while `IIR & IER != 0` (the interrupt line).
    public var pending: Bool { state.withLock { $0.iir & $0.ier != 0 } }

    /// How many times source bit `bit` (0..31) occurred (raw, whatever the masks), since creation.
    public func eventCount(bit: Int) -> UInt64 { state.withLock { $0.eventCounts[bit & 31] } }
    /// Event count of the single bit set in `mask`.
    public func eventCount(_ mask: UInt32) -> UInt64 { eventCount(bit: mask.trailingZeroBitCount) }

    /// A pulse event on `bits`.
    func raise(_ bits: UInt32) {
        let fire: UInt32 = state.withLock { s in
            let before = s.iir & s.ier
            s.pulseLatch |= bits
            s.iir |= bits & ~s.imr
            for b in 0..<32 where bits & (1 << b) != 0 { s.eventCounts[b] += 1 }
            return (s.iir & s.ier) & ~before
        }
        deliver(fire)
    }

    /// Sets or clears level sources; a rising edge is an event.
    func setLevel(_ bits: UInt32, _ on: Bool) {
        let fire: UInt32 = state.withLock { s in
            let before = s.iir & s.ier
            if on {
                let rising = bits & ~s.levels
                s.levels |= bits
                s.iir |= rising & ~s.imr
                for b in 0..<32 where rising & (1 << b) != 0 { s.eventCounts[b] += 1 }
            } else {
                s.levels &= ~bits
            }
            return (s.iir & s.ier) & ~before
        }
        deliver(fire)
    }

    /// Register read for offsets in the interrupt block; nil for other offsets.
    func read(_ offset: UInt32) -> UInt32? {
        switch offset {
        case Reg.isr: return isr
        case Reg.imr: return imr
        case Reg.iir: return iir
        case Reg.ier: return ier
        default: return nil
        }
    }

    /// Register write for offsets in the interrupt block; false for other offsets.
    func write(_ offset: UInt32, _ value: UInt32) -> Bool {
        var fire: UInt32 = 0
        switch offset {
        case Reg.isr: return true   // read-only
        case Reg.imr: state.withLock { $0.imr = value }
        case Reg.iir:
            state.withLock { s in
                s.iir &= ~value
                s.pulseLatch &= ~value
            }
        case Reg.ier:
            fire = state.withLock { s in
                let before = s.iir & s.ier
                s.ier = value
                return (s.iir & s.ier) & ~before
            }
        default: return false
        }
        deliver(fire)
        return true
    }

    private func deliver(_ bits: UInt32) {
        guard bits != 0, let h = handler.withLock({ $0 }) else { return }
        h(bits)
    }
}
