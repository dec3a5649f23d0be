import Synchronization

/// The i8042 keyboard controller with a PS/2 keyboard behind it, as far as a guest's keyboard driver
/// needs it (Linux's i8042 and atkbd probe through it): the controller commands (read/write the command
/// byte 0x20/0x60, self-test 0xAA -> 0x55, keyboard interface test 0xAB -> 0x00, enable/disable the
/// keyboard 0xAE/0xAD, write the keyboard buffer 0xD2), the keyboard commands (reset 0xFF -> FA AA, get
/// ID 0xF2 -> FA AB 41 (translated) or FA AB 83, echo 0xEE, LEDs, typematic and scan-code set with their
/// parameter byte, everything else acknowledged with FA), and a queue of bytes (`keyboardInput`: scan
/// code set 1 as the controller's translation delivers it) read from port 0x60, raising IRQ 1 while
/// data waits and the command byte's keyboard interrupt bit is set. There is no auxiliary (mouse) port:
/// its test (0xA9) reports a stuck clock line, so drivers leave it alone. The reset command 0xFE (and
/// any output-port pulse with bit 0 clear) ends the VM as a reboot. Registered at 0x60-0x64 (0x61
/// belongs to the in-kernel PIT's speaker port and never reaches us).
///
/// Threads and ownership: vCPU threads (ports) and the VNC thread (`keyboardInput`) call in
/// concurrently. The controller's state is one `State` behind one Mutex, never held while calling out;
/// IRQ 1 is driven under `irqLevel`, a serialising lock held across reading the state (briefly) and the
/// IRQ callback, so the line always follows the latest state.
public final class I8042: BusDevice {
    public static let base: UInt64 = 0x60
    /// Bytes the output queue holds at most; input beyond it is dropped (as a real keyboard's buffer overflows).
    public static let queueLimit = 64

    private struct State {
        var commandByte: UInt8 = 0x45        // keyboard interrupt, system flag, translation
        var output: [UInt8] = []
        /// A controller command waiting for its data byte on port 0x60 (0x60, 0xD1, 0xD2, 0xD3, 0xD4).
        var pendingController: UInt8? = nil
        /// A keyboard command waiting for its parameter byte (0xED, 0xF0, 0xF3).
        var pendingKeyboard: UInt8? = nil
        var lastWriteWasCommand = false
        var scanning = true
    }
    private let state = Mutex(State())
    private let irqLevel = Mutex<Bool>(false)
    private struct WeakControl { weak var control: (any MachineControl)? }
    private let controlRef: Mutex<WeakControl>
    private let irq: @Sendable (Bool) -> Void

    /// `irq` drives the keyboard's interrupt line (IRQ 1); `control` (held weakly) hears the reset command.
    public init(control: (any MachineControl)? = nil, irq: @escaping @Sendable (Bool) -> Void = { _ in }) {
        controlRef = Mutex(WeakControl(control: control))
        self.irq = irq
    }

    /// Names the machine the reset command stops (for a machine that builds the controller before itself).
    public func attach(_ control: any MachineControl) { controlRef.withLock { $0.control = control } }
    private var control: (any MachineControl)? { controlRef.withLock { $0.control } }

    /// Queues scan-code bytes as if keys were pressed (dropped while the guest has scanning off, and
    /// beyond `queueLimit` bytes). Any thread.
    public func keyboardInput(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        state.withLock { s in
            guard s.scanning, s.commandByte & 0x10 == 0 else { return }
            let room = max(0, Self.queueLimit - s.output.count)
            s.output += bytes.prefix(room)
        }
        updateIRQ(pulse: false)
    }

    /// Bytes waiting in the output buffer (for tests).
    public var pendingOutput: [UInt8] { state.withLock { $0.output } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        switch offset {
        case 0:
            let b = state.withLock { s -> UInt8 in s.output.isEmpty ? 0 : s.output.removeFirst() }
            data.storeLittleEndian(UInt64(b))
            updateIRQ(pulse: true)
        case 4:
            let status = state.withLock { s -> UInt8 in
                // OBF, system flag (after self-test), command/data, keyboard not inhibited.
                (s.output.isEmpty ? 0 : 0x01) | (s.commandByte & 0x04) | (s.lastWriteWasCommand ? 0x08 : 0) | 0x10
            }
            data.storeLittleEndian(UInt64(status))
        default:
            data.storeLittleEndian(UInt64.max)
        }
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard data.count >= 1 else { return }
        let v = data[0]
        var reset = false
        switch offset {
        case 4:
            state.withLock { s in
                s.lastWriteWasCommand = true
                s.pendingController = nil
                switch v {
                case 0x20: s.output.append(s.commandByte)
                case 0x60, 0xd1, 0xd2, 0xd3, 0xd4: s.pendingController = v
                case 0xa7: s.commandByte |= 0x20
                case 0xa8: s.commandByte &= ~0x20
                case 0xa9: s.output.append(0x01)           // no auxiliary device: clock line stuck low
                case 0xaa: s.output.append(0x55); s.commandByte |= 0x04
                case 0xab: s.output.append(0x00)
                case 0xad: s.commandByte |= 0x10
                case 0xae: s.commandByte &= ~0x10
                case 0xc0: s.output.append(0x00)           // input port
                case 0xd0: s.output.append(0x03)           // output port: A20 on, not in reset
                case 0xf0...0xff: reset = v & 1 == 0       // pulse output lines; bit 0 low resets the CPU
                default: break
                }
            }
        case 0:
            state.withLock { s in
                s.lastWriteWasCommand = false
                if let c = s.pendingController {
                    s.pendingController = nil
                    switch c {
                    case 0x60: s.commandByte = v
                    case 0xd1: reset = v & 1 == 0
                    case 0xd2: s.output.append(v)
                    default: break                         // auxiliary port writes: no device
                    }
                    return
                }
                Self.keyboardCommand(&s, v)
            }
        default:
            return
        }
        if reset { control?.requestStop(.reboot); return }
        updateIRQ(pulse: false)
    }

    /// A byte sent to the keyboard: a command or the parameter of the previous one.
    private static func keyboardCommand(_ s: inout State, _ v: UInt8) {
        if let c = s.pendingKeyboard {
            s.pendingKeyboard = nil
            s.output.append(0xfa)
            if c == 0xf0 && v == 0 { s.output.append(s.commandByte & 0x40 != 0 ? 0x41 : 0x02) }   // current set
            return
        }
        switch v {
        case 0xed, 0xf0, 0xf3: s.pendingKeyboard = v; s.output.append(0xfa)
        case 0xee: s.output.append(0xee)
        case 0xf2: s.output += [0xfa, 0xab, s.commandByte & 0x40 != 0 ? 0x41 : 0x83]
        case 0xf4: s.scanning = true; s.output.append(0xfa)
        case 0xf5: s.scanning = false; s.output.append(0xfa)
        case 0xf6: s.scanning = true; s.output.append(0xfa)
        case 0xff: s.scanning = true; s.output += [0xfa, 0xaa]
        default: s.output.append(0xfa)
        }
    }

    /// Drives IRQ 1 to "data waiting and keyboard interrupts on". After a read (`pulse`) the line drops
    /// first, so the next waiting byte is a new edge.
    private func updateIRQ(pulse: Bool) {
        irqLevel.withLock { level in
            let want = state.withLock { !$0.output.isEmpty && $0.commandByte & 0x01 != 0 }
            if pulse && level { irq(false); level = false }
            if want != level { irq(want); level = want }
        }
    }
}
