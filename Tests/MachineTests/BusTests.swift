import Testing
import Synchronization
@testable import Machine

final class RecordingDevice: BusDevice {
    let log = Mutex<[(String, UInt64, UInt64)]>([])
    let value: UInt64
    init(value: UInt64 = 0x1122334455667788) { self.value = value }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        log.withLock { $0.append(("r", offset, UInt64(data.count))) }
        data.storeLittleEndian(value)
    }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        log.withLock { $0.append(("w", offset, data.littleEndianValue)) }
    }
}

@Suite("Buses (no KVM)")
struct BusTests {
    @Test func dispatchesByRangeWithOffsets() throws {
        let bus = Bus(name: "test")
        let a = RecordingDevice(value: 0xaa), b = RecordingDevice(value: 0xbb)
        try bus.register(a, base: 0x100, size: 0x10, name: "a")
        try bus.register(b, base: 0x200, size: 0x10, name: "b")
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { _ = bus.read(0x104, $0) }
        #expect(v == 0xaa)
        withUnsafeMutableBytes(of: &v) { _ = bus.read(0x20f, $0) }
        #expect(v == 0xbb)
        var w: UInt16 = 0x1234
        withUnsafeBytes(of: &w) { _ = bus.write(0x202, $0) }
        #expect(b.log.withLock { $0.last! } == ("w", 2, 0x1234))
        #expect(a.log.withLock { $0.map(\.1) } == [4])
    }

    @Test func unclaimedReadsAreAllOnesAndCounted() throws {
        let bus = Bus(name: "test")
        try bus.register(RecordingDevice(), base: 0x100, size: 0x10, name: "a")
        var v: UInt64 = 0
        let claimed = withUnsafeMutableBytes(of: &v) { bus.read(0x110, $0) }
        #expect(!claimed && v == UInt64.max)
        var w: UInt8 = 1
        #expect(!withUnsafeBytes(of: &w) { bus.write(0xff, $0) })
        #expect(bus.unclaimedReads == 1 && bus.unclaimedWrites == 1)
    }

    @Test func refusesOverlaps() throws {
        let bus = Bus(name: "test")
        try bus.register(RecordingDevice(), base: 0x100, size: 0x10, name: "a")
        #expect(throws: BusError.self) { try bus.register(RecordingDevice(), base: 0x10f, size: 1, name: "b") }
        #expect(throws: BusError.self) { try bus.register(RecordingDevice(), base: 0xf0, size: 0x11, name: "c") }
        #expect(throws: BusError.self) { try bus.register(RecordingDevice(), base: 0x0, size: 0x1000, name: "d") }
        #expect(throws: BusError.emptyRange(name: "e")) { try bus.register(RecordingDevice(), base: 0x0, size: 0, name: "e") }
        #expect(throws: BusError.self) { try bus.register(RecordingDevice(), base: UInt64.max - 1, size: 4, name: "f") }
        try bus.register(RecordingDevice(), base: 0x110, size: 0x10, name: "adjacent")
        try bus.register(RecordingDevice(), base: 0xf0, size: 0x10, name: "below")
        #expect(bus.registrations.map(\.name) == ["below", "a", "adjacent"])
        #expect(bus.unregister(base: 0x100))
        try bus.register(RecordingDevice(), base: 0x100, size: 0x10, name: "again")
    }
}
