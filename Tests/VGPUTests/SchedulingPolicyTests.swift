import Glibc
import SoftGPU
import Synchronization
import Testing
@testable import VGPU

/// A deterministic engine for policies (no threads, no clock): each client always has work (unless listed
/// idle), made of passes of `passLength` engine time each; a pass runs until it ends or its slice runs out
/// while another client waits (then its rest runs on the client's next turn, as a preempted pass resumes).
struct PolicySimulator {
    var weights: [Int: Int]
    var passLength: [Int: Duration]
    var remaining: [Int: Duration] = [:]
    var used: [Int: Duration] = [:]
    var clock: Duration = .zero
    /// The longest time one client held the engine in a row.
    var longestRun: [Int: Duration] = [:]
    private var lastClient: Int? = nil
    private var run: Duration = .zero

    init(weights: [Int: Int], passLength: [Int: Duration]) {
        self.weights = weights
        self.passLength = passLength
    }

    /// Runs `policy` for `duration` of engine time with the clients in `busy`; returns each one's engine time.
    mutating func run(_ policy: inout some SchedulingPolicy, for duration: Duration, busy: Set<Int>) -> [Int: Duration] {
        var got: [Int: Duration] = [:]
        let end = clock + duration
        while clock < end {
            let ready = busy.sorted().map { QueueView(client: $0, queued: 1, oldestTicket: 0, weight: weights[$0]!) }
            guard let id = policy.pick(ready) else { Issue.record("no client picked while \(ready.count) have work"); return got }
            #expect(busy.contains(id))
            let slice = policy.slice(for: id, ready: ready)
            policy.passStarted(client: id)
            let left = remaining[id] ?? passLength[id]!
            // Preempted at the slice only when another client waits (work-conserving).
            let ran = (ready.count > 1 ? slice.map { min($0, left) } : nil) ?? left
            remaining[id] = left - ran > .zero ? left - ran : nil
            policy.passEnded(client: id, ran: ran, submissions: remaining[id] == nil ? 1 : 0)
            got[id, default: .zero] += ran
            used[id, default: .zero] += ran
            clock += ran
            if lastClient == id { run += ran } else { run = ran; lastClient = id }
            longestRun[id] = max(longestRun[id] ?? .zero, run)
        }
        return got
    }
}

func shares(_ got: [Int: Duration]) -> [Int: Double] {
    let total = got.values.reduce(Duration.zero, +).nanoseconds
    return got.mapValues { $0.nanoseconds / total }
}

/// Within `tolerance` (relative) of the weights' entitlement.
func expectEntitled(_ got: [Int: Duration], weights: [Int: Int], tolerance: Double = 0.05,
                    sourceLocation: SourceLocation = #_sourceLocation) {
    let s = shares(got)
    let total = Double(weights.values.reduce(0, +))
    for (c, w) in weights {
        let want = Double(w) / total
        #expect(abs((s[c] ?? 0) - want) <= tolerance * want,
                "client \(c): share \(s[c] ?? 0), entitled to \(want) (\(s))", sourceLocation: sourceLocation)
    }
}

@Suite("Scheduling policies, deterministic (no clock, no threads)")
struct SchedulingPolicyTests {
    let weights = [1: 1, 2: 2, 3: 4]

    @Test(arguments: [0.3, 2.5, 50.0])   // pass lengths in ms: short, about a slice, long batches
    func weightedSharesFollowTheWeights(passMs: Double) {
        var p = WeightedPolicy()
        var sim = PolicySimulator(weights: weights, passLength: [1: .microseconds(passMs * 1000), 2: .microseconds(passMs * 1000),
                                                                 3: .microseconds(passMs * 1000)])
        let got = sim.run(&p, for: .seconds(2), busy: [1, 2, 3])
        expectEntitled(got, weights: weights)
        // Preemption bounds how long one client holds the engine while others wait: its slice.
        let slice3 = WeightedPolicy.defaultPeriod * 4 / 7
        #expect(sim.longestRun[3]! <= slice3 + .microseconds(passMs * 1000 + 1), "\(sim.longestRun)")
    }

    @Test func weightedSlicesAreThePeriodsShareOfTheBusyWeights() {
        var p = WeightedPolicy(period: .milliseconds(16), minimumSlice: .milliseconds(1))
        let ready = weights.map { QueueView(client: $0.key, queued: 1, oldestTicket: 0, weight: $0.value) }
        #expect(p.slice(for: 3, ready: ready) == .milliseconds(16) * 4 / 7)
        #expect(p.slice(for: 1, ready: ready) == .milliseconds(16) / 7)
        // Many clients: never below the minimum slice.
        let many = (1...40).map { QueueView(client: $0, queued: 1, oldestTicket: 0, weight: 1) }
        #expect(p.slice(for: 1, ready: many) == .milliseconds(1))
    }

    @Test func weightedIsWorkConservingAnIdleClientsShareGoesToTheBusyOnes() {
        var p = WeightedPolicy()
        var sim = PolicySimulator(weights: weights, passLength: [1: .milliseconds(3), 2: .milliseconds(3), 3: .milliseconds(3)])
        // Client 2 idle: 1 and 3 split the engine 1:4, and the engine never idles.
        let got = sim.run(&p, for: .seconds(1), busy: [1, 3])
        #expect(got[2] == nil)
        expectEntitled(got, weights: [1: 1, 3: 4])
        #expect(got.values.reduce(.zero, +) >= .seconds(1))
        // One client alone gets everything.
        #expect(sim.run(&p, for: .milliseconds(200), busy: [2]).keys.sorted() == [2])
    }

    @Test func aClientBackFromIdleDoesNotBankCredit() {
        var p = WeightedPolicy()
        var sim = PolicySimulator(weights: weights, passLength: [1: .milliseconds(2), 2: .milliseconds(2), 3: .milliseconds(2)])
        _ = sim.run(&p, for: .seconds(1), busy: [1, 2, 3])
        // Client 3 sleeps for 5 s of engine time while 1 and 2 work...
        _ = sim.run(&p, for: .seconds(5), busy: [1, 2])
        // ...and on its return gets its share, not the 5 s it "missed": in the next 100 ms it gets at
        // most its share plus one round of catch-up.
        let back = sim.run(&p, for: .milliseconds(100), busy: [1, 2, 3])
        #expect(back[3]! <= .milliseconds(100) * 4 / 7 + WeightedPolicy.defaultPeriod, "\(back)")
        #expect(back[1] != nil && back[2] != nil, "the others starved: \(back)")
        // And over a longer window, the shares are the weights again.
        expectEntitled(sim.run(&p, for: .seconds(2), busy: [1, 2, 3]), weights: weights)
    }

    @Test func weightedNeverStarvesALowWeightClient() {
        var p = WeightedPolicy()
        let w = [1: 1, 2: 16, 3: 16, 4: 16]
        var sim = PolicySimulator(weights: w, passLength: [1: .milliseconds(1), 2: .milliseconds(40), 3: .milliseconds(40), 4: .milliseconds(40)])
        let got = sim.run(&p, for: .milliseconds(500), busy: [1, 2, 3, 4])
        #expect((got[1] ?? .zero) > .milliseconds(5), "\(got)")
        expectEntitled(sim.run(&p, for: .seconds(3), busy: [1, 2, 3, 4]), weights: w)
    }

    @Test func fifoIgnoresWeightsAndNeverPreempts() {
        var p = FIFOPolicy()
        let ready = weights.map { QueueView(client: $0.key, queued: 1, oldestTicket: UInt64(10 - $0.key), weight: $0.value) }
        #expect(p.pick(ready) == 3)   // the oldest ticket
        #expect(p.slice(for: 3, ready: ready) == nil)
    }

    @Test func creditGivesWeightedSharesOfShortPassesButNeverPreempts() {
        var p = CreditPolicy()
        let ready = weights.map { QueueView(client: $0.key, queued: 1, oldestTicket: 0, weight: $0.value) }
        #expect(p.slice(for: 1, ready: ready) == nil)
        var sim = PolicySimulator(weights: weights, passLength: [1: .microseconds(500), 2: .microseconds(500), 3: .microseconds(500)])
        expectEntitled(sim.run(&p, for: .seconds(5), busy: [1, 2, 3]), weights: weights)
    }

    /// GPUvm's unfairness, as documented: without preemption a client whose batches are long holds the
    /// engine for a whole batch, so with equal weights it gets far more than half next to short batches.
    @Test func creditLetsALongBatchHoldTheEngineWeightedDoesNot() {
        let w = [1: 1, 2: 1]
        let lengths: [Int: Duration] = [1: .milliseconds(80), 2: .milliseconds(1)]
        var credit = CreditPolicy()
        var sim = PolicySimulator(weights: w, passLength: lengths)
        let c = shares(sim.run(&credit, for: .seconds(5), busy: [1, 2]))
        #expect(sim.longestRun[1]! >= .milliseconds(80))
        var weighted = WeightedPolicy()
        var sim2 = PolicySimulator(weights: w, passLength: lengths)
        expectEntitled(sim2.run(&weighted, for: .seconds(5), busy: [1, 2]), weights: w)
        #expect(sim2.longestRun[1]! <= WeightedPolicy.defaultPeriod / 2 + .microseconds(1))
        #expect(c[1]! > 0.5, "credit: \(c)")
    }
}

/// A client whose one pass is endless: it holds the engine until its slice runs out and another client
/// waits, then reports itself preempted (and resumes on its next pass), like a long SGEMM.
final class EndlessClient: DispatchClient, Sendable {
    let dispatchID: Int
    let schedulingWeight: Int
    let log: PassLog
    let turns = Atomic<Int>(0)
    let stop = Atomic<Bool>(false)
    init(_ id: Int, weight: Int = 1, log: PassLog) { dispatchID = id; schedulingWeight = weight; self.log = log }

    func readyWork(on engine: EngineID) -> QueueView? {
        stop.load(ordering: .relaxed) ? nil : QueueView(client: dispatchID, queued: 1, oldestTicket: 0)
    }

    func runPass(on engine: EngineID, slice: PassSlice) -> PassResult {
        turns.add(1, ordering: .relaxed)
        log.add("\(dispatchID) runs")
        guard let length = slice.length else { return PassResult(submissions: 0) }
        var end = ContinuousClock.now + length
        while !stop.load(ordering: .relaxed) {
            usleep(100)
            if ContinuousClock.now >= end {
                if slice.shouldYield() { return PassResult(submissions: 0, preempted: true) }
                end = ContinuousClock.now + length
            }
        }
        return PassResult(submissions: 1)
    }
}

@Suite("The dispatcher preempts a pass at the end of its slice only when others wait (fake clients)", .serialized)
struct PreemptionDispatchTests {
    @Test func anEndlessPassYieldsToWaitingWorkAndResumes() throws {
        let d = try EngineDispatcher(engine: .rcs, policy: WeightedPolicy(period: .milliseconds(4), minimumSlice: .milliseconds(1)))
        defer { d.stop() }
        let log = PassLog()
        let long = EndlessClient(1, log: log)
        let short = FakeClient(2, log: log)
        d.attach(long)
        #expect(waitUntil { long.turns.load(ordering: .relaxed) >= 1 })
        usleep(20_000)
        // Alone, it kept the engine past many slices (work-conserving: no preemption without a waiter).
        #expect(long.turns.load(ordering: .relaxed) == 1, "\(log.all)")
        d.attach(short)
        for _ in 0..<3 { short.enqueue(d) }
        d.notify()
        #expect(waitUntil { log.all.filter { $0.hasPrefix("2:") }.count == 3 }, "the waiting client never ran: \(log.all)")
        // The endless pass was preempted to let them run (it had started before they came), and resumes.
        #expect(waitUntil { long.turns.load(ordering: .relaxed) >= 2 }, "\(log.all)")
        #expect(log.all.first == "1 runs", "\(log.all)")
        long.stop.store(true, ordering: .relaxed)
    }
}
