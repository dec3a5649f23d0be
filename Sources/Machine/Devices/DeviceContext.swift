import KVM
import Logging

/// What the PCI bus needs from the platform to place the BARs a function declares (see `PCIBarRegion`):
/// the buses that trap accesses, KVM memory slots and ioeventfds. Implemented by `Machine` (over KVM) and
/// by test fakes (no /dev/kvm).
public protocol PCIPlatform: AnyObject, Sendable {
    var mmioBus: Bus { get }
    var pioBus: Bus { get }
    /// KVM_SET_USER_MEMORY_REGION: maps `size` bytes at `userAddress` into the guest at `guestPhysicalAddress`
    /// in `slot`; `size` 0 removes the slot's mapping.
    func setMemoryRegion(slot: UInt32, guestPhysicalAddress: UInt64, size: UInt64, userAddress: UnsafeMutableRawPointer?) throws
    /// KVM_IOEVENTFD: a guest write of `length` bytes at `address` signals `fd` without an exit.
    func registerIOEventFD(_ fd: Int32, address: UInt64, length: UInt32, isPIO: Bool, deassign: Bool) throws
}

/// The narrow view of the machine a device gets instead of the machine itself: bus registration (PCI
/// functions, whose BARs the PCI bus maps and unmaps), memory slots, ioeventfds and irqfds, IRQ lines and
/// MSIs, guest memory, the device seccomp filter and pausing. `Machine` implements it over KVM; tests
/// implement it with fakes that record what a device did, so devices are unit-tested without /dev/kvm.
/// Everything here may be called from any thread (vCPU threads included).
public protocol DeviceContext: PCIPlatform {
    var memory: GuestMemory { get }
    var pciBus: PCIBus { get }
    var resources: ResourceAllocator { get }
    /// Drives GSI `gsi` (a level-triggered IOAPIC input, e.g. a PCI INTx route) to `level`.
    func setIRQLine(_ gsi: UInt32, level: Bool) throws
    /// Injects one message-signalled interrupt.
    func signalMSI(address: UInt64, data: UInt32) throws
    /// KVM_IRQFD: a signal on `fd` raises GSI `gsi` in the kernel.
    func registerIRQFD(_ fd: Int32, gsi: UInt32, deassign: Bool) throws
    /// Registers a device that pausing the VM also pauses (and resuming resumes).
    func addPausableDevice(_ device: any PausableDevice)
    /// Loads the device seccomp filter for the calling device thread (when the machine uses filters).
    /// Returns false when it could not (the VM is then stopping with a host error).
    @discardableResult
    func enterDeviceSandbox(thread: String) -> Bool
}

public extension DeviceContext {
    /// Places `function` on the PCI bus (at `device`, or the lowest free device number), gives its BARs
    /// addresses in the PCI windows and routes its INTx pin (see `PCIBus.add(_:device:)`).
    @discardableResult
    func addPCIFunction(_ function: any PCIFunction, device: Int? = nil) throws -> PCIBus.Placement {
        try pciBus.add(function, device: device)
    }

    /// A fresh KVM memory slot number (for memory a device maps into the guest through a BAR).
    func allocateMemorySlot() throws -> UInt32 { try resources.allocateMemorySlot() }
}

/// Devices that do work of their own between vCPU exits (e.g. a GPU executing submitted commands) adopt
/// this so that pausing the VM also stops them from starting new work. Called on the thread that pauses
/// or resumes, after (pause) or before (resume) the vCPUs stop or start.
public protocol PausableDevice: AnyObject, Sendable {
    func pause()
    func resume()
}
