import Synchronization

/// A resource the allocator could not hand out, or a release or reservation it does not recognise.
public enum ResourceError: Error, Equatable, CustomStringConvertible, Sendable {
    /// Every unit of `resource` in `pool` is taken (or no free range of `size` bytes is left there).
    case exhausted(resource: String, pool: String)
    /// `what` is outside the pool or already taken.
    case unavailable(resource: String, what: String)
    /// A size that is zero or not a power of two.
    case badSize(resource: String, size: UInt64)

    public var description: String {
        switch self {
        case let .exhausted(r, pool):
            return "no \(r) left in \(pool): give the machine fewer devices"
        case let .unavailable(r, what):
            return "\(r) \(what) is outside the machine's pool or already taken: pick a free one or let the machine choose"
        case let .badSize(r, size):
            return "cannot allocate a \(r) of \(size) bytes: the size must be a non-zero power of two"
        }
    }
}

/// Hands out a machine's device resources: PCI device numbers, GSIs for PCI INTx lines, ranges of the
/// PCI MMIO and port windows (BARs), and KVM memory slots. Each is taken at most once until released;
/// windows are allocated first-fit, naturally aligned (a BAR of size N lands on a multiple of N).
///
/// Threads and ownership: any thread; all state is one `State` behind one Mutex, never held while calling out.
public final class ResourceAllocator: Sendable {
    public static let defaultPCIDevices: Range<Int> = 1..<32
    public static let defaultGSIs: Range<UInt32> = 16..<24
    public static let defaultMMIOWindow: Range<UInt64> = MemoryLayout.pciMMIOStart..<MemoryLayout.pciMMIOEnd
    /// Port window for I/O BARs: above the legacy ports (0x3f8 serial, 0x604 power-off, 0xcf8 PCI).
    public static let defaultPortWindow: Range<UInt64> = 0xc000..<0x10000

    public let pciDevices: Range<Int>
    public let gsis: Range<UInt32>
    public let mmioWindow: Range<UInt64>
    public let portWindow: Range<UInt64>
    public let memorySlots: Range<UInt32>

    private struct State {
        var pciDevices: Set<Int> = []
        var gsis: Set<UInt32> = []
        var mmio = AddressRanges()
        var ports = AddressRanges()
        var memorySlots: Set<UInt32> = []
    }
    private let state = Mutex(State())

    public init(pciDevices: Range<Int> = defaultPCIDevices, gsis: Range<UInt32> = defaultGSIs,
                mmioWindow: Range<UInt64> = defaultMMIOWindow, portWindow: Range<UInt64> = defaultPortWindow,
                memorySlots: Range<UInt32> = 0..<512) {
        self.pciDevices = pciDevices
        self.gsis = gsis
        self.mmioWindow = mmioWindow
        self.portWindow = portWindow
        self.memorySlots = memorySlots
    }

    private static func pool<T: Strideable>(_ r: Range<T>) -> String where T.Stride: SignedInteger { "\(r.lowerBound)-\(r.upperBound.advanced(by: -1))" }
    private static func hexPool(_ r: Range<UInt64>) -> String {
        "0x\(String(r.lowerBound, radix: 16))-0x\(String(r.upperBound - 1, radix: 16))"
    }

    // MARK: numbered resources

    /// A PCI device number on bus 0: `preferred` when given (it must be free), else the lowest free one.
    public func allocatePCIDevice(_ preferred: Int? = nil) throws(ResourceError) -> Int {
        try state.withLock { (s: inout State) throws(ResourceError) -> Int in
            try Self.take(&s.pciDevices, from: pciDevices, preferred: preferred, resource: "PCI device number")
        }
    }
    public func releasePCIDevice(_ device: Int) { _ = state.withLock { $0.pciDevices.remove(device) } }

    /// A GSI for a PCI INTx line (an IOAPIC input, level-triggered, active low).
    public func allocateGSI(_ preferred: UInt32? = nil) throws(ResourceError) -> UInt32 {
        try state.withLock { (s: inout State) throws(ResourceError) -> UInt32 in
            try Self.take(&s.gsis, from: gsis, preferred: preferred, resource: "PCI interrupt GSI")
        }
    }
    public func releaseGSI(_ gsi: UInt32) { _ = state.withLock { $0.gsis.remove(gsi) } }

    /// A KVM memory slot number: `preferred` when given (it must be free), else the lowest free one.
    public func allocateMemorySlot(_ preferred: UInt32? = nil) throws(ResourceError) -> UInt32 {
        try state.withLock { (s: inout State) throws(ResourceError) -> UInt32 in
            try Self.take(&s.memorySlots, from: memorySlots, preferred: preferred, resource: "KVM memory slot")
        }
    }
    public func releaseMemorySlot(_ slot: UInt32) { _ = state.withLock { $0.memorySlots.remove(slot) } }

    private static func take<T: Hashable & Strideable>(_ used: inout Set<T>, from pool: Range<T>, preferred: T?,
                                                       resource: String) throws(ResourceError) -> T where T.Stride: SignedInteger {
        if let p = preferred {
            guard pool.contains(p), !used.contains(p) else { throw .unavailable(resource: resource, what: "\(p)") }
            used.insert(p)
            return p
        }
        guard let free = pool.first(where: { !used.contains($0) }) else {
            throw .exhausted(resource: resource, pool: Self.pool(pool))
        }
        used.insert(free)
        return free
    }

    // MARK: windows

    /// `size` bytes (a power of two) of the PCI MMIO window, aligned to `size`.
    public func allocateMMIO(size: UInt64) throws(ResourceError) -> UInt64 {
        try state.withLock { (s: inout State) throws(ResourceError) -> UInt64 in
            try Self.fit(&s.mmio, window: mmioWindow, size: size, resource: "PCI MMIO range")
        }
    }
    /// Returns the MMIO range that starts at `base`.
    public func releaseMMIO(base: UInt64) { state.withLock { $0.mmio.release(start: base) } }

    /// `size` ports (a power of two) of the PCI port window, aligned to `size`.
    public func allocatePorts(size: UInt64) throws(ResourceError) -> UInt64 {
        try state.withLock { (s: inout State) throws(ResourceError) -> UInt64 in
            try Self.fit(&s.ports, window: portWindow, size: size, resource: "PCI port range")
        }
    }
    public func releasePorts(base: UInt64) { state.withLock { $0.ports.release(start: base) } }

    /// The MMIO ranges handed out, sorted.
    public var mmioAllocations: [Range<UInt64>] { state.withLock { $0.mmio.claims.map { $0.start..<$0.end } } }

    private static func fit(_ used: inout AddressRanges, window: Range<UInt64>, size: UInt64,
                            resource: String) throws(ResourceError) -> UInt64 {
        guard size > 0, size.nonzeroBitCount == 1 else { throw .badSize(resource: resource, size: size) }
        guard let base = used.place(size: size, align: size, from: window.lowerBound, in: [window]) else {
            throw .exhausted(resource: "\(resource) of \(size) bytes", pool: hexPool(window))
        }
        used.claim(base, base + size, resource)
        return base
    }
}
