import Synchronization

/// QEMU's isa-debug-exit: a write of V (1, 2 or 4 bytes) ends the VM with status (V << 1) | 1.
/// Reads return all ones, as QEMU's device does not implement them.
public final class DebugExit: BusDevice {
    public static let port: UInt64 = 0xf4
    private weak let control: (any MachineControl)?
    public init(control: any MachineControl) { self.control = control }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(UInt64.max) }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0 else { return }
        control?.requestStop(.debugExit(UInt32(truncatingIfNeeded: data.littleEndianValue)))
    }
}

/// The ACPI PM1a event and control blocks, where QEMU's PIIX4 has them (the FADT points here): PM1_STS at
/// 0x600, PM1_EN at 0x602, PM1_CNT at 0x604, 16 bits each; 1- and 2-byte accesses.
/// - PM1_CNT: a write with SLP_EN (bit 13) and SLP_TYP (bits 10-12) = `s5SleepType` (the DSDT's `\_S5`)
///   powers off. SLP_EN with another sleep type (a state the DSDT does not offer) does nothing. Reads give
///   SCI_EN (bit 0, the machine is always in ACPI mode) and the last SLP_TYP written.
/// - PM1_STS: nothing ever raises an event, so it reads 0 (writes of 1 clear bits that are already 0).
/// - PM1_EN: read-write storage.
///
/// Threads and ownership: vCPU threads, concurrently; the two stored registers are one `State` behind one
/// Mutex, never held while calling out (the stop request is made after it is released).
public final class PMDevice: BusDevice {
    public static let eventBlock: UInt64 = 0x600
    public static let controlBlock: UInt64 = 0x604
    /// Ports from `eventBlock`: status, enable, control.
    public static let size: UInt64 = 6
    /// The SCI's ISA IRQ (FADT SCI_INT; level-triggered, active high in the MADT's override).
    public static let sciIRQ: UInt8 = 9
    /// SLP_TYP of S5 (soft off), as QEMU's PIIX4 and the DSDT's `\_S5` package give it.
    public static let s5SleepType: UInt16 = 0
    static let sleepEnable: UInt16 = 1 << 13
    static let sciEnable: UInt16 = 1 << 0

    private struct State { var enable: UInt16 = 0; var control: UInt16 = 0 }
    private let state = Mutex(State())
    private weak let control: (any MachineControl)?
    public init(control: any MachineControl) { self.control = control }

    private func register(_ index: Int, _ s: State) -> UInt16 {
        switch index {
        case 1: return s.enable
        case 2: return PMDevice.sciEnable | (s.control & (7 << 10))
        default: return 0
        }
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let s = state.withLock { $0 }
        var value: UInt64 = 0
        for i in 0..<data.count where offset + UInt64(i) < Self.size {
            let byteIndex = Int(offset) + i
            value |= UInt64(register(byteIndex / 2, s) >> (8 * UInt16(byteIndex % 2)) & 0xff) << (8 * UInt64(i))
        }
        data.storeLittleEndian(value)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset < Self.size, data.count <= 2, offset + UInt64(data.count) <= Self.size else { return }
        let value = data.littleEndianValue
        let powerOff = state.withLock { s -> Bool in
            var sleep = false
            for i in 0..<data.count {
                let byteIndex = Int(offset) + i
                let byte = UInt16(truncatingIfNeeded: value >> (8 * UInt64(i)))
                let shift = UInt16(8 * (byteIndex % 2)), mask: UInt16 = 0xff << shift
                switch byteIndex / 2 {
                case 1: s.enable = (s.enable & ~mask) | (byte << shift)
                case 2:
                    let written = byte << shift
                    s.control = (s.control & ~mask) | (written & ~PMDevice.sleepEnable)
                    if written & PMDevice.sleepEnable != 0 { sleep = true }
                default: break   // PM1_STS: write 1 to clear; no bit is ever set
                }
            }
            return sleep && (s.control >> 10) & 7 == PMDevice.s5SleepType
        }
        if powerOff { control?.requestStop(.powerOff) }
    }
}

/// The chipset's reset control register at port 0xcf9 (PIIX/ICH RST_CNT; the FADT's reset register):
/// a write with RST_CPU (bit 2) set resets the machine, which minivisor reports as `.reboot`. Reads give
/// the last SYS_RST (bit 1) written. The PCI bus forwards byte accesses at 0xcf9 here (it owns 0xcf8-0xcff).
///
/// Threads and ownership: vCPU threads, concurrently; the one stored bit is an atomic.
public final class ResetControl: BusDevice {
    public static let port: UInt64 = 0xcf9
    /// What the FADT tells the OS to write (SYS_RST | RST_CPU: a hard reset).
    public static let resetValue: UInt8 = 0x06
    private let stored = Atomic<UInt8>(0)
    private weak let control: (any MachineControl)?
    public init(control: any MachineControl) { self.control = control }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.storeLittleEndian(offset == 0 ? UInt64(stored.load(ordering: .relaxed)) : UInt64.max)
    }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count == 1 else { return }
        stored.store(data[0] & 0x02, ordering: .relaxed)
        if data[0] & 0x04 != 0 { control?.requestStop(.reboot) }
    }
}
