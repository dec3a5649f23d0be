import TestSupport
import Glibc
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

/// A PCI function that notices when two configuration writes are being handled at once, the way a BAR move
/// in one vCPU would overlap a BAR move in another.
final class OverlapDetectingFunction: PCIFunction {
    let config = PCIConfigSpace(vendorID: 0x1234, deviceID: 0x0002, classCode: 0x03, subclass: 0x80)
    private let inside = Atomic<Int>(0)
    let overlaps = Atomic<Int>(0)
    let handled = Atomic<Int>(0)
    init() { config.addBar(PCIBar(index: 0, size: 0x1000, kind: .memory32)) }

    func configWritten(offset: Int, size: Int) {
        if inside.add(1, ordering: .sequentiallyConsistent).newValue > 1 { overlaps.add(1, ordering: .relaxed) }
        // Placement takes a while (bus registration, ioeventfds): give another thread the chance to come in.
        sched_yield()
        handled.add(1, ordering: .relaxed)
        inside.subtract(1, ordering: .sequentiallyConsistent)
    }
}

@Suite("PCI configuration writes to one device are serialised (no KVM)")
struct PCIConfigSerialisationTests {
    @Test func concurrentBARMovesThroughConf1NeverOverlap() throws {
        let bus = PCIBus()
        let f = OverlapDetectingFunction()
        try bus.add(f, device: 4)
        let threads = 4, rounds = 4_000
        let address: UInt32 = 0x8000_0000 | 4 << 11 | 0x10
        Hammer.run(threads: threads) { t in
            for i in 0..<rounds {
                var a = address
                withUnsafeBytes(of: &a) { bus.write(offset: 0, data: $0) }
                var value = UInt32(0xE000_0000 + ((t * rounds + i) % 16) << 12)
                withUnsafeBytes(of: &value) { bus.write(offset: 4, data: $0) }
            }
        }
        #expect(f.handled.load(ordering: .relaxed) == threads * rounds)
        #expect(f.overlaps.load(ordering: .relaxed) == 0, "configuration writes to one device ran concurrently")
    }
}


@Suite("Bus moves for BAR placement (no KVM)")
struct BusMoveTests {
    @Test func moveIsOneStepAndChangesNothingWhenItCannot() throws {
        let bus = Bus(name: "test")
        let a = RecordingDevice(value: 0xaa), b = RecordingDevice(value: 0xbb)
        try bus.move(a, from: nil, to: 0x100, size: 0x10, name: "a")
        try bus.register(b, base: 0x300, size: 0x10, name: "b")
        try bus.move(a, from: 0x100, to: 0x200, size: 0x10, name: "a")
        #expect(bus.registrations.map(\.base) == [0x200, 0x300])
        // Overlapping its own old range is fine; overlapping another device throws and leaves a where it was.
        try bus.move(a, from: 0x200, to: 0x208, size: 0x10, name: "a")
        #expect(throws: BusError.self) { try bus.move(a, from: 0x208, to: 0x2f8, size: 0x10, name: "a") }
        #expect(bus.registrations.map(\.base) == [0x208, 0x300])
        // Only the device itself is removed from its base.
        #expect(!bus.unregister(a, base: 0x300))
        #expect(bus.unregister(a, base: 0x208))
        #expect(bus.registrations.map(\.name) == ["b"])
    }
}
