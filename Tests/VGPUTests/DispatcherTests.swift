import Glibc
import SoftGPU
import Synchronization
import Testing
import TestSupport
@testable import VGPU

/// A recorder shared by fake clients and policies.
final class PassLog: Sendable {
    let entries = Mutex<[String]>([])
    func add(_ s: String) { entries.withLock { $0.append(s) } }
    var all: [String] { entries.withLock { $0 } }
}

/// A fake engine client: a queue of tickets; each pass runs exactly one submission (records it).
final class FakeClient: DispatchClient, Sendable {
    let dispatchID: Int
    let queue = Mutex<[UInt64]>([])
    let log: PassLog
    init(_ id: Int, log: PassLog) { dispatchID = id; self.log = log }

    func enqueue(_ d: EngineDispatcher) { let t = d.ticket(); queue.withLock { $0.append(t) } }

    func readyWork(on engine: EngineID) -> QueueView? {
        queue.withLock { q in q.first.map { QueueView(client: dispatchID, queued: q.count, oldestTicket: $0) } }
    }

    func runPass(on engine: EngineID, slice: PassSlice) -> PassResult {
        guard let t = queue.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { return PassResult(submissions: 0) }
        log.add("\(dispatchID):\(t)")
        return PassResult(submissions: 1)
    }
}

/// Wraps a policy and records what the dispatcher tells it.
struct RecordingPolicy<P: SchedulingPolicy>: SchedulingPolicy {
    var inner: P
    let log: PassLog
    mutating func pick(_ ready: [QueueView]) -> Int? { inner.pick(ready) }
    mutating func slice(for client: Int, ready: [QueueView]) -> Duration? { inner.slice(for: client, ready: ready) }
    mutating func passStarted(client: Int) { log.add("start \(client)"); inner.passStarted(client: client) }
    mutating func passEnded(client: Int, ran: Duration, submissions: Int) {
        log.add("end \(client) \(submissions) \(ran >= .zero)")
        inner.passEnded(client: client, ran: ran, submissions: submissions)
    }
    mutating func detached(client: Int) { log.add("detached \(client)"); inner.detached(client: client) }
}

/// Always prefers the highest client id (a policy that is not FIFO, to show the dispatcher obeys the policy).
struct HighestFirst: SchedulingPolicy {
    mutating func pick(_ ready: [QueueView]) -> Int? { ready.map(\.client).max() }
}

func waitUntil(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(200)
    }
    return condition()
}

@Suite("Engine dispatcher and scheduling policies (fake clients, no KVM)", .serialized)
struct DispatcherTests {
    @Test func fifoInterleavesTwoClientsByArrival() throws {
        let d = try EngineDispatcher(engine: .rcs, policy: FIFOPolicy())
        defer { d.stop() }
        let log = PassLog()
        let a = FakeClient(1, log: log), b = FakeClient(2, log: log)
        let sandboxed = PassLog()
        d.attach(a, sandbox: { sandboxed.add($0) })
        d.attach(b, sandbox: { sandboxed.add($0) })
        // A B A B A B by arrival (the dispatcher may start while they arrive: FIFO still runs them in order).
        for _ in 0..<3 { a.enqueue(d); b.enqueue(d) }
        d.notify()
        #expect(waitUntil { log.all.count == 6 })
        #expect(log.all.map { $0.split(separator: ":")[0] } == ["1", "2", "1", "2", "1", "2"], "\(log.all)")
        #expect(log.all.map { UInt64($0.split(separator: ":")[1])! } == Array(1...6))
        #expect(sandboxed.all == ["gpu-rcs"], "the dispatcher thread enters the first client's sandbox, once")
    }

    @Test func thePolicyDecidesAndIsToldAboutEveryPass() throws {
        let d = try EngineDispatcher(engine: .bcs)
        defer { d.stop() }
        let log = PassLog(), told = PassLog()
        d.setPolicy(RecordingPolicy(inner: HighestFirst(), log: told))
        let a = FakeClient(1, log: log), b = FakeClient(2, log: log)
        for _ in 0..<2 { a.enqueue(d); b.enqueue(d) }
        d.attach(b)   // B first: whether or not the dispatcher looks before A is attached, B runs first
        d.attach(a)
        #expect(waitUntil { log.all.count == 4 })
        // Client 2 first whenever it has work, whatever arrived first.
        let order = log.all.map { $0.split(separator: ":")[0] }
        #expect(order == ["2", "2", "1", "1"], "\(order)")
        #expect(waitUntil { told.all.count == 8 })
        for (i, id) in order.enumerated() {
            #expect(told.all[2 * i] == "start \(id)")
            #expect(told.all[2 * i + 1] == "end \(id) 1 true")
        }
        d.detach(a)
        #expect(told.all.last == "detached 1")
    }

    @Test func aDetachedClientIsNotRunAndWorkQueuedLaterRuns() throws {
        let d = try EngineDispatcher(engine: .rcs)
        defer { d.stop() }
        let log = PassLog()
        let a = FakeClient(1, log: log), b = FakeClient(2, log: log)
        d.attach(a)
        d.attach(b)
        d.detach(a)
        a.enqueue(d)
        b.enqueue(d)
        d.notify()
        #expect(waitUntil { log.all.count == 1 })
        usleep(20_000)
        #expect(log.all.map { $0.split(separator: ":")[0] } == ["2"])
        // Work queued after the dispatcher went to sleep runs on notify.
        b.enqueue(d)
        d.notify()
        #expect(waitUntil { log.all.count == 2 })
    }
}

@Suite("Shadow placement, a pure function (no KVM)")
struct ShadowPlacementTests {
    let arena = ShadowArena(gm: 0x1000_0000, bytes: 4 << 20, ringBytes: 1 << 20)

    @Test func fragmentsBackToBackPaddedAndBatchesPageAlignedAfterTheRing() throws {
        let pass = [ShadowFootprint(dwords: [3, 10]), ShadowFootprint(dwords: [4]), ShadowFootprint(dwords: [5, 1025, 1])]
        let p = try ShadowPlacement.place(pass, arena: arena).get()
        #expect(p.padded == [true, false, true])
        #expect(p.offsets == [[0, 1 << 20], [16], [32, (1 << 20) + 4096, (1 << 20) + 4096 + 8192]])
        #expect(p.ringTail == 32 + 24)
        #expect(p.ringTail % 8 == 0)
        #expect(p.end == (1 << 20) + 4096 + 8192 + 4096)
    }

    @Test func refusedWhenTheBatchesOverrunTheArenaOrTheFragmentsFillTheRing() {
        let big = ShadowFootprint(dwords: [2, Int((3 << 20) / 4) + 1])
        #expect(ShadowPlacement.place([big], arena: arena) == .failure(.init(needed: (1 << 20) + (3 << 20) + 4096, available: 4 << 20)))
        let full = ShadowFootprint(dwords: [Int((1 << 20) / 4)])
        #expect(ShadowPlacement.place([full], arena: arena) == .failure(.init(needed: 1 << 20, available: 1 << 20)))
        #expect(ShadowPlacement.place([ShadowFootprint(dwords: [Int((1 << 20) / 4) - 2])], arena: arena).map(\.ringTail) == .success((1 << 20) - 8))
    }

    @Test func groupTakesTheFirstAlwaysThenWhatFits() {
        #expect(ShadowPlacement.group([], arena: arena) == 0)
        let huge = ShadowFootprint(dwords: [2, Int((8 << 20) / 4)])
        #expect(ShadowPlacement.group([huge, ShadowFootprint(dwords: [2])], arena: arena) == 1)
        let quarterRing = ShadowFootprint(dwords: [Int((1 << 20) / 16)])
        #expect(ShadowPlacement.group(Array(repeating: quarterRing, count: 6), arena: arena) == 3)   // 4 would fill the ring
        let mib = ShadowFootprint(dwords: [2, Int((1 << 20) / 4)])
        #expect(ShadowPlacement.group(Array(repeating: mib, count: 5), arena: arena) == 3)   // 3 MiB of batches fit
    }

    /// Whatever `group` takes, `place` places (unless the first submission alone is too large): the mediator
    /// relies on this to refuse only single oversized submissions.
    @Test func everyGroupPlaces() {
        var rng = SplitMix64(seed: 7)
        for _ in 0..<2000 {
            let queue = (0..<Int.random(in: 1...8, using: &rng)).map { _ in
                ShadowFootprint(dwords: [Int.random(in: 0...70_000, using: &rng) * 2 + Int.random(in: 0...1, using: &rng)]
                                + (0..<Int.random(in: 0...3, using: &rng)).map { _ in Int.random(in: 1...300_000, using: &rng) })
            }
            let n = ShadowPlacement.group(queue, arena: arena)
            #expect(n >= 1)
            let firstFits = (try? ShadowPlacement.place([queue[0]], arena: arena).get()) != nil
            if firstFits { #expect((try? ShadowPlacement.place(Array(queue.prefix(n)), arena: arena).get()) != nil) }
        }
    }
}
