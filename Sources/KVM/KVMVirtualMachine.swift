import CKVM
import Glibc
import SystemPackage

/// A KVM virtual machine file descriptor: memory slots, in-kernel irqchip, interrupts, eventfds.
/// Thread-safety: KVM serialises VM ioctls itself; this type holds no mutable Swift state.
public final class KVMVirtualMachine: @unchecked Sendable {
    public let system: KVMSystem
    public let fd: FileDescriptor

    init(system: KVMSystem, fd: FileDescriptor) {
        self.system = system
        self.fd = fd
    }

    deinit { try? fd.close() }

    /// KVM_SET_USER_MEMORY_REGION. A size of 0 deletes the slot.
    public func setUserMemoryRegion(slot: UInt32, guestPhysicalAddress: UInt64, size: UInt64,
                                    userAddress: UnsafeMutableRawPointer?, readOnly: Bool = false) throws {
        var region = kvm_userspace_memory_region(
            slot: slot, flags: readOnly ? UInt32(KVM_MEM_READONLY) : 0,
            guest_phys_addr: guestPhysicalAddress, memory_size: size,
            userspace_addr: UInt64(UInt(bitPattern: userAddress)))
        _ = try check("KVM_SET_USER_MEMORY_REGION(slot \(slot), gpa 0x\(String(guestPhysicalAddress, radix: 16)))") {
            ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_USER_MEMORY_REGION, &region)
        }
    }

    /// KVM_SET_TSS_ADDR (three pages KVM needs on Intel hosts for real-mode emulation).
    public func setTSSAddress(_ address: UInt64) throws {
        _ = try check("KVM_SET_TSS_ADDR") { ckvm_ioctl_int(fd.rawValue, CKVM_KVM_SET_TSS_ADDR, UInt(address)) }
    }

    /// KVM_SET_IDENTITY_MAP_ADDR (one page; must be set before any vCPU exists).
    public func setIdentityMapAddress(_ address: UInt64) throws {
        var a = address
        _ = try check("KVM_SET_IDENTITY_MAP_ADDR") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_IDENTITY_MAP_ADDR, &a) }
    }

    /// KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and LAPICs.
    public func createIRQChip() throws {
        _ = try check("KVM_CREATE_IRQCHIP") { ckvm_ioctl_int(fd.rawValue, CKVM_KVM_CREATE_IRQCHIP, 0) }
    }

    /// KVM_CREATE_PIT2. `speakerDummy` keeps port 0x61 in the kernel.
    public func createPIT2(speakerDummy: Bool = true) throws {
        var cfg = kvm_pit_config()
        cfg.flags = speakerDummy ? UInt32(KVM_PIT_SPEAKER_DUMMY) : 0
        _ = try check("KVM_CREATE_PIT2") { ckvm_ioctl(fd.rawValue, CKVM_KVM_CREATE_PIT2, &cfg) }
    }

    /// KVM_IRQ_LINE: raise or lower a GSI on the in-kernel irqchip.
    public func setIRQLine(_ irq: UInt32, level: Bool) throws {
        var l = kvm_irq_level()
        l.irq = irq
        l.level = level ? 1 : 0
        _ = try check("KVM_IRQ_LINE(\(irq))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_IRQ_LINE, &l) }
    }

    /// KVM_SIGNAL_MSI: inject one message-signalled interrupt. Returns false when it was blocked.
    @discardableResult
    public func signalMSI(address: UInt64, data: UInt32) throws -> Bool {
        var msi = kvm_msi()
        msi.address_lo = UInt32(truncatingIfNeeded: address)
        msi.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        msi.data = data
        let r = try check("KVM_SIGNAL_MSI") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SIGNAL_MSI, &msi) }
        return r > 0
    }

    /// KVM_IOEVENTFD: a guest write of `length` bytes at `address` (MMIO or port) signals `eventfd`
    /// in the kernel without an exit to userspace. `datamatch` restricts it to one written value.
    public func registerIOEventFD(_ eventfd: Int32, address: UInt64, length: UInt32, isPIO: Bool = false,
                                  datamatch: UInt64? = nil, deassign: Bool = false) throws {
        var e = kvm_ioeventfd()
        e.addr = address
        e.len = length
        e.fd = eventfd
        var flags: UInt32 = 0
        if isPIO { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_pio) }
        if let d = datamatch { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_datamatch); e.datamatch = d }
        if deassign { flags |= UInt32(1 << kvm_ioeventfd_flag_nr_deassign) }
        e.flags = flags
        _ = try check("KVM_IOEVENTFD(0x\(String(address, radix: 16)))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_IOEVENTFD, &e) }
    }

    /// KVM_IRQFD: writing to `eventfd` raises `gsi` in the kernel.
    public func registerIRQFD(_ eventfd: Int32, gsi: UInt32, deassign: Bool = false) throws {
        var i = kvm_irqfd()
        i.fd = UInt32(bitPattern: eventfd)
        i.gsi = gsi
        i.flags = deassign ? UInt32(KVM_IRQFD_FLAG_DEASSIGN) : 0
        _ = try check("KVM_IRQFD(gsi \(gsi))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_IRQFD, &i) }
    }

    /// A GSI routing entry for KVM_SET_GSI_ROUTING.
    public enum Route: Sendable {
        case irqchip(gsi: UInt32, chip: UInt32, pin: UInt32)
        case msi(gsi: UInt32, address: UInt64, data: UInt32)
    }

    /// KVM_SET_GSI_ROUTING: replaces the whole routing table.
    public func setGSIRouting(_ routes: [Route]) throws {
        guard let table = ckvm_irq_routing_alloc(UInt32(routes.count)) else { throw KVMError("calloc", errno: ENOMEM) }
        defer { free(table) }
        let entries = ckvm_irq_routing_entries(table)!
        for (i, r) in routes.enumerated() {
            switch r {
            case let .irqchip(gsi, chip, pin): ckvm_routing_set_irqchip(entries + i, gsi, chip, pin)
            case let .msi(gsi, address, data):
                ckvm_routing_set_msi(entries + i, gsi, UInt32(truncatingIfNeeded: address),
                                     UInt32(truncatingIfNeeded: address >> 32), data)
            }
        }
        _ = try check("KVM_SET_GSI_ROUTING") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_GSI_ROUTING, table) }
    }

    /// KVM_CREATE_VCPU, mapping the vCPU's kvm_run page.
    public func createVCPU(id: UInt32) throws -> KVMVCPU {
        let vfd = try check("KVM_CREATE_VCPU(\(id))") { ckvm_ioctl_int(fd.rawValue, CKVM_KVM_CREATE_VCPU, UInt(id)) }
        let size = system.vcpuMmapSize
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, vfd, 0), p != MAP_FAILED else {
            let e = Glibc.errno
            Glibc.close(vfd)
            throw KVMError("mmap(kvm_run of vCPU \(id))", errno: e)
        }
        return KVMVCPU(id: id, fd: FileDescriptor(rawValue: vfd), run: p, runSize: size)
    }
}

/// A Linux eventfd, for ioeventfd doorbells and irqfd interrupts.
public final class EventFD: @unchecked Sendable {
    public let fd: Int32
    public init(semaphore: Bool = false, nonBlocking: Bool = true) throws {
        let r = ckvm_eventfd(semaphore ? 1 : 0, nonBlocking ? 1 : 0)
        guard r >= 0 else { throw KVMError("eventfd") }
        fd = r
    }
    deinit { Glibc.close(fd) }

    /// Adds `value` to the counter.
    public func signal(_ value: UInt64 = 1) {
        var v = value
        _ = Glibc.write(fd, &v, 8)
    }

    /// Reads and resets the counter; nil when it was zero (non-blocking) or on error.
    public func consume() -> UInt64? {
        var v: UInt64 = 0
        let r = Glibc.read(fd, &v, 8)
        return r == 8 ? v : nil
    }
}
