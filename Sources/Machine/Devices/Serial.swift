import Glibc
import Synchronization

/// Where the UART's transmitted bytes go.
public enum SerialOutput: Sendable {
    case stdout
    case file(String)
    case none
    /// Every transmitted byte is passed to the closure (called on a vCPU thread).
    case callback(@Sendable (UInt8) -> Void)
}

/// A 16550A UART (8 registers, divisor latch, 16-byte receive FIFO, THRE and RX-data interrupts).
/// Idle line status reads 0x60 (THR empty, transmitter empty). Thread-safety: all state behind a Mutex;
/// the interrupt line is raised/lowered after the lock is dropped.
public final class Serial16550: BusDevice {
    struct State {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0
        var mcr: UInt8 = 0x08
        var scr: UInt8 = 0
        var fcr: UInt8 = 0
        var dll: UInt8 = 0x0c
        var dlh: UInt8 = 0
        var rx: [UInt8] = []
        var thrInterruptPending = false
        var irqLevel = false
    }

    private let state = Mutex(State())
    private let sink: @Sendable (UInt8) -> Void
    private let setIRQ: @Sendable (Bool) -> Void
    private let fileFD: Int32

    /// `setIRQ` drives the UART's interrupt line (IRQ 4 for COM1).
    public init(output: SerialOutput, setIRQ: @escaping @Sendable (Bool) -> Void) throws {
        self.setIRQ = setIRQ
        switch output {
        case .stdout:
            fileFD = -1
            sink = { b in var b = b; _ = Glibc.write(1, &b, 1) }
        case .none:
            fileFD = -1
            sink = { _ in }
        case .callback(let f):
            fileFD = -1
            sink = f
        case .file(let path):
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw SerialError.cannotOpen(path, String(cString: strerror(errno))) }
            fileFD = fd
            sink = { b in var b = b; _ = Glibc.write(fd, &b, 1) }
        }
    }

    deinit { if fileFD >= 0 { close(fileFD) } }

    public enum SerialError: Error, CustomStringConvertible {
        case cannotOpen(String, String)
        public var description: String {
            switch self {
            case let .cannotOpen(p, e): return "cannot open serial output file \(p): \(e): give a writable path with --serial file:PATH"
            }
        }
    }

    /// Queues received bytes (from stdin or a test) and raises the RX interrupt if enabled.
    public func receive(_ bytes: [UInt8]) {
        let level = state.withLock { s -> Bool? in
            for b in bytes where s.rx.count < 16 { s.rx.append(b) }
            return updateIRQ(&s)
        }
        drive(level)
    }

    /// Free space in the receive FIFO.
    public var receiveSpace: Int { state.withLock { 16 - $0.rx.count } }

    private func iir(_ s: State) -> UInt8 {
        let fifo: UInt8 = (s.fcr & 1) != 0 ? 0xc0 : 0
        if (s.ier & 0x01) != 0 && !s.rx.isEmpty { return fifo | 0x04 }
        if (s.ier & 0x02) != 0 && s.thrInterruptPending { return fifo | 0x02 }
        return fifo | 0x01
    }

    /// Recomputes the interrupt level; returns it when it changed (the line is only driven on changes).
    private func updateIRQ(_ s: inout State) -> Bool? {
        let level = (iir(s) & 0x01) == 0 && (s.mcr & 0x08) != 0  // OUT2 gates the IRQ on PCs
        guard level != s.irqLevel else { return nil }
        s.irqLevel = level
        return level
    }

    private func drive(_ level: Bool?) { if let l = level { setIRQ(l) } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard offset < 8 else { data.storeLittleEndian(UInt64.max); return }
        let (value, level) = state.withLock { s -> (UInt8, Bool?) in
            let dlab = (s.lcr & 0x80) != 0
            var v: UInt8 = 0
            switch offset {
            case 0:
                if dlab { v = s.dll } else if !s.rx.isEmpty { v = s.rx.removeFirst() }
            case 1: v = dlab ? s.dlh : s.ier
            case 2:
                v = iir(s)
                if v & 0x0f == 0x02 { s.thrInterruptPending = false }  // reading IIR clears THRE
            case 3: v = s.lcr
            case 4: v = s.mcr
            case 5: v = 0x60 | (s.rx.isEmpty ? 0 : 0x01)
            case 6: v = (s.mcr & 0x10) != 0 ? 0xf0 : 0xb0  // loopback: all inputs high; else CTS|DSR|DCD
            default: v = s.scr
            }
            return (v, updateIRQ(&s))
        }
        data.storeLittleEndian(UInt64(value))
        drive(level)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset < 8, data.count >= 1 else { return }
        let v = data[0]
        var out: UInt8? = nil
        let level = state.withLock { s -> Bool? in
            let dlab = (s.lcr & 0x80) != 0
            switch offset {
            case 0:
                if dlab { s.dll = v } else {
                    if (s.mcr & 0x10) != 0 { if s.rx.count < 16 { s.rx.append(v) } } else { out = v }
                    s.thrInterruptPending = true  // transmitted at once: THR empty again
                }
            case 1:
                if dlab { s.dlh = v } else {
                    let wasOff = (s.ier & 0x02) == 0
                    s.ier = v & 0x0f
                    if wasOff && (s.ier & 0x02) != 0 { s.thrInterruptPending = true }
                }
            case 2:
                s.fcr = v
                if (v & 0x02) != 0 { s.rx.removeAll() }
            case 3: s.lcr = v
            case 4: s.mcr = v & 0x1f
            case 7: s.scr = v
            default: break
            }
            return updateIRQ(&s)
        }
        if let o = out { sink(o) }
        drive(level)
    }
}
