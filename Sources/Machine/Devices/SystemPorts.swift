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

/// A power-off port at 0x604, QEMU's ACPI PM1a control block: a write with SLP_EN (bit 13) set powers off.
public final class PowerOff: BusDevice {
    public static let port: UInt64 = 0x604
    private weak let control: (any MachineControl)?
    public init(control: any MachineControl) { self.control = control }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(0) }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        if offset == 0 && data.count >= 2 && (data.littleEndianValue & 0x2000) != 0 { control?.requestStop(.powerOff) }
    }
}
