import Glibc
import Synchronization

/// GTT entry layout (8 bytes per 4 KiB page of graphics memory).
///
/// | bits  | meaning |
/// |-------|---------|
/// | 0     | valid |
/// | 1     | read-only: engine writes to the page fault (`writeToReadOnlyPage`); reads, display scanout and host-side helpers are unaffected |
/// | 3:2   | cacheability hint (stored, ignored by the model) |
/// | 11:4  | ignored, preserved |
/// | 51:12 | bus address of the page (see `SystemMemory`) |
/// | 63:52 | must be zero; a valid entry with any of these set resolves as an unmapped bus address |
public enum GTTEntry {
    public static let valid: UInt64 = 1 << 0
    public static let readOnly: UInt64 = 1 << 1
    public static let cacheMask: UInt64 = 0b11 << 2
    public static let addressMask: UInt64 = 0xFFFF_FFFF_FFFF_F000

    /// A valid entry for the page at `bus` (page aligned).
    public static func make(bus: UInt64, readOnly ro: Bool = false) -> UInt64 {
        (bus & addressMask) | valid | (ro ? readOnly : 0)
    }
}

/// A failed graphics-memory access.
public struct GMFault: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The GM address is beyond the end of graphics memory.
        case outOfRange
        /// The GTT entry of the page is not valid.
        case invalidEntry
        /// The GTT entry is valid but its bus address is not registered system memory.
        case unmappedBus
        /// An engine wrote a page whose GTT entry is read-only.
        case readOnly
    }
    public let kind: Kind
    /// The first GM address of the access that failed.
    public let address: UInt64

    public init(_ kind: Kind, _ address: UInt64) { self.kind = kind; self.address = address }
    public var description: String { "\(kind) at GM 0x\(hex(address))" }
}

/// A GM range that is contiguous in host memory.
public struct HostRun: @unchecked Sendable, Equatable {
    public let gm: UInt64
    public let pointer: UnsafeMutableRawPointer
    public let length: Int
}

/// One GM access performed by an engine, recorded when tracing is on (diagnostics and the
/// table-vs-executor consistency test).
public struct AccessRecord: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable { case read, write, fetch }
    public let kind: Kind
    public let gm: UInt64
    public let length: UInt64
    public var description: String { "\(kind) [0x\(hex(gm)), 0x\(hex(gm + length)))" }
}

/// Collects `AccessRecord`s. Appended to only by the engine worker while it executes; read it after
/// the engine is idle.
public final class AccessTracer: @unchecked Sendable {
    public var records: [AccessRecord] = []
    /// Register writes made by commands (LOAD_REGISTER_IMM): offset and value.
    public var registerWrites: [(offset: UInt32, value: UInt32)] = []
    public init() {}
    public func clear() { records.removeAll(); registerWrites.removeAll() }
}

/// The global graphics translation table: one 8-byte entry per 4 KiB page of graphics memory (GM).
///
/// GM is [0, gmSize): the aperture range is [0, apertureSize), the hidden range the rest. Entries are
/// atomics: any thread may read or write them while engines and the display translate through them.
/// Engines cache at most one translation between ring-level commands, so a GTT update takes effect for
/// an engine no later than its next ring-level command; update entries for memory an engine is using
/// only while that engine is idle.
public final class GTT: @unchecked Sendable {
    public static let pageSize: UInt64 = 4096
    public let gmSize: UInt64
    public let apertureSize: UInt64
    public let pageCount: Int
    public let systemMemory: SystemMemory
    private let entries: UnsafeMutablePointer<Atomic<UInt64>>

    public init(gmSize: UInt64, apertureSize: UInt64, systemMemory: SystemMemory) {
        precondition(gmSize > 0 && gmSize % Self.pageSize == 0 && gmSize <= (1 << 32), "GM size must be page aligned and at most 4 GiB")
        precondition(apertureSize <= gmSize && apertureSize % Self.pageSize == 0, "aperture must be page aligned and inside GM")
        self.gmSize = gmSize
        self.apertureSize = apertureSize
        self.systemMemory = systemMemory
        pageCount = Int(gmSize / Self.pageSize)
        // An anonymous MAP_NORESERVE mapping reads as zeros (every entry invalid, an Atomic(0) has no other
        // state) and becomes resident page by page as entries are written: 1 GiB of GM has 2 MiB of
        // entries, of which a vGPU's slices use a few pages.
        guard let m = mmap(nil, Self.tableBytes(pageCount), PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), m != MAP_FAILED else {
            fatalError("SoftGPU: cannot map \(Self.tableBytes(pageCount)) bytes of GTT entries (errno \(errno)); lower the GM size")
        }
        entries = m.bindMemory(to: Atomic<UInt64>.self, capacity: pageCount)
    }

    private static func tableBytes(_ pageCount: Int) -> Int { pageCount * MemoryLayout<Atomic<UInt64>>.stride }

    deinit {
        munmap(entries, Self.tableBytes(pageCount))
    }

    /// GM range of the aperture (CPU-mappable) part.
    public var apertureRange: Range<UInt64> { 0..<apertureSize }
    /// GM range of the hidden part.
    public var hiddenRange: Range<UInt64> { apertureSize..<gmSize }

    /// Entry `index`; 0 when out of range.
    public func entry(_ index: Int) -> UInt64 {
        guard index >= 0 && index < pageCount else { return 0 }
        return entries[index].load(ordering: .acquiring)
    }

    /// Writes entry `index`; false (nothing written) when out of range.
    @discardableResult
    public func setEntry(_ index: Int, _ value: UInt64) -> Bool {
        guard index >= 0 && index < pageCount else { return false }
        entries[index].store(value, ordering: .releasing)
        return true
    }

    /// Maps `pages` GM pages starting at `gm` to consecutive bus pages starting at `bus`.
    public func map(gm: UInt64, bus: UInt64, pages: Int, readOnly: Bool = false) throws(GMFault) {
        guard gm % Self.pageSize == 0, bus % Self.pageSize == 0, pages >= 0 else { throw GMFault(.outOfRange, gm) }
        let first = Int(gm / Self.pageSize)
        guard gm < gmSize, pages <= pageCount - first else { throw GMFault(.outOfRange, gm) }
        for i in 0..<pages {
            setEntry(first + i, GTTEntry.make(bus: bus + UInt64(i) * Self.pageSize, readOnly: readOnly))
        }
    }

    /// Invalidates `pages` entries starting at GM address `gm` (clipped to GM).
    public func unmap(gm: UInt64, pages: Int) {
        let first = Int(gm / Self.pageSize)
        guard first < pageCount else { return }
        for i in first..<min(pageCount, first + max(0, pages)) { setEntry(i, 0) }
    }

    /// Host pointer backing GM page `page` (for mapping aperture pages into a guest), or nil when the
    /// entry is invalid or its bus address is not registered.
    public func hostPointer(forPage page: Int) -> UnsafeMutableRawPointer? {
        let e = entry(page)
        guard e & GTTEntry.valid != 0, e >> 52 == 0 else { return nil }
        return systemMemory.resolvePage(e & GTTEntry.addressMask)
    }

    /// The host-contiguous runs backing [gm, gm+length). `write` honours the read-only bit. Throws the
    /// first fault; nothing is accessed.
    public func hostRuns(gm: UInt64, length: UInt64, write: Bool = false) throws(GMFault) -> [HostRun] {
        var a = accessor(honorReadOnly: write)
        return try a.runs(gm, length, write: write)
    }

    /// An accessor with a fresh system-memory snapshot. `honorReadOnly: false` is the CPU's view (the
    /// read-only bit restricts engines only).
    public func accessor(honorReadOnly: Bool = true, tracer: AccessTracer? = nil) -> GMAccessor {
        GMAccessor(gtt: self, memory: systemMemory.snapshot(), honorReadOnly: honorReadOnly, tracer: tracer)
    }

    // MARK: host-side helpers (CPU view: the read-only bit is ignored)

    public func write(_ bytes: UnsafeRawBufferPointer, at gm: UInt64) throws(GMFault) {
        var a = accessor(honorReadOnly: false)
        try a.copyIn(gm, from: bytes.baseAddress, count: UInt64(bytes.count))
    }

    public func read(into bytes: UnsafeMutableRawBufferPointer, at gm: UInt64) throws(GMFault) {
        var a = accessor(honorReadOnly: false)
        try a.copyOut(gm, to: bytes.baseAddress, count: UInt64(bytes.count))
    }

    public func write<T: BitwiseCopyable>(_ values: [T], at gm: UInt64) throws(GMFault) {
        var a = accessor(honorReadOnly: false)
        let n = UInt64(values.count * MemoryLayout<T>.stride)
        var fault: GMFault?
        values.withUnsafeBytes { b in
            do throws(GMFault) { try a.copyIn(gm, from: b.baseAddress, count: n) } catch { fault = error }
        }
        if let f = fault { throw f }
    }

    public func read<T: BitwiseCopyable>(_ type: T.Type = T.self, count: Int, at gm: UInt64) throws(GMFault) -> [T] {
        var a = accessor(honorReadOnly: false)
        let bytes = UInt64(count * MemoryLayout<T>.stride)
        var fault: GMFault?
        let result = [T](unsafeUninitializedCapacity: count) { buf, n in
            do throws(GMFault) {
                try a.copyOut(gm, to: UnsafeMutableRawPointer(buf.baseAddress), count: bytes)
                n = count
            } catch { fault = error; n = 0 }
        }
        if let f = fault { throw f }
        return result
    }

    public func read32(at gm: UInt64) throws(GMFault) -> UInt32 {
        try read(UInt32.self, count: 1, at: gm)[0]
    }

    public func write32(_ value: UInt32, at gm: UInt64) throws(GMFault) {
        try write([value], at: gm)
    }
}

/// Translates GM accesses through the GTT for one user (an engine command, a scanout, a host copy).
/// Not thread-safe: one accessor per thread. Caches the last page translation.
public struct GMAccessor {
    let gtt: GTT
    let memory: SystemMemory.Snapshot
    let honorReadOnly: Bool
    let tracer: AccessTracer?
    private var cachedPage: UInt64 = .max
    private var cachedPointer: UnsafeMutableRawPointer?
    private var cachedWritable = false

    init(gtt: GTT, memory: SystemMemory.Snapshot, honorReadOnly: Bool, tracer: AccessTracer?) {
        self.gtt = gtt
        self.memory = memory
        self.honorReadOnly = honorReadOnly
        self.tracer = tracer
    }

    /// Host pointer of the page containing `gm`.
    @inline(__always)
    public mutating func page(_ gm: UInt64, write: Bool) throws(GMFault) -> UnsafeMutableRawPointer {
        let p = gm >> 12
        if p == cachedPage, let ptr = cachedPointer, !write || cachedWritable { return ptr }
        guard gm < gtt.gmSize else { throw GMFault(.outOfRange, gm) }
        let e = gtt.entry(Int(p))
        guard e & GTTEntry.valid != 0 else { throw GMFault(.invalidEntry, gm) }
        guard e >> 52 == 0, let ptr = memory.resolve(e & GTTEntry.addressMask, length: GTT.pageSize) else {
            throw GMFault(.unmappedBus, gm)
        }
        let writable = !(honorReadOnly && e & GTTEntry.readOnly != 0)
        if write && !writable { throw GMFault(.readOnly, gm) }
        cachedPage = p
        cachedPointer = ptr
        cachedWritable = writable
        return ptr
    }

    @inline(__always)
    mutating func trace(_ kind: AccessRecord.Kind, _ gm: UInt64, _ length: UInt64) {
        if let t = tracer { t.records.append(AccessRecord(kind: kind, gm: gm, length: length)) }
    }

    /// Throws unless [gm, gm+length) lies inside GM.
    public func checkBounds(_ gm: UInt64, _ length: UInt64) throws(GMFault) {
        guard gm <= gtt.gmSize, length <= gtt.gmSize - gm else {
            throw GMFault(.outOfRange, gm < gtt.gmSize ? gtt.gmSize : gm)
        }
    }

    /// Calls `body` with each host-contiguous piece of [gm, gm+length), in order. Translation faults are
    /// thrown before the piece they concern is handed out (earlier pieces have been processed).
    @inline(__always)
    public mutating func forEachRun(_ gm: UInt64, _ length: UInt64, write: Bool,
                                    _ body: (UnsafeMutableRawPointer, Int) -> Void) throws(GMFault) {
        guard length > 0 else { return }
        try checkBounds(gm, length)
        trace(write ? .write : .read, gm, length)
        var addr = gm
        var left = length
        var runStart: UnsafeMutableRawPointer? = nil
        var runLen = 0
        while left > 0 {
            let off = addr & (GTT.pageSize - 1)
            let n = min(left, GTT.pageSize - off)
            let p = try page(addr, write: write) + Int(off)
            if let s = runStart, s + runLen == p {
                runLen += Int(n)
            } else {
                if let s = runStart { body(s, runLen) }
                runStart = p
                runLen = Int(n)
            }
            addr += n
            left -= n
        }
        if let s = runStart { body(s, runLen) }
    }

    /// Host-contiguous runs of [gm, gm+length); all pages are translated before returning.
    public mutating func runs(_ gm: UInt64, _ length: UInt64, write: Bool) throws(GMFault) -> [HostRun] {
        var out: [HostRun] = []
        var at = gm
        try forEachRun(gm, length, write: write) { p, n in
            out.append(HostRun(gm: at, pointer: p, length: n))
            at += UInt64(n)
        }
        return out
    }

    public mutating func copyIn(_ gm: UInt64, from src: UnsafeRawPointer?, count: UInt64) throws(GMFault) {
        guard count > 0, let src else { return }
        var done = 0
        try forEachRun(gm, count, write: true) { p, n in
            memcpy(p, src + done, n)
            done += n
        }
    }

    public mutating func copyOut(_ gm: UInt64, to dst: UnsafeMutableRawPointer?, count: UInt64) throws(GMFault) {
        guard count > 0, let dst else { return }
        var done = 0
        try forEachRun(gm, count, write: false) { p, n in
            memmove(dst + done, p, n)
            done += n
        }
    }

    /// Reads one dword (`gm` must be 4-byte aligned). `fetch` marks command fetches in the trace.
    @inline(__always)
    public mutating func read32(_ gm: UInt64, fetch: Bool = false) throws(GMFault) -> UInt32 {
        try read32(gm, record: fetch ? .fetch : .read)
    }

    /// `record` nil: not traced (ring fetches).
    @inline(__always)
    mutating func read32(_ gm: UInt64, record: AccessRecord.Kind?) throws(GMFault) -> UInt32 {
        guard gm < gtt.gmSize, gtt.gmSize - gm >= 4 else { throw GMFault(.outOfRange, gm) }
        if tracer != nil, let k = record { trace(k, gm, 4) }
        let p = try page(gm, write: false)
        return UInt32(littleEndian: p.load(fromByteOffset: Int(gm & 0xFFF), as: UInt32.self))
    }

    /// Writes one dword (`gm` must be 4-byte aligned).
    @inline(__always)
    public mutating func write32(_ gm: UInt64, _ value: UInt32) throws(GMFault) {
        guard gm < gtt.gmSize, gtt.gmSize - gm >= 4 else { throw GMFault(.outOfRange, gm) }
        if tracer != nil { trace(.write, gm, 4) }
        let p = try page(gm, write: true)
        p.storeBytes(of: value.littleEndian, toByteOffset: Int(gm & 0xFFF), as: UInt32.self)
    }
}
