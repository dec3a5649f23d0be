import Logging
import Synchronization
import Testing
@testable import Machine

@Suite("Guest-triggered log lines are rate-limited (no KVM)")
struct GuestLogFloodTests {
    @Test func tenThousandUnclaimedAccessesLogABoundedNumberOfLines() throws {
        let capture = LogCapture()
        let bus = Bus(name: "port", logger: capture.logger(level: .debug))
        try bus.register(RecordingDevice(), base: 0x100, size: 0x10, name: "a")
        var v: UInt32 = 0
        for i in 0..<10_000 {
            let port = UInt64(0x200 + i % 64)   // different addresses are still the same kind of message
            if i % 2 == 0 {
                withUnsafeMutableBytes(of: &v) { _ = bus.read(port, $0) }
            } else {
                withUnsafeBytes(of: &v) { _ = bus.write(port, $0) }
            }
        }
        bus.flushSuppressedLog()
        // Every access is counted; only the lines are limited.
        #expect(bus.unclaimedReads == 5_000 && bus.unclaimedWrites == 5_000)
        let texts = capture.texts
        let detail = texts.filter { $0.hasPrefix("unclaimed port") }
        let summaries = texts.filter { $0.contains("similar messages suppressed") }
        #expect(detail.count <= 2 * RateLimitedLog.Policy.default.burst, "\(detail.count) lines for 10,000 accesses")
        #expect(detail.count > 0)
        #expect(detail.count + suppressedTotal(summaries) == 10_000)
        #expect(capture.lines.allSatisfy { $0.level == .debug })
        #expect(capture.bytes < 4_000, "\(capture.bytes) bytes of log")
    }

    @Test func unclaimedAccessesStayQuietAboveDebug() throws {
        let capture = LogCapture()
        let bus = Bus(name: "mmio", logger: capture.logger(level: .info))
        var v: UInt8 = 0
        for _ in 0..<100 { withUnsafeMutableBytes(of: &v) { _ = bus.read(0x1000, $0) } }
        bus.flushSuppressedLog()
        #expect(capture.lines.isEmpty)
        #expect(bus.unclaimedReads == 100)
    }
}
