import Glibc
import Machine
import Logging
import Synchronization

/// A swift-log handler that keeps every line it is given, for tests that count what a guest made the VMM log.
public final class LogCapture: Sendable {
    public struct Line: Sendable { public let level: Logger.Level; public let text: String }
    public init() {}
    private let store = Mutex<[Line]>([])

    /// A logger writing into this capture at `level` and above.
    public func logger(level: Logger.Level = .trace) -> Logger {
        var l = Logger(label: "test") { _ in Handler(capture: self) }
        l.logLevel = level
        return l
    }

    public var lines: [Line] { store.withLock { $0 } }
    public var texts: [String] { lines.map(\.text) }
    /// Total bytes written, one newline per line, as a stream handler would.
    public var bytes: Int { lines.reduce(0) { $0 + $1.text.utf8.count + 1 } }

    func append(_ line: Line) { store.withLock { $0.append(line) } }

    struct Handler: LogHandler {
        let capture: LogCapture
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            capture.append(Line(level: event.level, text: event.message.description))
        }
    }
}

/// The K of every "(K similar messages suppressed)" in `texts`, summed.
public func suppressedTotal(_ texts: [String]) -> Int {
    let tail = " similar messages suppressed)"
    return texts.reduce(0) { sum, t in
        guard t.hasSuffix(tail), let open = t.lastIndex(of: "("),
              let k = Int(t[t.index(after: open)...].dropLast(tail.count)) else { return sum }
        return sum + k
    }
}

/// Runs `body(i)` on `threads` OS threads released together, and waits for all of them.
public enum Hammer {
    final class Gate: Sendable { let arrived = Atomic<Int>(0) }
    public static func run(threads: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let gate = Gate()
        var tids: [pthread_t] = []
        for t in 0..<threads {
            if let tid = OSThread.spawn(name: "hammer\(t)", {
                gate.arrived.add(1, ordering: .sequentiallyConsistent)
                while gate.arrived.load(ordering: .sequentiallyConsistent) < threads { sched_yield() }
                body(t)
            }) { tids.append(tid) }
        }
        for t in tids { pthread_join(t, nil) }
    }
}

/// SplitMix64: a small deterministic generator for reproducible random tests (same seed, same sequence).
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// A value in 0..<n (n > 0).
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
