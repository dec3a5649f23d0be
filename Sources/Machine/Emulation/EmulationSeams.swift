import CKVM
import KVM

/// The vCPU an emulated instruction reads and updates: `KVMVCPU` in the VMM, a plain value in tests (so
/// the emulator's tests need no /dev/kvm). Called only from the thread that owns the vCPU.
public protocol EmulatedCPU: AnyObject {
    func getRegisters() throws -> kvm_regs
    func setRegisters(_ regs: kvm_regs) throws
    func getSpecialRegisters() throws -> kvm_sregs
    func setSpecialRegisters(_ sregs: kvm_sregs) throws
    func getFPU() throws -> kvm_fpu
    func setFPU(_ fpu: kvm_fpu) throws
    /// The SSE control and status register.
    func getMXCSR() throws -> UInt32
    func setMXCSR(_ value: UInt32) throws
    /// Queues exception `vector` (with its error code, if it has one) for delivery at the next entry.
    func injectException(_ vector: UInt8, errorCode: UInt32?) throws
    /// Guest-linear to guest-physical through the vCPU's current page tables; nil when not mapped.
    func translate(_ linear: UInt64) throws -> UInt64?
}

/// Guest-physical memory as the emulator sees it: RAM has host bytes; anything else (MMIO, holes) has none.
public protocol EmulatedMemory: AnyObject {
    /// Host address of `length` bytes of guest RAM at guest-physical `address`, or nil when any of them is
    /// not RAM.
    func ramPointer(_ address: UInt64, length: Int) -> UnsafeMutableRawPointer?
}

extension KVMVCPU: EmulatedCPU {}

extension GuestMemory: EmulatedMemory {
    public func ramPointer(_ address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        try? pointer(address, length: UInt64(length))
    }
}
