import Testing
@testable import SoftGPU

private let D = Rig.dataGM
private let marker = D + 0x7F0000

/// One sample instance of a table entry, valid on the rig.
private struct Sample {
    var command: CommandBuilder
    /// BATCH_BUFFER_END can only run inside a batch.
    var inBatch = false
}

private func samples(_ kind: CommandKind, _ rig: Rig) -> [Sample] {
    let s1 = BlitSurface(gm: D + 0x30000, pitch: 256, width: 60, height: 20)
    let s2 = BlitSurface(gm: D + 0x40000, pitch: 128, width: 30, height: 12)
    switch kind {
    case .noop: return [Sample(command: builder { $0.noop() })]
    case .userInterrupt: return [Sample(command: builder { $0.userInterrupt() })]
    case .batchBufferEnd: return [Sample(command: builder { $0.batchBufferEnd() }, inBatch: true)]
    case .displayFlip:
        return [Sample(command: builder { $0.displayFlip(plane: .primary, gm: D + 0x10000, stride: 256) }),
                Sample(command: builder { $0.displayFlip(plane: .cursor, gm: D + 0x20000) })]
    case .storeDataImm:
        return [Sample(command: builder { $0.storeDataImm(gm: D + 0x100, 5) }),
                Sample(command: builder { $0.storeDataImm(gm: D + 0x104, qword: 6) })]
    case .loadRegisterImm:
        return [Sample(command: builder { $0.loadRegisterImm([(Reg.scratch(1), 1), (Reg.gpr(.bcs, dword: 3), 2), (Reg.curPos, 3)]) })]
    case .flush:
        return [Sample(command: builder { $0.flush(postSync: (D + 0x200, 9), notify: true) }),
                Sample(command: builder { $0.flush() })]
    case .batchBufferStart:
        let len = rig.writeBatch(at: D + 0x50000, builder { $0.noop(); $0.storeDataImm(gm: D + 0x300, 1); $0.batchBufferEnd() })
        return [Sample(command: builder { $0.batchBufferStart(gm: D + 0x50000, length: len) })]
    case .colorBlt:
        return [Sample(command: builder { $0.colorBlt(dst: s1, x1: -5, y1: 3, x2: 70, y2: 25, color: 0x123456) })]
    case .srcCopyBlt:
        return [Sample(command: builder { $0.srcCopyBlt(dst: s1, x1: 40, y1: 2, x2: 80, y2: 30, src: s2, srcX: 1, srcY: 1) })]
    case .saxpy:
        return [Sample(command: builder { $0.saxpy(n: 1500, a: 2, x: D + 0x60000, y: D + 0x62000) })]
    case .sgemm:
        return [Sample(command: builder {
            $0.sgemm(m: 5, n: 7, k: 3, alpha: 1, beta: 1, a: D + 0x70000, lda: 4, b: D + 0x71000, ldb: 9, c: D + 0x72000, ldc: 8)
        })]
    }
}

/// Register reads a scanner would pass (the rig's real registers).
private func registers(_ rig: Rig) -> (UInt32) -> UInt32 { { rig.gpu.readRegister($0) } }

/// Runs `cmd` on `engine` (in the ring, or in a batch for BATCH_BUFFER_END) followed by a marker store.
private func execute(_ rig: Rig, _ engine: EngineID, _ cmd: [UInt32], inBatch: Bool, tracer: AccessTracer) throws -> EngineWaitResult {
    rig.setU32(marker, 0)
    var ring = CommandBuilder()
    if inBatch {
        let len = rig.writeBatch(at: D + 0x58000, builder { $0.raw(cmd) })
        ring.batchBufferStart(gm: D + 0x58000, length: len)
    } else {
        ring.raw(cmd)
    }
    ring.storeDataImm(gm: marker, 0xC0FFEE)
    tracer.clear()
    rig.gpu.engine(engine).setTracer(tracer)
    defer { rig.gpu.engine(engine).setTracer(nil) }
    return try rig.ring(engine, ring)
}

@Suite struct TableConsistencyTests {
    @Test func tableIsWellFormed() {
        #expect(Set(CommandTable.entries.map(\.kind)) == Set(CommandKind.allCases))
        #expect(CommandTable.entries.count == CommandKind.allCases.count)
        // No two entries share client + opcode (GVT-g fails init on duplicates).
        let keys = CommandTable.entries.map { "\($0.client)-\($0.opcode)" }
        #expect(Set(keys).count == keys.count)
        for e in CommandTable.entries {
            #expect(CommandTable.decode(e.header)?.kind == e.kind, "\(e.name)")
            #expect(CommandHeader.opcode(e.header) == e.opcode, "\(e.name)")
            #expect(!e.engines.isEmpty)
            for op in e.addresses { #expect(op.alignment > 0 && op.alignment.nonzeroBitCount == 1) }
        }
        #expect(CommandTable.decode(0x2000_0000) == nil)   // reserved client
        #expect(CommandTable.decode(0x1F80_0000) == nil)   // unused MI opcode
        // Engine acceptance follows the client (GVT-g ring_decode_info): MI everywhere, 2D on BCS, compute on RCS.
        for e in CommandTable.entries {
            switch e.client {
            case .mi: #expect(e.engines == .all)
            case .blitter: #expect(e.engines == .bcs)
            case .compute: #expect(e.engines == .rcs)
            }
        }
    }

    /// The compiled table (`descriptors`, what a scanner decodes with) says for every header what the
    /// entries say: every client and opcode, every length field, flag bits set and clear; and each row's
    /// address operands are the entry's.
    @Test func compiledTableMatchesEntries() {
        #expect(CommandTable.descriptors.count == CommandTable.slotCount)
        var checked = 0
        for client in UInt32(0)..<8 {
            for opcode in UInt32(0)..<0x2000 {
                let base: UInt32
                switch client {
                case CommandClient.mi.rawValue: guard opcode < 0x40 else { continue }; base = (client << 29) | (opcode << 23)
                case CommandClient.blitter.rawValue: guard opcode < 0x80 else { continue }; base = (client << 29) | (opcode << 22)
                case CommandClient.compute.rawValue: base = (client << 29) | (opcode << 16)
                default: guard opcode == 0 else { continue }; base = client << 29
                }
                // Bits below the opcode that are not the length field: command flags.
                let flagBits: UInt32 = client == 0 ? 0x007F_FF00 : client == 2 ? 0x003F_FF00 : 0x0000_FF00
                // Every length field and flag combination for known opcodes, a few fields for the others.
                let known = CommandTable.decode(base) != nil
                for field: UInt32 in known ? Array(0...0xFF) : [0, 1, 2, 0x7F, 0xFF] {
                    for flags: UInt32 in known ? [0, 0x0000_FF00, CommandHeader.batchSecondLevel, CommandHeader.flipPlaneMask] : [0] {
                        let h = base | field | (flags & flagBits)
                        let info = CommandTable.decode(h)
                        let d = CommandTable.descriptors[CommandTable.slot(h)]
                        checked += 1
                        guard let info, let d else {
                            if (info == nil) != (d == nil) { Issue.record("header 0x\(String(h, radix: 16)): decode and descriptors disagree") }
                            continue
                        }
                        if d.kind != info.kind || CommandTable.entries[d.entry] !== info || d.engines != info.engines
                            || d.length(h) != info.length.length(h) || d.operands != info.operands || d.registers != info.registers {
                            Issue.record("header 0x\(String(h, radix: 16)): descriptor differs from \(info.name)")
                        }
                        let ops = CommandTable.compiledAddresses[d.firstAddress ..< d.firstAddress + d.addressCount]
                        if ops.map(\.dword) != info.addresses.map(\.dword) || ops.map(\.extent) != info.addresses.map(\.extentRule)
                            || ops.map({ $0.alignmentMask + 1 }) != info.addresses.map(\.alignment) {
                            Issue.record("\(info.name): compiled address operands differ")
                        }
                    }
                }
            }
        }
        #expect(checked > 40_000)
    }

    /// Every table entry against the executor: the length the table gives is what the executor consumes,
    /// every memory access the executor makes lies inside an operand range the table declares (with a
    /// compatible direction), the executor really treats each declared address dword as an address
    /// (moving it out of GM or to an unmapped page makes it fault), registers written are exactly the
    /// declared register operands, and engines outside the entry's set refuse the command.
    @Test(arguments: CommandKind.allCases)
    func entryMatchesExecutor(_ kind: CommandKind) throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.priSize, (8 << 16) | 32)      // for DISPLAY_FLIP extents
        let info = CommandTable.info(kind)
        let tracer = AccessTracer()
        let all = samples(kind, rig)
        #expect(!all.isEmpty)
        for sample in all {
            let cmd = sample.command.dwords
            // Length: table == builder.
            let decoded = try #require(CommandTable.decode(cmd[0]))
            #expect(decoded.kind == kind)
            #expect(decoded.length.length(cmd[0]) == cmd.count, "\(kind) length")

            for engine in EngineID.allCases {
                guard info.engines.contains(engine) else {
                    let r = try execute(rig, engine, cmd, inBatch: sample.inBatch, tracer: tracer)
                    guard case .error(let e) = r else { Issue.record("\(kind) ran on \(engine)"); continue }
                    #expect(e.code == .commandNotAllowedOnEngine)
                    rig.queue(engine).recover()
                    continue
                }
                let r = try execute(rig, engine, cmd, inBatch: sample.inBatch, tracer: tracer)
                #expect(r == .idle, "\(kind) on \(engine): \(r)")
                #expect(rig.u32(marker) == 0xC0FFEE, "\(kind): the next command was not at the length the table gives")

                // Accesses inside declared operands. The marker store (last record) is excluded.
                let regs = registers(rig)
                let ranges = info.addresses.map { op in (op, op.address(in: cmd), op.extent(cmd, regs)) }
                var records = tracer.records
                #expect(records.last == AccessRecord(kind: .write, gm: marker, length: 4))
                records.removeLast()
                if sample.inBatch || kind == .batchBufferStart {
                    // Batch fetches of BATCH_BUFFER_START must lie in its batch operand.
                    let fetches = records.filter { $0.kind == .fetch }
                    if kind == .batchBufferStart {
                        #expect(!fetches.isEmpty)
                        let (_, a, ext) = ranges[0]
                        for f in fetches { #expect(f.gm >= a && f.gm + f.length <= a + ext, "\(kind) fetch \(f)") }
                        // The batch's own commands' accesses are theirs, not BATCH_BUFFER_START's.
                        records = []
                    } else {
                        records = records.filter { $0.kind != .fetch }
                    }
                }
                for rec in records {
                    let covered = ranges.contains { op, a, ext in
                        ext > 0 && rec.gm >= a && rec.gm + rec.length <= a + ext
                            && (rec.kind == .write ? op.access.writes : op.access.reads)
                    }
                    #expect(covered, "\(kind): access \(rec) outside the declared operands \(ranges.map { ($0.0.name, $0.1, $0.2) })")
                }

                // Registers written == declared register operands.
                let declared = info.registerOperands(cmd).map { cmd[$0] }
                #expect(tracer.registerWrites.map(\.offset) == declared, "\(kind) registers")
                #expect(tracer.registerWrites.map(\.value) == info.registerOperands(cmd).map { cmd[$0 + 1] })

                // Each used address operand is a real address to the executor.
                guard !sample.inBatch else { continue }
                let validRun = tracer.records
                for (op, a, ext) in ranges where ext > 0 {
                    // Did the valid run touch this operand's memory? (DISPLAY_FLIP only latches the
                    // address; the display reads it at scanout.)
                    let touched = validRun.contains { rec in
                        (rec.kind != .fetch || kind == .batchBufferStart) && rec.gm >= a && rec.gm < a + ext
                    }
                    #expect(touched || kind == .displayFlip, "\(kind) \(op.name) was not accessed")
                    // Out of GM: the lowest aligned address whose range crosses the end of GM.
                    var bad = cmd
                    let align = op.alignment
                    let outside = ((Rig.gmSize - min(ext, Rig.gmSize) + align) / align) * align
                    bad[op.dword] = UInt32(truncatingIfNeeded: outside)
                    bad[op.dword + 1] = UInt32(truncatingIfNeeded: outside >> 32)
                    let r1 = try execute(rig, engine, bad, inBatch: false, tracer: tracer)
                    guard case .error(let e1) = r1 else { Issue.record("\(kind) \(op.name) at 0x\(String(outside, radix: 16)) ran"); continue }
                    #expect(e1.code == .addressOutOfRange, "\(kind) \(op.name)")
                    #expect(e1.faultAddress == outside)
                    rig.queue(engine).recover()
                    // On an unmapped page inside GM, a command that accesses the operand faults there.
                    guard touched else { continue }
                    bad = cmd
                    bad[op.dword] = UInt32(Rig.unmappedGM)
                    bad[op.dword + 1] = 0
                    let r2 = try execute(rig, engine, bad, inBatch: false, tracer: tracer)
                    guard case .error(let e2) = r2 else { Issue.record("\(kind) \(op.name) unmapped ran"); continue }
                    #expect(e2.code == .gttInvalidEntry, "\(kind) \(op.name)")
                    #expect(e2.faultAddress >= Rig.unmappedGM && e2.faultAddress < Rig.unmappedGM + ext)
                    rig.queue(engine).recover()
                }
            }

            // Length field: an invalid value is refused.
            if case .field = info.length {
                let badLen = (2...300).first { !info.length.accepts(dwords: $0) }!
                var bad = cmd
                bad[0] = (bad[0] & ~CommandHeader.lengthMask) | UInt32(badLen - 2)
                let engine = info.engines.contains(.rcs) ? EngineID.rcs : .bcs
                let padded = bad + [UInt32](repeating: 0, count: max(0, badLen - bad.count))
                let r = try execute(rig, engine, padded, inBatch: false, tracer: tracer)
                guard case .error(let e) = r else { Issue.record("\(kind) with length \(badLen) ran"); continue }
                #expect(e.code == .invalidLength, "\(kind)")
                rig.queue(engine).recover()
            }
        }
    }
}
