import Testing
@testable import SoftGPU

private let D = Rig.dataGM

/// Small deterministic PRNG (SplitMix64).
private struct Rng {
    var s: UInt64
    mutating func next() -> UInt64 {
        s &+= 0x9E37_79B9_7F4A_7C15
        var z = s
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func pick<T>(_ a: [T]) -> T { a[below(a.count)] }
}

@Suite struct FuzzTests {
    /// Random and half-valid command streams (in the ring and in batches) never crash or hang an
    /// engine: every submission ends idle or in a recorded error, and the engines still work afterwards.
    @Test(arguments: [EngineID.rcs, .bcs])
    func randomStreamsEndIdleOrInError(_ engine: EngineID) throws {
        let rig = try Rig(stepBudget: 5000)
        var rng = Rng(s: 0x5EED + UInt64(engine.rawValue))
        let addresses: [UInt64] = [D, D + 0x1000, D + 0x40000, D + 0x123_4560, Rig.unmappedGM, Rig.gmSize - 4,
                                   Rig.gmSize, 0, 4, 0xFFFF_FFFF_FFFF_FFF0, D + Rig.dataBytes - 8]
        let smalls: [UInt32] = [0, 1, 2, 3, 7, 8, 16, 31, 64, 256, 4096, 0xFFFF, 0xFFFF_FFFF, 0x8000_0000]
        func randomCommand() -> [UInt32] {
            if rng.below(10) == 0 { return (0..<(1 + rng.below(6))).map { _ in UInt32(truncatingIfNeeded: rng.next()) } }
            let info = rng.pick(CommandTable.entries)
            var len: Int
            switch info.length {
            case .fixed(let n): len = n
            case .field: len = (3...20).first { info.length.accepts(dwords: $0) } ?? 4
            }
            if info.kind == .loadRegisterImm { len = 1 + 2 * (1 + rng.below(4)) }
            var c = (0..<len).map { _ in rng.pick(smalls) }
            c[0] = info.header(dwords: len) | (rng.below(4) == 0 ? UInt32(truncatingIfNeeded: rng.next()) & 0x00FF_FF00 : 0)
            if rng.below(8) == 0 { c[0] ^= UInt32(rng.below(256)) }    // length field garbage
            for op in info.addresses where op.dword + 1 < len {
                let a = rng.pick(addresses) &+ UInt64(rng.below(3) == 0 ? rng.below(4096) * 4 : 0)
                c[op.dword] = UInt32(truncatingIfNeeded: a)
                c[op.dword + 1] = UInt32(truncatingIfNeeded: a >> 32)
            }
            if info.kind == .loadRegisterImm {
                for i in stride(from: 1, to: len, by: 2) {
                    c[i] = rng.pick([Reg.scratch(UInt32(rng.below(64))), Reg.priSurf, Reg.curPos, Reg.imr, Reg.ringTail(.rcs), UInt32(rng.below(0x20_0000))])
                }
            }
            if info.kind == .batchBufferStart { c[3] = rng.pick([4, 8, 64, 4096, 0, 6, 1 << 25]) }
            return c
        }
        var outcomes = [String: Int]()
        for _ in 0..<500 {
            // Random batches at a few places the streams jump to.
            for base in [D, D + 0x1000, D + 0x40000] {
                var b = CommandBuilder()
                for _ in 0..<rng.below(6) { b.raw(randomCommand()) }
                if rng.below(3) != 0 { b.batchBufferEnd() }
                rig.writeBatch(at: base, b)
            }
            var ring = CommandBuilder()
            for _ in 0..<(1 + rng.below(5)) { ring.raw(randomCommand()) }
            if ring.count > 400 { continue }
            try rig.queue(engine).submitRing(ring)
            let r = rig.gpu.waitIdle(engine, timeout: 60)
            switch r {
            case .idle: outcomes["idle", default: 0] += 1
            case .error(let e):
                outcomes["\(e.code)", default: 0] += 1
                rig.queue(engine).recover()
            case .timedOut, .suspended:
                Issue.record("engine hung or suspended: \(r)")
                rig.queue(engine).recover()
            }
        }
        #expect(outcomes["idle", default: 0] > 0)
        #expect(outcomes.count >= 6, "outcomes \(outcomes)")
        // Still works.
        rig.queue(engine).recover()
        #expect(try rig.ring(engine, builder { $0.storeDataImm(gm: D + 0x700000, 0xFEED) }) == .idle)
        #expect(rig.u32(D + 0x700000) == 0xFEED)
        _ = rig.gpu.scanout()
    }
}
