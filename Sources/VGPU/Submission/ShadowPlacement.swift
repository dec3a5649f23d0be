import SoftGPU

/// One vGPU's host-owned shadow arena on one engine (host GM the guest cannot reach): the physical ring
/// first, then the batches' shadow copies.
public struct ShadowArena: Sendable, Equatable {
    /// GM address of the arena (the physical ring starts here).
    public var gm: UInt64
    /// Size of the whole arena.
    public var bytes: UInt64
    /// Size of the physical ring at its start.
    public var ringBytes: UInt64

    public static let defaultRingBytes: UInt64 = 2 << 20

    public init(gm: UInt64, bytes: UInt64, ringBytes: UInt64 = ShadowArena.defaultRingBytes) {
        self.gm = gm
        self.bytes = bytes
        self.ringBytes = ringBytes
    }

    /// Room for batch copies after the ring.
    public var batchBytes: UInt64 { bytes > ringBytes ? bytes - ringBytes : 0 }
}

/// The shadow buffers of one scanned submission, by size: `dwords[0]` is the ring fragment, the rest its
/// batches (`ScannedSubmission.buffers`).
public struct ShadowFootprint: Sendable, Equatable {
    public var dwords: [Int]
    public init(dwords: [Int]) { self.dwords = dwords }
    public init(_ s: ScannedSubmission) { dwords = s.buffers.map { $0.dwords.count } }

    /// Whether the ring fragment has an odd number of dwords (it gets one NOOP so TAIL stays qword aligned).
    public var needsPad: Bool { (dwords.first ?? 0) % 2 == 1 }
    /// Bytes in the physical ring (padded to a qword).
    public var ringBytes: UInt64 { (UInt64(dwords.first ?? 0) * 4 + 7) & ~7 }
    /// Bytes of batch copies, each rounded up to a page.
    public var batchBytes: UInt64 { dwords.dropFirst().reduce(0) { $0 + ((UInt64($1) * 4 + 4095) & ~4095) } }
}

/// Where the shadow buffers of one pass go in the arena.
public struct ShadowPlacement: Sendable, Equatable {
    /// Per submission, per buffer: the byte offset in the arena (buffer 0, the ring fragment, inside the ring).
    public var offsets: [[UInt64]]
    /// Per submission: whether its ring fragment got a padding NOOP.
    public var padded: [Bool]
    /// The physical TAIL after the last fragment (bytes from the ring's start).
    public var ringTail: UInt64
    /// The end of the last batch copy (bytes from the arena's start).
    public var end: UInt64

    /// Why a pass cannot be placed: what it needs against what the arena holds.
    public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        public var needed: UInt64, available: UInt64
        public var description: String { "shadow copies need \(needed) bytes, the arena holds \(available)" }
    }

    /// How many of `queued` (in queue order) one pass takes: the first always, then every next one while
    /// the ring fragments stay below the ring's size and the batch copies fit after it (as GVT-g batches
    /// workloads). 0 only when `queued` is empty.
    public static func group(_ queued: [ShadowFootprint], arena: ShadowArena) -> Int {
        var ring: UInt64 = 0, batches: UInt64 = 0, n = 0
        for f in queued {
            if n > 0 && (ring + f.ringBytes >= arena.ringBytes || batches + f.batchBytes > arena.batchBytes) { break }
            ring += f.ringBytes
            batches += f.batchBytes
            n += 1
        }
        return n
    }

    /// Places the buffers of the submissions of one pass: ring fragments back to back from the ring's start,
    /// each padded with a NOOP to whole qwords (a guest HEAD may be any dword, the physical TAIL must be
    /// qword aligned); batches after the ring, each page aligned. Refused when the batches overrun the arena
    /// or the fragments fill the ring (TAIL must stay below its size).
    public static func place(_ pass: [ShadowFootprint], arena: ShadowArena) -> Result<ShadowPlacement, Refusal> {
        var offsets: [[UInt64]] = [], ringPos: UInt64 = 0, next = arena.ringBytes
        for f in pass {
            var o: [UInt64] = []
            for (b, dwords) in f.dwords.enumerated() {
                if b == 0 { o.append(ringPos); ringPos += f.ringBytes }
                else { o.append(next); next += (UInt64(dwords) * 4 + 4095) & ~4095 }
            }
            offsets.append(o)
        }
        guard next <= arena.bytes else { return .failure(Refusal(needed: next, available: arena.bytes)) }
        guard ringPos < arena.ringBytes else { return .failure(Refusal(needed: ringPos, available: arena.ringBytes)) }
        return .success(ShadowPlacement(offsets: offsets, padded: pass.map(\.needsPad), ringTail: ringPos, end: next))
    }
}
