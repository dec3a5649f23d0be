import TestSupport
import Testing
import SoftGPU
import VGPU

// Tests of the vGPU command scanner (docs/vgpu.md section 4, Sources/VGPU/CommandScanner.swift).

/// All scanner tests (helpers are file-private so they cannot collide with other VGPUTests files).
@Suite struct CommandScannerTests {}

// MARK: - Fixture

/// Guest graphics memory as the scanner sees it through a `GMReader`: sparse 4 KiB pages of dwords
/// (absent pages read as zero), unreadable ranges, a log of reads, and a hook that runs after every read
/// (a guest racing the scanner).
fileprivate final class GuestGM {
    struct Read: Equatable, CustomStringConvertible {
        let gm: UInt64
        let count: Int
        var description: String { "0x\(String(gm, radix: 16))+\(count)" }
    }

    private var pages: [UInt64: [UInt32]] = [:]
    var unreadable: [Range<UInt64>] = []
    private(set) var reads: [Read] = []
    var afterRead: ((GuestGM, Read) -> Void)?

    func write(_ gm: UInt64, _ dwords: [UInt32]) {
        for (i, v) in dwords.enumerated() { poke(gm + UInt64(i) * 4, v) }
    }

    func poke(_ gm: UInt64, _ v: UInt32) {
        precondition(gm % 4 == 0)
        pages[gm >> 12, default: [UInt32](repeating: 0, count: 1024)][Int(gm & 0xFFF) >> 2] = v
    }

    func peek(_ gm: UInt64) -> UInt32 { pages[gm >> 12]?[Int(gm & 0xFFF) >> 2] ?? 0 }

    func read(_ gm: UInt64, _ count: Int) -> [UInt32]? {
        let r = Read(gm: gm, count: count)
        reads.append(r)
        defer { afterRead?(self, r) }
        guard count >= 0, gm % 4 == 0 else { return nil }
        let (end, o) = gm.addingReportingOverflow(UInt64(count) * 4)
        guard !o else { return nil }
        if unreadable.contains(where: { $0.overlaps(gm..<end) }) { return nil }
        var out: [UInt32] = []
        out.reserveCapacity(count)
        var a = gm
        while a < end {
            let off = Int(a & 0xFFF) >> 2
            let n = min(1024 - off, Int((end - a) / 4))
            if let p = pages[a >> 12] { out += p[off..<(off + n)] } else { out += repeatElement(0, count: n) }
            a += UInt64(n) * 4
        }
        return out
    }
}

/// GM layout of the tests: a 1 MiB aperture slice and a 1 MiB hidden slice, far apart.
fileprivate enum L {
    static let slices = GMSlices(aperture: 0x0010_0000..<0x0020_0000, hidden: 0x1000_0000..<0x1010_0000)
    static let ring: UInt64 = 0x0010_0000      // 4 pages
    static let ringBytes: UInt32 = 0x4000
    static let a: UInt64 = 0x0011_0000         // batches
    static let b: UInt64 = 0x0012_0000
    static let c: UInt64 = 0x0013_0000
    static let apEnd: UInt64 = 0x0020_0000
    static let d: UInt64 = 0x1000_0000         // data in the hidden slice
    static let hEnd: UInt64 = 0x1010_0000
    static let outside: UInt64 = 0x0800_0000   // between the slices
    static let priSize: UInt32 = (32 << 16) | 64   // 64 x 32 primary plane
    static let noop: UInt32 = CommandTable.info(.noop).header
}

/// Guest policy of the tests: every hardware command-writable register except the display block.
@Sendable fileprivate func defaultPolicy(_ r: UInt32) -> Bool { !(0x70000..<0x71000).contains(r) }

fileprivate func makeScanner(limits: ScanLimits = ScanLimits(), policy: @escaping @Sendable (UInt32) -> Bool = defaultPolicy,
                 priSize: UInt32 = L.priSize) -> CommandScanner {
    CommandScanner(slices: L.slices, limits: limits, commandLoadAllowed: policy,
                   registerRead: { $0 == Reg.priSize ? priSize : 0 })
}

fileprivate func cmds(_ f: (inout CommandBuilder) -> Void) -> CommandBuilder {
    var b = CommandBuilder()
    f(&b)
    return b
}

fileprivate struct Batch: Sendable {
    let gm: UInt64
    let commands: CommandBuilder
    init(_ gm: UInt64, _ f: (inout CommandBuilder) -> Void) {
        self.gm = gm
        commands = cmds(f)
    }
    var length: UInt32 { UInt32(commands.byteCount) }
}

/// A guest submission: ring commands written from `head` (wrapping) and padded with NOOPs so that the
/// tail is qword aligned; batches written at their GM addresses.
fileprivate struct Submission: Sendable {
    var engine: EngineID = .rcs
    var ring = CommandBuilder()
    var batches: [Batch] = []
    var ringStart = L.ring
    var ringBytes = L.ringBytes
    var head: UInt32 = 0
    var tail: UInt32? = nil
    var limits = ScanLimits()
    var unreadable: [Range<UInt64>] = []

    /// Writes the submission into `gm`; returns the tail.
    func place(in gm: GuestGM) -> UInt32 {
        for b in batches { gm.write(b.gm, b.commands.dwords) }
        var r = ring
        if tail == nil && head % 4 == 0 {
            while (UInt64(head) + UInt64(r.byteCount)) % 8 != 0 { r.noop() }
        }
        let size = UInt64(max(ringBytes, 4))
        for (i, v) in r.dwords.enumerated() {
            gm.poke(ringStart &+ (UInt64(head) + UInt64(i) * 4) % size & ~3, v)
        }
        gm.unreadable = unreadable
        return tail ?? UInt32((UInt64(head) + UInt64(r.byteCount)) % size)
    }

    func run(_ gm: GuestGM = GuestGM(), scanner: CommandScanner? = nil) -> Result<ScannedSubmission, ScanRejection> {
        let t = place(in: gm)
        let s = scanner ?? makeScanner(limits: limits)
        return s.scan(engine: engine, ringStart: ringStart, ringBytes: ringBytes, head: head, tail: t, read: gm.read)
    }
}

fileprivate extension Result {
    var accepted: Success? { if case .success(let s) = self { return s }; return nil }
    var rejection: Failure? { if case .failure(let f) = self { return f }; return nil }
}

fileprivate func header(_ k: CommandKind, dwords: Int? = nil) -> UInt32 {
    let i = CommandTable.info(k)
    if let n = dwords { return i.header(dwords: n) }
    switch i.length {
    case .fixed(let n): return i.header(dwords: n)
    case .field: return i.header(dwords: (2...129).first { i.length.length(i.header(dwords: $0)) != nil } ?? 2)
    }
}

// MARK: - GMSlices

fileprivate struct SliceCase: Sendable, CustomTestStringConvertible {
    let start: UInt64
    let length: UInt64
    let inside: Bool
    var testDescription: String { "0x\(String(start, radix: 16)) + 0x\(String(length, radix: 16)) -> \(inside)" }
}

fileprivate extension CommandScannerTests {
    @Test(arguments: [
        SliceCase(start: 0x10_0000, length: 0x10_0000, inside: true),       // the whole aperture slice
        SliceCase(start: 0x10_0000, length: 0x10_0001, inside: false),      // one byte too long
        SliceCase(start: 0x0F_FFFF, length: 1, inside: false),              // just below
        SliceCase(start: 0x1F_FFFC, length: 4, inside: true),               // last dword
        SliceCase(start: 0x1F_FFFC, length: 8, inside: false),              // straddles the end
        SliceCase(start: 0x1000_0000, length: 0x10_0000, inside: true),     // the whole hidden slice
        SliceCase(start: 0x0800_0000, length: 4, inside: false),            // between the slices
        SliceCase(start: 0x10_0000, length: 0x1000_0000, inside: false),    // spans both slices
        SliceCase(start: 0x20_0000, length: 0, inside: true),               // empty range at the slice end
        SliceCase(start: 0x10_0000, length: 0, inside: true),
        SliceCase(start: 0x20_0001, length: 0, inside: false),
        SliceCase(start: 0x10_0000, length: .max, inside: false),           // overflow
        SliceCase(start: .max, length: 1, inside: false),
        SliceCase(start: .max, length: .max, inside: false),
        SliceCase(start: 0x1F_FFFF, length: .max - 0x1F_FFFE, inside: false),
    ])
    func sliceContains(_ c: SliceCase) {
        #expect(L.slices.contains(c.start, length: c.length) == c.inside)
    }

    @Test func adjacentSlicesAreStillTwoSlices() {
        let s = GMSlices(aperture: 0..<0x1000, hidden: 0x1000..<0x2000)
        #expect(s.contains(0, length: 0x1000))
        #expect(s.contains(0x1000, length: 0x1000))
        #expect(!s.contains(0xFFC, length: 8))
        let empty = GMSlices(aperture: 0x1000..<0x1000, hidden: 0x1000..<0x1000)
        #expect(!empty.contains(0x1000, length: 0))
    }
}

// MARK: - Reason codes

fileprivate extension CommandScannerTests {
    @Test func reasonCodesMatchTheSpec() {
        let expected: [(RejectReason, UInt32)] = [
            (.unknownCommand, 1), (.notAllowedOnEngine, 2), (.invalidLength, 3), (.pastEnd, 4),
            (.addressOutsideSlices, 5), (.registerNotAllowed, 6), (.nestingTooDeep, 7), (.tooManyBatches, 8),
            (.stepBudget, 9), (.invalidOperand, 10), (.badRing, 11), (.unreadable, 12),
        ]
        #expect(RejectReason.allCases.count == expected.count)
        for (r, code) in expected { #expect(r.rawValue == code) }
    }
}

// MARK: - Accepted submissions

fileprivate struct AcceptCase: Sendable, CustomTestStringConvertible {
    let name: String
    let submission: Submission
    let commands: Int
    let buffers: Int
    var testDescription: String { name }
}

fileprivate let acceptCases: [AcceptCase] = {
    var cases: [AcceptCase] = []
    func add(_ name: String, commands: Int, buffers: Int = 1, _ s: Submission) {
        cases.append(AcceptCase(name: name, submission: s, commands: commands, buffers: buffers))
    }
    add("empty submission (head == tail)", commands: 0, Submission())
    add("every RCS command in the ring", commands: 8, Submission(engine: .rcs, ring: cmds {
        $0.noop()
        $0.userInterrupt()
        $0.storeDataImm(gm: L.d, 7)
        $0.storeDataImm(gm: L.apEnd - 8, qword: 9)                          // touches the slice end exactly
        $0.loadRegisterImm([(Reg.scratch(0), 1), (Reg.gpr(.rcs, dword: 3), 2)])
        $0.flush(postSync: (L.d + 64, 1), notify: true)
        $0.saxpy(n: 1024, a: 2, x: L.d, y: L.d + 0x1000)
        $0.sgemm(m: 4, n: 4, k: 4, alpha: 1, beta: 0, a: L.d, lda: 4, b: L.d + 64, ldb: 4, c: L.hEnd - 64, ldc: 4)
    }))
    let surf = BlitSurface(gm: L.d, pitch: 256, width: 64, height: 16)
    add("every BCS command in the ring", commands: 2, Submission(engine: .bcs, ring: cmds {
        $0.colorBlt(dst: surf, x1: 0, y1: 0, x2: 64, y2: 16, color: 0xFF)
        $0.srcCopyBlt(dst: surf, x1: 0, y1: 0, x2: 8, y2: 8,
                      src: BlitSurface(gm: L.apEnd - 256 * 16, pitch: 256, width: 64, height: 16), srcX: 0, srcY: 0)
    }))
    add("unused address operands are not audited (extent 0)", commands: 4, Submission(engine: .rcs, ring: cmds {
        $0.flush(postSync: nil, notify: false)                               // address 0, no post-sync
        $0.raw([header(.flush), UInt32(L.outside), 0, 0])
        $0.saxpy(n: 0, a: 1, x: L.outside, y: .max - 3)
        $0.sgemm(m: 0, n: 9, k: 9, alpha: 1, beta: 1, a: L.outside, lda: 0, b: L.d, ldb: 9, c: L.outside, ldc: 0)
    }))
    add("blit of an empty surface is not audited", commands: 1, Submission(engine: .bcs, ring: cmds {
        $0.colorBlt(dst: BlitSurface(gm: L.outside, pitch: 3, width: 0, height: 0), x1: 0, y1: 0, x2: 1, y2: 1, color: 0)
    }))
    add("LOAD_REGISTER_IMM of 63 allowed pairs", commands: 2, Submission(ring: cmds {   // + one NOOP of padding
        $0.loadRegisterImm((0..<63).map { (Reg.scratch(UInt32($0)), UInt32($0)) })
    }))
    add("batch ending exactly at BATCH_BUFFER_END, trailing garbage not scanned", commands: 4, buffers: 2, Submission(
        ring: cmds { $0.batchBufferStart(gm: L.a, length: 24) },
        batches: [Batch(L.a) { $0.noop(); $0.userInterrupt(); $0.batchBufferEnd(); $0.raw([0xFFFF_FFFF, 0xE000_0000, 7]) }]))
    add("second-level call returns into the first-level batch", commands: 8, buffers: 3, Submission(
        ring: cmds { $0.batchBufferStart(gm: L.a, length: 24); $0.noop(); $0.noop() },
        batches: [Batch(L.a) { $0.batchBufferStart(gm: L.b, length: 8, secondLevel: true); $0.noop(); $0.batchBufferEnd() },
                  Batch(L.b) { $0.noop(); $0.batchBufferEnd() }]))
    add("batch in the hidden slice", commands: 2, buffers: 2, Submission(
        ring: cmds { $0.batchBufferStart(gm: L.hEnd - 4, length: 4) },
        batches: [Batch(L.hEnd - 4) { $0.batchBufferEnd() }]))
    add("exactly 64 batches", commands: 128, buffers: 65, Submission(
        ring: cmds { for _ in 0..<64 { $0.batchBufferStart(gm: L.a, length: 4) } },
        batches: [Batch(L.a) { $0.batchBufferEnd() }]))
    add("exactly at the step budget", commands: 65536, buffers: 2, Submission(
        ring: cmds { $0.batchBufferStart(gm: L.a, length: 65535 * 4) },
        batches: [Batch(L.a) { $0.noop(count: 65534); $0.batchBufferEnd() }]))
    add("flips of both planes", commands: 2, Submission(ring: cmds {
        $0.displayFlip(plane: .primary, gm: L.hEnd - 256 * 32, stride: 256)     // extent stride x PRI_SIZE.height
        $0.displayFlip(plane: .cursor, gm: L.apEnd - 16384, stride: 12345)      // cursor: 16 KiB, stride ignored
    }))
    return cases
}()

fileprivate extension CommandScannerTests {
    @Test(arguments: acceptCases)
    func accepts(_ c: AcceptCase) throws {
        let gm = GuestGM()
        let r = c.submission.run(gm)
        let s = try #require(r.accepted, "\(r.rejection.map { "\($0)" } ?? "")")
        #expect(s.commandCount == c.commands)
        #expect(s.buffers.count == c.buffers)
        #expect(s.buffers[0].level == 0)
        #expect(s.buffers[0].sourceGM == c.submission.ringStart + UInt64(c.submission.head))
    }

    @Test func ringCopyIsTheFragmentFromHeadToTail() throws {
        var sub = Submission(ring: cmds { $0.storeDataImm(gm: L.d, 1); $0.userInterrupt(); $0.noop() })
        sub.head = 0x100
        let gm = GuestGM()
        let s = try #require(sub.run(gm).accepted)
        #expect(s.buffers[0].dwords == sub.ring.dwords)
        #expect(s.buffers[0].sourceGM == L.ring + 0x100)
        #expect(gm.reads == [GuestGM.Read(gm: L.ring + 0x100, count: 6)])
    }
}

// MARK: - Rejected submissions

fileprivate struct RejectCase: Sendable, CustomTestStringConvertible {
    let name: String
    let submission: Submission
    let reason: RejectReason
    let gm: UInt64
    let level: Int
    let operand: UInt64
    let header: UInt32?
    var testDescription: String { "\(reason): \(name)" }
}

fileprivate let rejectCases: [RejectCase] = {
    var cases: [RejectCase] = []
    func add(_ name: String, _ reason: RejectReason, gm: UInt64, level: Int = 0, operand: UInt64 = 0,
             header: UInt32? = nil, _ s: Submission) {
        cases.append(RejectCase(name: name, submission: s, reason: reason, gm: gm, level: level, operand: operand, header: header))
    }
    let R = L.ring, A = L.a, B = L.b, C = L.c
    func bbs(_ gm: UInt64, _ len: UInt32 = 4, second: Bool = false) -> CommandBuilder {
        cmds { $0.batchBufferStart(gm: gm, length: len, secondLevel: second) }
    }
    // unknownCommand
    add("reserved client in the ring", .unknownCommand, gm: R + 4, header: 0x2000_0000,
        Submission(ring: cmds { $0.noop(); $0.raw([0x2000_0000]) }))
    add("unknown MI opcode in a second-level batch", .unknownCommand, gm: B + 8, level: 2, header: 0x0080_0000,
        Submission(ring: bbs(A, 24),
                   batches: [Batch(A) { $0.batchBufferStart(gm: B, length: 12, secondLevel: true); $0.noop(); $0.batchBufferEnd() },
                             Batch(B) { $0.noop(); $0.noop(); $0.raw([0x0080_0000]) }]))
    // notAllowedOnEngine
    add("SAXPY on BCS", .notAllowedOnEngine, gm: R, header: header(.saxpy),
        Submission(engine: .bcs, ring: cmds { $0.saxpy(n: 1, a: 1, x: L.d, y: L.d) }))
    add("COLOR_BLT on RCS in a batch", .notAllowedOnEngine, gm: A + 4, level: 1, header: header(.colorBlt),
        Submission(engine: .rcs, ring: bbs(A, 64),
                   batches: [Batch(A) { $0.noop(); $0.colorBlt(dst: BlitSurface(gm: L.d, pitch: 256, width: 1, height: 1), x1: 0, y1: 0, x2: 1, y2: 1, color: 0) }]))
    // invalidLength
    add("LOAD_REGISTER_IMM with an even length", .invalidLength, gm: R, operand: 4, header: 0x1100_0002,
        Submission(ring: cmds { $0.raw([0x1100_0002, Reg.scratch(0), 1, 0]) }))
    add("STORE_DATA_IMM of 6 dwords", .invalidLength, gm: R + 4, operand: 6, header: 0x1000_0004,
        Submission(ring: cmds { $0.noop(); $0.raw([0x1000_0004, UInt32(L.d), 0, 1, 2, 3]) }))
    // pastEnd
    add("ring command past the tail", .pastEnd, gm: R + 8, operand: 16, header: header(.storeDataImm, dwords: 4),
        Submission(ring: cmds { $0.noop(); $0.noop(); $0.raw([header(.storeDataImm, dwords: 4), UInt32(L.d)]) }))
    add("batch command straddling the batch end", .pastEnd, gm: A + 4, level: 1, operand: 16,
        header: header(.storeDataImm, dwords: 4),
        Submission(ring: bbs(A, 8), batches: [Batch(A) { $0.noop(); $0.storeDataImm(gm: L.d, 1) }]))
    add("batch without BATCH_BUFFER_END", .pastEnd, gm: A + 8, level: 1, operand: 8, header: 0,
        Submission(ring: bbs(A, 8), batches: [Batch(A) { $0.noop(); $0.noop(); $0.batchBufferEnd() }]))
    // addressOutsideSlices
    add("STORE_DATA_IMM to GM 0", .addressOutsideSlices, gm: R, operand: 0,
        Submission(ring: cmds { $0.storeDataImm(gm: 0, 1) }))
    add("qword store straddling the aperture slice end", .addressOutsideSlices, gm: R, operand: L.apEnd - 4,
        Submission(ring: cmds { $0.storeDataImm(gm: L.apEnd - 4, qword: 1) }))
    add("SAXPY y past the hidden slice", .addressOutsideSlices, gm: R + 4, operand: L.hEnd - 32,
        Submission(ring: cmds { $0.noop(); $0.saxpy(n: 16, a: 1, x: L.d, y: L.hEnd - 32) }))
    add("SGEMM C between the slices", .addressOutsideSlices, gm: R, operand: L.outside,
        Submission(ring: cmds { $0.sgemm(m: 2, n: 2, k: 2, alpha: 1, beta: 1, a: L.d, lda: 2, b: L.d, ldb: 2, c: L.outside, ldc: 2) }))
    add("SRC_COPY_BLT source outside", .addressOutsideSlices, gm: R, operand: L.outside,
        Submission(engine: .bcs, ring: cmds {
            $0.srcCopyBlt(dst: BlitSurface(gm: L.d, pitch: 64, width: 16, height: 4), x1: 0, y1: 0, x2: 4, y2: 4,
                          src: BlitSurface(gm: L.outside, pitch: 64, width: 16, height: 4), srcX: 0, srcY: 0)
        }))
    add("FLUSH post-sync outside", .addressOutsideSlices, gm: R, operand: L.outside,
        Submission(ring: cmds { $0.flush(postSync: (L.outside, 1)) }))
    add("batch outside the slices", .addressOutsideSlices, gm: R, operand: L.outside, header: header(.batchBufferStart),
        Submission(ring: bbs(L.outside, 64)))
    add("batch straddling the slice end", .addressOutsideSlices, gm: A, level: 1, operand: L.apEnd - 8,
        Submission(ring: bbs(A, 16), batches: [Batch(A) { $0.batchBufferStart(gm: L.apEnd - 8, length: 16, secondLevel: true) }]))
    add("primary flip extent (stride x PRI_SIZE height) past the slice", .addressOutsideSlices, gm: R, operand: L.hEnd - 0x1F000,
        Submission(ring: cmds { $0.displayFlip(plane: .primary, gm: L.hEnd - 0x1F000, stride: 4096) }))
    add("cursor flip past the slice", .addressOutsideSlices, gm: R, operand: L.apEnd - 0x3000,
        Submission(ring: cmds { $0.displayFlip(plane: .cursor, gm: L.apEnd - 0x3000) }))
    // registerNotAllowed
    add("LOAD_REGISTER_IMM of RING_TAIL", .registerNotAllowed, gm: R, operand: UInt64(Reg.ringTail(.rcs)),
        Submission(ring: cmds { $0.loadRegisterImm([(Reg.scratch(1), 1), (Reg.ringTail(.rcs), 0)]) }))
    add("LOAD_REGISTER_IMM of a display register the policy refuses", .registerNotAllowed, gm: A, level: 1,
        operand: UInt64(Reg.priSurf),
        Submission(ring: bbs(A, 16), batches: [Batch(A) { $0.loadRegisterImm([(Reg.priSurf, 0)]) }]))
    // nestingTooDeep
    add("chain inside a second-level batch", .nestingTooDeep, gm: B, level: 2, operand: C,
        Submission(ring: bbs(A, 16), batches: [Batch(A) { $0.batchBufferStart(gm: B, length: 16, secondLevel: true) },
                                             Batch(B) { $0.batchBufferStart(gm: C, length: 4) },
                                             Batch(C) { $0.batchBufferEnd() }]))
    add("call inside a second-level batch", .nestingTooDeep, gm: B + 4, level: 2, operand: C,
        Submission(ring: bbs(A, 16), batches: [Batch(A) { $0.batchBufferStart(gm: B, length: 20, secondLevel: true) },
                                             Batch(B) { $0.noop(); $0.batchBufferStart(gm: C, length: 4, secondLevel: true) },
                                             Batch(C) { $0.batchBufferEnd() }]))
    add("second-level call with maxBatchLevel 1", .nestingTooDeep, gm: A, level: 1, operand: B,
        Submission(ring: bbs(A, 16), batches: [Batch(A) { $0.batchBufferStart(gm: B, length: 4, secondLevel: true) },
                                              Batch(B) { $0.batchBufferEnd() }],
                   limits: ScanLimits(maxBatchLevel: 1)))
    add("maxBatchLevel above 2 acts as 2", .nestingTooDeep, gm: B, level: 2, operand: C,
        Submission(ring: bbs(A, 16), batches: [Batch(A) { $0.batchBufferStart(gm: B, length: 16, secondLevel: true) },
                                             Batch(B) { $0.batchBufferStart(gm: C, length: 4, secondLevel: true) },
                                             Batch(C) { $0.batchBufferEnd() }],
                   limits: ScanLimits(maxBatchLevel: 5)))
    // tooManyBatches
    add("65 batches from the ring", .tooManyBatches, gm: R + 64 * 16, operand: A,
        Submission(ring: cmds { for _ in 0..<65 { $0.batchBufferStart(gm: A, length: 4) } },
                   batches: [Batch(A) { $0.batchBufferEnd() }]))
    add("endless chain", .tooManyBatches, gm: A, level: 1, operand: A,
        Submission(ring: bbs(A, 16), batches: [Batch(A) { $0.batchBufferStart(gm: A, length: 16) }]))
    add("total batch bytes", .tooManyBatches, gm: R + 16, operand: B,
        Submission(ring: cmds { $0.batchBufferStart(gm: A, length: 64); $0.batchBufferStart(gm: B, length: 64) },
                   batches: [Batch(A) { $0.batchBufferEnd() }, Batch(B) { $0.batchBufferEnd() }],
                   limits: ScanLimits(maxTotalBatchBytes: 100)))
    // stepBudget
    add("more commands than maxCommands", .stepBudget, gm: R + 40, operand: 10, header: L.noop,
        Submission(ring: cmds { $0.noop(count: 12) }, limits: ScanLimits(maxCommands: 10)))
    add("default budget, one over", .stepBudget, gm: A + 65535 * 4, level: 1, operand: 65536,
        header: header(.batchBufferEnd),
        Submission(ring: bbs(A, 65536 * 4), batches: [Batch(A) { $0.noop(count: 65535); $0.batchBufferEnd() }]))
    // invalidOperand
    add("BATCH_BUFFER_END in the ring", .invalidOperand, gm: R + 4, header: header(.batchBufferEnd),
        Submission(ring: cmds { $0.noop(); $0.batchBufferEnd() }))
    add("second-level start from the ring", .invalidOperand, gm: R, operand: A,
        header: header(.batchBufferStart) | CommandHeader.batchSecondLevel,
        Submission(ring: bbs(A, 4, second: true), batches: [Batch(A) { $0.batchBufferEnd() }]))
    add("batch length 0", .invalidOperand, gm: R, operand: 0, Submission(ring: bbs(A, 0)))
    add("batch length not a multiple of 4", .invalidOperand, gm: R, operand: 6, Submission(ring: bbs(A, 6)))
    add("batch length over 16 MiB", .invalidOperand, gm: R, operand: (16 << 20) + 4, Submission(ring: bbs(A, (16 << 20) + 4)))
    add("batch length over maxBatchBytes", .invalidOperand, gm: R, operand: 8192,
        Submission(ring: bbs(A, 8192), limits: ScanLimits(maxBatchBytes: 4096)))
    add("misaligned batch address", .invalidOperand, gm: R, operand: A + 2, Submission(ring: bbs(A + 2, 4)))
    add("flip of plane 2", .invalidOperand, gm: R, operand: 2,
        Submission(ring: cmds { $0.raw([header(.displayFlip) | (2 << 20), 256, UInt32(L.d), 0]) }))
    add("flip stride not a multiple of 4", .invalidOperand, gm: R, operand: 258,
        Submission(ring: cmds { $0.displayFlip(plane: .primary, gm: L.d, stride: 258) }))
    add("flip stride below PRI_SIZE width x 4", .invalidOperand, gm: R, operand: 252,
        Submission(ring: cmds { $0.displayFlip(plane: .primary, gm: L.d, stride: 252) }))
    add("flip surface not page aligned", .invalidOperand, gm: R, operand: L.d + 64,
        Submission(ring: cmds { $0.displayFlip(plane: .cursor, gm: L.d + 64) }))
    add("misaligned STORE_DATA_IMM", .invalidOperand, gm: R, operand: L.d + 2,
        Submission(ring: cmds { $0.storeDataImm(gm: L.d + 2, 1) }))
    add("COLOR_BLT pitch below width x 4", .invalidOperand, gm: R, operand: 0,
        Submission(engine: .bcs, ring: cmds { $0.colorBlt(dst: BlitSurface(gm: L.d, pitch: 16, width: 8, height: 1), x1: 0, y1: 0, x2: 1, y2: 1, color: 0) }))
    add("SGEMM lda below K", .invalidOperand, gm: R, operand: 0,
        Submission(ring: cmds { $0.sgemm(m: 2, n: 2, k: 4, alpha: 1, beta: 1, a: L.d, lda: 3, b: L.d, ldb: 2, c: L.d, ldc: 2) }))
    // badRing
    add("ring start not page aligned", .badRing, gm: R + 4, operand: R + 4, header: 0, Submission(ringStart: R + 4))
    add("ring outside the slices", .badRing, gm: L.outside, operand: L.outside, Submission(ringStart: L.outside))
    add("ring straddling the slice end", .badRing, gm: L.apEnd - 0x1000, operand: L.apEnd - 0x1000,
        Submission(ringStart: L.apEnd - 0x1000, ringBytes: 0x2000))
    add("ring size 0", .badRing, gm: R, operand: 0, Submission(ringBytes: 0, tail: 0))
    add("ring size not whole pages", .badRing, gm: R, operand: 6000, Submission(ringBytes: 6000))
    add("ring larger than 2 MiB", .badRing, gm: R, operand: 4 << 20, Submission(ringBytes: 4 << 20))
    add("head not dword aligned", .badRing, gm: R + 2, operand: 2, Submission(head: 2, tail: 0))
    add("head outside the ring", .badRing, gm: R + 0x4000, operand: 0x4000, Submission(head: 0x4000, tail: 0))
    add("tail not qword aligned", .badRing, gm: R, operand: 4, Submission(tail: 4))
    add("tail outside the ring", .badRing, gm: R, operand: 0x4000, Submission(tail: 0x4000))
    // unreadable
    add("unreadable batch", .unreadable, gm: R + 8, operand: A, header: header(.batchBufferStart),
        Submission(ring: cmds { $0.noop(); $0.noop(); $0.batchBufferStart(gm: A, length: 64) },
                   unreadable: [A + 60..<A + 64]))
    add("unreadable ring", .unreadable, gm: R + 8, operand: R + 8,
        Submission(ring: cmds { $0.noop() }, head: 8, unreadable: [R..<R + 0x4000]))
    add("unreadable second piece of a wrapped ring", .unreadable, gm: R + 0x3FF8, operand: R,
        Submission(ring: cmds { $0.noop(count: 4) }, head: 0x3FF8, unreadable: [R..<R + 4]))
    return cases
}()

fileprivate extension CommandScannerTests {
    @Test func everyReasonHasARejectionCase() {
        #expect(Set(rejectCases.map(\.reason)) == Set(RejectReason.allCases))
    }

    @Test(arguments: rejectCases)
    func rejects(_ c: RejectCase) throws {
        let r = c.submission.run()
        let e = try #require(r.rejection, "accepted")
        #expect(e.reason == c.reason, "\(e)")
        #expect(e.engine == c.submission.engine)
        #expect(e.commandGM == c.gm, "commandGM 0x\(String(e.commandGM, radix: 16)): \(e)")
        #expect(e.level == c.level, "\(e)")
        #expect(e.operand == c.operand, "operand 0x\(String(e.operand, radix: 16)): \(e)")
        if let h = c.header { #expect(e.header == h, "header 0x\(String(e.header, radix: 16))") }
        #expect(e.description.contains("reason \(c.reason.rawValue)"))
        #expect(e.description.contains(String(c.gm, radix: 16)))
    }

    @Test func policyCannotOpenRegistersOutsideTheHardwareWhitelist() throws {
        let s = makeScanner(policy: { _ in true })
        let sub = Submission(ring: cmds { $0.loadRegisterImm([(Reg.ier, 1)]) })
        let e = try #require(sub.run(scanner: s).rejection)
        #expect(e.reason == .registerNotAllowed && e.operand == UInt64(Reg.ier))
        // A display register is hardware-writable: the permissive policy lets it through.
        let ok = Submission(ring: cmds { $0.loadRegisterImm([(Reg.priSurf, 0)]) })
        #expect(ok.run(scanner: s).accepted != nil)
    }

    /// A scan remembers command-load decisions per register: a refused register that shares a memo slot
    /// with an allowed one loaded earlier (and the reverse) is still decided by its own offset.
    @Test func commandLoadDecisionsAreRememberedPerRegister() throws {
        let allowed = Reg.gpr(.rcs, dword: 0), refused = Reg.gpr(.rcs, dword: 16)   // 0x40 apart: same memo slot
        let s = makeScanner(policy: { $0 != refused })
        for order in [[allowed, allowed, refused], [refused, allowed]] {
            let sub = Submission(ring: cmds { b in for r in order { b.loadRegisterImm([(r, 1)]) } })
            let e = try #require(sub.run(scanner: s).rejection, "\(order)")
            #expect(e.reason == .registerNotAllowed && e.operand == UInt64(refused), "\(order): \(e)")
        }
        let ok = Submission(ring: cmds { $0.loadRegisterImm([(allowed, 1)]); $0.loadRegisterImm([(allowed, 2), (Reg.gpr(.rcs, dword: 1), 3)]) })
        #expect(ok.run(scanner: s).accepted != nil)
    }

    @Test func shortReadIsUnreadable() throws {
        let sub = Submission(ring: cmds { $0.batchBufferStart(gm: L.a, length: 64) })
        let gm = GuestGM()
        let t = sub.place(in: gm)
        let r = makeScanner().scan(engine: .rcs, ringStart: L.ring, ringBytes: L.ringBytes, head: 0, tail: t) { a, n in
            let d = gm.read(a, n)
            return a == L.a ? d.map { Array($0.dropLast()) } : d
        }
        let e = try #require(r.rejection)
        #expect(e.reason == .unreadable && e.operand == L.a && e.commandGM == L.ring)
    }
}

// MARK: - Ring wrap-around

fileprivate extension CommandScannerTests {
    @Test func wrappedFragmentIsCopiedInOrder() throws {
        // One-page ring; head two dwords before the end, so STORE_DATA_IMM straddles the wrap.
        var sub = Submission(ring: cmds { $0.storeDataImm(gm: L.d, 0xAB); $0.userInterrupt(); $0.noop() })
        sub.ringBytes = 0x1000
        sub.head = 0xFF8
        let gm = GuestGM()
        let s = try #require(sub.run(gm).accepted)
        #expect(s.buffers[0].dwords == sub.ring.dwords)
        #expect(s.buffers[0].sourceGM == L.ring + 0xFF8)
        #expect(s.commandCount == 3)
        #expect(gm.reads == [GuestGM.Read(gm: L.ring + 0xFF8, count: 2), GuestGM.Read(gm: L.ring, count: 4)])
    }

    @Test func wrappedFragmentReportsWrappedAddresses() throws {
        var sub = Submission(ring: cmds { $0.noop(count: 3); $0.raw([0xE000_0000]) })
        sub.ringBytes = 0x1000
        sub.head = 0xFF8
        let e = try #require(sub.run().rejection)
        #expect(e.reason == .unknownCommand)
        #expect(e.commandGM == L.ring + 4)     // fragment dword 3 = ring offset (0xFF8 + 12) % 0x1000
    }

    @Test func batchStartStraddlingTheWrapIsRelocatedInFragmentCoordinates() throws {
        var sub = Submission(ring: cmds { $0.noop(); $0.batchBufferStart(gm: L.a, length: 4); $0.noop() },
                             batches: [Batch(L.a) { $0.batchBufferEnd() }])
        sub.ringBytes = 0x1000
        sub.head = 0xFF8
        let s = try #require(sub.run().accepted)
        #expect(s.buffers[0].relocations == [Relocation(dword: 2, target: 1)])
        #expect(s.buffers.count == 2 && s.buffers[1].sourceGM == L.a)
    }

    @Test func commandPastTailAcrossTheWrap() throws {
        var sub = Submission(ring: cmds { $0.raw([header(.storeDataImm, dwords: 5), UInt32(L.d), 0, 1]) })
        sub.ringBytes = 0x1000
        sub.head = 0xFF8
        let e = try #require(sub.run().rejection)
        #expect(e.reason == .pastEnd && e.commandGM == L.ring + 0xFF8 && e.operand == 20)
    }
}

// MARK: - Relocations and chains

fileprivate extension CommandScannerTests {
    @Test func relocationsForFirstAndSecondLevelBatches() throws {
        let a = Batch(L.a) {
            $0.noop()
            $0.batchBufferStart(gm: L.b, length: 12, secondLevel: true)
            $0.storeDataImm(gm: L.d, 1)
            $0.batchBufferEnd()
        }
        let b = Batch(L.b) { $0.noop(); $0.noop(); $0.batchBufferEnd() }
        let sub = Submission(ring: cmds {
            $0.noop()
            $0.batchBufferStart(gm: L.a, length: a.length)
            $0.noop()
            $0.batchBufferStart(gm: L.a, length: a.length)    // the same batch again: a second copy
        }, batches: [a, b])
        let s = try #require(sub.run().accepted)
        #expect(s.buffers.map(\.level) == [0, 1, 2, 1, 2])
        #expect(s.buffers.map(\.sourceGM) == [L.ring, L.a, L.b, L.a, L.b])
        #expect(s.buffers[0].relocations == [Relocation(dword: 2, target: 1), Relocation(dword: 7, target: 3)])
        #expect(s.buffers[1].relocations == [Relocation(dword: 2, target: 2)])
        #expect(s.buffers[3].relocations == [Relocation(dword: 2, target: 4)])
        #expect(s.buffers[2].relocations.isEmpty && s.buffers[4].relocations.isEmpty)
        #expect(s.buffers[1].dwords == a.commands.dwords && s.buffers[2].dwords == b.commands.dwords)
        #expect(s.commandCount == 4 + 2 * (4 + 3))   // ring 4; per A copy: 4 in A, 3 in B
        // Every relocation's dword holds the guest's address of the batch it points to.
        for buf in s.buffers {
            for r in buf.relocations {
                let target = s.buffers[r.target]
                #expect(UInt64(buf.dwords[r.dword]) | UInt64(buf.dwords[r.dword + 1]) << 32 == target.sourceGM)
                #expect(Int(buf.dwords[r.dword + 2]) == target.dwords.count * 4)
            }
        }
    }

    @Test func chainReplacesTheCurrentBatch() throws {
        let sub = Submission(
            ring: cmds { $0.batchBufferStart(gm: L.a, length: 64); $0.storeDataImm(gm: L.d, 1) },
            batches: [
                Batch(L.a) {
                    $0.noop()
                    $0.batchBufferStart(gm: L.b, length: 4, secondLevel: true)   // call
                    $0.batchBufferStart(gm: L.c, length: 8)                      // chain: A is done
                    $0.raw([0xE000_0000, 0xFFFF_FFFF])                           // never reached
                },
                Batch(L.b) { $0.batchBufferEnd() },
                Batch(L.c) { $0.noop(); $0.batchBufferEnd() },                   // returns to the ring
            ])
        let s = try #require(sub.run().accepted, "\(sub.run().rejection.map { "\($0)" } ?? "")")
        #expect(s.buffers.map(\.level) == [0, 1, 2, 1])
        #expect(s.buffers.map(\.sourceGM) == [L.ring, L.a, L.b, L.c])
        #expect(s.buffers[1].relocations == [Relocation(dword: 2, target: 2), Relocation(dword: 6, target: 3)])
        #expect(s.buffers[1].dwords.count == 16)
        #expect(s.commandCount == 8)
    }

    @Test func chainWithinACalledBatchIsTooDeepButChainAfterReturnIsFine() throws {
        // A calls B (level 2) which returns; then A chains to C, which chains to B (still level 1).
        let sub = Submission(ring: cmds { $0.batchBufferStart(gm: L.a, length: 32) },
                             batches: [Batch(L.a) { $0.batchBufferStart(gm: L.b, length: 4, secondLevel: true); $0.batchBufferStart(gm: L.c, length: 16) },
                                       Batch(L.b) { $0.batchBufferEnd() },
                                       Batch(L.c) { $0.batchBufferStart(gm: L.b, length: 4) }])
        let s = try #require(sub.run().accepted)
        #expect(s.buffers.map(\.level) == [0, 1, 2, 1, 1])
        #expect(s.buffers[3].relocations == [Relocation(dword: 1, target: 4)])
    }
}

// MARK: - Time of check / time of use

fileprivate extension CommandScannerTests {
    @Test func scansOnlyTheCopies() throws {
        let a = Batch(L.a) { $0.storeDataImm(gm: L.d, 1); $0.batchBufferEnd() }
        let sub = Submission(ring: cmds { $0.batchBufferStart(gm: L.a, length: a.length); $0.storeDataImm(gm: L.d + 8, 2) },
                             batches: [a])
        let gm = GuestGM()
        let original = sub.ring.dwords
        // The guest rewrites everything the moment it has been copied.
        gm.afterRead = { g, r in
            for i in 0..<r.count { g.poke(r.gm + UInt64(i) * 4, 0xE000_0000) }
        }
        let s = try #require(sub.run(gm).accepted)
        #expect(gm.reads == [GuestGM.Read(gm: L.ring, count: 8), GuestGM.Read(gm: L.a, count: 5)])
        #expect(s.buffers[0].dwords == original)
        #expect(s.buffers[1].dwords == a.commands.dwords)
        // Later changes to guest memory do not change the result.
        let before = s.buffers
        gm.write(L.a, [0xFFFF_FFFF, 0xFFFF_FFFF])
        gm.write(L.ring, [0xFFFF_FFFF])
        #expect(s.buffers == before)
    }

    @Test func everyCopyIsScannedOnItsOwn() throws {
        // The same batch is started twice; the guest corrupts it after the first copy. The first copy is
        // fine, the second copy is what would run second, and it is rejected.
        let a = Batch(L.a) { $0.noop(); $0.batchBufferEnd() }
        let sub = Submission(ring: cmds { $0.batchBufferStart(gm: L.a, length: 8); $0.batchBufferStart(gm: L.a, length: 8) },
                             batches: [a])
        let gm = GuestGM()
        gm.afterRead = { g, r in if r.gm == L.a { g.poke(L.a, 0xE000_0000) } }
        let e = try #require(sub.run(gm).rejection)
        #expect(e.reason == .unknownCommand && e.commandGM == L.a && e.level == 1)
        #expect(gm.reads.filter { $0.gm == L.a }.count == 2)
    }
}

// MARK: - Flips

fileprivate extension CommandScannerTests {
    @Test func flipsAreRecordedAndReplacedByNoops() throws {
        let a = Batch(L.a) { $0.displayFlip(plane: .cursor, gm: L.d + 0x4000); $0.batchBufferEnd() }
        let sub = Submission(ring: cmds {
            $0.displayFlip(plane: .primary, gm: L.d, stride: 256)
            $0.storeDataImm(gm: L.d + 0x8000, 5)
            $0.batchBufferStart(gm: L.a, length: a.length)
        }, batches: [a])
        let s = try #require(sub.run().accepted)
        #expect(s.flips == [Flip(plane: 0, surface: L.d, stride: 256), Flip(plane: 1, surface: L.d + 0x4000, stride: 0)])
        #expect(Array(s.buffers[0].dwords[0..<4]) == [L.noop, L.noop, L.noop, L.noop])
        #expect(Array(s.buffers[0].dwords[4...]) == Array(sub.ring.dwords[4...]))
        #expect(Array(s.buffers[1].dwords[0..<4]) == [L.noop, L.noop, L.noop, L.noop])
        #expect(s.buffers[1].dwords[4] == header(.batchBufferEnd))
        #expect(s.commandCount == 5)
        // The shadow holds only commands the executor's table accepts.
        for d in s.buffers[0].dwords[0..<4] { #expect(CommandTable.decode(d)?.kind == .noop) }
    }

    @Test func flipExtentUsesPrimaryHeight() throws {
        func flip(_ gm: UInt64, priSize: UInt32) -> Result<ScannedSubmission, ScanRejection> {
            Submission(ring: cmds { $0.displayFlip(plane: .primary, gm: gm, stride: 4096) }).run(scanner: makeScanner(priSize: priSize))
        }
        // 4096 x 32 rows = 128 KiB
        #expect(flip(L.hEnd - 0x20000, priSize: L.priSize).accepted != nil)
        #expect(flip(L.hEnd - 0x1F000, priSize: L.priSize).rejection?.reason == .addressOutsideSlices)
        // height 0 counts as one row
        #expect(flip(L.hEnd - 0x1000, priSize: 64).accepted != nil)
    }

    @Test func loadedPrimarySizeAppliesToLaterFlips() throws {
        let s = makeScanner(policy: { _ in true })
        // Without the load the flip fits (32 rows); after loading 64 rows it does not.
        let fits = Submission(ring: cmds { $0.displayFlip(plane: .primary, gm: L.hEnd - 0x20000, stride: 4096) })
        #expect(fits.run(scanner: s).accepted != nil)
        let grown = Submission(ring: cmds {
            $0.loadRegisterImm([(Reg.priSize, (64 << 16) | 64)])
            $0.displayFlip(plane: .primary, gm: L.hEnd - 0x20000, stride: 4096)
        })
        let e = try #require(grown.run(scanner: s).rejection)
        #expect(e.reason == .addressOutsideSlices && e.commandGM == L.ring + 12)
        let wide = Submission(ring: cmds {
            $0.loadRegisterImm([(Reg.priSize, (1 << 16) | 2048)])
            $0.displayFlip(plane: .primary, gm: L.d, stride: 4096)
        })
        #expect(wide.run(scanner: s).rejection?.reason == .invalidOperand)
    }
}

// MARK: - Fuzzing


/// Generates mostly plausible command streams (valid commands, addresses mostly in the slices, batch
/// starts to known batches), so that fuzzing reaches deep into the scanner, plus random dwords.
fileprivate struct StreamGen {
    var rng: SplitMix64
    let slices: GMSlices
    /// Batches (GM, length in dwords) that batch starts point to.
    var batches: [(gm: UInt64, dwords: Int)] = []
    /// How often invalid choices (random dwords and addresses, commands of the other engine, registers
    /// outside the whitelist) are kept; otherwise they become NOOPs or valid choices.
    var noise = 1.0

    init(seed: UInt64, slices: GMSlices) {
        rng = SplitMix64(state: seed)
        self.slices = slices
    }

    mutating func int(_ r: ClosedRange<Int>) -> Int { Int.random(in: r, using: &rng) }
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    mutating func u32() -> UInt32 { UInt32.random(in: .min ... .max, using: &rng) }

    mutating func address(align: UInt64 = 4, room: UInt64 = 0x4000) -> UInt64 {
        let s = int(0...19) < 10 ? slices.aperture : slices.hidden
        switch chance(noise) ? int(0...19) : 2 {
        case 0: return UInt64(u32()) & ~(align - 1)
        case 1: return (s.upperBound - UInt64(int(0...64)) * 4) & ~(align - 1)     // near the end
        default:
            let span = (s.upperBound - s.lowerBound - room) / align
            return s.lowerBound + UInt64.random(in: 0...span, using: &rng) * align
        }
    }

    mutating func register(_ e: EngineID) -> UInt32 {
        switch chance(noise) ? int(0...9) : 3 {
        case 0: return Reg.priSurf
        case 1: return Reg.ringTail(e)
        case 2: return u32() & ~3
        case 3, 4: return Reg.gpr(e, dword: UInt32(int(0...31)))
        default: return Reg.scratch(UInt32(int(0...63)))
        }
    }

    mutating func command(_ e: EngineID, level: Int) -> [UInt32] {
        var b = CommandBuilder()
        var pick = int(0...19)
        let otherEngine = e == .rcs ? (11...12).contains(pick) : (13...16).contains(pick)
        if (otherEngine || pick >= 18) && !chance(noise) { pick = 0 }
        switch pick {
        case 0, 1: b.noop()
        case 2: b.userInterrupt()
        case 3: b.storeDataImm(gm: address(), u32())
        case 4: b.storeDataImm(gm: address(), qword: UInt64(u32()))
        case 5: b.loadRegisterImm((0..<int(1...3)).map { _ in (register(e), u32()) })
        case 6: b.flush(postSync: chance(0.5) ? (address(), u32()) : nil, notify: chance(0.5))
        case 7:
            if chance(0.5) { b.displayFlip(plane: .primary, gm: address(align: 4096, room: 0x10000), stride: chance(0.9) ? 256 : u32()) }
            else { b.displayFlip(plane: .cursor, gm: address(align: 4096, room: 0x10000)) }
        case 8, 9, 10:
            if batches.isEmpty || level >= 2 { b.noop(); break }
            let t = batches[int(0...(batches.count - 1))]
            let len = chance(0.8) ? UInt32(t.dwords * 4) : UInt32(int(1...64) * 4)
            b.batchBufferStart(gm: t.gm, length: len, secondLevel: level == 1 ? chance(0.5) : chance(0.05))
        case 11, 12:
            let s = BlitSurface(gm: address(room: 256 * 64), pitch: chance(0.9) ? 256 : u32() & 0x3FF,
                                width: UInt16(int(0...64)), height: UInt16(int(0...64)))
            if chance(0.5) {
                b.colorBlt(dst: s, x1: int(-8...70), y1: int(-8...70), x2: int(-8...70), y2: int(-8...70), color: u32())
            } else {
                let src = BlitSurface(gm: address(room: 256 * 64), pitch: 256, width: UInt16(int(0...64)), height: UInt16(int(0...64)))
                b.srcCopyBlt(dst: s, x1: int(-8...70), y1: int(-8...70), x2: int(-8...70), y2: int(-8...70),
                             src: src, srcX: int(-8...70), srcY: int(-8...70))
            }
        case 13, 14: b.saxpy(n: UInt32(int(0...1024)), a: 0.5, x: address(), y: address())
        case 15, 16:
            let m = UInt32(int(0...8)), n = UInt32(int(0...8)), k = UInt32(int(0...8))
            b.sgemm(m: m, n: n, k: k, alpha: 1, beta: 0.5, a: address(), lda: k + UInt32(int(0...1)),
                    b: address(), ldb: n, c: address(), ldc: n + UInt32(int(0...2)))
        case 17: if level > 0 { b.batchBufferEnd() } else { b.noop() }
        default: b.raw([u32()])
        }
        return b.dwords
    }

    /// About `count` dwords of commands; batches end in BATCH_BUFFER_END (or a chain) and are padded to
    /// exactly `count` dwords.
    mutating func stream(_ e: EngineID, level: Int, count: Int) -> [UInt32] {
        var d: [UInt32] = []
        while true {
            var c = command(e, level: level)
            if c.isEmpty { c = [0] }
            if d.count + c.count > count - (level > 0 ? 1 : 0) { break }
            d += c
        }
        if level > 0 {
            while d.count < count - 1 { d.append(L.noop) }
            d.append(header(.batchBufferEnd))
        } else {
            while d.count < count { d.append(L.noop) }
        }
        return d
    }

    mutating func mutate(_ d: inout [UInt32]) {
        guard !d.isEmpty else { return }
        for _ in 0..<int(1...3) {
            let i = int(0...(d.count - 1))
            switch int(0...2) {
            case 0: d[i] ^= 1 << UInt32(int(0...31))
            case 1: d[i] = u32()
            default: d[i] = UInt32(truncatingIfNeeded: Int(d[i]) &+ int(-2...2))
            }
        }
    }
}

/// Structural invariants of an accepted submission.
fileprivate func checkInvariants(_ s: ScannedSubmission, limits: ScanLimits = ScanLimits()) {
    #expect(s.buffers.first?.level == 0)
    #expect(s.buffers.count - 1 <= limits.maxBatches)
    #expect(s.commandCount <= limits.maxCommands)
    var targeted = [Int](repeating: 0, count: s.buffers.count)
    for (i, buf) in s.buffers.enumerated() {
        #expect((0...2).contains(buf.level))
        if i > 0 {
            #expect(buf.level >= 1)
            #expect(L.slices.contains(buf.sourceGM, length: UInt64(buf.dwords.count) * 4))
        }
        for r in buf.relocations {
            #expect(r.dword >= 1 && r.dword + 2 < buf.dwords.count)
            #expect(r.target > i && r.target < s.buffers.count)
            guard r.dword >= 1, r.dword + 2 < buf.dwords.count, r.target < s.buffers.count else { continue }
            targeted[r.target] += 1
            #expect(CommandTable.decode(buf.dwords[r.dword - 1])?.kind == .batchBufferStart)
            let t = s.buffers[r.target]
            #expect(UInt64(buf.dwords[r.dword]) | UInt64(buf.dwords[r.dword + 1]) << 32 == t.sourceGM)
            #expect(Int(buf.dwords[r.dword + 2]) == t.dwords.count * 4)
        }
    }
    #expect(targeted.dropFirst().allSatisfy { $0 == 1 })
}

fileprivate extension CommandScannerTests {
    @Test func randomDwordsNeverCrash() {
        var rng = SplitMix64(state: 0x5EED)
        let scanner = makeScanner()
        var outcomes = [0, 0]
        for _ in 0..<3000 {
            let gm = GuestGM()
            let ringBytes: UInt32 = 0x1000
            gm.write(L.ring, (0..<1024).map { _ in UInt32.random(in: .min ... .max, using: &rng) })
            // Sometimes plausible geometry, sometimes anything.
            let head = Bool.random(using: &rng) ? UInt32.random(in: 0..<1024, using: &rng) * 4 : UInt32.random(in: .min ... .max, using: &rng)
            let tail = Bool.random(using: &rng) ? UInt32.random(in: 0..<512, using: &rng) * 8 : UInt32.random(in: .min ... .max, using: &rng)
            let start = Int.random(in: 0..<8, using: &rng) == 0 ? UInt64.random(in: .min ... .max, using: &rng) : L.ring
            let r = scanner.scan(engine: Bool.random(using: &rng) ? .rcs : .bcs, ringStart: start, ringBytes: ringBytes,
                                 head: head, tail: tail, read: gm.read)
            switch r {
            case .success(let s): outcomes[0] += 1; checkInvariants(s)
            case .failure(let e): outcomes[1] += 1; #expect((0...2).contains(e.level))
            }
        }
        #expect(outcomes[0] + outcomes[1] == 3000)
    }

    @Test func mutatedPlausibleStreamsNeverCrash() {
        var accepted = 0
        var reasons = Set<RejectReason>()
        for seed in 0..<600 {
            var g = StreamGen(seed: UInt64(seed), slices: L.slices)
            let e: EngineID = seed % 2 == 0 ? .rcs : .bcs
            let gm = GuestGM()
            g.batches = [(L.a, g.int(4...48)), (L.b, g.int(4...48)), (L.c, g.int(4...48))]
            for (i, t) in g.batches.enumerated() {
                var d = g.stream(e, level: i == 2 ? 2 : 1, count: t.dwords)
                if g.chance(0.3) { g.mutate(&d) }
                gm.write(t.gm, d)
            }
            var ring = g.stream(e, level: 0, count: g.int(0...96))
            if g.chance(0.3) { g.mutate(&ring) }
            let head = UInt32(g.int(0...4095)) * 4
            for (i, v) in ring.enumerated() { gm.poke(L.ring + (UInt64(head) + UInt64(i) * 4) % 0x4000, v) }
            let tail = UInt32((UInt64(head) + UInt64(ring.count) * 4) % 0x4000) & ~7
            let r = makeScanner().scan(engine: e, ringStart: L.ring, ringBytes: L.ringBytes, head: head, tail: tail, read: gm.read)
            switch r {
            case .success(let s):
                accepted += 1
                checkInvariants(s)
            case .failure(let err):
                reasons.insert(err.reason)
                #expect((0...2).contains(err.level))
            }
        }
        // Not vacuous: a fair share is accepted and many different rules fire.
        #expect(accepted > 30)
        #expect(reasons.count >= 6)
    }
}

// MARK: - Agreement with the executor

fileprivate extension CommandScannerTests {
    /// Accepted submissions, executed from their shadow copies on SoftGPU (as the mediator will: shadows
    /// placed in host-owned GM, relocations patched), never raise an engine error, and run exactly the
    /// commands the scanner counted.
    @Test func acceptedShadowsExecuteCleanlyOnSoftGPU() throws {
        let gpu = SoftGPU(config: GPUConfig(gmSize: 64 << 20, apertureSize: 16 << 20, refreshRate: nil))
        defer { gpu.shutdown() }
        let slices = GMSlices(aperture: (1 << 20)..<(2 << 20), hidden: (32 << 20)..<(33 << 20))
        let guestAperture = try gpu.mapHostMemory(gm: 1 << 20, bytes: 1 << 20)
        let guestHidden = try gpu.mapHostMemory(gm: 32 << 20, bytes: 1 << 20)
        let shadowArea = try gpu.mapHostMemory(gm: 40 << 20, bytes: 8 << 20)
        defer { withExtendedLifetime((guestAperture, guestHidden, shadowArea)) {} }
        let guestRing: UInt64 = 1 << 20, guestRingBytes: UInt32 = 0x4000
        let shadowRing: UInt64 = 40 << 20, shadowRingPages = 16
        let limits = ScanLimits(maxTotalBatchBytes: 4 << 20)
        let scanner = CommandScanner(slices: slices, limits: limits, commandLoadAllowed: defaultPolicy,
                                     registerRead: { $0 == Reg.priSize ? L.priSize : 0 })
        let read: GMReader = { gm, n in try? gpu.gtt.read(UInt32.self, count: n, at: gm) }

        var accepted = 0, flips = 0
        for seed in 0..<250 {
            var g = StreamGen(seed: 0xD1FF_0000 + UInt64(seed), slices: slices)
            g.noise = 0.1
            let e: EngineID = seed % 3 == 0 ? .bcs : .rcs
            g.batches = (1...3).map { (guestRing + UInt64($0) * 0x10000, g.int(4...40)) }
            for (i, t) in g.batches.enumerated() {
                var d = g.stream(e, level: i == 2 ? 2 : 1, count: t.dwords)
                if g.chance(0.25) { g.mutate(&d) }
                try gpu.gtt.write(d, at: t.gm)
            }
            var ring = g.stream(e, level: 0, count: g.int(0...64))
            if g.chance(0.25) { g.mutate(&ring) }
            let head = UInt32(g.int(0...4095)) * 4
            for (i, v) in ring.enumerated() {
                try gpu.gtt.write32(v, at: guestRing + (UInt64(head) + UInt64(i) * 4) % UInt64(guestRingBytes))
            }
            let tail = UInt32((UInt64(head) + UInt64(ring.count) * 4) % UInt64(guestRingBytes)) & ~7

            let res = scanner.scan(engine: e, ringStart: guestRing, ringBytes: guestRingBytes, head: head, tail: tail, read: read)
            guard case .success(let s) = res else { continue }
            accepted += 1
            flips += s.flips.count

            // Place the shadows (the mediator's job) and patch the relocations.
            var placed = [shadowRing]
            var next = shadowRing + UInt64(shadowRingPages) * 4096
            for b in s.buffers.dropFirst() {
                placed.append(next)
                next += (UInt64(b.dwords.count) * 4 + 4095) & ~4095
            }
            #expect(next <= (48 << 20))
            var fragment: [UInt32] = []
            for (i, b) in s.buffers.enumerated() {
                var d = b.dwords
                for r in b.relocations {
                    d[r.dword] = UInt32(truncatingIfNeeded: placed[r.target])
                    d[r.dword + 1] = UInt32(truncatingIfNeeded: placed[r.target] >> 32)
                }
                if i == 0 { fragment = d } else { try gpu.gtt.write(d, at: placed[i]) }
            }
            let pad = fragment.count % 2
            if pad == 1 { fragment.append(L.noop) }
            if !fragment.isEmpty { try gpu.gtt.write(fragment, at: shadowRing) }

            let engine = gpu.engine(e)
            engine.reset()
            engine.configureRing(start: UInt32(shadowRing), pages: shadowRingPages)
            let before = engine.commandsExecuted
            engine.submit(tail: UInt32(fragment.count * 4))
            let result = engine.waitIdle(timeout: 60)
            #expect(result == .idle, "seed \(seed): \(result)")
            #expect(engine.commandsExecuted - before == UInt64(s.commandCount + 3 * s.flips.count + pad), "seed \(seed)")
        }
        #expect(accepted >= 40)
        #expect(flips >= 10)
    }
}
