import SoftGPU

/// What a scheduling policy sees of one client's (one vGPU's) queue on one physical engine.
public struct QueueView: Sendable, Equatable {
    /// The client (`DispatchClient.dispatchID`, the vGPU id).
    public var client: Int
    /// Checked (scanned and shadowed) submissions waiting.
    public var queued: Int
    /// The dispatcher-wide arrival number (`EngineDispatcher.ticket()`) of its oldest waiting submission.
    public var oldestTicket: UInt64

    public init(client: Int, queued: Int, oldestTicket: UInt64) {
        self.client = client
        self.queued = queued
        self.oldestTicket = oldestTicket
    }
}

/// Decides which client's work the engine runs next (one `EngineDispatcher` per physical engine asks it).
/// A value the dispatcher keeps under its lock: the methods run on the dispatcher thread (and `detached`
/// on the thread that detaches a client), one at a time, and must not block or call out.
///
/// The dispatcher tells the policy when a client's pass starts and ends and how long it held the engine,
/// so time-based policies (weighted time slices, credits) can charge the client; FIFO ignores that.
public protocol SchedulingPolicy: Sendable {
    /// The client to run next among those with work ready (`ready` is never empty); nil runs nobody now
    /// (the dispatcher waits for the next notification, e.g. a client whose budget refills later must
    /// be re-notified by whoever refills it).
    mutating func pick(_ ready: [QueueView]) -> Int?
    /// `client`'s pass is about to start on the engine.
    mutating func passStarted(client: Int)
    /// `client`'s pass ended after holding the engine for `ran`, having run `submissions` submissions
    /// (0: it started nothing, e.g. it was reset or paused meanwhile).
    mutating func passEnded(client: Int, ran: Duration, submissions: Int)
    /// `client` left the engine (its vGPU shut down).
    mutating func detached(client: Int)
}

extension SchedulingPolicy {
    public mutating func passStarted(client: Int) {}
    public mutating func passEnded(client: Int, ran: Duration, submissions: Int) {}
    public mutating func detached(client: Int) {}
}

/// First come, first served: the client whose oldest waiting submission arrived first runs next (it then
/// runs every submission it has queued that fits one pass). Two clients that keep submitting alternate.
public struct FIFOPolicy: SchedulingPolicy {
    public init() {}
    public mutating func pick(_ ready: [QueueView]) -> Int? {
        ready.min { ($0.oldestTicket, $0.client) < ($1.oldestTicket, $1.client) }?.client
    }
}
