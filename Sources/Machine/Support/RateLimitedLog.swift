import Logging
import Synchronization

/// The log lines a guest can cause, rate-limited per message kind, in the style of the kernel's
/// `printk_ratelimit` and GVT-g's `gvt_vgpu_err`: in each interval at most `burst` lines of one kind are
/// written and the rest are only counted. The count comes out as one line,
/// "SOURCE: KIND (K similar messages suppressed)", when that kind logs again in a later interval and when
/// `flush()` is called (at the VM's end). Counters of the events themselves belong to the caller and count
/// every event; only the lines are limited.
///
/// Use one instance per source (a bus, a vGPU, a machine's vCPUs). A kind is one of a small, fixed set of
/// strings per source, never built from guest-controlled values, so the table of kinds stays small.
/// Levels the logger does not write cost one comparison and are neither written nor counted.
///
/// Threads and ownership:
/// - any thread may call `log` and `flush` (vCPU threads, device threads, the monitor);
/// - the per-kind intervals and counts are in one private `State` behind one `Mutex`; the clock is read
///   under it, but the message is built and the logger runs after it is dropped.
public final class RateLimitedLog: Sendable {
    /// How many lines of one kind may be written per interval.
    public struct Policy: Sendable, Equatable {
        public var burst: Int
        public var interval: Duration
        public init(burst: Int, interval: Duration) {
            self.burst = burst
            self.interval = interval
        }
        /// The kernel's defaults (DEFAULT_RATELIMIT_BURST, DEFAULT_RATELIMIT_INTERVAL): 10 lines per 5 s.
        public static let `default` = Policy(burst: 10, interval: .seconds(5))
    }

    public let logger: Logger
    /// Names the source in summary lines, e.g. "vgpu0" or "mmio bus".
    public let source: String
    public let policy: Policy
    /// Monotonic time since an arbitrary origin; injectable so tests need no real time.
    private let now: @Sendable () -> Duration

    private struct Interval {
        var start: Duration
        var written: Int = 0
        var suppressed: UInt64 = 0
        var level: Logger.Level
    }
    private struct State {
        var intervals: [String: Interval] = [:]
        var suppressedTotal: UInt64 = 0
    }
    private let state = Mutex(State())

    /// `clock` returns monotonic time since any fixed origin; nil uses `ContinuousClock`.
    public init(logger: Logger, source: String, policy: Policy = .default, clock: (@Sendable () -> Duration)? = nil) {
        self.logger = logger
        self.source = source
        self.policy = policy
        if let clock {
            now = clock
        } else {
            let origin = ContinuousClock.now
            now = { ContinuousClock.now - origin }
        }
    }

    /// Writes `message` at `level` unless `kind` has used up its burst in the current interval. The message
    /// is only built when it is written.
    public func log(_ level: Logger.Level, _ kind: String, _ message: @autoclosure () -> Logger.Message,
                    file: String = #fileID, function: String = #function, line: UInt = #line) {
        guard logger.logLevel <= level else { return }
        let t = now()
        let policy = self.policy
        let (write, resumed) = state.withLock { s -> (Bool, (count: UInt64, level: Logger.Level)?) in
            var i = s.intervals[kind] ?? Interval(start: t, level: level)
            var resumed: (UInt64, Logger.Level)? = nil
            if t - i.start >= policy.interval {
                if i.suppressed > 0 { resumed = (i.suppressed, i.level) }
                i = Interval(start: t, level: level)
            }
            let write = i.written < policy.burst
            if write {
                i.written += 1
            } else {
                i.suppressed += 1
                s.suppressedTotal += 1
            }
            i.level = level
            s.intervals[kind] = i
            return (write, resumed)
        }
        if let r = resumed { logger.log(level: r.level, summary(kind, r.count), file: file, function: function, line: line) }
        if write { logger.log(level: level, message(), file: file, function: function, line: line) }
    }

    /// Writes the summary line of every kind with lines suppressed since its last summary (call at the end).
    public func flush(file: String = #fileID, function: String = #function, line: UInt = #line) {
        let pending = state.withLock { s -> [(kind: String, count: UInt64, level: Logger.Level)] in
            var out: [(String, UInt64, Logger.Level)] = []
            for (k, i) in s.intervals where i.suppressed > 0 {
                out.append((k, i.suppressed, i.level))
                s.intervals[k]?.suppressed = 0
            }
            return out.sorted { $0.0 < $1.0 }
        }
        for p in pending { logger.log(level: p.level, summary(p.kind, p.count), file: file, function: function, line: line) }
    }

    /// Lines suppressed so far, over all kinds.
    public var suppressedCount: UInt64 { state.withLock { $0.suppressedTotal } }

    private func summary(_ kind: String, _ count: UInt64) -> Logger.Message {
        "\(source): \(kind) (\(count) similar messages suppressed)"
    }
}
