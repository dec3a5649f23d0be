/// Command encoding: every command is a sequence of little-endian 32-bit dwords; dword 0 is the header.
///
/// Header fields (GVT-g-like):
/// - bits 31:29 **client**: 0 = MI (memory interface / control), 2 = 2D (blitter), 3 = compute.
///   Clients 1, 4-7 are reserved (unknown command).
/// - **opcode**: MI bits 28:23 (6 bits), 2D bits 28:22 (7 bits), compute bits 28:16 (13 bits).
/// - **length** (variable-length commands only): bits 7:0 hold `dwords - 2`.
/// - the remaining bits are command flags (listed per command in `CommandTable`).
public enum CommandClient: UInt32, Sendable, CaseIterable {
    case mi = 0
    case blitter = 2
    case compute = 3
}

public enum CommandKind: String, CaseIterable, Sendable {
    case noop = "NOOP"
    case userInterrupt = "USER_INTERRUPT"
    case batchBufferEnd = "BATCH_BUFFER_END"
    case displayFlip = "DISPLAY_FLIP"
    case storeDataImm = "STORE_DATA_IMM"
    case loadRegisterImm = "LOAD_REGISTER_IMM"
    case flush = "FLUSH"
    case batchBufferStart = "BATCH_BUFFER_START"
    case colorBlt = "COLOR_BLT"
    case srcCopyBlt = "SRC_COPY_BLT"
    case saxpy = "SAXPY"
    case sgemm = "SGEMM"
}

/// Header field helpers and flag bits.
public enum CommandHeader {
    public static let lengthMask: UInt32 = 0xFF
    public static let lengthBias = 2

    /// BATCH_BUFFER_START: the batch is a second-level batch (a call that returns to the caller).
    public static let batchSecondLevel: UInt32 = 1 << 22
    /// FLUSH: after the flush, store dword 3 at the GM address in dwords 1-2.
    public static let flushPostSyncStore: UInt32 = 1 << 14
    /// FLUSH: after the flush (and the store), raise the engine's user interrupt.
    public static let flushNotify: UInt32 = 1 << 8
    /// DISPLAY_FLIP: plane select in bits 21:20 (0 = primary, 1 = cursor; 2, 3 invalid).
    public static let flipPlaneShift: UInt32 = 20
    public static let flipPlaneMask: UInt32 = 0x3 << 20

    public static func client(_ header: UInt32) -> UInt32 { header >> 29 }

    /// The opcode field of `header` for its client; nil for reserved clients.
    public static func opcode(_ header: UInt32) -> UInt32? {
        switch header >> 29 {
        case CommandClient.mi.rawValue: return (header >> 23) & 0x3F
        case CommandClient.blitter.rawValue: return (header >> 22) & 0x7F
        case CommandClient.compute.rawValue: return (header >> 16) & 0x1FFF
        default: return nil
        }
    }

    /// Client and opcode bits of a header (no flags, no length).
    public static func make(_ client: CommandClient, _ opcode: UInt32) -> UInt32 {
        switch client {
        case .mi: return (client.rawValue << 29) | ((opcode & 0x3F) << 23)
        case .blitter: return (client.rawValue << 29) | ((opcode & 0x7F) << 22)
        case .compute: return (client.rawValue << 29) | ((opcode & 0x1FFF) << 16)
        }
    }
}

/// How long a command is.
public enum LengthRule: Sendable, Equatable {
    /// Always this many dwords; the low header bits are not a length.
    case fixed(Int)
    /// `(header & 0xFF) + 2` dwords, from `min` to `max` in steps of `step`, a power of two (else the
    /// command is malformed); `summary` says the same in words.
    case field(min: Int, max: Int, step: Int, summary: String)

    /// `(header & 0xFF) + 2` dwords, exactly `n`.
    public static func exactly(_ n: Int) -> LengthRule { .field(min: n, max: n, step: 1, summary: "must be \(n)") }

    /// Length in dwords of the command with this header; nil when the length field holds a value the
    /// command does not allow.
    public func length(_ header: UInt32) -> Int? {
        switch self {
        case .fixed(let n): return n
        case .field(let lo, let hi, let step, _):
            return CommandDescriptor.fieldLength(header, min: lo, max: hi, stepMask: step - 1)
        }
    }

    /// Whether a command of `n` dwords has a valid length.
    public func accepts(dwords n: Int) -> Bool {
        switch self {
        case .fixed(let f): return n == f
        case .field(let lo, let hi, let step, _): return n >= lo && n <= hi && (n - lo) & (step - 1) == 0
        }
    }

    public var summary: String {
        switch self {
        case .fixed(let n): return "fixed \(n)"
        case .field(_, _, _, let s): return "header[7:0] + 2, \(s)"
        }
    }
}

public enum OperandAccess: Sendable, Equatable {
    case read, write, readWrite
    public var reads: Bool { self != .write }
    public var writes: Bool { self != .read }
}

/// How many bytes an address operand may touch, as data. Evaluated by `bytes(in:register:)`, the one
/// definition the executor and a mediator's scanner share. Saturates at UInt64.max instead of overflowing.
public enum ExtentRule: Sendable, Equatable {
    /// Dword `dword` times `scale` (BATCH_BUFFER_START's byte length: 1; SAXPY's element count: 4).
    case dword(Int, scale: UInt64)
    /// 4 bytes per command dword from `from` to the end (STORE_DATA_IMM's data).
    case trailingDwords(from: Int)
    /// `bytes` when the header has `flag` set, else 0 (FLUSH's post-sync store).
    case ifHeaderFlag(UInt32, bytes: UInt64)
    /// A blit surface: pitch (dword `pitch`, bytes) x height (bits 31:16 of dword `size`).
    case surface(pitch: Int, size: Int)
    /// A row-major f32 matrix whose rows, columns and leading dimension are in these dwords
    /// (`CommandTable.matrixExtent`).
    case matrix(rows: Int, cols: Int, ld: Int)
    /// DISPLAY_FLIP: primary plane, stride (dword 1) x max(1, height in PRI_SIZE bits 31:16), a register
    /// value; cursor plane, `CommandTable.cursorBytes`.
    case flipSurface

    /// Bytes the command `c` may touch; 0 = the operand is unused by this instance of the command.
    /// `register` gives register values (read for `flipSurface` only; a mediator passes its virtual ones).
    @inlinable
    public func bytes(in c: UnsafeBufferPointer<UInt32>, register: (UInt32) -> UInt32) -> UInt64 {
        switch self {
        case .dword(let d, let scale): return satMul(UInt64(c[d]), scale)
        case .trailingDwords(let from): return UInt64(c.count - from) * 4
        case .ifHeaderFlag(let flag, let n): return c[0] & flag != 0 ? n : 0
        case .surface(let pitch, let size): return satMul(UInt64(c[pitch]), UInt64(c[size] >> 16))
        case .matrix(let rows, let cols, let ld): return CommandTable.matrixExtent(rows: c[rows], cols: c[cols], ld: c[ld])
        case .flipSurface:
            if (c[0] & CommandHeader.flipPlaneMask) >> CommandHeader.flipPlaneShift == 0 {
                return satMul(UInt64(c[1]), max(1, UInt64(register(Reg.priSize) >> 16)))
            }
            return CommandTable.cursorBytes
        }
    }
}

/// Operand constraints beyond address ranges and alignment, as data. A violation is an `invalidOperand`
/// engine error; `violation(in:register:)` says which.
public enum OperandRule: Sendable, Equatable {
    case none
    /// DISPLAY_FLIP: plane 0 or 1; primary plane: stride (dword 1) a positive multiple of 4, at least
    /// PRI_SIZE's width x 4 (a register value).
    case flip
    /// BATCH_BUFFER_START: the byte length in this dword is a positive multiple of 4 up to `maxBatchBytes`.
    case batchLength(dword: Int)
    /// A destination blit surface (pitch dword, size dword): when width and height are not 0, the pitch is
    /// a multiple of 4 and at least width x 4.
    case surface(pitch: Int, size: Int)
    /// The same for a destination and then a source surface.
    case surfaces(pitch: Int, size: Int, sourcePitch: Int, sourceSize: Int)
    /// SGEMM: lda >= K, ldb >= N, ldc >= N whenever the matrix is not empty.
    case leadingDimensions

    /// Why `c` violates the rule, or nil when it does not. Builds a string only for a violation.
    @inlinable
    public func violation(in c: UnsafeBufferPointer<UInt32>, register: (UInt32) -> UInt32) -> String? {
        switch self {
        case .none:
            return nil
        case .flip:
            let plane = (c[0] & CommandHeader.flipPlaneMask) >> CommandHeader.flipPlaneShift
            guard plane <= 1 else { return "plane \(plane) does not exist" }
            if plane == 0 {
                let w = UInt64(register(Reg.priSize) & 0xFFFF)
                if c[1] == 0 || c[1] % 4 != 0 { return "stride \(c[1]) is not a positive multiple of 4" }
                if UInt64(c[1]) < w * 4 { return "stride \(c[1]) is smaller than width \(w) x 4" }
            }
            return nil
        case .batchLength(let d):
            let n = UInt64(c[d])
            if n == 0 || n % 4 != 0 || n > CommandTable.maxBatchBytes {
                return "batch length \(n) is not a positive multiple of 4 up to \(CommandTable.maxBatchBytes)"
            }
            return nil
        case .surface(let pitch, let size):
            return Self.surfaceViolation(pitch: c[pitch], size: c[size], "destination")
        case .surfaces(let pitch, let size, let sourcePitch, let sourceSize):
            return Self.surfaceViolation(pitch: c[pitch], size: c[size], "destination")
                ?? Self.surfaceViolation(pitch: c[sourcePitch], size: c[sourceSize], "source")
        case .leadingDimensions:
            let m = c[1], n = c[2], k = c[3]
            if m > 0 && k > 0 && c[8] < k { return "lda \(c[8]) < K \(k)" }
            if k > 0 && n > 0 && c[11] < n { return "ldb \(c[11]) < N \(n)" }
            if m > 0 && n > 0 && c[14] < n { return "ldc \(c[14]) < N \(n)" }
            return nil
        }
    }

    @inlinable
    static func surfaceViolation(pitch: UInt32, size: UInt32, _ what: StaticString) -> String? {
        let w = UInt64(size & 0xFFFF), h = UInt64(size >> 16)
        guard w > 0 && h > 0 else { return nil }
        if pitch % 4 != 0 { return "\(what) pitch \(pitch) is not a multiple of 4" }
        if UInt64(pitch) < w * 4 { return "\(what) pitch \(pitch) is smaller than width \(w) x 4" }
        return nil
    }
}

/// Which command dwords hold register offsets the command writes.
public enum RegisterRule: Sendable, Equatable {
    case none
    /// (offset, value) pairs from dword 1: offsets in dwords 1, 3, 5, ... (LOAD_REGISTER_IMM).
    case pairs
}

/// A GM address operand: a 64-bit address in dwords `dword` (low) and `dword + 1` (high), and the
/// size of the region the command may touch from it.
public struct AddressOperand: Sendable {
    public let name: String
    public let dword: Int
    public let access: OperandAccess
    /// Required alignment of the address (checked when the extent is not zero).
    public let alignment: UInt64
    public let extentRule: ExtentRule

    public init(name: String, dword: Int, access: OperandAccess, alignment: UInt64, extent: ExtentRule) {
        self.name = name
        self.dword = dword
        self.access = access
        self.alignment = alignment
        self.extentRule = extent
    }

    /// Bytes the command may touch, from the command dwords and (for DISPLAY_FLIP only) register
    /// values (`register(offset)`; a mediator passes its virtual registers). 0 = the operand is unused
    /// by this instance of the command. Saturates at UInt64.max instead of overflowing.
    public func extent(_ command: [UInt32], _ register: (UInt32) -> UInt32) -> UInt64 {
        command.withUnsafeBufferPointer { extentRule.bytes(in: $0, register: register) }
    }

    public func address(in command: [UInt32]) -> UInt64 {
        UInt64(command[dword]) | (UInt64(command[dword + 1]) << 32)
    }
}

/// Properties the mediator cares about.
public struct CommandFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Changes the instruction stream (batch start/end).
    public static let controlFlow = CommandFlags(rawValue: 1 << 0)
    /// May raise an interrupt (USER_INTERRUPT, FLUSH with notify).
    public static let raisesInterrupt = CommandFlags(rawValue: 1 << 1)
    /// Changes display state (DISPLAY_FLIP).
    public static let display = CommandFlags(rawValue: 1 << 2)
    /// Writes registers (LOAD_REGISTER_IMM).
    public static let writesRegisters = CommandFlags(rawValue: 1 << 3)
    /// Writes GM.
    public static let writesMemory = CommandFlags(rawValue: 1 << 4)
}

/// One row of the command table (GVT-g's cmd_info). Every rule is data; `CommandTable.descriptors` compiles
/// the rows into plain values for per-command decoders.
public final class CommandInfo: Sendable {
    public let kind: CommandKind
    public var name: String { kind.rawValue }
    public let client: CommandClient
    public let opcode: UInt32
    public let engines: EngineSet
    public let length: LengthRule
    public let flags: CommandFlags
    public let addresses: [AddressOperand]
    /// Which dwords hold register offsets the command writes (each value follows its offset). Every
    /// offset must satisfy `RegisterMap.isCommandWritable`.
    public let registers: RegisterRule
    /// Operand constraints beyond address ranges and alignment (an `invalidOperand` engine error).
    public let operands: OperandRule
    /// A human-readable layout of the dwords.
    public let layout: String

    public init(kind: CommandKind, client: CommandClient, opcode: UInt32, engines: EngineSet, length: LengthRule,
                flags: CommandFlags, addresses: [AddressOperand] = [], registers: RegisterRule = .none,
                operands: OperandRule = .none, layout: String) {
        self.kind = kind
        self.client = client
        self.opcode = opcode
        self.engines = engines
        self.length = length
        self.flags = flags
        self.addresses = addresses
        self.registers = registers
        self.operands = operands
        self.layout = layout
    }

    /// Dword indices that hold register offsets the command writes (LOAD_REGISTER_IMM: 1, 3, 5, ...).
    public func registerOperands(_ command: [UInt32]) -> [Int] {
        switch registers {
        case .none: return []
        case .pairs: return Array(stride(from: 1, to: command.count, by: 2))
        }
    }

    /// Why `command` violates the operand constraints, or nil.
    public func validate(_ command: [UInt32], _ register: (UInt32) -> UInt32) -> String? {
        command.withUnsafeBufferPointer { operands.violation(in: $0, register: register) }
    }

    /// Header with client and opcode set, flags and length clear.
    public var header: UInt32 { CommandHeader.make(client, opcode) }

    /// Header for a command of `dwords` dwords (sets the length field for variable-length commands; a
    /// count the field cannot express is truncated to its 8 bits, and below 2 encodes as 2).
    public func header(dwords: Int) -> UInt32 {
        switch length {
        case .fixed: return header
        case .field:
            return header | (UInt32(truncatingIfNeeded: max(dwords - CommandHeader.lengthBias, 0)) & CommandHeader.lengthMask)
        }
    }
}

/// A table row compiled to plain values (no references, no closures, nothing to retain), for decoders that
/// run once per command, such as a mediator's scanner. `CommandTable.descriptor(for:)` finds a header's row
/// (`slot`) with one load and no hashing.
public struct CommandDescriptor: Sendable {
    /// Index of the row in `CommandTable.entries` (names and messages).
    public let entry: Int
    public let kind: CommandKind
    public let engines: EngineSet
    /// `fixedLength` > 0: always that many dwords; else the length field, `lengthMin...lengthMax` in steps
    /// of `lengthStepMask + 1`.
    public let fixedLength: Int
    public let lengthMin: Int, lengthMax: Int, lengthStepMask: Int
    public let operands: OperandRule
    public let registers: RegisterRule
    /// This row's address operands are `CommandTable.compiledAddresses[firstAddress ..< firstAddress + addressCount]`.
    public let firstAddress: Int
    public let addressCount: Int

    /// An address operand as plain values.
    public struct Address: Sendable {
        public let dword: Int
        /// alignment - 1 (alignments are powers of two).
        public let alignmentMask: UInt64
        public let extent: ExtentRule
    }

    /// The command's length in dwords, nil for a length field the command does not allow.
    @inlinable @inline(__always)
    public func length(_ header: UInt32) -> Int? {
        fixedLength > 0 ? fixedLength : Self.fieldLength(header, min: lengthMin, max: lengthMax, stepMask: lengthStepMask)
    }

    @inlinable @inline(__always)
    static func fieldLength(_ header: UInt32, min lo: Int, max hi: Int, stepMask: Int) -> Int? {
        let n = Int(header & CommandHeader.lengthMask) + CommandHeader.lengthBias
        return n >= lo && n <= hi && (n - lo) & stepMask == 0 ? n : nil
    }
}

@usableFromInline @inline(__always) func satMul(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let (r, o) = a.multipliedReportingOverflow(by: b)
    return o ? .max : r
}
@usableFromInline @inline(__always) func satAdd(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let (r, o) = a.addingReportingOverflow(b)
    return o ? .max : r
}

/// Low and high signed 16-bit halves of a dword (x in bits 15:0, y in bits 31:16).
@inline(__always) func xy(_ v: UInt32) -> (Int, Int) {
    (Int(Int16(truncatingIfNeeded: v)), Int(Int16(truncatingIfNeeded: v >> 16)))
}
/// Low and high unsigned 16-bit halves (width in bits 15:0, height in bits 31:16).
@inline(__always) func wh(_ v: UInt32) -> (UInt64, UInt64) { (UInt64(v & 0xFFFF), UInt64(v >> 16)) }

/// The command set as data. The executor decodes lengths, checks engines, validates operands and
/// address ranges from this table; a mediator's scanner uses the same table (compiled: `descriptors`).
public enum CommandTable {
    /// Largest batch buffer (BATCH_BUFFER_START dword 3).
    public static let maxBatchBytes: UInt64 = 16 << 20
    /// Largest LOAD_REGISTER_IMM (pairs).
    public static let maxLRIPairs = 63
    /// Cursor image size in bytes (64 x 64 ARGB8888).
    public static let cursorBytes: UInt64 = 64 * 64 * 4

    public static let entries: [CommandInfo] = [
        CommandInfo(kind: .noop, client: .mi, opcode: 0x00, engines: .all, length: .fixed(1), flags: [],
                    layout: "dw0: header (bits 22:0 ignored)"),
        CommandInfo(kind: .userInterrupt, client: .mi, opcode: 0x02, engines: .all, length: .fixed(1),
                    flags: .raisesInterrupt,
                    layout: "dw0: header; raises the engine's USER interrupt"),
        CommandInfo(kind: .batchBufferEnd, client: .mi, opcode: 0x0A, engines: .all, length: .fixed(1),
                    flags: .controlFlow,
                    layout: "dw0: header; returns from the current batch (error in the ring)"),
        CommandInfo(kind: .displayFlip, client: .mi, opcode: 0x14, engines: .all, length: .exactly(4),
                    flags: .display,
                    addresses: [AddressOperand(name: "surface", dword: 2, access: .read, alignment: GTT.pageSize, extent: .flipSurface)],
                    operands: .flip,
                    layout: "dw0: header | plane<<20 (0 primary, 1 cursor); dw1: stride (primary; ignored for cursor); dw2-3: surface GM address (page aligned)"),
        CommandInfo(kind: .storeDataImm, client: .mi, opcode: 0x20, engines: .all,
                    length: .field(min: 4, max: 5, step: 1, summary: "4 (one dword) or 5 (two dwords)"),
                    flags: .writesMemory,
                    addresses: [AddressOperand(name: "destination", dword: 1, access: .write, alignment: 4, extent: .trailingDwords(from: 3))],
                    layout: "dw1-2: GM address; dw3(-4): data"),
        CommandInfo(kind: .loadRegisterImm, client: .mi, opcode: 0x22, engines: .all,
                    length: .field(min: 3, max: 1 + 2 * maxLRIPairs, step: 2,
                                   summary: "odd, 3...\(1 + 2 * maxLRIPairs) (1 to \(maxLRIPairs) pairs)"),
                    flags: .writesRegisters, registers: .pairs,
                    layout: "dw(2i+1): register offset; dw(2i+2): value"),
        CommandInfo(kind: .flush, client: .mi, opcode: 0x26, engines: .all, length: .exactly(4),
                    flags: [.writesMemory, .raisesInterrupt],
                    addresses: [AddressOperand(name: "post-sync", dword: 1, access: .write, alignment: 4,
                                               extent: .ifHeaderFlag(CommandHeader.flushPostSyncStore, bytes: 4))],
                    layout: "dw0: header | 1<<14 post-sync store | 1<<8 notify; dw1-2: GM address; dw3: value"),
        CommandInfo(kind: .batchBufferStart, client: .mi, opcode: 0x31, engines: .all, length: .exactly(4),
                    flags: .controlFlow,
                    addresses: [AddressOperand(name: "batch", dword: 1, access: .read, alignment: 4, extent: .dword(3, scale: 1))],
                    operands: .batchLength(dword: 3),
                    layout: "dw0: header | 1<<22 second level; dw1-2: GM address; dw3: batch length in bytes"),
        CommandInfo(kind: .colorBlt, client: .blitter, opcode: 0x50, engines: .bcs, length: .exactly(8),
                    flags: .writesMemory,
                    addresses: [AddressOperand(name: "destination", dword: 4, access: .write, alignment: 4, extent: .surface(pitch: 1, size: 7))],
                    operands: .surface(pitch: 1, size: 7),
                    layout: "dw1: pitch (bytes); dw2: y1<<16|x1; dw3: y2<<16|x2 (exclusive, signed 16-bit); dw4-5: GM address; dw6: XRGB8888 colour; dw7: surface height<<16|width"),
        CommandInfo(kind: .srcCopyBlt, client: .blitter, opcode: 0x53, engines: .bcs, length: .exactly(12),
                    flags: .writesMemory,
                    addresses: [
                        AddressOperand(name: "destination", dword: 4, access: .write, alignment: 4, extent: .surface(pitch: 1, size: 10)),
                        AddressOperand(name: "source", dword: 8, access: .read, alignment: 4, extent: .surface(pitch: 7, size: 11)),
                    ],
                    operands: .surfaces(pitch: 1, size: 10, sourcePitch: 7, sourceSize: 11),
                    layout: "dw1: dst pitch; dw2: dst y1<<16|x1; dw3: dst y2<<16|x2; dw4-5: dst GM address; dw6: src y<<16|x; dw7: src pitch; dw8-9: src GM address; dw10: dst height<<16|width; dw11: src height<<16|width"),
        CommandInfo(kind: .saxpy, client: .compute, opcode: 0x1600, engines: .rcs, length: .exactly(7),
                    flags: .writesMemory,
                    addresses: [
                        AddressOperand(name: "x", dword: 3, access: .read, alignment: 4, extent: .dword(1, scale: 4)),
                        AddressOperand(name: "y", dword: 5, access: .readWrite, alignment: 4, extent: .dword(1, scale: 4)),
                    ],
                    layout: "dw1: n; dw2: a (f32 bits); dw3-4: x GM address; dw5-6: y GM address; y = a*x + y"),
        CommandInfo(kind: .sgemm, client: .compute, opcode: 0x1601, engines: .rcs, length: .exactly(15),
                    flags: .writesMemory,
                    addresses: [
                        AddressOperand(name: "A", dword: 6, access: .read, alignment: 4, extent: .matrix(rows: 1, cols: 3, ld: 8)),
                        AddressOperand(name: "B", dword: 9, access: .read, alignment: 4, extent: .matrix(rows: 3, cols: 2, ld: 11)),
                        AddressOperand(name: "C", dword: 12, access: .readWrite, alignment: 4, extent: .matrix(rows: 1, cols: 2, ld: 14)),
                    ],
                    operands: .leadingDimensions,
                    layout: "dw1: M; dw2: N; dw3: K; dw4: alpha; dw5: beta (f32 bits); dw6-7: A; dw8: lda; dw9-10: B; dw11: ldb; dw12-13: C; dw14: ldc (elements); row-major, C = alpha*A*B + beta*C"),
    ]

    /// Bytes of a row-major rows x cols f32 matrix with leading dimension `ld` (elements).
    @inlinable
    public static func matrixExtent(rows: UInt32, cols: UInt32, ld: UInt32) -> UInt64 {
        guard rows > 0 && cols > 0 else { return 0 }
        return satMul(satAdd(satMul(UInt64(rows - 1), UInt64(ld)), UInt64(cols)), 4)
    }

    /// Flat lookup per client, indexed by opcode (MI 64, 2D 128, compute 8192 entries): no hashing per command.
    private static let byOpcode: [[CommandInfo?]] = {
        var t: [[CommandInfo?]] = Array(repeating: [], count: 8)
        t[Int(CommandClient.mi.rawValue)] = Array(repeating: nil, count: 64)
        t[Int(CommandClient.blitter.rawValue)] = Array(repeating: nil, count: 128)
        t[Int(CommandClient.compute.rawValue)] = Array(repeating: nil, count: 8192)
        for e in entries { t[Int(e.client.rawValue)][Int(e.opcode)] = e }
        return t
    }()
    private static let byKind: [CommandKind: CommandInfo] = Dictionary(uniqueKeysWithValues: entries.map { ($0.kind, $0) })

    /// The table entry for a header, or nil for an unknown command.
    public static func decode(_ header: UInt32) -> CommandInfo? {
        guard let op = CommandHeader.opcode(header) else { return nil }
        let table = byOpcode[Int(CommandHeader.client(header))]
        return Int(op) < table.count ? table[Int(op)] : nil
    }

    public static func info(_ kind: CommandKind) -> CommandInfo { byKind[kind]! }

    // MARK: The table compiled to plain values

    /// `descriptors` has one slot per client and opcode: MI 0..<64, 2D 64..<192, compute 192..<8384, and one
    /// last slot (always nil) for the reserved clients.
    public static let slotCount = 64 + 128 + 8192 + 1

    /// The slot of `header` in `descriptors` (no table lookups: client and opcode bits only).
    @inlinable @inline(__always)
    public static func slot(_ header: UInt32) -> Int {
        switch header >> 29 {
        case CommandClient.mi.rawValue: return Int((header >> 23) & 0x3F)
        case CommandClient.blitter.rawValue: return 64 + Int((header >> 22) & 0x7F)
        case CommandClient.compute.rawValue: return 192 + Int((header >> 16) & 0x1FFF)
        default: return slotCount - 1
        }
    }

    /// `entries` compiled: the row of each slot (see `slot`), nil for an unknown command. Same rules as
    /// `decode` and the entries' methods (`TableConsistencyTests` checks that every header decodes alike).
    public static let descriptors: [CommandDescriptor?] = {
        var t = [CommandDescriptor?](repeating: nil, count: slotCount)
        var firstAddress = 0
        for (i, e) in entries.enumerated() {
            let fixed: Int, lo: Int, hi: Int, step: Int
            switch e.length {
            case .fixed(let n): (fixed, lo, hi, step) = (n, n, n, 1)
            case .field(let a, let b, let s, _): (fixed, lo, hi, step) = (0, a, b, s)
            }
            precondition(step > 0 && step.nonzeroBitCount == 1, "\(e.name): a length step must be a power of two")
            t[slot(e.header)] = CommandDescriptor(entry: i, kind: e.kind, engines: e.engines, fixedLength: fixed,
                                                  lengthMin: lo, lengthMax: hi, lengthStepMask: step - 1,
                                                  operands: e.operands, registers: e.registers,
                                                  firstAddress: firstAddress, addressCount: e.addresses.count)
            firstAddress += e.addresses.count
        }
        return t
    }()

    /// Every row's address operands, in `entries` order (see `CommandDescriptor.firstAddress`).
    public static let compiledAddresses: [CommandDescriptor.Address] = entries.flatMap { e in
        e.addresses.map { CommandDescriptor.Address(dword: $0.dword, alignmentMask: $0.alignment - 1, extent: $0.extentRule) }
    }
}
