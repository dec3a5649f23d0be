import Synchronization

/// An MSI-X capability with its table and pending-bit array (PBA), which live in BARs of the function:
/// the PCI bus maps them there (`PCIFunction.msix`); the device raises vectors with `signal(_:)`.
/// A vector that is masked (its entry's mask bit, or the function mask) when raised becomes pending and is
/// delivered when it is unmasked; enabling MSI-X turns the function's MSI and INTx off (the device checks
/// `isEnabled`). The table accepts dword and qword accesses; the PBA is read-only.
///
/// Threads and ownership: vCPU threads access the table and PBA and the configuration space concurrently
/// with device threads raising vectors; the table is one `State` behind one Mutex, never held while
/// calling out (MSIs are injected after it is dropped). The context is held weakly (it holds the bus,
/// which holds the function, which holds this).
public final class MSIXTable: Sendable {
    public let vectors: Int
    public let tableBAR: Int, tableOffset: UInt64
    public let pbaBAR: Int, pbaOffset: UInt64
    public var tableBytes: UInt64 { UInt64(vectors) * 16 }
    public var pbaBytes: UInt64 { UInt64((vectors + 63) / 64) * 8 }
    let config: PCIConfigSpace
    let capability: Int
    private weak let context: (any DeviceContext)?

    struct Entry { var address: UInt64 = 0; var data: UInt32 = 0; var masked = true }
    struct State {
        var entries: [Entry]
        var pending: [Bool]
    }
    private let state: Mutex<State>

    /// The trapped windows the bus registers for the table and the PBA.
    public let tableWindow: TableWindow
    public let pbaWindow: PBAWindow

    /// Adds the MSI-X capability (`vectors` 1-2048) to `config`, with the table at `tableOffset` of BAR
    /// `tableBAR` and the PBA at `pbaOffset` of BAR `pbaBAR` (8-byte aligned; the BARs must be declared
    /// and large enough). Every vector starts masked, as the specification requires.
    public init(config: PCIConfigSpace, context: any DeviceContext, vectors: Int, tableBAR: Int, tableOffset: UInt64,
                pbaBAR: Int, pbaOffset: UInt64) {
        precondition((1...2048).contains(vectors), "MSI-X has 1-2048 vectors")
        precondition(tableOffset % 8 == 0 && pbaOffset % 8 == 0, "MSI-X table and PBA offsets are 8-byte aligned")
        self.vectors = vectors
        self.tableBAR = tableBAR; self.tableOffset = tableOffset
        self.pbaBAR = pbaBAR; self.pbaOffset = pbaOffset
        self.config = config
        self.context = context
        state = Mutex(State(entries: Array(repeating: Entry(), count: vectors), pending: Array(repeating: false, count: vectors)))
        let control = UInt16(vectors - 1)
        let table = UInt32(truncatingIfNeeded: tableOffset) | UInt32(tableBAR)
        let pba = UInt32(truncatingIfNeeded: pbaOffset) | UInt32(pbaBAR)
        var body: [UInt8] = [UInt8(control & 0xff), UInt8(control >> 8)]
        for v in [table, pba] { for i in 0..<4 { body.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) } }
        // Message control: only Enable (bit 15) and Function Mask (bit 14) are writable.
        capability = config.addCapability(id: 0x11, body: body, writeMask: [0x00, 0xc0])
        tableWindow = TableWindow()
        pbaWindow = PBAWindow()
        tableWindow.table = self
        pbaWindow.table = self
    }

    private var control: UInt16 { UInt16(config.read(offset: capability + 2, size: 2)) }
    /// MSI-X Enable is set in the capability.
    public var isEnabled: Bool { control & 0x8000 != 0 }
    /// The Function Mask bit: every vector is masked.
    public var isFunctionMasked: Bool { control & 0x4000 != 0 }

    /// Raises `vector`: injects its message now, or, when the vector or the function is masked, sets its
    /// pending bit (delivered on unmask). Returns false when MSI-X is disabled (then nothing happens:
    /// the device uses MSI or INTx).
    @discardableResult
    public func signal(_ vector: Int) -> Bool {
        guard vectors > vector, vector >= 0, isEnabled else { return false }
        let functionMasked = isFunctionMasked
        let message = state.withLock { s -> (UInt64, UInt32)? in
            if functionMasked || s.entries[vector].masked {
                s.pending[vector] = true
                return nil
            }
            return (s.entries[vector].address, s.entries[vector].data)
        }
        if let (a, d) = message { try? context?.signalMSI(address: a, data: d) }
        return true
    }

    /// Whether `vector` is pending (raised while masked).
    public func isPending(_ vector: Int) -> Bool { state.withLock { $0.pending[vector] } }

    /// Delivers pending vectors that are no longer masked (after a configuration write or a table write).
    public func configChanged() {
        guard isEnabled, !isFunctionMasked else { return }
        let due = state.withLock { s -> [(UInt64, UInt32)] in
            var due: [(UInt64, UInt32)] = []
            for v in 0..<vectors where s.pending[v] && !s.entries[v].masked {
                s.pending[v] = false
                due.append((s.entries[v].address, s.entries[v].data))
            }
            return due
        }
        for (a, d) in due { try? context?.signalMSI(address: a, data: d) }
    }

    func readTable(offset: UInt64, size: Int) -> UInt64 {
        guard (size == 4 || size == 8), offset % UInt64(size) == 0, offset + UInt64(size) <= tableBytes else { return .max }
        return state.withLock { s in
            var v: UInt64 = 0
            for k in 0..<(size / 4) { v |= UInt64(Self.dword(s.entries[Int(offset / 16)], Int(offset % 16) / 4 + k)) << (32 * UInt64(k)) }
            return v
        }
    }

    func writeTable(offset: UInt64, size: Int, value: UInt64) {
        guard (size == 4 || size == 8), offset % UInt64(size) == 0, offset + UInt64(size) <= tableBytes else { return }
        state.withLock { s in
            let i = Int(offset / 16)
            for k in 0..<(size / 4) {
                let v = UInt32(truncatingIfNeeded: value >> (32 * UInt64(k)))
                switch Int(offset % 16) / 4 + k {
                case 0: s.entries[i].address = (s.entries[i].address & ~0xffff_ffff) | UInt64(v & ~3)
                case 1: s.entries[i].address = (s.entries[i].address & 0xffff_ffff) | UInt64(v) << 32
                case 2: s.entries[i].data = v
                default: s.entries[i].masked = v & 1 != 0
                }
            }
        }
        configChanged()
    }

    func readPBA(offset: UInt64, size: Int) -> UInt64 {
        guard (size == 4 || size == 8), offset % UInt64(size) == 0, offset + UInt64(size) <= pbaBytes else { return .max }
        return state.withLock { s in
            var v: UInt64 = 0
            for bit in 0..<(size * 8) {
                let vector = Int(offset) * 8 + bit
                if vector < vectors && s.pending[vector] { v |= 1 << UInt64(bit) }
            }
            return v
        }
    }

    private static func dword(_ e: Entry, _ index: Int) -> UInt32 {
        switch index {
        case 0: return UInt32(truncatingIfNeeded: e.address)
        case 1: return UInt32(truncatingIfNeeded: e.address >> 32)
        case 2: return e.data
        default: return e.masked ? 1 : 0
        }
    }

    /// The table as the guest sees it in its BAR.
    public final class TableWindow: BusDevice, @unchecked Sendable {
        fileprivate weak var table: MSIXTable?
        public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
            data.storeLittleEndian(table?.readTable(offset: offset, size: data.count) ?? .max)
        }
        public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
            table?.writeTable(offset: offset, size: data.count, value: data.littleEndianValue)
        }
    }

    /// The pending-bit array as the guest sees it in its BAR (writes are ignored).
    public final class PBAWindow: BusDevice, @unchecked Sendable {
        fileprivate weak var table: MSIXTable?
        public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
            data.storeLittleEndian(table?.readPBA(offset: offset, size: data.count) ?? .max)
        }
        public func write(offset: UInt64, data: UnsafeRawBufferPointer) {}
    }
}
