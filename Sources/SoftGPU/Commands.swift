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
public enum LengthRule: Sendable {
    /// Always this many dwords; the low header bits are not a length.
    case fixed(Int)
    /// `(header & 0xFF) + 2` dwords, which must satisfy `valid` (else the command is malformed).
    case field(valid: @Sendable (Int) -> Bool, summary: String)

    /// Length in dwords of the command with this header; nil when the length field holds a value the
    /// command does not allow.
    public func length(_ header: UInt32) -> Int? {
        switch self {
        case .fixed(let n): return n
        case .field(let valid, _):
            let n = Int(header & CommandHeader.lengthMask) + CommandHeader.lengthBias
            return valid(n) ? n : nil
        }
    }

    public var summary: String {
        switch self {
        case .fixed(let n): return "fixed \(n)"
        case .field(_, let s): return "header[7:0] + 2, \(s)"
        }
    }
}

public enum OperandAccess: Sendable, Equatable {
    case read, write, readWrite
    public var reads: Bool { self != .write }
    public var writes: Bool { self != .read }
}

/// A GM address operand: a 64-bit address in dwords `dword` (low) and `dword + 1` (high), and the
/// size of the region the command may touch from it.
public struct AddressOperand: Sendable {
    public let name: String
    public let dword: Int
    public let access: OperandAccess
    /// Required alignment of the address (checked when the extent is not zero).
    public let alignment: UInt64
    /// Bytes the command may touch, from the command dwords and (for DISPLAY_FLIP only) register
    /// values (`register(offset)`; a mediator passes its virtual registers). 0 = the operand is unused
    /// by this instance of the command. Saturates at UInt64.max instead of overflowing.
    public let extent: @Sendable (_ command: [UInt32], _ register: (UInt32) -> UInt32) -> UInt64

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

/// One row of the command table (GVT-g's cmd_info).
/// One command's description. A class: scanners and the executor pass entries around per command, and a
/// reference costs one retain where a struct of closures would copy them all.
public final class CommandInfo: Sendable {
    public let kind: CommandKind
    public var name: String { kind.rawValue }
    public let client: CommandClient
    public let opcode: UInt32
    public let engines: EngineSet
    public let length: LengthRule
    public let flags: CommandFlags
    public let addresses: [AddressOperand]
    /// Dword indices that hold register offsets the command writes (LOAD_REGISTER_IMM: 1, 3, 5, ...;
    /// each value follows its offset). Every offset must satisfy `RegisterMap.isCommandWritable`.
    public let registerOperands: @Sendable (_ command: [UInt32]) -> [Int]
    /// Operand constraints beyond address ranges and alignment; returns a reason when violated
    /// (an `invalidOperand` engine error).
    public let validate: @Sendable (_ command: [UInt32], _ register: (UInt32) -> UInt32) -> String?
    /// A human-readable layout of the dwords.
    public let layout: String

    public init(kind: CommandKind, client: CommandClient, opcode: UInt32, engines: EngineSet, length: LengthRule,
                flags: CommandFlags, addresses: [AddressOperand],
                registerOperands: @escaping @Sendable (_ command: [UInt32]) -> [Int],
                validate: @escaping @Sendable (_ command: [UInt32], _ register: (UInt32) -> UInt32) -> String?,
                layout: String) {
        self.kind = kind
        self.client = client
        self.opcode = opcode
        self.engines = engines
        self.length = length
        self.flags = flags
        self.addresses = addresses
        self.registerOperands = registerOperands
        self.validate = validate
        self.layout = layout
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

@inline(__always) func satMul(_ a: UInt64, _ b: UInt64) -> UInt64 {
    let (r, o) = a.multipliedReportingOverflow(by: b)
    return o ? .max : r
}
@inline(__always) func satAdd(_ a: UInt64, _ b: UInt64) -> UInt64 {
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
/// address ranges from this table; a mediator's scanner uses the same table.
public enum CommandTable {
    /// Largest batch buffer (BATCH_BUFFER_START dword 3).
    public static let maxBatchBytes: UInt64 = 16 << 20
    /// Largest LOAD_REGISTER_IMM (pairs).
    public static let maxLRIPairs = 63
    /// Cursor image size in bytes (64 x 64 ARGB8888).
    public static let cursorBytes: UInt64 = 64 * 64 * 4

    private static func exactly(_ n: Int) -> LengthRule { .field(valid: { $0 == n }, summary: "must be \(n)") }
    private static let noRegisters: @Sendable ([UInt32]) -> [Int] = { _ in [] }
    private static let noCheck: @Sendable ([UInt32], (UInt32) -> UInt32) -> String? = { _, _ in nil }

    private static func surfaceCheck(pitch: UInt32, size: UInt32, _ what: String) -> String? {
        let (w, h) = wh(size)
        guard w > 0 && h > 0 else { return nil }
        if pitch % 4 != 0 { return "\(what) pitch \(pitch) is not a multiple of 4" }
        if UInt64(pitch) < w * 4 { return "\(what) pitch \(pitch) is smaller than width \(w) x 4" }
        return nil
    }

    public static let entries: [CommandInfo] = [
        CommandInfo(kind: .noop, client: .mi, opcode: 0x00, engines: .all, length: .fixed(1), flags: [],
                    addresses: [], registerOperands: noRegisters, validate: noCheck,
                    layout: "dw0: header (bits 22:0 ignored)"),
        CommandInfo(kind: .userInterrupt, client: .mi, opcode: 0x02, engines: .all, length: .fixed(1),
                    flags: .raisesInterrupt, addresses: [], registerOperands: noRegisters, validate: noCheck,
                    layout: "dw0: header; raises the engine's USER interrupt"),
        CommandInfo(kind: .batchBufferEnd, client: .mi, opcode: 0x0A, engines: .all, length: .fixed(1),
                    flags: .controlFlow, addresses: [], registerOperands: noRegisters, validate: noCheck,
                    layout: "dw0: header; returns from the current batch (error in the ring)"),
        CommandInfo(kind: .displayFlip, client: .mi, opcode: 0x14, engines: .all, length: exactly(4),
                    flags: .display,
                    addresses: [AddressOperand(name: "surface", dword: 2, access: .read, alignment: GTT.pageSize) { c, reg in
                        if (c[0] & CommandHeader.flipPlaneMask) >> CommandHeader.flipPlaneShift == 0 {
                            return satMul(UInt64(c[1]), max(1, UInt64(reg(Reg.priSize) >> 16)))
                        }
                        return cursorBytes
                    }],
                    registerOperands: noRegisters,
                    validate: { c, reg in
                        let plane = (c[0] & CommandHeader.flipPlaneMask) >> CommandHeader.flipPlaneShift
                        guard plane <= 1 else { return "plane \(plane) does not exist" }
                        if plane == 0 {
                            let w = UInt64(reg(Reg.priSize) & 0xFFFF)
                            if c[1] == 0 || c[1] % 4 != 0 { return "stride \(c[1]) is not a positive multiple of 4" }
                            if UInt64(c[1]) < w * 4 { return "stride \(c[1]) is smaller than width \(w) x 4" }
                        }
                        return nil
                    },
                    layout: "dw0: header | plane<<20 (0 primary, 1 cursor); dw1: stride (primary; ignored for cursor); dw2-3: surface GM address (page aligned)"),
        CommandInfo(kind: .storeDataImm, client: .mi, opcode: 0x20, engines: .all,
                    length: .field(valid: { $0 == 4 || $0 == 5 }, summary: "4 (one dword) or 5 (two dwords)"),
                    flags: .writesMemory,
                    addresses: [AddressOperand(name: "destination", dword: 1, access: .write, alignment: 4) { c, _ in
                        UInt64(c.count - 3) * 4
                    }],
                    registerOperands: noRegisters, validate: noCheck,
                    layout: "dw1-2: GM address; dw3(-4): data"),
        CommandInfo(kind: .loadRegisterImm, client: .mi, opcode: 0x22, engines: .all,
                    length: .field(valid: { $0 >= 3 && $0 % 2 == 1 && $0 <= 1 + 2 * maxLRIPairs },
                                   summary: "odd, 3...\(1 + 2 * maxLRIPairs) (1 to \(maxLRIPairs) pairs)"),
                    flags: .writesRegisters, addresses: [],
                    registerOperands: { c in Array(stride(from: 1, to: c.count, by: 2)) },
                    validate: noCheck,
                    layout: "dw(2i+1): register offset; dw(2i+2): value"),
        CommandInfo(kind: .flush, client: .mi, opcode: 0x26, engines: .all, length: exactly(4),
                    flags: [.writesMemory, .raisesInterrupt],
                    addresses: [AddressOperand(name: "post-sync", dword: 1, access: .write, alignment: 4) { c, _ in
                        c[0] & CommandHeader.flushPostSyncStore != 0 ? 4 : 0
                    }],
                    registerOperands: noRegisters, validate: noCheck,
                    layout: "dw0: header | 1<<14 post-sync store | 1<<8 notify; dw1-2: GM address; dw3: value"),
        CommandInfo(kind: .batchBufferStart, client: .mi, opcode: 0x31, engines: .all, length: exactly(4),
                    flags: .controlFlow,
                    addresses: [AddressOperand(name: "batch", dword: 1, access: .read, alignment: 4) { c, _ in UInt64(c[3]) }],
                    registerOperands: noRegisters,
                    validate: { c, _ in
                        let n = UInt64(c[3])
                        if n == 0 || n % 4 != 0 || n > maxBatchBytes {
                            return "batch length \(n) is not a positive multiple of 4 up to \(maxBatchBytes)"
                        }
                        return nil
                    },
                    layout: "dw0: header | 1<<22 second level; dw1-2: GM address; dw3: batch length in bytes"),
        CommandInfo(kind: .colorBlt, client: .blitter, opcode: 0x50, engines: .bcs, length: exactly(8),
                    flags: .writesMemory,
                    addresses: [AddressOperand(name: "destination", dword: 4, access: .write, alignment: 4) { c, _ in
                        satMul(UInt64(c[1]), wh(c[7]).1)
                    }],
                    registerOperands: noRegisters,
                    validate: { c, _ in surfaceCheck(pitch: c[1], size: c[7], "destination") },
                    layout: "dw1: pitch (bytes); dw2: y1<<16|x1; dw3: y2<<16|x2 (exclusive, signed 16-bit); dw4-5: GM address; dw6: XRGB8888 colour; dw7: surface height<<16|width"),
        CommandInfo(kind: .srcCopyBlt, client: .blitter, opcode: 0x53, engines: .bcs, length: exactly(12),
                    flags: .writesMemory,
                    addresses: [
                        AddressOperand(name: "destination", dword: 4, access: .write, alignment: 4) { c, _ in
                            satMul(UInt64(c[1]), wh(c[10]).1)
                        },
                        AddressOperand(name: "source", dword: 8, access: .read, alignment: 4) { c, _ in
                            satMul(UInt64(c[7]), wh(c[11]).1)
                        },
                    ],
                    registerOperands: noRegisters,
                    validate: { c, _ in
                        surfaceCheck(pitch: c[1], size: c[10], "destination") ?? surfaceCheck(pitch: c[7], size: c[11], "source")
                    },
                    layout: "dw1: dst pitch; dw2: dst y1<<16|x1; dw3: dst y2<<16|x2; dw4-5: dst GM address; dw6: src y<<16|x; dw7: src pitch; dw8-9: src GM address; dw10: dst height<<16|width; dw11: src height<<16|width"),
        CommandInfo(kind: .saxpy, client: .compute, opcode: 0x1600, engines: .rcs, length: exactly(7),
                    flags: .writesMemory,
                    addresses: [
                        AddressOperand(name: "x", dword: 3, access: .read, alignment: 4) { c, _ in UInt64(c[1]) * 4 },
                        AddressOperand(name: "y", dword: 5, access: .readWrite, alignment: 4) { c, _ in UInt64(c[1]) * 4 },
                    ],
                    registerOperands: noRegisters, validate: noCheck,
                    layout: "dw1: n; dw2: a (f32 bits); dw3-4: x GM address; dw5-6: y GM address; y = a*x + y"),
        CommandInfo(kind: .sgemm, client: .compute, opcode: 0x1601, engines: .rcs, length: exactly(15),
                    flags: .writesMemory,
                    addresses: [
                        AddressOperand(name: "A", dword: 6, access: .read, alignment: 4) { c, _ in
                            matrixExtent(rows: c[1], cols: c[3], ld: c[8])
                        },
                        AddressOperand(name: "B", dword: 9, access: .read, alignment: 4) { c, _ in
                            matrixExtent(rows: c[3], cols: c[2], ld: c[11])
                        },
                        AddressOperand(name: "C", dword: 12, access: .readWrite, alignment: 4) { c, _ in
                            matrixExtent(rows: c[1], cols: c[2], ld: c[14])
                        },
                    ],
                    registerOperands: noRegisters,
                    validate: { c, _ in
                        let m = c[1], n = c[2], k = c[3]
                        if m > 0 && k > 0 && c[8] < k { return "lda \(c[8]) < K \(k)" }
                        if k > 0 && n > 0 && c[11] < n { return "ldb \(c[11]) < N \(n)" }
                        if m > 0 && n > 0 && c[14] < n { return "ldc \(c[14]) < N \(n)" }
                        return nil
                    },
                    layout: "dw1: M; dw2: N; dw3: K; dw4: alpha; dw5: beta (f32 bits); dw6-7: A; dw8: lda; dw9-10: B; dw11: ldb; dw12-13: C; dw14: ldc (elements); row-major, C = alpha*A*B + beta*C"),
    ]

    /// Bytes of a row-major rows x cols f32 matrix with leading dimension `ld` (elements).
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
}
