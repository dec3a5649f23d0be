import Glibc
import Synchronization

/// Why a system-memory registration or allocation failed.
public enum SystemMemoryError: Error, Equatable, Sendable, CustomStringConvertible {
    case misaligned(base: UInt64, length: UInt64)
    case empty
    case outOfBusRange(base: UInt64, length: UInt64)
    case overlaps(base: UInt64, length: UInt64, existing: String)
    case allocationFailed(bytes: UInt64)

    public var description: String {
        switch self {
        case let .misaligned(b, l): return "bus range 0x\(hex(b))+0x\(hex(l)) is not page aligned"
        case .empty: return "empty bus range"
        case let .outOfBusRange(b, l): return "bus range 0x\(hex(b))+0x\(hex(l)) exceeds the 52-bit bus"
        case let .overlaps(b, l, n): return "bus range 0x\(hex(b))+0x\(hex(l)) overlaps region '\(n)'"
        case let .allocationFailed(n): return "host allocation of \(n) bytes failed"
        }
    }
}

@inline(__always) func hex(_ v: UInt64) -> String { String(v, radix: 16) }

/// The memory the GPU can reach by bus ("DMA") address: host memory regions, each a raw pointer + length
/// owned by someone else (guest RAM is a memfd the VMM mapped), registered at a page-aligned bus base.
///
/// - Resolution is bounds-checked: a range that is not wholly inside one region resolves to nil, which
///   the GPU turns into a fault. Nothing here ever dereferences memory.
/// - One zeroed scratch page is always registered at `scratchPageAddress` (GVT-g points GTT entries that
///   must stay valid but harmless at a scratch page).
/// - Host allocations (`allocate`) get bus addresses from a private window (`hostWindow`), so they never
///   collide with guest RAM registered at its guest-physical addresses.
///
/// Thread-safety: the region table is behind a Mutex; engines and the display resolve through an
/// immutable `Snapshot`. Unregistering a region (or unmapping its memory) while an engine may be
/// executing a command that touches it is the owner's responsibility: make the engines idle first.
public final class SystemMemory: @unchecked Sendable {
    public static let pageSize: UInt64 = 4096
    /// Bus addresses are 52 bits (GTT entry bits 51:12; bits 63:52 must be zero).
    public static let busLimit: UInt64 = 1 << 52
    public static let scratchPageAddress: UInt64 = 0x000F_FFFF_FFFF_F000
    /// Window from which `allocate` hands out bus addresses.
    public static let hostWindow: Range<UInt64> = 0x000E_0000_0000_0000 ..< 0x000F_0000_0000_0000

    public struct Region: @unchecked Sendable, Equatable, CustomStringConvertible {
        public let base: UInt64
        public let length: UInt64
        public let pointer: UnsafeMutableRawPointer
        public let name: String
        public var end: UInt64 { base + length }
        public var description: String { "\(name) [0x\(hex(base)), 0x\(hex(end)))" }
    }

    /// An immutable view of the region table; resolution is a binary search.
    public struct Snapshot: @unchecked Sendable {
        public let regions: [Region]   // sorted by base, non-overlapping

        /// Host pointer for [bus, bus+length), or nil unless the range lies wholly inside one region.
        @inline(__always)
        public func resolve(_ bus: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
            var lo = 0, hi = regions.count
            while lo < hi {
                let mid = (lo + hi) >> 1
                if regions[mid].base <= bus { lo = mid + 1 } else { hi = mid }
            }
            guard lo > 0 else { return nil }
            let r = regions[lo - 1]
            let off = bus - r.base
            guard off < r.length, length <= r.length - off else { return nil }
            return r.pointer + Int(off)
        }
    }

    private struct State {
        var regions: [Region] = []
        var nextHostBus: UInt64 = SystemMemory.hostWindow.lowerBound
        var owned: Set<UInt64> = []   // bases of regions allocated (and freed) by this object
    }

    private let state = Mutex(State())
    private let scratch: UnsafeMutableRawPointer

    public init() {
        var p: UnsafeMutableRawPointer?
        let allocated = posix_memalign(&p, 4096, 4096)
        precondition(allocated == 0 && p != nil, "SoftGPU: cannot allocate the scratch page")
        memset(p!, 0, 4096)
        scratch = p!
        try! register(base: Self.scratchPageAddress, length: Self.pageSize, pointer: scratch, name: "scratch")
    }

    deinit {
        Glibc.free(scratch)
        state.withLock { s in
            for r in s.regions where s.owned.contains(r.base) { munmap(r.pointer, Int(r.length)) }
        }
    }

    /// Host pointer of the scratch page (4 KiB, initially zero; engines may write it).
    public var scratchPage: UnsafeMutableRawPointer { scratch }

    /// Registers [base, base+length) backed by `pointer` (not owned). Base and length must be page aligned.
    public func register(base: UInt64, length: UInt64, pointer: UnsafeMutableRawPointer, name: String) throws(SystemMemoryError) {
        guard length > 0 else { throw .empty }
        guard base % Self.pageSize == 0, length % Self.pageSize == 0 else { throw .misaligned(base: base, length: length) }
        guard base < Self.busLimit, length <= Self.busLimit - base else { throw .outOfBusRange(base: base, length: length) }
        let r = Region(base: base, length: length, pointer: pointer, name: name)
        let result: SystemMemoryError? = state.withLock { s in
            for e in s.regions where base < e.end && e.base < base + length {
                return .overlaps(base: base, length: length, existing: e.name)
            }
            let i = s.regions.firstIndex { $0.base > base } ?? s.regions.count
            s.regions.insert(r, at: i)
            return nil
        }
        if let e = result { throw e }
    }

    /// Removes the region registered at `base`. Returns false if there is none (the scratch page stays).
    @discardableResult
    public func unregister(base: UInt64) -> Bool {
        guard base != Self.scratchPageAddress else { return false }
        return state.withLock { s in
            guard !s.owned.contains(base), let i = s.regions.firstIndex(where: { $0.base == base }) else { return false }
            s.regions.remove(at: i)
            return true
        }
    }

    public var regions: [Region] { state.withLock { $0.regions } }

    public func snapshot() -> Snapshot { Snapshot(regions: state.withLock { $0.regions }) }

    /// Host pointer for [bus, bus+length), or nil when the range is not wholly inside one region.
    public func resolve(_ bus: UInt64, length: UInt64 = 1) -> UnsafeMutableRawPointer? {
        snapshot().resolve(bus, length: length)
    }

    /// Host pointer of the 4 KiB page at bus address `bus` (page aligned), or nil.
    public func resolvePage(_ bus: UInt64) -> UnsafeMutableRawPointer? {
        guard bus % Self.pageSize == 0 else { return nil }
        return resolve(bus, length: Self.pageSize)
    }

    /// Allocates zeroed, page-aligned host memory (rounded up to pages) and registers it at a fresh bus
    /// address in `hostWindow`. Release it with `free(busAddress:)`. The memory is an anonymous
    /// MAP_NORESERVE mapping: a page becomes resident when it is first touched, not here (a vGPU's 16 MiB
    /// shadow arena costs what its rings and batches use).
    public func allocate(bytes: UInt64, name: String) throws(SystemMemoryError) -> Region {
        let length = (max(bytes, 1) + Self.pageSize - 1) & ~(Self.pageSize - 1)
        guard length < (1 << 40),
              let p = mmap(nil, Int(length), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != MAP_FAILED else {
            throw .allocationFailed(bytes: bytes)
        }
        let region: Region? = state.withLock { s in
            let base = s.nextHostBus
            guard base + length <= Self.hostWindow.upperBound else { return nil }
            s.nextHostBus = base + length + Self.pageSize   // a guard page of bus space between allocations
            let r = Region(base: base, length: length, pointer: p, name: "host:" + name)
            let i = s.regions.firstIndex { $0.base > base } ?? s.regions.count
            s.regions.insert(r, at: i)
            s.owned.insert(base)
            return r
        }
        guard let r = region else { munmap(p, Int(length)); throw .allocationFailed(bytes: bytes) }
        return r
    }

    /// Unregisters and frees memory obtained from `allocate`. Engines must not be using it.
    @discardableResult
    public func free(busAddress: UInt64) -> Bool {
        let r: Region? = state.withLock { s in
            guard s.owned.contains(busAddress), let i = s.regions.firstIndex(where: { $0.base == busAddress }) else { return nil }
            s.owned.remove(busAddress)
            return s.regions.remove(at: i)
        }
        guard let r else { return false }
        munmap(r.pointer, Int(r.length))
        return true
    }
}
