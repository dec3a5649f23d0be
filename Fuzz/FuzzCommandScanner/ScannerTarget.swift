import FuzzSupport
import Glibc
import SoftGPU
import VGPU

// libFuzzer target: the vGPU command scanner (Sources/VGPU/CommandScanner.swift) on random and mutated ring
// and batch layouts, with the software GPU's executor as a differential oracle.
//
// Input (little-endian; missing bytes read as zero):
//   byte 0     flags: bit 0 engine (0 RCS, 1 BCS); bits 1-2 ring pages - 1; bit 3 LOAD_REGISTER_IMM may
//              write every hardware command-writable register (else only the vGPU's policy: the GPRs);
//              bits 4-5 ScanLimits.maxBatchLevel (0...3)
//   byte 1     unused
//   u16        ring HEAD (byte offset, taken modulo the ring size; alignment as written)
//   u16        ring TAIL (the same)
//   u16        split: dword index where the data continues in the hidden slice
//   u32        PRI_SIZE as the scanner reads it (DISPLAY_FLIP extents)
//   rest       dwords: the aperture slice from its start (the ring sits there), then from `split` on the
//              hidden slice from its start
//
// Oracles: the scanner reads guest memory once per ring piece and batch copy; a submission it accepts is placed as the mediator places it (ring fragment first in a
// host-owned arena, batches after it, BATCH_BUFFER_START operands relocated to the shadow copies) and run
// on a SoftGPU engine whose GTT maps both slices to writable memory. The engine must finish without an
// error and execute exactly the commands the scanner counted (each DISPLAY_FLIP being 4 NOOPs in the
// shadows): anything else means the scanner and the executor disagree about a stream the scanner let through.

enum Layout {
    static let slices = GMSlices(aperture: 0x0010_0000..<0x0011_0000, hidden: 0x0200_0000..<0x0201_0000)
    static let sliceBytes = 0x1_0000
    static let arenaGM: UInt64 = 0x0300_0000
    static let arenaBytes: UInt64 = 8 << 20
    /// Physical ring area at the arena start: room for any fragment of a ring of at most 4 pages, padded.
    static let ringAreaPages = 5
    static let ringArea: UInt64 = UInt64(ringAreaPages) * 4096
    /// Commands per submission: bounded so that no input runs for seconds (SGEMMs in every command).
    static let maxCommands = 2048
    static let maxTotalBatchBytes = 4 << 20
}

/// One decoded input (also used to encode the seeds).
struct ScannerCase {
    var engine: EngineID = .rcs
    var ringPages = 1
    var wideLoadPolicy = false
    var maxBatchLevel = 2
    var head: UInt16 = 0
    var tail: UInt16 = 0
    var split: UInt16 = UInt16(Layout.sliceBytes / 4)
    var priSize: UInt32 = (32 << 16) | 64
    var aperture: [UInt32] = []
    var hidden: [UInt32] = []

    init() {}

    init(_ input: inout FuzzInput) {
        let flags = input.u8()
        _ = input.u8()
        engine = flags & 1 == 0 ? .rcs : .bcs
        ringPages = Int((flags >> 1) & 3) + 1
        wideLoadPolicy = flags & 8 != 0
        maxBatchLevel = Int((flags >> 4) & 3)
        head = input.u16()
        tail = input.u16()
        split = input.u16()
        priSize = input.u32()
        var words: [UInt32] = []
        words.reserveCapacity(input.remaining / 4)
        while input.remaining >= 4 { words.append(input.u32()) }
        let cut = min(Int(split), words.count, Layout.sliceBytes / 4)
        aperture = Array(words[..<cut])
        hidden = Array(words[cut...].prefix(Layout.sliceBytes / 4))
    }

    func encoded() -> [UInt8] {
        var e = FuzzEncoder()
        e.u8((engine == .bcs ? 1 : 0) | UInt8(ringPages - 1) << 1 | (wideLoadPolicy ? 8 : 0) | UInt8(maxBatchLevel) << 4)
        e.u8(0)
        e.u16(head)
        e.u16(tail)
        e.u16(UInt16(aperture.count))
        e.u32(priSize)
        e.dwords(aperture)
        e.dwords(hidden)
        return e.bytes
    }
}

/// The software GPU and the host memory behind the slices and the shadow arena, made once per process.
final class Rig: @unchecked Sendable {   // used by the fuzzing thread only
    let gpu: SoftGPU
    let aperture: HostBuffer
    let hidden: HostBuffer
    let arena: HostBuffer

    init() {
        gpu = SoftGPU(config: GPUConfig(gmSize: 64 << 20, apertureSize: 16 << 20, refreshRate: nil))
        do {
            aperture = try gpu.mapHostMemory(gm: Layout.slices.aperture.lowerBound, bytes: UInt64(Layout.sliceBytes), name: "aperture-slice")
            hidden = try gpu.mapHostMemory(gm: Layout.slices.hidden.lowerBound, bytes: UInt64(Layout.sliceBytes), name: "hidden-slice")
            arena = try gpu.mapHostMemory(gm: Layout.arenaGM, bytes: Layout.arenaBytes, name: "shadow-arena")
        } catch {
            fuzzFinding("cannot set up the SoftGPU rig: \(error)")
        }
    }

    /// Calls of `read` during the current scan.
    var reads = 0

    /// Guest GM as the scanner sees it: the two slices; anything else is unreadable.
    func read(_ gm: UInt64, _ count: Int) -> [UInt32]? {
        reads += 1
        guard count >= 0, count <= Layout.sliceBytes / 4 else { return nil }
        let bytes = UInt64(count) * 4
        for buffer in [aperture, hidden] where gm >= buffer.gm && gm - buffer.gm <= UInt64(Layout.sliceBytes)
            && bytes <= UInt64(Layout.sliceBytes) - (gm - buffer.gm) {
            let src = buffer.pointer + Int(gm - buffer.gm)
            return [UInt32](unsafeUninitializedCapacity: count) { out, n in
                memcpy(out.baseAddress!, src, count * 4)
                n = count
            }
        }
        return nil
    }

    func load(_ c: ScannerCase) {
        for (buffer, words) in [(aperture, c.aperture), (hidden, c.hidden)] {
            memset(buffer.pointer, 0, Layout.sliceBytes)
            words.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
    }

    /// Places an accepted submission as the mediator does and runs it; returns the engine's outcome and
    /// how many commands it executed.
    func execute(_ s: ScannedSubmission, on e: EngineID) -> (EngineWaitResult, UInt64) {
        var buffers = s.buffers
        var placement = [UInt64](repeating: 0, count: buffers.count)
        var next = Layout.ringArea
        for b in buffers.indices.dropFirst() {
            placement[b] = next
            next += (UInt64(buffers[b].dwords.count * 4) + 4095) & ~4095
        }
        guard next <= Layout.arenaBytes else { fuzzFinding("accepted batches (\(next) bytes) exceed ScanLimits.maxTotalBatchBytes") }
        // The physical TAIL must be qword aligned; a fragment of an odd number of dwords (HEAD 4 mod 8) gets
        // a NOOP, as in VGPU.execute (Sources/VGPU/Submission/Pipeline.swift), which does not count it either.
        let noop = CommandTable.info(.noop).header
        let padded = buffers[0].dwords.count % 2 == 1
        if padded { buffers[0].dwords.append(noop) }
        for b in buffers.indices {
            for rel in buffers[b].relocations {
                guard rel.target > 0, rel.target < buffers.count, rel.dword + 1 < buffers[b].dwords.count else {
                    fuzzFinding("relocation \(rel) of buffer \(b) points outside the submission (\(buffers.count) buffers)")
                }
                let gm = arena.gm + placement[rel.target]
                buffers[b].dwords[rel.dword] = UInt32(truncatingIfNeeded: gm)
                buffers[b].dwords[rel.dword + 1] = UInt32(truncatingIfNeeded: gm >> 32)
            }
            buffers[b].dwords.withUnsafeBytes { (arena.pointer + Int(placement[b])).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
        let engine = gpu.engine(e)
        let before = engine.commandsExecuted
        engine.configureRing(start: UInt32(arena.gm), pages: Layout.ringAreaPages)
        gpu.submit(e, tail: UInt32(buffers[0].dwords.count * 4))
        let outcome = engine.waitIdle(timeout: 60)
        let executed = engine.commandsExecuted &- before
        engine.reset()
        return (outcome, executed &- (padded ? 1 : 0))
    }
}

let rig = Rig()

@_cdecl("LLVMFuzzerTestOneInput")
public func scannerFuzzTarget(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let c = ScannerCase(&input)
    runScannerCase(c)
    return 0
}

func runScannerCase(_ c: ScannerCase) {
    rig.load(c)
    rig.reads = 0
    let ringBytes = UInt32(c.ringPages * 4096)
    var limits = ScanLimits()
    limits.maxBatchLevel = c.maxBatchLevel
    limits.maxCommands = Layout.maxCommands
    limits.maxTotalBatchBytes = Layout.maxTotalBatchBytes
    let priSize = c.priSize
    let wide = c.wideLoadPolicy
    let policy: @Sendable (UInt32) -> Bool = { wide || RegisterPolicy.commandLoadAllowed($0) }
    let scanner = CommandScanner(slices: Layout.slices, limits: limits, commandLoadAllowed: policy,
                                 registerRead: { $0 == Reg.priSize ? priSize : 0 })
    let result = scanner.scan(engine: c.engine, ringStart: Layout.slices.aperture.lowerBound, ringBytes: ringBytes,
                              head: UInt32(c.head) % ringBytes, tail: UInt32(c.tail) % ringBytes, read: rig.read)
    if fuzzVerbose {
        switch result {
        case .success(let s): fuzzLog("accepted: \(s.buffers.count) buffers, \(s.commandCount) commands, \(s.flips.count) flips")
        case .failure(let r): fuzzLog("rejected: \(r)")
        }
    }
    guard case .success(let submission) = result else { return }
    guard let ring = submission.buffers.first, ring.level == 0 else { fuzzFinding("accepted submission without a ring buffer") }
    // The scanner's contract: one read per ring piece (two when the fragment wraps), one per batch copy.
    let head = UInt32(c.head) % ringBytes, tail = UInt32(c.tail) % ringBytes
    let ringReads = head == tail ? 0 : (head < tail || tail == 0 ? 1 : 2)
    guard rig.reads == ringReads + submission.buffers.count - 1 else {
        fuzzFinding("the scanner read guest memory \(rig.reads) times for \(ringReads) ring pieces and \(submission.buffers.count - 1) batches")
    }
    if ring.dwords.isEmpty && submission.buffers.count == 1 { return }
    let (outcome, executed) = rig.execute(submission, on: c.engine)
    switch outcome {
    case .idle:
        // Each DISPLAY_FLIP (4 dwords) is 4 NOOPs in the shadows: 3 commands more on the engine.
        let expected = UInt64(submission.commandCount + 3 * submission.flips.count)
        guard executed == expected else {
            fuzzFinding("scanner counted \(submission.commandCount) commands and \(submission.flips.count) flips, the engine executed \(executed); shadows: "
                        + submission.buffers.map { b in "L\(b.level)@0x\(String(b.sourceGM, radix: 16)): " + b.dwords.map { String($0, radix: 16) }.joined(separator: " ") }.joined(separator: " | "))
        }
    case .error(let err):
        fuzzFinding("the scanner accepted a submission the \(c.engine) executor rejects: \(err)")
    case .timedOut:
        fuzzFinding("an accepted submission ran for more than 60 s on \(c.engine)")
    case .suspended:
        fuzzFinding("the engine suspended work nobody asked to suspend on \(c.engine)")
    }
}

// MARK: - Seeds

@_cdecl("LLVMFuzzerInitialize")
public func scannerFuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    FuzzSeeds.writeIfRequested { scannerSeeds().enumerated().map { ("scanner-seed-\($0.offset)", $0.element.encoded()) } }
    return 0
}

/// Valid streams built with SoftGPU's CommandBuilder: every command kind, batches at both levels, chains,
/// flips, wrapping rings.
func scannerSeeds() -> [ScannerCase] {
    let ap = Layout.slices.aperture.lowerBound, hid = Layout.slices.hidden.lowerBound
    let surface = BlitSurface(gm: hid, pitch: 256, width: 64, height: 32)
    func ringCase(_ engine: EngineID, pages: Int = 1, head: Int = 0, _ ring: (inout CommandBuilder) -> Void,
                  batches: [(UInt64, CommandBuilder)] = [], hidden: [UInt32] = []) -> ScannerCase {
        var r = CommandBuilder()
        ring(&r)
        r.alignToQword()
        var c = ScannerCase()
        c.engine = engine
        c.ringPages = pages
        let ringDwords = pages * 1024
        var words = [UInt32](repeating: 0, count: ringDwords)
        for (i, d) in r.dwords.enumerated() { words[(head / 4 + i) % ringDwords] = d }
        for (gm, b) in batches {
            let at = Int(gm - ap) / 4
            if words.count < at + b.count { words += [UInt32](repeating: 0, count: at + b.count - words.count) }
            for (i, d) in b.dwords.enumerated() { words[at + i] = d }
        }
        c.head = UInt16(head)
        c.tail = UInt16((head + r.byteCount) % (pages * 4096))
        c.aperture = words
        c.hidden = hidden
        return c
    }
    var seeds: [ScannerCase] = []
    // MI commands on the ring.
    seeds.append(ringCase(.rcs, {
        $0.noop(count: 3)
        $0.storeDataImm(gm: hid + 0x100, 0x1234_5678)
        $0.storeDataImm(gm: hid + 0x108, qword: 0x1_0000_0002)
        $0.loadRegisterImm([(Reg.gpr(.rcs, dword: 0), 7), (Reg.gpr(.rcs, dword: 1), 9)])
        $0.flush(postSync: (hid + 0x200, 5), notify: true)
        $0.userInterrupt()
        $0.displayFlip(plane: .primary, gm: hid, stride: 256)
        $0.displayFlip(plane: .cursor, gm: hid + 0x4000)
    }))
    // Compute on RCS from a first-level batch.
    var compute = CommandBuilder()
    compute.saxpy(n: 64, a: 2, x: hid, y: hid + 0x1000)
    compute.sgemm(m: 4, n: 4, k: 4, alpha: 1, beta: 0, a: hid, lda: 4, b: hid + 0x100, ldb: 4, c: hid + 0x200, ldc: 4)
    compute.batchBufferEnd()
    seeds.append(ringCase(.rcs, { $0.batchBufferStart(gm: ap + 0x1000, length: UInt32(compute.byteCount)) },
                          batches: [(ap + 0x1000, compute)], hidden: (0..<256).map { Float($0).bitPattern }))
    // Blits on BCS, a second-level call and a chain.
    var second = CommandBuilder()
    second.srcCopyBlt(dst: surface, x1: 0, y1: 0, x2: 16, y2: 16, src: surface, srcX: 8, srcY: 8)
    second.batchBufferEnd()
    var chained = CommandBuilder()
    chained.colorBlt(dst: surface, x1: 4, y1: 4, x2: 8, y2: 8, color: 0xff00ff)
    chained.batchBufferEnd()
    var first = CommandBuilder()
    first.colorBlt(dst: surface, x1: 0, y1: 0, x2: 64, y2: 32, color: 0x00ff_0000)
    first.batchBufferStart(gm: ap + 0x1800, length: UInt32(second.byteCount), secondLevel: true)
    first.batchBufferStart(gm: ap + 0x2000, length: UInt32(chained.byteCount))
    seeds.append(ringCase(.bcs, { $0.batchBufferStart(gm: ap + 0x1000, length: UInt32(first.byteCount)) },
                          batches: [(ap + 0x1000, first), (ap + 0x1800, second), (ap + 0x2000, chained)]))
    // A ring that wraps, two pages.
    seeds.append(ringCase(.rcs, pages: 2, head: 2 * 4096 - 16, {
        $0.storeDataImm(gm: ap + 0x8000, 1)
        $0.storeDataImm(gm: ap + 0x8004, 2)
        $0.flush()
    }))
    // The same batch started twice, and a second-level batch called from a first-level one on RCS.
    var leaf = CommandBuilder()
    leaf.storeDataImm(gm: hid + 0x40, 3)
    leaf.batchBufferEnd()
    var caller = CommandBuilder()
    caller.batchBufferStart(gm: ap + 0x1800, length: UInt32(leaf.byteCount), secondLevel: true)
    caller.batchBufferStart(gm: ap + 0x1800, length: UInt32(leaf.byteCount), secondLevel: true)
    caller.batchBufferEnd()
    seeds.append(ringCase(.rcs, {
        $0.batchBufferStart(gm: ap + 0x1000, length: UInt32(caller.byteCount))
        $0.batchBufferStart(gm: ap + 0x1800, length: UInt32(leaf.byteCount))
    }, batches: [(ap + 0x1000, caller), (ap + 0x1800, leaf)]))
    return seeds
}
