import Synchronization

/// Why guest RAM's slot layout could not change (write watchpoints).
public enum RAMSlotError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The host's KVM lacks KVM_CAP_READONLY_MEM.
    case readOnlyUnsupported
    /// A page asked to be read-only is not guest RAM.
    case notRAM(page: UInt64)
    /// Another thread is changing the layout right now.
    case busy
    /// KVM refused a slot change (`detail` names the ioctl and errno); the previous layout was restored.
    case kvm(String)

    public var description: String {
        switch self {
        case .readOnlyUnsupported:
            return "this host's KVM cannot make guest memory read-only (no KVM_CAP_READONLY_MEM): use hardware watchpoints on a host that has them"
        case .notRAM(let p):
            return "guest-physical page 0x\(String(p, radix: 16)) is not RAM: watch an address in guest RAM"
        case .busy:
            return "the RAM slot layout is being changed by another thread: retry once that change returned"
        case .kvm(let d):
            return "cannot change guest RAM's memory slots: \(d): remove some watchpoints and retry"
        }
    }
}

/// The KVM memory slots that back guest RAM, and which RAM pages are read-only to the guest (write
/// watchpoints: a guest write there exits as an MMIO write instead of reaching memory). Each RAM region
/// (`GuestMemory.regions`) is cut into runs of writable and read-only pages, one slot per run, all over
/// the same host memory; slot numbers come from the machine's `ResourceAllocator`. With no read-only
/// pages the layout is one slot per region, as KVM first saw it.
///
/// Threads and ownership: any thread; the layout is one `State` behind one Mutex, never held while
/// calling KVM. A change (`setReadOnlyPages`) marks the state busy, calls KVM without the lock and
/// commits; a second change meanwhile fails with `.busy`. Change it only while no vCPU runs (the VM
/// paused): KVM deletes and re-creates the slots of the regions that change, and a vCPU running then
/// would see the gap.
public final class RAMSlotLayout: Sendable {
    /// One memory slot: `size` bytes of guest-physical memory at `guestAddress`, backed by the host
    /// mapping at `hostOffset` bytes from the RAM's base.
    public struct Piece: Sendable, Equatable, Hashable {
        public let guestAddress: UInt64
        public let size: UInt64
        public let hostOffset: UInt64
        public let readOnly: Bool
        public var end: UInt64 { guestAddress + size }
    }

    /// Calls KVM_SET_USER_MEMORY_REGION (size 0 deletes `slot`).
    public typealias SetRegion = @Sendable (_ slot: UInt32, _ piece: Piece?) throws -> Void

    public let regions: [GuestMemory.Region]
    /// Whether the host's KVM can make a slot read-only (KVM_CAP_READONLY_MEM).
    public let readOnlySupported: Bool
    private let setRegion: SetRegion
    private let resources: ResourceAllocator

    private struct State {
        var slots: [UInt32: Piece] = [:]
        var readOnlyPages: Set<UInt64> = []
        var busy = false
    }
    private let state = Mutex(State())

    /// Registers one slot per region (slot numbers from `resources`).
    public init(regions: [GuestMemory.Region], resources: ResourceAllocator, readOnlySupported: Bool,
                setRegion: @escaping SetRegion) throws {
        self.regions = regions
        self.readOnlySupported = readOnlySupported
        self.resources = resources
        self.setRegion = setRegion
        var slots: [UInt32: Piece] = [:]
        for p in Self.pieces(regions: regions, readOnlyPages: []) {
            let slot = try resources.allocateMemorySlot()
            try setRegion(slot, p)
            slots[slot] = p
        }
        state.withLock { $0.slots = slots }
    }

    /// The slots now registered, by guest address.
    public var layout: [Piece] { state.withLock { $0.slots.values.sorted { $0.guestAddress < $1.guestAddress } } }

    /// The read-only pages (guest-physical, page aligned).
    public var readOnlyPages: Set<UInt64> { state.withLock { $0.readOnlyPages } }

    /// Whether the page holding `address` is read-only to the guest.
    public func isReadOnly(_ address: UInt64) -> Bool {
        state.withLock { $0.readOnlyPages.contains(address & ~(MemoryLayout.pageSize - 1)) }
    }

    /// The slots for `regions` with `readOnlyPages` (page-aligned guest-physical addresses inside them)
    /// cut out as read-only runs: a pure function of its arguments.
    public static func pieces(regions: [GuestMemory.Region], readOnlyPages: Set<UInt64>) -> [Piece] {
        let page = MemoryLayout.pageSize
        var out: [Piece] = []
        for r in regions {
            let inside = readOnlyPages.filter { $0 >= r.guestAddress && $0 < r.end }.sorted()
            var at = r.guestAddress
            func emit(_ end: UInt64, _ readOnly: Bool) {
                guard end > at else { return }
                out.append(Piece(guestAddress: at, size: end - at, hostOffset: r.fileOffset + (at - r.guestAddress), readOnly: readOnly))
                at = end
            }
            var i = 0
            while i < inside.count {
                emit(inside[i], false)
                var end = inside[i] + page
                i += 1
                while i < inside.count, inside[i] == end { end += page; i += 1 }
                emit(end, true)
            }
            emit(r.end, false)
        }
        return out
    }

    /// Makes exactly `pages` (page-aligned guest-physical addresses of RAM) read-only; every other RAM
    /// page writable. Only the slots that differ are deleted and re-created. Throws `RAMSlotError`; on a
    /// KVM failure the previous layout is put back.
    public func setReadOnlyPages(_ pages: Set<UInt64>) throws(RAMSlotError) {
        let page = MemoryLayout.pageSize
        guard pages.isEmpty || readOnlySupported else { throw .readOnlyUnsupported }
        for p in pages where p % page != 0 || !regions.contains(where: { p >= $0.guestAddress && p < $0.end }) {
            throw .notRAM(page: p)
        }
        let old = try state.withLock { (s: inout State) throws(RAMSlotError) -> [UInt32: Piece] in
            guard !s.busy else { throw .busy }
            s.busy = true
            return s.slots
        }
        let target = Set(Self.pieces(regions: regions, readOnlyPages: pages))
        do {
            let slots = try apply(from: old, to: target)
            state.withLock { s in
                s.slots = slots
                s.readOnlyPages = pages
                s.busy = false
            }
        } catch {
            state.withLock { $0.busy = false }
            throw error
        }
    }

    /// Deletes the slots of `old` not in `target`, then creates the missing pieces (KVM refuses
    /// overlapping slots, so deletions go first). On failure, returns to `old` and throws.
    private func apply(from old: [UInt32: Piece], to target: Set<Piece>) throws(RAMSlotError) -> [UInt32: Piece] {
        var current = old
        do {
            try transition(&current, to: target)
            return current
        } catch {
            // Put the old layout back (best effort: the same calls in reverse succeed where they did before).
            try? transition(&current, to: Set(old.values))
            throw .kvm("\(error)")
        }
    }

    private func transition(_ current: inout [UInt32: Piece], to target: Set<Piece>) throws {
        for (slot, piece) in current where !target.contains(piece) {
            try setRegion(slot, nil)
            current[slot] = nil
            resources.releaseMemorySlot(slot)
        }
        let present = Set(current.values)
        for piece in target.sorted(by: { $0.guestAddress < $1.guestAddress }) where !present.contains(piece) {
            let slot = try resources.allocateMemorySlot()
            do { try setRegion(slot, piece) } catch {
                resources.releaseMemorySlot(slot)
                throw error
            }
            current[slot] = piece
        }
    }
}
