import SoftGPU

// The vGPU command scanner (docs/vgpu.md section 4, GVT-g's cmd_parser.c): the security boundary between a
// guest's ring and batch buffers and the GPU. It copies the guest's ring fragment and every batch the
// fragment reaches into host-owned shadow buffers, then validates the copies (never guest memory) with
// SoftGPU's `CommandTable`, so that the scanner and the executor agree on decoding, lengths, engines,
// operand constraints, address extents and register operands by construction.
//
// Everything is bounded: at most 3 frames of batch nesting (iterative, no recursion), at most
// `maxBatches` batch copies of at most `maxBatchBytes` each and `maxTotalBatchBytes` together, at most
// `maxCommands` commands scanned, and a ring fragment of at most 2 MiB. Guest values never reach trapping
// arithmetic. Nothing the guest writes can crash the scanner.
//
// Per command, in this order (the executor's order, docs/softgpu.md 6.3): step budget, decode
// (`unknownCommand`), engine (`notAllowedOnEngine`), length field (`invalidLength`), room before the tail
// or batch end (`pastEnd`), the table's `validate` and the `maxBatchBytes` limit (`invalidOperand`), then
// per address operand with a non-zero extent its alignment (`invalidOperand`) and its whole extent in one
// slice (`addressOutsideSlices`), then register operands (`registerNotAllowed`), then control flow.
//
// Decisions where docs/vgpu.md leaves room:
// - A second-level BATCH_BUFFER_START from the ring and a BATCH_BUFFER_END in the ring are
//   `invalidOperand` (SoftGPU has distinct codes for them, invalidBatchStart and batchEndOutsideBatch;
//   neither is nesting deeper than two levels). `nestingTooDeep` is any start inside a second-level
//   batch (chain or call), or a start that would exceed `maxBatchLevel`.
// - A LOAD_REGISTER_IMM register must pass both the vGPU's command-load policy and SoftGPU's hardware
//   whitelist (`RegisterMap.isCommandWritable`), so an accepted LRI never fails on the engine.
// - `ScanLimits.maxTotalBatchBytes` (default 64 MiB) caps the bytes of all batch copies of one submission
//   (`tooManyBatches`); 64 batches of 16 MiB would otherwise be 1 GiB of shadows per doorbell.
// - The ring must be 1 to 512 whole pages (RING_CTL's range), else `badRing`.
// - A batch is copied and scanned once per BATCH_BUFFER_START that reaches it (a batch started twice is
//   two shadow buffers), so every shadow's relocations are its own.
// - DISPLAY_FLIP is validated with the virtual registers (`registerRead`), overlaid with display
//   registers loaded earlier in the same submission; `Flip.stride` is dword 1 as written (cursor too).
// - USER_INTERRUPT and FLUSH notify stay in the shadows: the mediator forwards the real engine's user
//   interrupts of its shadow ring to the vGPU.

// MARK: - Graphics memory slices

/// The graphics memory a vGPU may use: one slice of the aperture and one of the hidden range.
public struct GMSlices: Sendable, Equatable {
    public var aperture: Range<UInt64>
    public var hidden: Range<UInt64>

    public init(aperture: Range<UInt64>, hidden: Range<UInt64>) {
        self.aperture = aperture
        self.hidden = hidden
    }

    /// Whether `[start, start + length)` lies wholly inside one slice (never straddling both, as GVT-g's
    /// `intel_gvt_ggtt_validate_range`). Overflow-safe for any `start` and `length`.
    ///
    /// `length == 0`: true when `start` is inside a non-empty slice or exactly at its end (an empty range
    /// that starts where the slice ends touches nothing outside it). An empty slice contains nothing.
    public func contains(_ start: UInt64, length: UInt64) -> Bool {
        Self.inside(aperture, start, length) || Self.inside(hidden, start, length)
    }

    private static func inside(_ r: Range<UInt64>, _ start: UInt64, _ length: UInt64) -> Bool {
        guard !r.isEmpty, start >= r.lowerBound, start <= r.upperBound else { return false }
        return length <= r.upperBound - start
    }
}

// MARK: - Limits

public struct ScanLimits: Sendable, Equatable {
    /// Batch nesting levels (hardware limit, as GVT-g). Values above 2 act as 2 (the executor supports
    /// only two levels); 1 allows no second-level calls, 0 no batches at all.
    public var maxBatchLevel = 2
    /// Batches (all levels, chains included) per submission.
    public var maxBatches = 64
    /// Commands scanned per submission (step budget), ring and batch commands together.
    public var maxCommands = 65536
    /// Largest batch (BATCH_BUFFER_START dword 3); values above SoftGPU's 16 MiB act as 16 MiB.
    public var maxBatchBytes = 16 << 20
    /// Bytes of all batch copies of one submission together (`tooManyBatches` when exceeded). Without it
    /// a guest could make the host copy and place 64 x 16 MiB = 1 GiB of shadows per doorbell.
    public var maxTotalBatchBytes = 64 << 20

    public init(maxBatchLevel: Int = 2, maxBatches: Int = 64, maxCommands: Int = 65536,
                maxBatchBytes: Int = 16 << 20, maxTotalBatchBytes: Int = 64 << 20) {
        self.maxBatchLevel = maxBatchLevel
        self.maxBatches = maxBatches
        self.maxCommands = maxCommands
        self.maxBatchBytes = maxBatchBytes
        self.maxTotalBatchBytes = maxTotalBatchBytes
    }
}

// MARK: - Input and output

/// Reads `count` dwords of the guest's view of GM starting at `gm` (the mediator implements it through the
/// guest's GTT into guest RAM). nil when any byte is unreadable. A result with a different number of dwords
/// is treated as unreadable.
public typealias GMReader = (_ gm: UInt64, _ count: Int) -> [UInt32]?

/// One host-owned shadow copy: `buffers[0]` is the ring fragment, the rest are batches in discovery order.
public struct ShadowBuffer: Sendable, Equatable {
    /// 0 ring, 1 first-level batch, 2 second-level batch.
    public let level: Int
    /// Where the guest's copy starts (ring: GM of `head`).
    public let sourceGM: UInt64
    /// The copy; for batches exactly `length / 4` dwords from dw3. Ring: the dwords from head to tail
    /// (unwrapped). DISPLAY_FLIPs are replaced by NOOPs.
    public var dwords: [UInt32]
    /// BATCH_BUFFER_START address operands to patch: dword index of the low address dword in `dwords`,
    /// and the index in `buffers` of the shadow copy it must point to. The mediator places every buffer in
    /// host-owned GM and writes the shadow GM there (low dword at `dword`, high at `dword + 1`).
    public var relocations: [Relocation]

    public init(level: Int, sourceGM: UInt64, dwords: [UInt32], relocations: [Relocation] = []) {
        self.level = level
        self.sourceGM = sourceGM
        self.dwords = dwords
        self.relocations = relocations
    }
}

public struct Relocation: Sendable, Equatable {
    public let dword: Int
    public let target: Int
    public init(dword: Int, target: Int) {
        self.dword = dword
        self.target = target
    }
}

public struct ScannedSubmission: Sendable {
    public var buffers: [ShadowBuffer]
    /// Commands scanned (ring and batches, every command once per time it is reached).
    public var commandCount: Int
    /// DISPLAY_FLIPs found, in execution order. The mediator applies them to the vGPU's virtual display
    /// when the submission completes; in the shadows they are NOOPs.
    public var flips: [Flip]

    public init(buffers: [ShadowBuffer], commandCount: Int, flips: [Flip]) {
        self.buffers = buffers
        self.commandCount = commandCount
        self.flips = flips
    }
}

/// A DISPLAY_FLIP: plane 0 primary, 1 cursor; `stride` is dword 1 as the guest wrote it (it matters for
/// the primary plane only).
public struct Flip: Sendable, Equatable {
    public let plane: UInt32
    public let surface: UInt64
    public let stride: UInt32
    public init(plane: UInt32, surface: UInt64, stride: UInt32) {
        self.plane = plane
        self.surface = surface
        self.stride = stride
    }
}

// MARK: - Rejections

/// Codes exactly as docs/vgpu.md section 6 (ERR_REASON; ERROR_CODE reads 0x100 + code).
public enum RejectReason: UInt32, Sendable, CaseIterable {
    case unknownCommand = 1, notAllowedOnEngine, invalidLength, pastEnd, addressOutsideSlices,
         registerNotAllowed, nestingTooDeep, tooManyBatches, stepBudget, invalidOperand, badRing, unreadable

    /// The name of docs/vgpu.md section 6.
    public var summary: String {
        switch self {
        case .unknownCommand: return "unknown command"
        case .notAllowedOnEngine: return "command not allowed on this engine"
        case .invalidLength: return "invalid length"
        case .pastEnd: return "command runs past the tail or batch end"
        case .addressOutsideSlices: return "address outside the vGPU's graphics memory"
        case .registerNotAllowed: return "register not allowed for command loads"
        case .nestingTooDeep: return "batch nesting deeper than two levels"
        case .tooManyBatches: return "too many batches in one submission"
        case .stepBudget: return "step budget exceeded"
        case .invalidOperand: return "invalid operand"
        case .badRing: return "ring not programmed or outside the vGPU's graphics memory"
        case .unreadable: return "guest memory behind a ring or batch is not readable"
        }
    }
}

/// Why a submission was rejected. `commandGM` and `level` always name the same place: the offending
/// command (or, where there is none, the place one was expected). `operand` per reason:
///
/// | reason | commandGM / header | operand |
/// |---|---|---|
/// | unknownCommand, notAllowedOnEngine | the command | 0 |
/// | invalidLength | the command | dwords the length field claims (`header[7:0] + 2`) |
/// | pastEnd (command straddles tail or batch end) | the command | bytes the command needs |
/// | pastEnd (batch without BATCH_BUFFER_END) | GM of the batch end, header 0 | the batch length |
/// | addressOutsideSlices | the command | the address operand |
/// | registerNotAllowed | the LOAD_REGISTER_IMM | the register offset |
/// | nestingTooDeep, tooManyBatches | the BATCH_BUFFER_START | the batch address |
/// | stepBudget | the first command over the budget | `maxCommands` |
/// | invalidOperand | the command | BATCH_BUFFER_START: the length (or the batch address for a second-level start from the ring); DISPLAY_FLIP: the plane if > 1, else the stride; misaligned address: the address; otherwise 0 |
/// | badRing | ring start + head, header 0 | the bad value: ring start, ring size, head or tail |
/// | unreadable | the BATCH_BUFFER_START (ring: ring start + head, header 0) | GM of the unreadable buffer |
public struct ScanRejection: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: RejectReason
    public let engine: EngineID
    /// GM address of the offending command in the guest's buffer.
    public let commandGM: UInt64
    /// 0 ring, 1 first-level batch, 2 second-level batch.
    public let level: Int
    /// The offending command's dword 0 (0 if none).
    public let header: UInt32
    /// The offending address / register / length (see the table above), 0 if none.
    public let operand: UInt64
    /// Human-readable detail (for the host log only).
    public let detail: String
    /// GM address where the guest buffer holding the command starts (RING_START for the ring, the batch
    /// address for a batch), so `commandGM - bufferGM` is the command's byte offset in its buffer.
    public let bufferGM: UInt64

    public init(reason: RejectReason, engine: EngineID, commandGM: UInt64, level: Int, header: UInt32,
                operand: UInt64, detail: String = "", bufferGM: UInt64? = nil) {
        self.reason = reason
        self.engine = engine
        self.commandGM = commandGM
        self.bufferGM = bufferGM ?? commandGM
        self.level = level
        self.header = header
        self.operand = operand
        self.detail = detail
    }

    /// One line with every field, for the host log.
    public var description: String {
        var s = "vGPU \(engine) submission rejected: reason \(reason.rawValue) (\(reason.summary)), command at GM 0x"
            + String(commandGM, radix: 16) + " (offset 0x" + String(commandGM &- bufferGM, radix: 16)
            + " in its \(level == 0 ? "ring" : "batch")), level \(level), header 0x" + String(header, radix: 16)
            + ", operand 0x" + String(operand, radix: 16)
        if !detail.isEmpty { s += ": " + detail }
        return s
    }
}

// MARK: - The scanner

/// Scans guest submissions for one vGPU. Immutable and `Sendable`; `scan` may run on any thread.
public struct CommandScanner: Sendable {
    /// Largest ring (RING_CTL: 512 pages).
    public static let maxRingBytes: UInt32 = 512 * 4096
    /// Batch levels the executor supports.
    public static let hardwareBatchLevels = 2

    public let slices: GMSlices
    public let limits: ScanLimits
    let commandLoadAllowed: @Sendable (UInt32) -> Bool
    let registerRead: @Sendable (UInt32) -> UInt32

    /// - Parameters:
    ///   - commandLoadAllowed: the vGPU's command-load policy (docs/vgpu.md section 5), a fixed function of
    ///     the offset (a scan asks once per register and remembers the answer). A register must also be in
    ///     SoftGPU's hardware whitelist (`RegisterMap.isCommandWritable`), or the executor would fail on
    ///     it; the scanner requires both.
    ///   - registerRead: virtual register values (PRI_SIZE for flip extents). Display registers loaded by
    ///     an earlier LOAD_REGISTER_IMM of the same submission (when the policy allows that) take
    ///     precedence, because scan order is execution order.
    public init(slices: GMSlices, limits: ScanLimits = ScanLimits(),
                commandLoadAllowed: @escaping @Sendable (UInt32) -> Bool,
                registerRead: @escaping @Sendable (UInt32) -> UInt32) {
        self.slices = slices
        self.limits = limits
        self.commandLoadAllowed = commandLoadAllowed
        self.registerRead = registerRead
    }

    /// Scans the guest ring range [head, tail) (byte offsets; the ring is `ringBytes` long at GM `ringStart`
    /// and wraps) for `engine`, copying the ring fragment and every batch it reaches, and validates the copies.
    ///
    /// `read` is called once for the ring fragment (twice when it wraps: [head, end) then [0, tail)) and
    /// once per BATCH_BUFFER_START reached (a batch started twice is copied and scanned twice). Nothing is
    /// read twice and nothing already copied is read again.
    public func scan(engine: EngineID, ringStart: UInt64, ringBytes: UInt32, head: UInt32, tail: UInt32,
                     read: GMReader) -> Result<ScannedSubmission, ScanRejection> {
        var run = ScanRun(scanner: self, engine: engine, ringStart: ringStart, ringBytes: ringBytes, head: head)
        do {
            try run.copyRing(tail: tail, read: read)
            try run.scanAll(read: read)
        } catch {
            return .failure(error)
        }
        return .success(run.result())
    }
}

// MARK: - One scan

private struct ScanRun {
    /// Start of the guest buffer being scanned (for error offsets).
    var bufferStart: UInt64 = 0
    struct Frame {
        var buffer: Int
        var pos: Int       // dword index of the next command in the buffer
        let level: Int
    }

    let scanner: CommandScanner
    let engine: EngineID
    let ringStart: UInt64
    let ringBytes: UInt32
    let head: UInt32

    // Effective limits (nonsense values clamped).
    let maxLevel: Int
    let maxBatches: Int
    let maxCommands: Int
    let maxBatchBytes: UInt64
    let maxTotalBatchBytes: UInt64
    let engineBit: EngineSet
    let slices: GMSlices
    let noopHeader = CommandTable.info(.noop).header

    var copies: [[UInt32]] = []
    var levels: [Int] = []
    var sources: [UInt64] = []
    var relocations: [[Relocation]] = []
    var flips: [Flip] = []
    var commands = 0
    var batchBytes: UInt64 = 0
    /// Registers loaded by LOAD_REGISTER_IMM earlier in this submission, among `operandRegisters`.
    var loaded: [UInt32: UInt32] = [:]
    /// Registers the table's operand rules may read: the display block ("register values, for
    /// DISPLAY_FLIP only", `AddressOperand.extent`). Only these are tracked through loads.
    static var operandRegisters: Range<UInt32> { 0x70000..<0x71000 }
    /// Command-load decisions made in this submission, `offset << 1 | allowed` (UInt64.max: none),
    /// direct-mapped by offset: drivers load the same few registers over and over, and each decision costs
    /// two table lookups and a call of the policy.
    var loadDecisions = InlineArray<16, UInt64>(repeating: .max)

    init(scanner: CommandScanner, engine: EngineID, ringStart: UInt64, ringBytes: UInt32, head: UInt32) {
        self.scanner = scanner
        self.engine = engine
        self.ringStart = ringStart
        self.ringBytes = ringBytes
        self.head = head
        bufferStart = ringStart
        let l = scanner.limits
        maxLevel = min(max(l.maxBatchLevel, 0), CommandScanner.hardwareBatchLevels)
        maxBatches = max(l.maxBatches, 0)
        maxCommands = max(l.maxCommands, 0)
        maxBatchBytes = min(UInt64(max(l.maxBatchBytes, 0)), CommandTable.maxBatchBytes)
        maxTotalBatchBytes = UInt64(max(l.maxTotalBatchBytes, 0))
        engineBit = EngineSet(engine)
        slices = scanner.slices
    }

    func result() -> ScannedSubmission {
        var buffers: [ShadowBuffer] = []
        buffers.reserveCapacity(copies.count)
        for i in copies.indices {
            buffers.append(ShadowBuffer(level: levels[i], sourceGM: sources[i], dwords: copies[i],
                                        relocations: relocations[i]))
        }
        return ScannedSubmission(buffers: buffers, commandCount: commands, flips: flips)
    }

    // MARK: addresses and errors

    /// GM address of dword `i` of buffer `b` in the guest's memory.
    func gm(_ b: Int, _ i: Int) -> UInt64 {
        let off = 4 &* UInt64(i)
        if b == 0 { return ringStart &+ (UInt64(head) &+ off) % UInt64(max(ringBytes, 1)) }
        return sources[b] &+ off
    }

    func reject(_ reason: RejectReason, _ gm: UInt64, level: Int, header: UInt32 = 0, operand: UInt64 = 0,
                _ detail: String) -> ScanRejection {
        ScanRejection(reason: reason, engine: engine, commandGM: gm, level: level, header: header,
                      operand: operand, detail: detail, bufferGM: bufferStart)
    }

    // MARK: ring

    /// Checks the ring registers and copies the fragment [head, tail) into buffer 0.
    mutating func copyRing(tail: UInt32, read: GMReader) throws(ScanRejection) {
        let at = ringStart &+ UInt64(head)
        func bad(_ operand: UInt64, _ why: String) -> ScanRejection {
            reject(.badRing, at, level: 0, operand: operand, why)
        }
        guard ringStart % GTT.pageSize == 0 else { throw bad(ringStart, "ring start is not page aligned") }
        guard ringBytes > 0, UInt64(ringBytes) % GTT.pageSize == 0, ringBytes <= CommandScanner.maxRingBytes else {
            throw bad(UInt64(ringBytes), "ring size is not 1 to 512 pages")
        }
        guard scanner.slices.contains(ringStart, length: UInt64(ringBytes)) else {
            throw bad(ringStart, "ring [0x\(hex(ringStart)), +0x\(hex(UInt64(ringBytes)))) is outside the vGPU's slices")
        }
        guard head < ringBytes, head % 4 == 0 else { throw bad(UInt64(head), "head is not dword aligned inside the ring") }
        guard tail < ringBytes, tail % 8 == 0 else { throw bad(UInt64(tail), "tail is not qword aligned inside the ring") }

        // Both offsets are < 2 MiB: no overflow.
        var pieces: [(offset: UInt32, count: Int)] = []
        if head <= tail {
            pieces.append((head, Int(tail - head) / 4))
        } else {
            pieces.append((head, Int(ringBytes - head) / 4))
            pieces.append((0, Int(tail) / 4))
        }
        var fragment: [UInt32] = []
        fragment.reserveCapacity(pieces.reduce(0) { $0 + $1.count })
        for p in pieces where p.count > 0 {
            let src = ringStart + UInt64(p.offset)
            guard let d = read(src, p.count), d.count == p.count else {
                throw reject(.unreadable, at, level: 0, operand: src, "ring memory at 0x\(hex(src)) (\(p.count) dwords) is not readable")
            }
            fragment += d
        }
        copies = [fragment]
        levels = [0]
        sources = [at]
        relocations = [[]]
    }

    // MARK: commands

    /// Where straight-line scanning of a buffer stopped.
    enum Stop {
        /// The buffer ends before the next command.
        case end
        /// A BATCH_BUFFER_START or BATCH_BUFFER_END of `length` dwords at dword `pos` passed every
        /// per-command check; the caller applies it.
        case control(pos: Int, length: Int, kind: CommandKind)
    }

    mutating func scanAll(read: GMReader) throws(ScanRejection) {
        // The compiled table (plain values) through two buffer pointers, fetched once per submission.
        try CommandTable.descriptors.withUnsafeBufferPointer { table throws(ScanRejection) in
            try CommandTable.compiledAddresses.withUnsafeBufferPointer { addresses throws(ScanRejection) in
                try scanAll(read: read, table: table, addresses: addresses)
            }
        }
    }

    private mutating func scanAll(read: GMReader, table: UnsafeBufferPointer<CommandDescriptor?>,
                                  addresses: UnsafeBufferPointer<CommandDescriptor.Address>) throws(ScanRejection) {
        var stack = [Frame(buffer: 0, pos: 0, level: 0)]
        while let f = stack.last {
            let top = stack.count - 1
            let b = f.buffer, level = f.level
            bufferStart = b == 0 ? ringStart : sources[b]

            // Straight-line commands in place, up to the next control-flow command or the buffer's end. The
            // copy is moved out of `copies` meanwhile, so that it stays uniquely referenced: turning a
            // DISPLAY_FLIP into NOOPs writes it without copying it.
            var words = copies[b]
            copies[b] = []
            let stop = Result { () throws(ScanRejection) -> Stop in
                try words.withUnsafeMutableBufferPointer { p throws(ScanRejection) in
                    try scanStraight(p, from: f.pos, buffer: b, level: level, table: table, addresses: addresses)
                }
            }
            copies[b] = words

            guard case .control(let pos, let len, let kind) = try stop.get() else {
                let count = words.count
                if level == 0 { stack.removeLast(); continue }    // reached TAIL
                throw reject(.pastEnd, gm(b, count), level: level, operand: UInt64(count) * 4,
                             "level-\(level) batch at 0x\(hex(sources[b])) ends without BATCH_BUFFER_END")
            }
            let at = gm(b, pos)
            let h = words[pos]
            if kind == .batchBufferEnd {
                guard level > 0 else {
                    throw reject(.invalidOperand, at, level: 0, header: h, "BATCH_BUFFER_END in the ring")
                }
                stack.removeLast()    // return to the caller (ring or first-level batch)
                continue
            }

            // BATCH_BUFFER_START (operands checked by scanStraight)
            let target = UInt64(words[pos + 1]) | (UInt64(words[pos + 2]) << 32)
            let length = UInt64(words[pos + 3])
            let second = h & CommandHeader.batchSecondLevel != 0
            if level == 0 && second {
                throw reject(.invalidOperand, at, level: 0, header: h, operand: target,
                             "second-level BATCH_BUFFER_START from the ring")
            }
            let newLevel = level == 0 ? 1 : (second ? level + 1 : level)
            guard level < CommandScanner.hardwareBatchLevels, newLevel <= maxLevel else {
                throw reject(.nestingTooDeep, at, level: level, header: h, operand: target,
                             "BATCH_BUFFER_START in a level-\(level) batch (at most \(maxLevel) levels)")
            }
            guard copies.count - 1 < maxBatches else {
                throw reject(.tooManyBatches, at, level: level, header: h, operand: target,
                             "more than \(maxBatches) batches in one submission")
            }
            guard length <= maxTotalBatchBytes, batchBytes <= maxTotalBatchBytes - length else {
                throw reject(.tooManyBatches, at, level: level, header: h, operand: target,
                             "batches of one submission exceed \(maxTotalBatchBytes) bytes")
            }
            let n = Int(length / 4)    // <= 4 Mi dwords (checked in checkOperands)
            guard let copy = read(target, n), copy.count == n else {
                throw reject(.unreadable, at, level: level, header: h, operand: target,
                             "batch at 0x\(hex(target)) (\(length) bytes) is not readable")
            }
            batchBytes += length
            let index = copies.count
            copies.append(copy)
            levels.append(newLevel)
            sources.append(target)
            relocations.append([])
            relocations[b].append(Relocation(dword: pos + 1, target: index))
            let next = Frame(buffer: index, pos: 0, level: newLevel)
            if level > 0 && !second {
                stack[top] = next                // chain: replaces the current batch
            } else {
                stack[top].pos = pos + len       // call (from the ring or a first-level batch)
                stack.append(next)
            }
        }
    }

    /// Scans buffer `b`'s commands from dword `start` (the copy, as `p`) until a control-flow command or the
    /// buffer's end, applying every per-command check in the documented order. The hot loop: plain table
    /// rows, no allocation, no reference counting, no closure calls but for LOAD_REGISTER_IMM's policy.
    private mutating func scanStraight(_ p: UnsafeMutableBufferPointer<UInt32>, from start: Int, buffer b: Int, level: Int,
                                       table: UnsafeBufferPointer<CommandDescriptor?>,
                                       addresses: UnsafeBufferPointer<CommandDescriptor.Address>) throws(ScanRejection) -> Stop {
        let count = p.count
        var pos = start
        while pos < count {
            let h = p[pos]
            commands += 1
            guard commands <= maxCommands else {
                throw reject(.stepBudget, gm(b, pos), level: level, header: h, operand: UInt64(maxCommands),
                             "more than \(maxCommands) commands in one submission")
            }
            guard let d = table[CommandTable.slot(h)] else {
                throw reject(.unknownCommand, gm(b, pos), level: level, header: h, "unknown command header 0x\(hex(UInt64(h)))")
            }
            guard d.engines.contains(engineBit) else {
                throw reject(.notAllowedOnEngine, gm(b, pos), level: level, header: h,
                             "\(Self.name(d)) is not accepted by \(engine)")
            }
            guard let len = d.length(h) else {
                let info = CommandTable.entries[d.entry]
                throw reject(.invalidLength, gm(b, pos), level: level, header: h,
                             operand: UInt64(h & CommandHeader.lengthMask) + UInt64(CommandHeader.lengthBias),
                             "\(info.name) length field \(h & CommandHeader.lengthMask) (\(info.length.summary))")
            }
            guard len <= count - pos else {
                throw reject(.pastEnd, gm(b, pos), level: level, header: h, operand: UInt64(len) * 4,
                             "\(Self.name(d)) needs \(len) dwords, \(count - pos) left before the \(level == 0 ? "tail" : "batch end")")
            }
            let cmd = UnsafeBufferPointer(rebasing: p[pos ..< pos + len])
            try checkOperands(d, cmd, buffer: b, pos: pos, level: level, addresses: addresses)

            switch d.kind {
            case .batchBufferEnd, .batchBufferStart:
                return .control(pos: pos, length: len, kind: d.kind)
            case .displayFlip:
                flips.append(Flip(plane: (h & CommandHeader.flipPlaneMask) >> CommandHeader.flipPlaneShift,
                                  surface: UInt64(cmd[2]) | (UInt64(cmd[3]) << 32), stride: cmd[1]))
                for i in pos ..< pos + len { p[i] = noopHeader }
            case .loadRegisterImm:
                var i = 1
                while i + 1 < len {
                    if ScanRun.operandRegisters.contains(cmd[i]) { loaded[cmd[i]] = cmd[i + 1] }
                    i += 2
                }
            default:
                break
            }
            pos += len
        }
        return .end
    }

    /// Whether a LOAD_REGISTER_IMM may write `r`: SoftGPU's hardware whitelist and the vGPU's policy.
    mutating func mayLoad(_ r: UInt32) -> Bool {
        let slot = Int((r >> 2) & 15)
        let known = loadDecisions[slot]
        if known != .max && UInt32(truncatingIfNeeded: known >> 1) == r { return known & 1 != 0 }
        let ok = RegisterMap.isCommandWritable(r) && scanner.commandLoadAllowed(r)
        loadDecisions[slot] = UInt64(r) << 1 | (ok ? 1 : 0)
        return ok
    }

    static func name(_ d: CommandDescriptor) -> String { CommandTable.entries[d.entry].name }

    /// Table-driven checks of one command: operand constraints, address alignment and slices, registers.
    @inline(__always)
    private mutating func checkOperands(_ d: CommandDescriptor, _ cmd: UnsafeBufferPointer<UInt32>, buffer b: Int, pos: Int, level: Int,
                               addresses: UnsafeBufferPointer<CommandDescriptor.Address>) throws(ScanRejection) {
        let h = cmd[0]
        // Register values for operand rules (DISPLAY_FLIP's only): loaded earlier in this submission, else
        // the vGPU's. A non-escaping local function of the mutating method: it captures `self` by reference
        // (a non-mutating one would copy the whole run, retaining its arrays, per command).
        func reg(_ r: UInt32) -> UInt32 { loaded.isEmpty ? scanner.registerRead(r) : (loaded[r] ?? scanner.registerRead(r)) }

        if case .none = d.operands {
        } else if let why = d.operands.violation(in: cmd, register: reg) {
            throw reject(.invalidOperand, gm(b, pos), level: level, header: h, operand: invalidOperandValue(d.kind, cmd),
                         "\(Self.name(d)): \(why)")
        }
        if d.kind == .batchBufferStart && UInt64(cmd[3]) > maxBatchBytes {
            throw reject(.invalidOperand, gm(b, pos), level: level, header: h, operand: UInt64(cmd[3]),
                         "batch length \(cmd[3]) exceeds the limit of \(maxBatchBytes) bytes")
        }
        for k in d.firstAddress ..< d.firstAddress + d.addressCount {
            let op = addresses[k]
            let extent = op.extent.bytes(in: cmd, register: reg)
            guard extent > 0 else { continue }
            let a = UInt64(cmd[op.dword]) | (UInt64(cmd[op.dword + 1]) << 32)
            guard a & op.alignmentMask == 0 else {
                let name = CommandTable.entries[d.entry].addresses[k - d.firstAddress].name
                throw reject(.invalidOperand, gm(b, pos), level: level, header: h, operand: a,
                             "\(Self.name(d)) \(name) address 0x\(hex(a)) is not \(op.alignmentMask + 1)-byte aligned")
            }
            guard slices.contains(a, length: extent) else {
                let name = CommandTable.entries[d.entry].addresses[k - d.firstAddress].name
                throw reject(.addressOutsideSlices, gm(b, pos), level: level, header: h, operand: a,
                             "\(Self.name(d)) \(name) [0x\(hex(a)), +0x\(hex(extent))) is outside the vGPU's slices")
            }
        }
        if d.registers == .pairs {
            var i = 1
            while i < cmd.count {
                let r = cmd[i]
                guard mayLoad(r) else {
                    throw reject(.registerNotAllowed, gm(b, pos), level: level, header: h, operand: UInt64(r),
                                 "\(Self.name(d)) to register 0x\(hex(UInt64(r)))")
                }
                i += 2
            }
        }
    }

    /// The operand reported for a `validate` failure.
    func invalidOperandValue(_ kind: CommandKind, _ cmd: UnsafeBufferPointer<UInt32>) -> UInt64 {
        switch kind {
        case .batchBufferStart:
            return UInt64(cmd[3])
        case .displayFlip:
            let plane = (cmd[0] & CommandHeader.flipPlaneMask) >> CommandHeader.flipPlaneShift
            return plane > 1 ? UInt64(plane) : UInt64(cmd[1])
        default:
            return 0
        }
    }
}

@inline(__always) private func hex(_ v: UInt64) -> String { String(v, radix: 16) }
