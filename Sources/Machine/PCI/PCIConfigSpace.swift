import Synchronization

/// A PCI base address register's shape.
public struct PCIBar: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case memory32, memory64, io }
    public let index: Int
    public let size: UInt64          // power of two; >= 16 for memory, >= 4 for I/O
    public let kind: Kind
    public let prefetchable: Bool
    public init(index: Int, size: UInt64, kind: Kind, prefetchable: Bool = false) {
        precondition(size.nonzeroBitCount == 1, "BAR size must be a power of two")
        self.index = index; self.size = size; self.kind = kind; self.prefetchable = prefetchable
    }
    var flags: UInt32 {
        switch kind {
        case .io: return 0x1
        case .memory32: return prefetchable ? 0x8 : 0
        case .memory64: return 0x4 | (prefetchable ? 0x8 : 0)
        }
    }
}

/// A type-0 PCI configuration space (256 bytes) with per-byte write masks, BAR sizing semantics,
/// a capability list and an optional MSI capability. Thread-safe (Mutex). Accesses that are not 1, 2 or
/// 4 bytes, or that cross a dword boundary, read as all ones and are ignored on write.
public final class PCIConfigSpace: Sendable {
    public static let size = 256
    public static let commandMemory: UInt16 = 0x2
    public static let commandIO: UInt16 = 0x1
    public static let commandBusMaster: UInt16 = 0x4
    public static let commandINTxDisable: UInt16 = 0x400

    struct State {
        var bytes = [UInt8](repeating: 0, count: PCIConfigSpace.size)
        var writeMask = [UInt8](repeating: 0, count: PCIConfigSpace.size)
        var w1cMask = [UInt8](repeating: 0, count: PCIConfigSpace.size)
        var bars: [PCIBar?] = Array(repeating: nil, count: 6)
        var lastCapability: Int = 0
        var nextCapabilityOffset: Int = 0x40
        var msiOffset: Int? = nil
    }
    private let state: Mutex<State>

    public init(vendorID: UInt16, deviceID: UInt16, classCode: UInt8, subclass: UInt8, progIF: UInt8 = 0,
                revision: UInt8 = 0, subsystemVendorID: UInt16 = 0, subsystemID: UInt16 = 0,
                interruptPin: UInt8 = 0, headerType: UInt8 = 0) {
        var s = State()
        func put16(_ o: Int, _ v: UInt16) { s.bytes[o] = UInt8(v & 0xff); s.bytes[o + 1] = UInt8(v >> 8) }
        put16(0x00, vendorID)
        put16(0x02, deviceID)
        s.bytes[0x08] = revision
        s.bytes[0x09] = progIF
        s.bytes[0x0a] = subclass
        s.bytes[0x0b] = classCode
        s.bytes[0x0e] = headerType
        put16(0x2c, subsystemVendorID)
        put16(0x2e, subsystemID)
        s.bytes[0x3d] = interruptPin
        // Command register: I/O, memory, bus master, INTx disable are writable.
        s.writeMask[0x04] = 0x07
        s.writeMask[0x05] = 0x04
        // Status: write-1-to-clear error bits (none are ever set here, but keep the semantics).
        s.w1cMask[0x07] = 0xf9
        s.writeMask[0x0c] = 0xff   // cache line size
        s.writeMask[0x0d] = 0xff   // latency timer
        s.writeMask[0x3c] = 0xff   // interrupt line
        state = Mutex(s)
    }

    /// Declares a BAR. A 64-bit BAR uses two slots (index, index+1).
    public func addBar(_ bar: PCIBar) {
        state.withLock { s in
            s.bars[bar.index] = bar
            let o = 0x10 + bar.index * 4
            let sizeMask = ~(bar.size - 1)
            put32(&s.bytes, o, bar.flags)
            let lowMask = UInt32(truncatingIfNeeded: sizeMask) & (bar.kind == .io ? ~UInt32(0x3) : ~UInt32(0xf))
            put32(&s.writeMask, o, lowMask)
            if bar.kind == .memory64 {
                put32(&s.writeMask, o + 4, UInt32(truncatingIfNeeded: sizeMask >> 32))
            }
        }
    }

    /// Appends a capability with the given body (bytes after the id/next pair) and per-byte write masks.
    /// Returns its offset.
    @discardableResult
    public func addCapability(id: UInt8, body: [UInt8], writeMask: [UInt8]) -> Int {
        state.withLock { s in addCapabilityLocked(&s, id: id, body: body, writeMask: writeMask) }
    }

    private func addCapabilityLocked(_ s: inout State, id: UInt8, body: [UInt8], writeMask: [UInt8]) -> Int {
        let o = s.nextCapabilityOffset
        precondition(o + 2 + body.count <= PCIConfigSpace.size, "capability list full")
        s.bytes[o] = id
        s.bytes[o + 1] = 0
        for (i, b) in body.enumerated() { s.bytes[o + 2 + i] = b; s.writeMask[o + 2 + i] = i < writeMask.count ? writeMask[i] : 0 }
        if s.lastCapability == 0 {
            s.bytes[0x34] = UInt8(o)
            s.bytes[0x06] |= 0x10   // status: capabilities list
        } else {
            s.bytes[s.lastCapability + 1] = UInt8(o)
        }
        s.lastCapability = o
        s.nextCapabilityOffset = (o + 2 + body.count + 3) & ~3
        return o
    }

    /// Adds a 64-bit-address MSI capability with one vector. Returns its offset.
    @discardableResult
    public func addMSICapability() -> Int {
        state.withLock { s in
            // body: message control (2), address lo (4), address hi (4), data (2), pad (2)
            let body: [UInt8] = [0x80, 0x00] + [UInt8](repeating: 0, count: 12)
            let mask: [UInt8] = [0x01, 0x00, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]
            let o = addCapabilityLocked(&s, id: 0x05, body: body, writeMask: mask)
            s.msiOffset = o
            return o
        }
    }

    /// The MSI message when MSI is enabled, else nil.
    public var msiMessage: (address: UInt64, data: UInt32)? {
        state.withLock { s in
            guard let o = s.msiOffset, (s.bytes[o + 2] & 1) != 0 else { return nil }
            let lo = UInt64(get32(s.bytes, o + 4)), hi = UInt64(get32(s.bytes, o + 8))
            return ((hi << 32) | lo, UInt32(get32(s.bytes, o + 12) & 0xffff))
        }
    }

    public var command: UInt16 { state.withLock { UInt16(get32($0.bytes, 0x04) & 0xffff) } }

    /// The address a BAR is programmed to (nil when not declared). Memory decoding may be off.
    public func barAddress(_ index: Int) -> UInt64? {
        state.withLock { s in
            guard index < 6, let bar = s.bars[index] else { return nil }
            let o = 0x10 + index * 4
            var a = UInt64(get32(s.bytes, o)) & (bar.kind == .io ? ~UInt64(0x3) : ~UInt64(0xf))
            if bar.kind == .memory64 { a |= UInt64(get32(s.bytes, o + 4)) << 32 }
            return a
        }
    }

    public func bar(_ index: Int) -> PCIBar? { state.withLock { index < 6 ? $0.bars[index] : nil } }

    /// The BARs the device declared, by index (a 64-bit BAR once, at its first slot).
    public var declaredBars: [PCIBar] { state.withLock { $0.bars.compactMap { $0 } } }

    /// Sets a BAR's address directly (the VMM's own initial placement, like firmware would).
    public func setBarAddress(_ index: Int, _ address: UInt64) {
        state.withLock { s in
            guard let bar = s.bars[index] else { return }
            let o = 0x10 + index * 4
            put32(&s.bytes, o, UInt32(truncatingIfNeeded: address) & ~UInt32(bar.kind == .io ? 0x3 : 0xf) | bar.flags)
            if bar.kind == .memory64 { put32(&s.bytes, o + 4, UInt32(truncatingIfNeeded: address >> 32)) }
        }
    }

    /// Sets bytes the device itself owns (read-only to the guest), e.g. status bits.
    public func setRaw(_ offset: Int, _ bytes: [UInt8]) {
        state.withLock { s in for (i, b) in bytes.enumerated() where offset + i < PCIConfigSpace.size { s.bytes[offset + i] = b } }
    }

    static func isValidAccess(_ offset: Int, _ size: Int) -> Bool {
        (size == 1 || size == 2 || size == 4) && offset >= 0 && offset % size == 0 && offset + size <= PCIConfigSpace.size
    }

    /// Reads `size` bytes at `offset`; malformed accesses read all ones.
    public func read(offset: Int, size: Int) -> UInt32 {
        guard PCIConfigSpace.isValidAccess(offset, size) else { return UInt32.max >> (32 - 8 * UInt32(min(max(size, 1), 4))) }
        return state.withLock { s in
            var v: UInt32 = 0
            for i in 0..<size { v |= UInt32(s.bytes[offset + i]) << (8 * UInt32(i)) }
            return v
        }
    }

    /// Writes honouring the write masks; malformed accesses are ignored.
    public func write(offset: Int, size: Int, value: UInt32) {
        guard PCIConfigSpace.isValidAccess(offset, size) else { return }
        state.withLock { s in
            for i in 0..<size {
                let o = offset + i
                let b = UInt8(truncatingIfNeeded: value >> (8 * UInt32(i)))
                let m = s.writeMask[o]
                s.bytes[o] = (s.bytes[o] & ~m) | (b & m)
                s.bytes[o] &= ~(b & s.w1cMask[o])
            }
        }
    }
}

@inline(__always) func put32(_ a: inout [UInt8], _ o: Int, _ v: UInt32) {
    for i in 0..<4 { a[o + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
}
@inline(__always) func get32(_ a: [UInt8], _ o: Int) -> UInt32 {
    (0..<4).reduce(UInt32(0)) { $0 | UInt32(a[o + $1]) << (8 * UInt32($1)) }
}
