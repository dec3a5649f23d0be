import TestSupport
import Logging
import Machine
import Synchronization

/// A `DeviceContext` without KVM: guest RAM is a plain `GuestMemory`, the buses and PCI bus are real, and
/// what a device asks of KVM (memory slots, ioeventfds, irqfds, IRQ lines, MSIs) is recorded, refused the
/// way KVM refuses it (overlapping memory slots, a second ioeventfd at the same address and length).
public final class FakeDeviceContext: DeviceContext, @unchecked Sendable {
    public struct Refused: Error, CustomStringConvertible { public let description: String }
    public struct IOEventKey: Hashable, Sendable { let address: UInt64; let length: UInt32; let isPIO: Bool }
    public struct Recorded: Sendable {
        public var slots: [UInt32: (gpa: UInt64, size: UInt64, host: UInt)] = [:]
        public var ioeventfds: [IOEventKey: Int32] = [:]
        public var irqfds: [UInt32: Int32] = [:]
        public var irqLines: [UInt32: Bool] = [:]
        public var msis: [(address: UInt64, data: UInt32)] = []
        public var pausable: [any PausableDevice] = []
        public var sandboxedThreads: [String] = []
    }

    public let memory: GuestMemory
    public let mmioBus: Bus
    public let pioBus: Bus
    public let pciBus: PCIBus
    public let resources = ResourceAllocator()
    public let recorded = Mutex(Recorded())

    public init(memoryBytes: UInt64 = 64 << 20, logger: Logger = Logger(label: "fake-context")) throws {
        memory = try GuestMemory(bytes: memoryBytes)
        mmioBus = Bus(name: "mmio", logger: logger)
        pioBus = Bus(name: "port", logger: logger)
        pciBus = PCIBus(resources: resources, logger: logger)
        // Guest RAM occupies the first slots, as on a machine.
        for (i, r) in memory.regions.enumerated() {
            let slot = try resources.allocateMemorySlot(UInt32(i))
            let host = UInt(bitPattern: memory.hostBase + Int(r.fileOffset))
            recorded.withLock { $0.slots[slot] = (r.guestAddress, r.size, host) }
        }
        try pioBus.register(pciBus, base: PCIBus.configAddressPort, size: PCIBus.portRangeSize, name: "pci-conf1")
        pciBus.attach(self)
    }

    public func setMemoryRegion(slot: UInt32, guestPhysicalAddress: UInt64, size: UInt64, userAddress: UnsafeMutableRawPointer?) throws {
        let host = UInt(bitPattern: userAddress)
        try recorded.withLock { r in
            if size == 0 { r.slots[slot] = nil; return }
            for (s, m) in r.slots where s != slot && guestPhysicalAddress < m.gpa + m.size && m.gpa < guestPhysicalAddress + size {
                throw Refused(description: "KVM_SET_USER_MEMORY_REGION: File exists (overlaps slot \(s))")
            }
            r.slots[slot] = (guestPhysicalAddress, size, host)
        }
    }

    public func registerIOEventFD(_ fd: Int32, address: UInt64, length: UInt32, isPIO: Bool, deassign: Bool) throws {
        let key = IOEventKey(address: address, length: length, isPIO: isPIO)
        try recorded.withLock { r in
            if deassign {
                guard r.ioeventfds[key] == fd else { throw Refused(description: "KVM_IOEVENTFD: No such file or directory") }
                r.ioeventfds[key] = nil
            } else {
                guard r.ioeventfds[key] == nil else { throw Refused(description: "KVM_IOEVENTFD: File exists") }
                r.ioeventfds[key] = fd
            }
        }
    }

    public func registerIRQFD(_ fd: Int32, gsi: UInt32, deassign: Bool) throws {
        recorded.withLock { $0.irqfds[gsi] = deassign ? nil : fd }
    }
    public func setIRQLine(_ gsi: UInt32, level: Bool) throws { recorded.withLock { $0.irqLines[gsi] = level } }
    public func signalMSI(address: UInt64, data: UInt32) throws { recorded.withLock { $0.msis.append((address, data)) } }
    public func addPausableDevice(_ device: any PausableDevice) { recorded.withLock { $0.pausable.append(device) } }
    public func enterDeviceSandbox(thread: String) -> Bool { recorded.withLock { $0.sandboxedThreads.append(thread) }; return true }

    /// Where memory slot `slot` is mapped (nil: not mapped).
    public func slot(_ slot: UInt32) -> (gpa: UInt64, size: UInt64)? { recorded.withLock { $0.slots[slot].map { ($0.gpa, $0.size) } } }
    /// The ioeventfd registered at `address` (MMIO, `length` bytes), if any.
    public func ioeventfd(at address: UInt64, length: UInt32 = 4) -> Int32? {
        recorded.withLock { $0.ioeventfds[IOEventKey(address: address, length: length, isPIO: false)] }
    }
    public var msis: [(address: UInt64, data: UInt32)] { recorded.withLock { $0.msis } }
}
