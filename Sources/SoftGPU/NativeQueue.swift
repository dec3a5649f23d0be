import Glibc
import Synchronization

public enum NativeQueueError: Error, Equatable, Sendable {
    case batchTooLarge(bytes: Int, capacity: Int)
    case engineError(EngineError)
    case timedOut
}

/// Host-native submission: a ring, a fence page and a batch area in GM (backed by host memory) owned by
/// one engine, so host code can run a workload straight on the engine (the "native" baseline next to
/// guest submissions through a mediator, which can also use `submitBatch` for its shadow batches).
///
/// GM layout from `gm`: `ringPages` ring pages, one fence page, `batchBytes` of batch area.
/// Each submission puts BATCH_BUFFER_START + FLUSH(post-sync store of the sequence number to the fence,
/// optional notify) into the ring and writes TAIL.
///
/// Not thread-safe: use one queue from one thread at a time. The queue owns the engine's ring
/// registers; do not program them elsewhere while the queue is in use.
public final class NativeQueue: @unchecked Sendable {
    public let engine: EngineID
    public let gm: UInt64
    public let ringPages: Int
    public let ringGM: UInt64
    public let fenceGM: UInt64
    public let batchGM: UInt64
    unowned let gpu: SoftGPU
    private let ring: HostBuffer
    private let fence: HostBuffer
    private let batches: HostBuffer
    private var tail: UInt32 = 0
    private var batchOffset = 0
    private(set) public var lastSubmitted: UInt32 = 0

    public init(gpu: SoftGPU, engine: EngineID, gm: UInt64, ringPages: Int = 4, batchBytes: Int = 1 << 20) throws {
        precondition(ringPages >= 1 && ringPages <= 512)
        self.gpu = gpu
        self.engine = engine
        self.gm = gm
        self.ringPages = ringPages
        ringGM = gm
        fenceGM = gm + UInt64(ringPages) * GTT.pageSize
        batchGM = fenceGM + GTT.pageSize
        ring = try gpu.mapHostMemory(gm: ringGM, bytes: UInt64(ringPages) * GTT.pageSize, name: "native-ring-\(engine)")
        fence = try gpu.mapHostMemory(gm: fenceGM, bytes: GTT.pageSize, name: "native-fence-\(engine)")
        batches = try gpu.mapHostMemory(gm: batchGM, bytes: UInt64(max(batchBytes, 4096)), name: "native-batch-\(engine)")
        gpu.engine(engine).configureRing(start: UInt32(ringGM), pages: ringPages)
    }

    /// GM bytes the queue occupies from `gm`.
    public static func footprint(ringPages: Int = 4, batchBytes: Int = 1 << 20) -> UInt64 {
        UInt64(ringPages + 1) * GTT.pageSize + ((UInt64(max(batchBytes, 4096)) + 4095) & ~4095)
    }

    /// Sequence number of the last completed submission.
    public var completed: UInt32 {
        fence.pointer.loadUnaligned(as: UInt32.self)
    }

    private var ringSize: UInt32 { UInt32(ringPages) * 4096 }

    /// Copies `commands` (plus BATCH_BUFFER_END) into the batch area and submits it. Returns the sequence
    /// number the fence will hold when it completed. Returns immediately unless the ring or batch area
    /// is full (then it waits for the engine).
    @discardableResult
    public func submit(_ commands: CommandBuilder, notify: Bool = false) throws -> UInt32 {
        var b = commands
        b.batchBufferEnd()
        b.alignToQword()
        let bytes = b.byteCount
        guard bytes <= batches.length else { throw NativeQueueError.batchTooLarge(bytes: bytes, capacity: batches.length) }
        if batchOffset + bytes > batches.length {
            try waitForEngine(timeout: nil)
            batchOffset = 0
        }
        b.dwords.withUnsafeBytes { src in
            (batches.pointer + batchOffset).copyMemory(from: src.baseAddress!, byteCount: bytes)
        }
        let at = batchGM + UInt64(batchOffset)
        batchOffset += bytes
        return try submitBatch(gm: at, length: UInt32(bytes), notify: notify)
    }

    /// Submits an existing first-level batch already in GM (ending in BATCH_BUFFER_END).
    @discardableResult
    public func submitBatch(gm batch: UInt64, length: UInt32, notify: Bool = false) throws -> UInt32 {
        let seq = lastSubmitted &+ 1
        var r = CommandBuilder()
        r.batchBufferStart(gm: batch, length: length)
        r.flush(postSync: (fenceGM, seq), notify: notify)
        try writeRing(r)
        lastSubmitted = seq
        return seq
    }

    /// Submits ring commands directly (no batch), padded to a qword.
    public func submitRing(_ commands: CommandBuilder) throws {
        var r = commands
        r.alignToQword()
        try writeRing(r)
    }

    private func writeRing(_ r: CommandBuilder) throws {
        let bytes = UInt32(r.byteCount)
        let e = gpu.engine(engine)
        precondition(bytes + 8 <= ringSize, "ring too small")
        while true {
            let head = e.readRegister(Reg.ringHeadOffset)
            let used = (tail &+ ringSize &- head) % ringSize
            if ringSize - used > bytes + 8 { break }   // keep a gap so a full ring never looks empty
            try waitForEngine(timeout: nil)
        }
        let base = ring.pointer
        for (i, d) in r.dwords.enumerated() {
            let off = (Int(tail) + i * 4) % Int(ringSize)
            base.storeBytes(of: d.littleEndian, toByteOffset: off, as: UInt32.self)
        }
        tail = (tail + bytes) % ringSize
        e.submit(tail: tail)
    }

    private func waitForEngine(timeout: Double?) throws {
        switch gpu.engine(engine).waitIdle(timeout: timeout) {
        case .idle: return
        case .error(let err): throw NativeQueueError.engineError(err)
        case .timedOut: throw NativeQueueError.timedOut
        case .suspended: return   // nobody suspends a native queue's engine
        }
    }

    /// Waits until submission `seq` completed (engine idle or fence reached).
    public func wait(for seq: UInt32? = nil, timeout: Double? = nil) throws {
        let target = seq ?? lastSubmitted
        if Int32(bitPattern: completed &- target) >= 0 { return }
        try waitForEngine(timeout: timeout)
    }

    /// Submits and waits.
    public func run(_ commands: CommandBuilder, timeout: Double? = nil) throws {
        let s = try submit(commands)
        try wait(for: s, timeout: timeout)
    }

    /// After an engine error: resets the engine and reprograms the ring (pending work is dropped).
    public func recover() {
        let e = gpu.engine(engine)
        e.reset()
        tail = 0
        batchOffset = 0
        e.configureRing(start: UInt32(ringGM), pages: ringPages)
    }
}
