import TestSupport
import Logging
import Synchronization
import Testing
@testable import Machine

/// A clock the test moves by hand.
final class FakeClock: Sendable {
    private let nanoseconds = Atomic<Int64>(0)
    func advance(_ d: Duration) {
        nanoseconds.add(d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000, ordering: .relaxed)
    }
    var read: @Sendable () -> Duration { { [self] in .nanoseconds(nanoseconds.load(ordering: .relaxed)) } }
}

@Suite("RateLimitedLog (fake clock, no KVM)")
struct RateLimitedLogTests {
    @Test func burstThenSuppressedThenSummaryWhenLoggingResumes() {
        let capture = LogCapture()
        let clock = FakeClock()
        let log = RateLimitedLog(logger: capture.logger(), source: "dev0",
                                 policy: .init(burst: 3, interval: .seconds(10)), clock: clock.read)
        for i in 0..<10 { log.log(.warning, "bad write", "dev0: bad write \(i)") }
        #expect(capture.texts == ["dev0: bad write 0", "dev0: bad write 1", "dev0: bad write 2"])
        #expect(log.suppressedCount == 7)
        // Another kind from the same source has its own burst.
        log.log(.warning, "bad read", "dev0: bad read")
        #expect(capture.texts.last == "dev0: bad read")
        // Still inside the interval: suppressed.
        clock.advance(.seconds(9))
        log.log(.warning, "bad write", "dev0: bad write 10")
        #expect(capture.lines.count == 4)
        // The next interval: the summary first, then the line.
        clock.advance(.seconds(1))
        log.log(.warning, "bad write", "dev0: bad write 11")
        #expect(Array(capture.texts.suffix(2)) == ["dev0: bad write (8 similar messages suppressed)", "dev0: bad write 11"])
        #expect(capture.lines.allSatisfy { $0.level == .warning })
        #expect(log.suppressedCount == 8)
        // Nothing held back: flushing writes nothing.
        let before = capture.lines.count
        log.flush()
        #expect(capture.lines.count == before)
        // Two more are written, three held back and reported at the end (at their level).
        for i in 12..<17 { log.log(.debug, "bad write", "dev0: bad write \(i)") }
        #expect(capture.lines.count == before + 2)
        log.flush()
        #expect(capture.lines.last?.text == "dev0: bad write (3 similar messages suppressed)")
        #expect(capture.lines.last?.level == .debug)
        log.flush()
        #expect(capture.lines.count == before + 3)
        #expect(log.suppressedCount == 11)
    }

    @Test func summariesOfEveryKindAtFlushInAStableOrder() {
        let capture = LogCapture()
        let log = RateLimitedLog(logger: capture.logger(), source: "bus",
                                 policy: .init(burst: 1, interval: .seconds(5)), clock: FakeClock().read)
        for _ in 0..<4 { log.log(.info, "write", "w") }
        for _ in 0..<3 { log.log(.info, "read", "r") }
        log.flush()
        #expect(capture.texts == ["w", "r", "bus: read (2 similar messages suppressed)",
                                  "bus: write (3 similar messages suppressed)"])
    }

    @Test func suppressedAndDisabledMessagesAreNotBuilt() {
        let capture = LogCapture()
        let built = Atomic<Int>(0)
        func message(_ i: Int) -> Logger.Message {
            built.add(1, ordering: .relaxed)
            return "m\(i)"
        }
        let log = RateLimitedLog(logger: capture.logger(level: .warning), source: "s",
                                 policy: .init(burst: 2, interval: .seconds(5)), clock: FakeClock().read)
        for i in 0..<100 { log.log(.warning, "k", message(i)) }
        for i in 0..<100 { log.log(.debug, "k", message(i)) }   // below the logger's level: not even counted
        #expect(built.load(ordering: .relaxed) == 2)
        #expect(log.suppressedCount == 98)
        log.flush()
        #expect(capture.texts == ["m0", "m1", "s: k (98 similar messages suppressed)"])
    }
}
