import Logging
import Synchronization

/// A function on the PCI bus. The configuration space is the device's; `configWritten` lets it react
/// (BAR moves, enabling decoding) after the space has applied the write. `PCIBus` serialises the guest's
/// configuration accesses to one function: `configWritten` never runs twice at once for one function, and
/// no configuration access to that function (read or write) runs until it has returned, so a BAR move
/// is atomic to the guest. It must not make configuration accesses to its own function through the bus.
public protocol PCIFunction: AnyObject, Sendable {
    var config: PCIConfigSpace { get }
    func configWritten(offset: Int, size: Int)
}

public extension PCIFunction {
    func configWritten(offset: Int, size: Int) {}
}

/// The host bridge at 00:00.0.
public final class PCIHostBridge: PCIFunction {
    public let config = PCIConfigSpace(vendorID: 0x8086, deviceID: 0x1237, classCode: 0x06, subclass: 0x00)
    public init() {}
}

/// PCI bus 0 behind configuration mechanism #1 (ports 0xcf8 address, 0xcfc-0xcff data). Absent devices
/// and malformed accesses read all ones; writes to them are dropped.
///
/// Threads and ownership:
/// - vCPU threads access the ports concurrently; the address register is one atomic shared by all of
///   them, as on hardware (guests serialise their own address/data pairs);
/// - the table of functions is behind one Mutex, held only to look a function up;
/// - each function has its own configuration lock, held across a configuration access: for a write, the
///   config space update and the function's `configWritten` (BAR placement, KVM calls); for a read, the
///   read. Accesses to one function are serialised; different functions proceed in parallel. The table
///   lock is never held with a function's lock, and a function's lock never while taking the table lock.
public final class PCIBus: BusDevice {
    public static let configAddressPort: UInt64 = 0xcf8
    public static let portRangeSize: UInt64 = 8

    /// A function and the lock that serialises configuration accesses to it.
    private final class Slot: Sendable {
        let function: any PCIFunction
        private let configLock = Mutex(())
        init(_ f: any PCIFunction) { function = f }
        func withConfigLock<R>(_ body: () -> R) -> R { configLock.withLock { _ in body() } }
    }

    private let addressRegister = Atomic<UInt32>(0)
    private let functions = Mutex<[Int: Slot]>([:])   // key: device << 3 | function

    public init() {
        _ = try? add(PCIHostBridge(), device: 0)
    }

    public enum PCIError: Error, CustomStringConvertible {
        case slotTaken(Int, Int)
        case badSlot(Int, Int)
        public var description: String {
            switch self {
            case let .slotTaken(d, f): return "PCI slot 00:\(d).\(f) is already taken"
            case let .badSlot(d, f): return "PCI slot 00:\(d).\(f) does not exist (device 0-31, function 0-7)"
            }
        }
    }

    /// Places `fn` at 00:device.function.
    public func add(_ fn: any PCIFunction, device: Int, function: Int = 0) throws {
        guard (0..<32).contains(device), (0..<8).contains(function) else { throw PCIError.badSlot(device, function) }
        try functions.withLock { f in
            let key = device << 3 | function
            guard f[key] == nil else { throw PCIError.slotTaken(device, function) }
            f[key] = Slot(fn)
        }
    }

    /// The lowest free device number (function 0), if any.
    public func freeDeviceNumber() -> Int? {
        functions.withLock { f in (1..<32).first { f[$0 << 3] == nil } }
    }

    public func function(device: Int, function: Int = 0) -> (any PCIFunction)? {
        slot(device: device, function: function)?.function
    }

    private func slot(device: Int, function: Int) -> Slot? {
        guard (0..<32).contains(device), (0..<8).contains(function) else { return nil }
        return functions.withLock { $0[device << 3 | function] }
    }

    /// Config read by bus/device/function/offset, as mechanism #1 would do it. Waits for a write to the
    /// same function (and what it set off, like a BAR move) to finish.
    public func configRead(bus: Int, device: Int, function: Int, offset: Int, size: Int) -> UInt32 {
        let ones = UInt32.max >> (32 - 8 * UInt32(size))
        guard bus == 0, let s = slot(device: device, function: function) else { return ones }
        return s.withConfigLock { s.function.config.read(offset: offset, size: size) }
    }

    /// Config write: applies it to the function's config space and lets the function react, as one step
    /// with respect to every other configuration access to that function.
    public func configWrite(bus: Int, device: Int, function: Int, offset: Int, size: Int, value: UInt32) {
        guard bus == 0, let s = slot(device: device, function: function) else { return }
        guard PCIConfigSpace.isValidAccess(offset, size) else { return }
        s.withConfigLock {
            s.function.config.write(offset: offset, size: size, value: value)
            s.function.configWritten(offset: offset, size: size)
        }
    }

    // Port layout relative to 0xcf8: 0-3 address register, 4-7 data window.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let size = data.count
        if offset == 0 && size == 4 {
            data.storeLittleEndian(UInt64(addressRegister.load(ordering: .relaxed)))
            return
        }
        guard offset >= 4, offset + UInt64(size) <= 8, size == 1 || size == 2 || size == 4,
              let (b, d, f, reg) = decodeAddress() else {
            data.storeLittleEndian(UInt64.max)
            return
        }
        let off = reg + Int(offset - 4)
        guard off % size == 0 else { data.storeLittleEndian(UInt64.max); return }
        data.storeLittleEndian(UInt64(configRead(bus: b, device: d, function: f, offset: off, size: size)))
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let size = data.count
        if offset == 0 && size == 4 {
            addressRegister.store(UInt32(truncatingIfNeeded: data.littleEndianValue), ordering: .relaxed)
            return
        }
        guard offset >= 4, offset + UInt64(size) <= 8, size == 1 || size == 2 || size == 4,
              let (b, d, f, reg) = decodeAddress() else { return }
        let off = reg + Int(offset - 4)
        guard off % size == 0 else { return }
        configWrite(bus: b, device: d, function: f, offset: off, size: size, value: UInt32(truncatingIfNeeded: data.littleEndianValue))
    }

    /// (bus, device, function, register) from the address register, or nil when its enable bit is clear.
    private func decodeAddress() -> (Int, Int, Int, Int)? {
        let a = addressRegister.load(ordering: .relaxed)
        guard a & 0x8000_0000 != 0 else { return nil }
        return (Int((a >> 16) & 0xff), Int((a >> 11) & 0x1f), Int((a >> 8) & 0x7), Int(a & 0xfc))
    }
}
