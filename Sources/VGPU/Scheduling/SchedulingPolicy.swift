import SoftGPU

/// What a scheduling policy sees of one client's (one vGPU's) queue on one physical engine.
public struct QueueView: Sendable, Equatable {
    /// The client (`DispatchClient.dispatchID`, the vGPU id).
    public var client: Int
    /// Checked (scanned and shadowed) submissions waiting (a preempted pass's submissions included).
    public var queued: Int
    /// The dispatcher-wide arrival number (`EngineDispatcher.ticket()`) of its oldest waiting submission.
    public var oldestTicket: UInt64
    /// The client's scheduling weight (its vGPU type's `weight`; at least 1).
    public var weight: Int

    public init(client: Int, queued: Int, oldestTicket: UInt64, weight: Int = 1) {
        self.client = client
        self.queued = queued
        self.oldestTicket = oldestTicket
        self.weight = max(1, weight)
    }
}

/// Decides which client's work the engine runs next and for how long (one `EngineDispatcher` per physical
/// engine asks it). A value the dispatcher keeps under its lock: the methods run on the dispatcher thread
/// (and `detached` on the thread that detaches a client), one at a time, and must not block or call out.
///
/// Policies see no clock: time is what the dispatcher tells them a pass held the engine (`passEnded`'s
/// `ran`), so a policy is a deterministic function of its inputs (DispatcherTests drive them directly).
public protocol SchedulingPolicy: Sendable {
    /// The client to run next among those with work ready (`ready` is never empty); nil runs nobody now
    /// (the dispatcher waits for the next notification).
    mutating func pick(_ ready: [QueueView]) -> Int?
    /// How long `client`'s pass may hold the engine before it is preempted at the next command boundary
    /// if another client has work waiting then (`ready`: the clients with work now, `client` included);
    /// nil: no limit, the pass runs to its end (non-preemptive).
    mutating func slice(for client: Int, ready: [QueueView]) -> Duration?
    /// `client`'s pass is about to start on the engine.
    mutating func passStarted(client: Int)
    /// `client`'s pass ended (or was preempted) after holding the engine for `ran`, having completed
    /// `submissions` submissions (0: none completed, e.g. it was preempted, reset or paused meanwhile).
    mutating func passEnded(client: Int, ran: Duration, submissions: Int)
    /// `client` left the engine (its vGPU shut down).
    mutating func detached(client: Int)
}

extension SchedulingPolicy {
    public mutating func slice(for client: Int, ready: [QueueView]) -> Duration? { nil }
    public mutating func passStarted(client: Int) {}
    public mutating func passEnded(client: Int, ran: Duration, submissions: Int) {}
    public mutating func detached(client: Int) {}
}

/// The policies `--gpu-scheduler` offers.
public enum SchedulerKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// `WeightedPolicy`, the default.
    case weighted
    /// `FIFOPolicy`.
    case fifo
    /// `CreditPolicy`.
    case credit

    public static let `default` = SchedulerKind.weighted

    /// A fresh policy of this kind with its documented parameters.
    public func makePolicy() -> any SchedulingPolicy {
        switch self {
        case .weighted: return WeightedPolicy()
        case .fifo: return FIFOPolicy()
        case .credit: return CreditPolicy()
        }
    }

    /// "weighted, fifo or credit", for messages.
    public static var names: String {
        let n = allCases.map(\.rawValue)
        return n.dropLast().joined(separator: ", ") + " or " + n.last!
    }

    public var description: String { rawValue }
}

/// First come, first served: the client whose oldest waiting submission arrived first runs next (it then
/// runs every submission it has queued that fits one pass, to the end: no preemption). Two clients that
/// keep submitting alternate; weights are ignored.
public struct FIFOPolicy: SchedulingPolicy {
    public init() {}
    public mutating func pick(_ ready: [QueueView]) -> Int? {
        ready.min { ($0.oldestTicket, $0.client) < ($1.oldestTicket, $1.client) }?.client
    }
}

/// Weighted time slices (the default; GVT-g's weighted round robin, made preemptive and exact with virtual
/// time as in stride scheduling / WFQ):
/// - every client has a virtual time that grows by `ran / weight` for each pass; the ready client with the
///   smallest virtual time runs next (ties: lowest id), so busy clients share the engine in proportion to
///   their weights, and a client waiting for the engine always gets it after a bounded time (no starvation);
/// - its slice is `period × weight / (sum of the weights of the clients with work)`, at least `minimumSlice`:
///   with `period` 16 ms, four equal vGPUs get 4 ms each per 16 ms round, and vGPUs of weights 1, 2 and 4
///   get 2.3, 4.6 and 9.1 ms. When the slice has run out and another client waits, the pass is preempted at
///   the next command boundary; when nobody waits it goes on (work-conserving: an idle client's share goes
///   to the busy ones, and the engine never idles while work waits);
/// - a client that was idle does not bank credit: when it becomes ready again its virtual time is raised to
///   at least the system's virtual time (that of the last client picked) less one round (`period /
///   sum of weights`), so it gets at most one round's worth of catch-up before it is back to its share.
public struct WeightedPolicy: SchedulingPolicy {
    /// The scheduling period: in each period every busy client gets its weight's share.
    public let period: Duration
    /// The shortest slice (bounds the switching overhead with many clients).
    public let minimumSlice: Duration
    /// Virtual time per client, in nanoseconds of engine time divided by the weight.
    private var virtualTime: [Int: Double] = [:]
    /// The clients that had work at the last pick (a client not in it was idle).
    private var active: Set<Int> = []
    private var weights: [Int: Int] = [:]
    /// The system's virtual time: the virtual time of the client last picked (never decreases).
    private var now: Double = 0

    public static let defaultPeriod: Duration = .milliseconds(16)
    public static let defaultMinimumSlice: Duration = .milliseconds(1)

    public init(period: Duration = WeightedPolicy.defaultPeriod, minimumSlice: Duration = WeightedPolicy.defaultMinimumSlice) {
        self.period = period
        self.minimumSlice = minimumSlice
    }

    public mutating func pick(_ ready: [QueueView]) -> Int? {
        let totalWeight = ready.reduce(0) { $0 + $1.weight }
        let round = period.nanoseconds / Double(max(1, totalWeight))
        for q in ready {
            weights[q.client] = q.weight
            if !active.contains(q.client) {
                // Back from idle (or new): at most one round behind the system's virtual time.
                virtualTime[q.client] = max(virtualTime[q.client] ?? now - round, now - round)
            }
        }
        active = Set(ready.map(\.client))
        guard let next = ready.min(by: { (virtualTime[$0.client]!, $0.client) < (virtualTime[$1.client]!, $1.client) }) else { return nil }
        now = max(now, virtualTime[next.client]!)
        return next.client
    }

    public mutating func slice(for client: Int, ready: [QueueView]) -> Duration? {
        let total = ready.reduce(0) { $0 + $1.weight }
        let w = ready.first { $0.client == client }?.weight ?? 1
        return max(minimumSlice, period * w / max(1, total))
    }

    public mutating func passEnded(client: Int, ran: Duration, submissions: Int) {
        virtualTime[client, default: now] += ran.nanoseconds / Double(max(1, weights[client] ?? 1))
    }

    public mutating func detached(client: Int) {
        virtualTime[client] = nil
        weights[client] = nil
        active.remove(client)
    }
}

/// GPUvm's CREDIT scheduler (Suzuki et al., ATC'14; gxen `a3_credit_scheduler.cc`), with weights: every
/// `period` of engine time each attached client is given `period × weight / (sum of all attached clients'
/// weights)` of credit, capped at that amount (an idle client banks at most one period's share); a pass is
/// charged what it held the engine. Clients sit in a round-robin list: the first one in the list with work
/// and positive credit runs; a client whose credit goes negative moves to the tail; when no client with
/// work has credit left, the first in the list with work runs (work-conserving). Non-preemptive, as GPUvm:
/// a pass runs to its end, so a long batch holds the engine past its share.
public struct CreditPolicy: SchedulingPolicy {
    public let period: Duration
    private var order: [Int] = []
    private var credit: [Int: Double] = [:]
    private var weights: [Int: Int] = [:]
    /// Engine time charged since the last refill.
    private var sinceRefill: Double = 0

    public static let defaultPeriod: Duration = .milliseconds(100)

    public init(period: Duration = CreditPolicy.defaultPeriod) { self.period = period }

    private func share(_ client: Int) -> Double {
        let total = weights.values.reduce(0, +)
        return period.nanoseconds * Double(weights[client] ?? 1) / Double(max(1, total))
    }

    public mutating func pick(_ ready: [QueueView]) -> Int? {
        for q in ready where weights[q.client] == nil {
            weights[q.client] = q.weight
            order.append(q.client)
        }
        for q in ready where credit[q.client] == nil { credit[q.client] = share(q.client) }
        let withWork = Set(ready.map(\.client))
        return order.first { withWork.contains($0) && credit[$0, default: 0] > 0 } ?? order.first { withWork.contains($0) }
    }

    public mutating func passEnded(client: Int, ran: Duration, submissions: Int) {
        let t = ran.nanoseconds
        credit[client, default: 0] -= t
        if credit[client, default: 0] < 0, let i = order.firstIndex(of: client) {
            order.remove(at: i)
            order.append(client)
        }
        sinceRefill += t
        while sinceRefill >= period.nanoseconds {
            sinceRefill -= period.nanoseconds
            for c in order { credit[c] = min(credit[c, default: 0] + share(c), share(c)) }
        }
    }

    public mutating func detached(client: Int) {
        order.removeAll { $0 == client }
        credit[client] = nil
        weights[client] = nil
    }
}

extension Duration {
    /// The duration in nanoseconds, as a Double.
    var nanoseconds: Double {
        let c = components
        return Double(c.seconds) * 1e9 + Double(c.attoseconds) / 1e9
    }
}
