import Testing
@testable import SoftGPU

/// A GPU with a 64 MiB GM, no vblank timer, native queues on both engines and an 8 MiB data buffer.
///
/// GM layout: RCS queue at 0, BCS queue at 2 MiB, data buffer at [4 MiB, 12 MiB), the rest unmapped.
final class Rig {
    static let gmSize: UInt64 = 64 << 20
    static let dataGM: UInt64 = 4 << 20
    static let dataBytes: UInt64 = 8 << 20
    /// A GM range whose GTT entries are invalid.
    static let unmappedGM: UInt64 = 32 << 20

    let gpu: SoftGPU
    let rcs: NativeQueue
    let bcs: NativeQueue
    let data: HostBuffer

    init(stepBudget: Int = 1 << 20, refreshRate: Double? = nil, sgemmOnBLAS: Bool = true) throws {
        var config = GPUConfig(gmSize: Self.gmSize, apertureSize: 16 << 20, refreshRate: refreshRate, stepBudget: stepBudget)
        config.sgemmOnBLAS = sgemmOnBLAS
        gpu = SoftGPU(config: config)
        rcs = try NativeQueue(gpu: gpu, engine: .rcs, gm: 0, ringPages: 2, batchBytes: 256 << 10)
        bcs = try NativeQueue(gpu: gpu, engine: .bcs, gm: 2 << 20, ringPages: 2, batchBytes: 256 << 10)
        data = try gpu.mapHostMemory(gm: Self.dataGM, bytes: Self.dataBytes, name: "test-data")
    }

    deinit { gpu.shutdown() }

    func queue(_ e: EngineID) -> NativeQueue { e == .rcs ? rcs : bcs }

    /// Host address of data-buffer GM address `gm`.
    func host(_ gm: UInt64) -> UnsafeMutableRawPointer {
        precondition(gm >= Self.dataGM && gm < Self.dataGM + Self.dataBytes)
        return data.pointer + Int(gm - Self.dataGM)
    }

    func u32(_ gm: UInt64) -> UInt32 { host(gm).loadUnaligned(as: UInt32.self) }
    func setU32(_ gm: UInt64, _ v: UInt32) { host(gm).storeBytes(of: v, as: UInt32.self) }

    func floats(_ gm: UInt64, _ n: Int) -> [Float] {
        (0..<n).map { host(gm + UInt64($0 * 4)).loadUnaligned(as: Float.self) }
    }
    func setFloats(_ gm: UInt64, _ v: [Float]) {
        for (i, f) in v.enumerated() { host(gm + UInt64(i * 4)).storeBytes(of: f, as: Float.self) }
    }
    func fill32(_ gm: UInt64, count: Int, _ v: UInt32) {
        host(gm).initializeMemory(as: UInt32.self, repeating: v, count: count)
    }

    /// Runs ring commands on `e` and waits.
    @discardableResult
    func ring(_ e: EngineID, _ b: CommandBuilder) throws -> EngineWaitResult {
        try queue(e).submitRing(b)
        return gpu.waitIdle(e, timeout: 30)
    }

    /// Runs `b` as a batch on `e` and waits.
    @discardableResult
    func batch(_ e: EngineID, _ b: CommandBuilder) throws -> EngineWaitResult {
        try queue(e).submit(b)
        return gpu.waitIdle(e, timeout: 30)
    }

    /// Runs ring commands expecting an error; returns it and recovers the engine.
    func expectError(_ e: EngineID, ring b: CommandBuilder, sourceLocation: SourceLocation = #_sourceLocation) throws -> EngineError? {
        let r = try ring(e, b)
        guard case .error(let err) = r else {
            Issue.record("expected an engine error, got \(r)", sourceLocation: sourceLocation)
            return nil
        }
        queue(e).recover()
        return err
    }

    func expectError(_ e: EngineID, batch b: CommandBuilder, sourceLocation: SourceLocation = #_sourceLocation) throws -> EngineError? {
        let r = try batch(e, b)
        guard case .error(let err) = r else {
            Issue.record("expected an engine error, got \(r)", sourceLocation: sourceLocation)
            return nil
        }
        queue(e).recover()
        return err
    }

    /// Writes a batch (dwords) at GM address `gm` in the data buffer; returns its length in bytes.
    @discardableResult
    func writeBatch(at gm: UInt64, _ b: CommandBuilder) -> UInt32 {
        for (i, d) in b.dwords.enumerated() { setU32(gm + UInt64(i * 4), d) }
        return UInt32(b.byteCount)
    }
}

func builder(_ body: (inout CommandBuilder) -> Void) -> CommandBuilder {
    var b = CommandBuilder()
    body(&b)
    return b
}

/// Deterministic pseudo-random floats in [-1, 1).
func randomFloats(_ n: Int, seed: UInt64) -> [Float] {
    var s = seed &* 6364136223846793005 &+ 1442695040888963407
    return (0..<n).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int32(truncatingIfNeeded: s >> 33)) / Float(1 << 30) - 1
    }
}

/// Naive row-major SGEMM in double precision.
func referenceSgemm(m: Int, n: Int, k: Int, alpha: Float, a: [Float], lda: Int, b: [Float], ldb: Int,
                    beta: Float, c: [Float], ldc: Int) -> [Float] {
    var out = c
    for i in 0..<m {
        for j in 0..<n {
            var s = 0.0
            for p in 0..<k { s += Double(a[i * lda + p]) * Double(b[p * ldb + j]) }
            let old = beta == 0 ? 0 : Double(beta) * Double(c[i * ldc + j])
            out[i * ldc + j] = Float(Double(alpha) * s + old)
        }
    }
    return out
}

/// Thread-safe recorder for interrupt handler calls.
final class IRQLog: @unchecked Sendable {
    private var calls: [UInt32] = []
    private let lock = Monitor()
    func record(_ bits: UInt32) { lock.withLock { calls.append(bits) } }
    var all: [UInt32] { lock.withLock { calls } }
}
