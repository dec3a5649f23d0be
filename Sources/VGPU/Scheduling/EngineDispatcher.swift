import Glibc
import KVM
import Machine
import SoftGPU
import Synchronization

/// One client of a physical engine: a vGPU's checked work on that engine.
public protocol DispatchClient: AnyObject, Sendable {
    /// The client's id for the policy (the vGPU id; unique among a dispatcher's clients).
    var dispatchID: Int { get }
    /// The client's scheduling weight (its vGPU type's `weight`); 1 unless told otherwise.
    var schedulingWeight: Int { get }
    /// The client's checked work ready to run on `engine` now (a preempted pass included); nil when there
    /// is none (or the client is paused or already running). Called on the dispatcher thread without the
    /// dispatcher's lock.
    func readyWork(on engine: EngineID) -> QueueView?
    /// Runs one pass of the client's work on `engine` (the dispatcher thread, without the dispatcher's
    /// lock) and returns when the physical engine is idle again: the pass ended, or `slice` ran out while
    /// another client waited (`slice.shouldYield()`) and the pass was suspended at a command boundary, to
    /// resume exactly there on the client's next pass.
    func runPass(on engine: EngineID, slice: PassSlice) -> PassResult
}

extension DispatchClient {
    public var schedulingWeight: Int { 1 }
}

/// How long a pass may hold the engine: given by the dispatcher to `DispatchClient.runPass`.
public struct PassSlice: Sendable {
    /// The pass may hold the engine this long; then it yields if `shouldYield()` (else it goes on for
    /// another slice and asks again). nil: no limit, the pass runs to its end.
    public let length: Duration?
    private let othersWaiting: @Sendable () -> Bool

    public init(length: Duration?, othersWaiting: @escaping @Sendable () -> Bool) {
        self.length = length
        self.othersWaiting = othersWaiting
    }

    /// True when another client has work waiting for the engine (asked when the slice has run out).
    public func shouldYield() -> Bool { othersWaiting() }

    /// Run to the end.
    public static let unlimited = PassSlice(length: nil) { false }
}

/// What a pass did.
public struct PassResult: Sendable, Equatable {
    /// Submissions that completed in this pass.
    public var submissions: Int
    /// The pass was suspended when its slice ran out; its rest runs on the client's next pass.
    public var preempted: Bool

    public init(submissions: Int, preempted: Bool = false) {
        self.submissions = submissions
        self.preempted = preempted
    }
}

/// The scheduler of one physical engine shared by every vGPU on a `GPUHost` (GVT-g's per-engine
/// scheduler): its thread picks, through a pluggable `SchedulingPolicy` (`WeightedPolicy` by default), the
/// next client's checked work and runs it as one pass on the engine for at most the policy's time slice
/// while others wait (then the client suspends it at a command boundary), so there is at most one pass on
/// the engine at a time and no engine lock.
///
/// Threads and ownership:
/// - the dispatcher thread (`gpuN-rcs`, `gpuN-bcs`) is started by the first `attach`, placed by
///   `ThreadPlacement` (pinned to its device CPU when one is set), and then enters the
///   seccomp filter the attaching client asks for (`sandbox`, the device filter of its VM); it is the only
///   thread that starts passes on the engine. It sleeps on `wake` (a blocking eventfd) until `notify()`;
///   a notification between its last look and its sleep is not lost (the eventfd counts);
/// - `state` (one Mutex) holds the clients, the policy and the stop flag; it is never held while calling
///   a client or blocking. The policy's methods run under it. During a pass the running client asks,
///   through its `PassSlice`, whether others wait: that calls the other clients' `readyWork` on the
///   dispatcher thread, without the lock;
/// - clients are held strongly from `attach` to `detach`; `detach` does not wait for a pass in progress
///   (the client waits for its own passes: a vGPU holds its run lock across `runPass`), and a client may
///   be asked `readyWork`/`runPass` once more right after `detach` returned: it must then decline;
/// - `stop()` (GPUHost's deinit) ends the thread after the pass in progress.
public final class EngineDispatcher: @unchecked Sendable {
    public let engine: EngineID
    /// The dispatcher thread's name (`gpuN-rcs` for GPUHost number N).
    public let threadName: String
    private struct State {
        var clients: [any DispatchClient] = []
        var policy: any SchedulingPolicy
        var stopping = false
        var thread: pthread_t? = nil
    }
    private let state: Mutex<State>
    private let wake: EventFD
    private let tickets = Atomic<UInt64>(0)

    public init(engine: EngineID, threadName: String? = nil, policy: any SchedulingPolicy = WeightedPolicy()) throws {
        self.engine = engine
        self.threadName = threadName ?? "gpu-\(engine)".lowercased()
        state = Mutex(State(policy: policy))
        wake = try EventFD(nonBlocking: false)
    }

    /// A dispatcher-wide arrival number for a submission being queued (FIFO order across clients).
    public func ticket() -> UInt64 { tickets.add(1, ordering: .relaxed).newValue }

    /// Replaces the scheduling policy (between passes).
    public func setPolicy(_ policy: any SchedulingPolicy) {
        state.withLock { $0.policy = policy }
        notify()
    }

    /// Adds a client; the first one starts the dispatcher thread, which first calls `sandbox(threadName)`.
    public func attach(_ client: any DispatchClient, sandbox: @escaping @Sendable (String) -> Void = { _ in }) {
        let start = state.withLock { s -> Bool in
            s.clients.append(client)
            return s.thread == nil && !s.stopping
        }
        if start {
            let name = threadName
            let t = OSThread.spawn(name: name) { [self] in
                ThreadPlacement.placeDeviceThread()   // before the filter (no sched_setaffinity in it)
                sandbox(name)
                loop()
            }
            state.withLock { $0.thread = t }
        }
        notify()
    }

    /// Removes a client (its vGPU shuts down).
    public func detach(_ client: any DispatchClient) {
        state.withLock { s in
            s.clients.removeAll { $0 === client }
            s.policy.detached(client: client.dispatchID)
        }
    }

    /// Some client may have work ready (queued, or resumed).
    public func notify() { wake.signal() }

    /// Ends the dispatcher thread after the pass in progress (if any) and waits for it, unless called on
    /// the dispatcher thread itself.
    public func stop() {
        let t = state.withLock { s -> pthread_t? in
            s.stopping = true
            defer { s.thread = nil }
            return s.thread
        }
        notify()
        guard let t else { return }
        OSThread.join(t)
    }

    private var stopping: Bool { state.withLock { $0.stopping } }

    private func loop() {
        while !stopping {
            _ = wake.consume()   // blocks until notified
            drain()
        }
    }

    /// Whether a client other than `running` has work ready now (clients attached meanwhile included).
    private func othersWaiting(than running: any DispatchClient) -> Bool {
        let clients = state.withLock { $0.clients }
        return clients.contains { $0 !== running && $0.readyWork(on: engine) != nil }
    }

    /// Runs passes until no client has work ready.
    func drain() {
        while !stopping {
            let clients = state.withLock { $0.clients }
            var ready: [QueueView] = []
            for c in clients {
                if var v = c.readyWork(on: engine) {
                    v.weight = max(1, c.schedulingWeight)
                    ready.append(v)
                }
            }
            guard !ready.isEmpty else { return }
            let chosen = state.withLock { s -> (client: any DispatchClient, slice: Duration?)? in
                guard let id = s.policy.pick(ready), let c = s.clients.first(where: { $0.dispatchID == id }) else { return nil }
                let slice = s.policy.slice(for: id, ready: ready)
                s.policy.passStarted(client: id)
                return (c, slice)
            }
            guard let chosen else { return }
            let running = chosen.client
            let slice = PassSlice(length: chosen.slice) { [self] in othersWaiting(than: running) }
            let t0 = ContinuousClock.now
            let result = chosen.client.runPass(on: engine, slice: slice)
            let took = ContinuousClock.now - t0
            state.withLock { $0.policy.passEnded(client: chosen.client.dispatchID, ran: took, submissions: result.submissions) }
        }
    }
}
