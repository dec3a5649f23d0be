import CKVM
import Glibc
import KVM

/// Guest-physical memory map constants shared by the boot code and devices.
public enum MemoryLayout {
    /// Start of the 32-bit MMIO hole; RAM that does not fit below it continues at 4 GiB.
    public static let mmioHoleStart: UInt64 = 0xC000_0000
    public static let fourGiB: UInt64 = 0x1_0000_0000
    /// Where PCI BARs are placed inside the hole.
    public static let pciMMIOStart: UInt64 = 0xD000_0000
    public static let pciMMIOEnd: UInt64 = 0xFE00_0000
    public static let ioapic: UInt64 = 0xFEC0_0000
    public static let lapic: UInt64 = 0xFEE0_0000
    /// KVM_SET_TSS_ADDR / KVM_SET_IDENTITY_MAP_ADDR pages (inside the hole, never RAM).
    public static let tssAddress: UInt64 = 0xFFFB_D000
    public static let identityMapAddress: UInt64 = 0xFFFB_C000
    public static let pageSize: UInt64 = 4096
    /// Smallest and largest RAM minivisor accepts.
    public static let minimumRAM: UInt64 = 4 << 20
    public static let maximumRAM: UInt64 = 1 << 40
}

/// Why a guest-physical access failed.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible, Sendable {
    case outOfRange(address: UInt64, length: UInt64)
    public var description: String {
        switch self {
        case let .outOfRange(a, l): return "guest-physical range 0x\(String(a, radix: 16))+0x\(String(l, radix: 16)) is not RAM"
        }
    }
}

/// Guest RAM: one memfd, mapped shared into this process once, in one region below the MMIO hole and, when
/// RAM is larger than the space below the hole, one region at 4 GiB (`RAMSlotLayout` registers them with
/// KVM). Because it is a memfd, devices can map the same pages elsewhere (for example into a GPU aperture).
///
/// All accessors are bounds-checked: an access that is not wholly inside one RAM region returns an error
/// value, never traps. The mapping is immutable after creation; concurrent access to guest memory has the
/// same semantics as the guest's own (racy bytes, never host memory outside the mapping).
public final class GuestMemory: @unchecked Sendable {
    public struct Region: Sendable, Equatable {
        public let guestAddress: UInt64
        public let size: UInt64
        /// Offset of the region within the memfd (and within the host mapping).
        public let fileOffset: UInt64
        public var end: UInt64 { guestAddress + size }
    }

    public let size: UInt64
    public let regions: [Region]
    public let memfd: Int32
    public let hostBase: UnsafeMutableRawPointer

    /// Computes the regions for `bytes` of RAM: below the MMIO hole first, the rest at 4 GiB.
    public static func layout(bytes: UInt64) -> [Region] {
        let low = min(bytes, MemoryLayout.mmioHoleStart)
        var r = [Region(guestAddress: 0, size: low, fileOffset: 0)]
        if bytes > low {
            r.append(Region(guestAddress: MemoryLayout.fourGiB, size: bytes - low, fileOffset: low))
        }
        return r
    }

    /// Creates `bytes` of RAM (a multiple of 4 KiB). Pages are allocated by the host kernel on first touch.
    public init(bytes: UInt64) throws {
        precondition(bytes % MemoryLayout.pageSize == 0, "guest RAM must be page aligned")
        size = bytes
        regions = GuestMemory.layout(bytes: bytes)
        let fd = ckvm_memfd("minivisor-ram")
        guard fd >= 0 else { throw KVMError("memfd_create") }
        guard ftruncate(fd, off_t(bytes)) == 0 else {
            let e = errno
            close(fd)
            throw KVMError("ftruncate(guest RAM, \(bytes) bytes)", errno: e)
        }
        guard let p = mmap(nil, Int(bytes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0),
              p != MAP_FAILED else {
            let e = errno
            close(fd)
            throw KVMError("mmap(guest RAM, \(bytes) bytes)", errno: e)
        }
        memfd = fd
        hostBase = p
    }

    deinit {
        munmap(hostBase, Int(size))
        close(memfd)
    }

    /// True when [address, address+length) is wholly RAM.
    public func contains(_ address: UInt64, length: UInt64 = 1) -> Bool {
        (try? pointer(address, length: length)) != nil
    }

    /// Host pointer for [address, address+length), which must lie inside one region.
    @inline(__always)
    public func pointer(_ address: UInt64, length: UInt64) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        for r in regions where address >= r.guestAddress && address < r.end {
            let off = address - r.guestAddress
            guard length <= r.size - off else { break }
            return hostBase + Int(r.fileOffset + off)
        }
        throw .outOfRange(address: address, length: length)
    }

    /// Offset in the memfd of a guest-physical page, for mapping the same page elsewhere.
    public func fileOffset(of address: UInt64) -> UInt64? {
        for r in regions where address >= r.guestAddress && address < r.end {
            return r.fileOffset + (address - r.guestAddress)
        }
        return nil
    }

    public func read<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: UInt64) throws(GuestMemoryError) -> T {
        let p = try pointer(address, length: UInt64(Swift.MemoryLayout<T>.size))
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    public func write<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, length: UInt64(Swift.MemoryLayout<T>.size))
        p.storeBytes(of: value.littleEndian, as: T.self)
    }

    public func write(bytes: some Collection<UInt8>, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, length: UInt64(bytes.count))
        // Contiguous storage (arrays: images, modules) is copied in one go; anything else byte by byte.
        let copied: Void? = bytes.withContiguousStorageIfAvailable { src in
            if let base = src.baseAddress { p.copyMemory(from: base, byteCount: src.count) }
        }
        guard copied == nil else { return }
        var i = 0
        for b in bytes { p.storeBytes(of: b, toByteOffset: i, as: UInt8.self); i += 1 }
    }

    public func write(_ raw: UnsafeRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, length: UInt64(raw.count))
        if let b = raw.baseAddress { p.copyMemory(from: b, byteCount: raw.count) }
    }

    public func readBytes(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        guard count >= 0 else { throw .outOfRange(address: address, length: UInt64(bitPattern: Int64(count))) }
        let p = try pointer(address, length: UInt64(count))
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    public func fill(_ byte: UInt8, at address: UInt64, count: UInt64) throws(GuestMemoryError) {
        let p = try pointer(address, length: count)
        memset(p, Int32(byte), Int(count))
    }

    /// Reads a NUL-terminated string of at most `limit` bytes.
    public func readCString(at address: UInt64, limit: Int = 4096) throws(GuestMemoryError) -> String {
        var bytes: [UInt8] = []
        var a = address
        while bytes.count < limit {
            let b: UInt8 = try read(at: a)
            if b == 0 { break }
            bytes.append(b)
            a += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
