/// A 32-bpp surface for blits: GM base, pitch in bytes, width and height in pixels (clip bounds).
public struct BlitSurface: Sendable, Equatable {
    public var gm: UInt64
    public var pitch: UInt32
    public var width: UInt16
    public var height: UInt16
    public init(gm: UInt64, pitch: UInt32, width: UInt16, height: UInt16) {
        self.gm = gm
        self.pitch = pitch
        self.width = width
        self.height = height
    }
}

/// Encodes commands (headers from `CommandTable`, so builder and table cannot drift apart).
public struct CommandBuilder: Sendable {
    public private(set) var dwords: [UInt32] = []
    public init() {}

    public var count: Int { dwords.count }
    public var byteCount: Int { dwords.count * 4 }

    private static func header(_ kind: CommandKind, dwords: Int, flags: UInt32 = 0) -> UInt32 {
        CommandTable.info(kind).header(dwords: dwords) | flags
    }
    private static func lo(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v) }
    private static func hi(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v >> 32) }
    private static func packXY(_ x: Int, _ y: Int) -> UInt32 {
        UInt32(UInt16(truncatingIfNeeded: x)) | (UInt32(UInt16(truncatingIfNeeded: y)) << 16)
    }
    private static func packSize(_ s: BlitSurface) -> UInt32 { UInt32(s.width) | (UInt32(s.height) << 16) }

    /// Appends raw dwords (for malformed streams in tests).
    public mutating func raw(_ d: [UInt32]) { dwords += d }
    public mutating func append(_ other: CommandBuilder) { dwords += other.dwords }

    public mutating func noop(count: Int = 1) {
        for _ in 0..<count { dwords.append(Self.header(.noop, dwords: 1)) }
    }

    /// Pads with NOOPs to a multiple of 2 dwords (ring TAIL must be qword aligned).
    public mutating func alignToQword() { if dwords.count % 2 != 0 { noop() } }

    public mutating func userInterrupt() { dwords.append(Self.header(.userInterrupt, dwords: 1)) }

    public mutating func batchBufferEnd() { dwords.append(Self.header(.batchBufferEnd, dwords: 1)) }

    /// BATCH_BUFFER_START of a batch of `length` bytes at `gm`.
    public mutating func batchBufferStart(gm: UInt64, length: UInt32, secondLevel: Bool = false) {
        dwords += [Self.header(.batchBufferStart, dwords: 4, flags: secondLevel ? CommandHeader.batchSecondLevel : 0),
                   Self.lo(gm), Self.hi(gm), length]
    }

    /// STORE_DATA_IMM of one dword.
    public mutating func storeDataImm(gm: UInt64, _ value: UInt32) {
        dwords += [Self.header(.storeDataImm, dwords: 4), Self.lo(gm), Self.hi(gm), value]
    }

    /// STORE_DATA_IMM of two dwords (value low dword first).
    public mutating func storeDataImm(gm: UInt64, qword value: UInt64) {
        dwords += [Self.header(.storeDataImm, dwords: 5), Self.lo(gm), Self.hi(gm), Self.lo(value), Self.hi(value)]
    }

    /// LOAD_REGISTER_IMM of 1...63 (offset, value) pairs.
    public mutating func loadRegisterImm(_ pairs: [(offset: UInt32, value: UInt32)]) {
        precondition(!pairs.isEmpty && pairs.count <= CommandTable.maxLRIPairs)
        dwords.append(Self.header(.loadRegisterImm, dwords: 1 + 2 * pairs.count))
        for p in pairs { dwords += [p.offset, p.value] }
    }

    /// FLUSH, optionally storing `postSync.value` at `postSync.gm` and raising the user interrupt.
    public mutating func flush(postSync: (gm: UInt64, value: UInt32)? = nil, notify: Bool = false) {
        var flags: UInt32 = notify ? CommandHeader.flushNotify : 0
        if postSync != nil { flags |= CommandHeader.flushPostSyncStore }
        let gm = postSync?.gm ?? 0
        dwords += [Self.header(.flush, dwords: 4, flags: flags), Self.lo(gm), Self.hi(gm), postSync?.value ?? 0]
    }

    /// DISPLAY_FLIP of `plane` to the surface at `gm` (stride applies to the primary plane).
    public mutating func displayFlip(plane: DisplayEngine.Plane, gm: UInt64, stride: UInt32 = 0) {
        dwords += [Self.header(.displayFlip, dwords: 4, flags: plane.rawValue << CommandHeader.flipPlaneShift),
                   stride, Self.lo(gm), Self.hi(gm)]
    }

    /// COLOR_BLT: fill [x1, x2) x [y1, y2) of `dst` (clipped to its width/height) with `color`.
    public mutating func colorBlt(dst: BlitSurface, x1: Int, y1: Int, x2: Int, y2: Int, color: UInt32) {
        dwords += [Self.header(.colorBlt, dwords: 8), dst.pitch, Self.packXY(x1, y1), Self.packXY(x2, y2),
                   Self.lo(dst.gm), Self.hi(dst.gm), color, Self.packSize(dst)]
    }

    /// SRC_COPY_BLT: copy into [x1, x2) x [y1, y2) of `dst` from `src` starting at (srcX, srcY).
    public mutating func srcCopyBlt(dst: BlitSurface, x1: Int, y1: Int, x2: Int, y2: Int,
                                    src: BlitSurface, srcX: Int, srcY: Int) {
        dwords += [Self.header(.srcCopyBlt, dwords: 12), dst.pitch, Self.packXY(x1, y1), Self.packXY(x2, y2),
                   Self.lo(dst.gm), Self.hi(dst.gm), Self.packXY(srcX, srcY), src.pitch,
                   Self.lo(src.gm), Self.hi(src.gm), Self.packSize(dst), Self.packSize(src)]
    }

    /// SAXPY: y = a*x + y over n floats.
    public mutating func saxpy(n: UInt32, a: Float, x: UInt64, y: UInt64) {
        dwords += [Self.header(.saxpy, dwords: 7), n, a.bitPattern, Self.lo(x), Self.hi(x), Self.lo(y), Self.hi(y)]
    }

    /// SGEMM: C = alpha*A*B + beta*C, row-major, leading dimensions in elements.
    public mutating func sgemm(m: UInt32, n: UInt32, k: UInt32, alpha: Float, beta: Float,
                               a: UInt64, lda: UInt32, b: UInt64, ldb: UInt32, c: UInt64, ldc: UInt32) {
        dwords += [Self.header(.sgemm, dwords: 15), m, n, k, alpha.bitPattern, beta.bitPattern,
                   Self.lo(a), Self.hi(a), lda, Self.lo(b), Self.hi(b), ldb, Self.lo(c), Self.hi(c), ldc]
    }
}
