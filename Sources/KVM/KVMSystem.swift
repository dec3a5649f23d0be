import CKVM
import Glibc
import SystemPackage

/// A KVM capability the VMM relies on, with the name used in error messages.
public struct KVMCapability: Sendable, CustomStringConvertible {
    public let number: Int32
    public let name: String
    public init(_ number: Int32, _ name: String) { self.number = number; self.name = name }
    public var description: String { name }

    public static let userMemory = KVMCapability(KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY")
    public static let setTSSAddr = KVMCapability(KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR")
    public static let setIdentityMapAddr = KVMCapability(KVM_CAP_SET_IDENTITY_MAP_ADDR, "KVM_CAP_SET_IDENTITY_MAP_ADDR")
    public static let irqchip = KVMCapability(KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP")
    public static let pit2 = KVMCapability(KVM_CAP_PIT2, "KVM_CAP_PIT2")
    public static let irqRouting = KVMCapability(KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING")
    public static let irqInjectStatus = KVMCapability(KVM_CAP_IRQ_INJECT_STATUS, "KVM_CAP_IRQ_INJECT_STATUS")
    public static let extCPUID = KVMCapability(KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID")
    public static let signalMSI = KVMCapability(KVM_CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI")
    public static let ioeventfd = KVMCapability(KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD")
    public static let irqfd = KVMCapability(KVM_CAP_IRQFD, "KVM_CAP_IRQFD")
    public static let immediateExit = KVMCapability(KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT")
    public static let mpState = KVMCapability(KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE")
    public static let vcpuEvents = KVMCapability(KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS")

    /// Everything minivisor needs from the host's KVM.
    public static let required: [KVMCapability] = [
        .userMemory, .setTSSAddr, .setIdentityMapAddr, .irqchip, .pit2, .irqRouting, .irqInjectStatus,
        .extCPUID, .signalMSI, .ioeventfd, .irqfd, .immediateExit, .mpState, .vcpuEvents,
    ]
}

/// Why /dev/kvm cannot be used; each case renders as one line naming the cause and the fix.
public enum KVMUnavailable: Error, CustomStringConvertible, Sendable {
    case missing(String)
    case permissionDenied(String)
    case openFailed(String, Int32)
    case badAPIVersion(Int32)
    case missingCapability(String)

    public var description: String {
        switch self {
        case .missing(let p):
            return "\(p) does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) or run on a host with virtualisation enabled"
        case .permissionDenied(let p):
            return "no permission to open \(quoted(p)): add your user to the kvm group (sudo usermod -aG kvm $USER) or run as root"
        case let .openFailed(p, e):
            return "cannot open \(quoted(p)): \(String(cString: strerror(e))): check that KVM is working on this host"
        case .badAPIVersion(let v):
            return "the KVM device reports API version \(v), minivisor needs 12: use a Linux kernel with the stable KVM API"
        case .missingCapability(let name):
            return "this host's KVM lacks \(name), which minivisor needs: use a newer host kernel"
        }
    }
}

/// The KVM system handle (/dev/kvm): API version, capabilities, supported CPUID, VM creation.
public final class KVMSystem: @unchecked Sendable {
    public let fd: FileDescriptor
    public let vcpuMmapSize: Int

    /// Opens /dev/kvm and checks the API version and every capability in `KVMCapability.required`.
    public init(path: String = "/dev/kvm") throws {
        let raw = Glibc.open(path, O_RDWR | O_CLOEXEC)
        if raw < 0 {
            let e = Glibc.errno
            switch e {
            case ENOENT, ENODEV, ENXIO: throw KVMUnavailable.missing(path)
            case EACCES, EPERM: throw KVMUnavailable.permissionDenied(path)
            default: throw KVMUnavailable.openFailed(path, e)
            }
        }
        fd = FileDescriptor(rawValue: raw)
        let version = ckvm_ioctl_int(raw, CKVM_KVM_GET_API_VERSION, 0)
        guard version == KVM_API_VERSION else {
            try? fd.close()
            throw KVMUnavailable.badAPIVersion(version)
        }
        for cap in KVMCapability.required where ckvm_ioctl_int(raw, CKVM_KVM_CHECK_EXTENSION, UInt(cap.number)) <= 0 {
            try? fd.close()
            throw KVMUnavailable.missingCapability(cap.name)
        }
        let size = ckvm_ioctl_int(raw, CKVM_KVM_GET_VCPU_MMAP_SIZE, 0)
        guard size > 0 else {
            let e = Glibc.errno
            try? fd.close()
            throw KVMError("KVM_GET_VCPU_MMAP_SIZE", errno: e)
        }
        vcpuMmapSize = Int(size)
    }

    deinit { try? fd.close() }

    /// True when /dev/kvm exists and can be opened read-write by this process.
    public static var isAvailable: Bool {
        access("/dev/kvm", R_OK | W_OK) == 0
    }

    /// KVM_CHECK_EXTENSION: 0 when absent, otherwise the capability's value.
    public func extensionValue(_ cap: Int32) -> Int32 {
        max(0, ckvm_ioctl_int(fd.rawValue, CKVM_KVM_CHECK_EXTENSION, UInt(cap)))
    }

    /// KVM_GET_SUPPORTED_CPUID, growing the buffer on E2BIG.
    public func supportedCPUID() throws -> [kvm_cpuid_entry2] {
        var n: UInt32 = 256
        while true {
            guard let buf = ckvm_cpuid2_alloc(n) else { throw KVMError("calloc(kvm_cpuid2)", errno: ENOMEM) }
            defer { free(buf) }
            if ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_SUPPORTED_CPUID, buf) == 0 {
                let entries = ckvm_cpuid2_entries(buf)!
                return (0..<Int(buf.pointee.nent)).map { entries[$0] }
            }
            let e = Glibc.errno
            if e == E2BIG && n < 4096 { n *= 2; continue }
            throw KVMError("KVM_GET_SUPPORTED_CPUID", errno: e)
        }
    }

    /// KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores.
    public func msrIndexList() throws -> [UInt32] {
        var n: UInt32 = 512
        while true {
            guard let list = ckvm_msr_list_alloc(n) else { throw KVMError("calloc(kvm_msr_list)", errno: ENOMEM) }
            defer { free(list) }
            if ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_MSR_INDEX_LIST, list) == 0 {
                let p = ckvm_msr_list_indices(list)!
                return (0..<Int(list.pointee.nmsrs)).map { p[$0] }
            }
            let e = Glibc.errno
            if e == E2BIG && n < 8192 { n = max(n * 2, list.pointee.nmsrs); continue }
            throw KVMError("KVM_GET_MSR_INDEX_LIST", errno: e)
        }
    }

    /// KVM_CREATE_VM.
    public func createVM() throws -> KVMVirtualMachine {
        let vmfd = try check("KVM_CREATE_VM") { ckvm_ioctl_int(fd.rawValue, CKVM_KVM_CREATE_VM, 0) }
        return KVMVirtualMachine(system: self, fd: FileDescriptor(rawValue: vmfd))
    }
}
