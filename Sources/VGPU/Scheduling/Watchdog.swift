import Glibc
import KVM
import Machine
import SoftGPU
import Synchronization

/// A client's submission that holds a physical engine now, as the watchdog sees it.
public struct RunningSubmission: Sendable, Equatable {
    /// The client's own number for the submission on that engine (1, 2, ...).
    public var submission: UInt64
    /// The look's time minus the engine time the submission has had so far (never more than it had).
    public var since: ContinuousClock.Instant
    /// Which pass it belongs to (the client's own tag; a late verdict for an older pass is ignored).
    public var pass: UInt64

    public init(submission: UInt64, since: ContinuousClock.Instant, pass: UInt64) {
        self.submission = submission
        self.since = since
        self.pass = pass
    }
}

/// What the watchdog needs of a client (a vGPU).
public protocol WatchdogClient: AnyObject, Sendable {
    /// The submission of this client on engine `e` now (nil: none of its work is on `e`). Called on the
    /// watchdog thread, without the watchdog's lock; `now` is the time of this look.
    func runningSubmission(on e: EngineID, now: ContinuousClock.Instant) -> RunningSubmission?
    /// `submission` has held engine `e` past `limit` (since `exceededAt`): reset the client. Called on the
    /// watchdog thread, without the watchdog's lock; may block until the engine has stopped the work.
    func hung(on e: EngineID, _ submission: RunningSubmission, limit: Duration, exceededAt: ContinuousClock.Instant)
}

/// The GPU's watchdog (one per `GPUHost`): finds a client whose one submission has held a physical engine
/// longer than `limit` (default 500 ms, `defaultLimit`) and tells that client to reset itself (`WatchdogClient.hung`);
/// the other clients' work is not touched. docs/vgpu.md section 4 ("Hangs") describes what the guest sees.
///
/// Threads and ownership:
/// - the watchdog thread (`gpuN-watchdog`) is started by the first `attach` and enters the seccomp
///   filter the attaching client asks for (its VM's device filter). While no client has work on an engine
///   it sleeps on `wake` (an eventfd a client signals when one of its passes starts); while some work is
///   on an engine it looks every `tick` (a quarter of the limit, at most 10 ms) and at the earliest deadline;
/// - `state` (one Mutex) holds the clients, the limit and the stop flag; it is never held while calling
///   a client;
/// - a client may be asked once more right after `detach` returned: it must then decline;
/// - `stop()` (GPUHost's deinit) ends the thread and waits for it.
public final class GPUWatchdog: @unchecked Sendable {
    /// The limit of a `GPUHost()`: one submission may hold an engine for this long. 500 ms; 10 s in debug
    /// builds, whose software GPU computes some 30 times slower (the same work takes that much longer).
    #if DEBUG
    public static let defaultLimit: Duration = .seconds(10)
    #else
    public static let defaultLimit: Duration = .milliseconds(500)
    #endif
    /// The longest sleep between two looks while work is on an engine.
    public static let maximumTick: Duration = .milliseconds(10)

    public let threadName: String
    private struct State {
        var clients: [any WatchdogClient] = []
        var limit: Duration?
        var stopping = false
        var thread: pthread_t? = nil
    }
    private let state: Mutex<State>
    private let wake: EventFD

    /// `limit` nil: no watchdog (work may hold an engine until the engine's own 60 s bound).
    public init(threadName: String = "gpu-watchdog", limit: Duration? = GPUWatchdog.defaultLimit) throws {
        self.threadName = threadName
        state = Mutex(State(limit: limit))
        wake = try EventFD(nonBlocking: true)
    }

    /// How long one submission may hold an engine (nil: unlimited).
    public var limit: Duration? {
        get { state.withLock { $0.limit } }
        set { state.withLock { $0.limit = newValue }; notify() }
    }

    /// Adds a client; the first one starts the thread, which first calls `sandbox(threadName)`.
    public func attach(_ client: any WatchdogClient, sandbox: @escaping @Sendable (String) -> Void = { _ in }) {
        let start = state.withLock { s -> Bool in
            s.clients.append(client)
            return s.thread == nil && !s.stopping
        }
        if start {
            let name = threadName
            let t = OSThread.spawn(name: name) { [self] in
                sandbox(name)
                loop()
            }
            state.withLock { $0.thread = t }
        }
    }

    public func detach(_ client: any WatchdogClient) {
        state.withLock { s in s.clients.removeAll { $0 === client } }
    }

    /// Some client's work went onto an engine: start looking.
    public func notify() { wake.signal() }

    /// Ends the thread and waits for it (unless called on it).
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

    /// The sleep between looks while work is on an engine, for `limit`.
    public static func tick(for limit: Duration) -> Duration {
        max(.milliseconds(1), min(maximumTick, limit / 4))
    }

    private func loop() {
        var fds = [pollfd(fd: wake.fd, events: Int16(POLLIN), revents: 0)]
        while true {
            let (clients, limit, stopping) = state.withLock { ($0.clients, $0.limit, $0.stopping) }
            if stopping { return }
            var sleep: Duration? = nil
            if let limit { sleep = look(clients, limit: limit) }
            var timeout: Int32 = -1
            if let d = sleep {
                let ms = (d.components.seconds * 1000) + (d.components.attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000
                timeout = Int32(max(1, min(ms, 1000)))
            }
            _ = poll(&fds, 1, timeout)
            _ = wake.consume()
        }
    }

    /// One look at every client's engines: resets the hung ones; returns how long to sleep (nil: no work
    /// on any engine, sleep until notified).
    func look(_ clients: [any WatchdogClient], limit: Duration) -> Duration? {
        let now = ContinuousClock.now
        var next: Duration? = nil
        for c in clients {
            for e in EngineID.allCases {
                guard let r = c.runningSubmission(on: e, now: now) else { continue }
                let deadline = r.since + limit
                if now >= deadline {
                    c.hung(on: e, r, limit: limit, exceededAt: deadline)
                    next = .zero   // look again at once: the engine may have other work now
                } else {
                    next = min(next ?? .seconds(3600), deadline - now)
                }
            }
        }
        return next.map { min($0, Self.tick(for: limit)) }
    }
}
