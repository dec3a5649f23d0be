import Logging
import Synchronization

/// A function on the PCI bus. The configuration space is the device's; `configWritten` lets it react
/// (BAR moves, enabling decoding) after the space has applied the write.
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
public final class PCIBus: BusDevice {
    public static let configAddressPort: UInt64 = 0xcf8
    public static let portRangeSize: UInt64 = 8

    private let addressRegister = Atomic<UInt32>(0)
    private let functions = Mutex<[Int: any PCIFunction]>([:])   // key: device << 3 | function

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
            f[key] = fn
        }
    }

    /// The lowest free device number (function 0), if any.
    public func freeDeviceNumber() -> Int? {
        functions.withLock { f in (1..<32).first { f[$0 << 3] == nil } }
    }

    public func function(device: Int, function: Int = 0) -> (any PCIFunction)? {
        functions.withLock { $0[device << 3 | function] }
    }

    /// Config read by bus/device/function/offset, as mechanism #1 would do it.
    public func configRead(bus: Int, device: Int, function: Int, offset: Int, size: Int) -> UInt32 {
        let ones = UInt32.max >> (32 - 8 * UInt32(size))
        guard bus == 0, let fn = self.function(device: device, function: function) else { return ones }
        return fn.config.read(offset: offset, size: size)
    }

    public func configWrite(bus: Int, device: Int, function: Int, offset: Int, size: Int, value: UInt32) {
        guard bus == 0, let fn = self.function(device: device, function: function) else { return }
        guard PCIConfigSpace.isValidAccess(offset, size) else { return }
        fn.config.write(offset: offset, size: size, value: value)
        fn.configWritten(offset: offset, size: size)
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
