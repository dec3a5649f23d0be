import Logging
import Synchronization

/// A device on a port-I/O or MMIO bus. Called from vCPU threads (any of them, concurrently): a device
/// guards its own state. `offset` is relative to the base the device was registered at; an access may run
/// past the end of the device's range (only the base is matched), so devices check `offset + data.count`.
/// Reads must fill every byte of `data`.
public protocol BusDevice: AnyObject, Sendable {
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer)
    func write(offset: UInt64, data: UnsafeRawBufferPointer)
}

/// Errors registering devices.
public enum BusError: Error, CustomStringConvertible, Equatable {
    case overlap(name: String, base: UInt64, size: UInt64, existing: String)
    case emptyRange(name: String)
    public var description: String {
        switch self {
        case let .overlap(n, b, s, e):
            return "cannot register \(n) at 0x\(String(b, radix: 16))+0x\(String(s, radix: 16)): overlaps \(e)"
        case let .emptyRange(n): return "cannot register \(n): empty or wrapping address range"
        }
    }
}

/// Dispatches accesses by address range to `BusDevice`s. Ranges never overlap (registration refuses
/// overlaps). Unclaimed reads return all ones and unclaimed writes are dropped; every one is counted, and
/// they are logged at debug level, rate-limited per kind (`RateLimitedLog`) since a guest can make millions.
///
/// Threads and ownership: vCPU threads dispatch concurrently; registration may happen while they run (PCI
/// BAR moves). The table is behind one Mutex, never held while a device runs; the counters are atomics.
public final class Bus: Sendable {
    public struct Entry: Sendable {
        public let base: UInt64
        public let size: UInt64
        public let name: String
        public let device: any BusDevice
        public var end: UInt64 { base + size }
    }

    public let name: String
    private let entries = Mutex<[Entry]>([])   // sorted by base
    private let unclaimedReadCount = Atomic<UInt64>(0)
    private let unclaimedWriteCount = Atomic<UInt64>(0)
    private let log: RateLimitedLog

    public init(name: String, logger: Logger = Logger(label: "minivisor.bus"), logPolicy: RateLimitedLog.Policy = .default) {
        self.name = name
        log = RateLimitedLog(logger: logger, source: "\(name) bus", policy: logPolicy)
    }

    /// Writes the summary of unclaimed-access lines the rate limit held back (at the VM's end).
    public func flushSuppressedLog() { log.flush() }

    public var unclaimedReads: UInt64 { unclaimedReadCount.load(ordering: .relaxed) }
    public var unclaimedWrites: UInt64 { unclaimedWriteCount.load(ordering: .relaxed) }

    /// Adds `device` for [base, base+size). Throws when the range is empty or overlaps another device.
    public func register(_ device: any BusDevice, base: UInt64, size: UInt64, name: String) throws(BusError) {
        try move(device, from: nil, to: base, size: size, name: name)
    }

    /// Removes the device registered at exactly `base`; returns whether one was.
    @discardableResult
    public func unregister(base: UInt64) -> Bool {
        entries.withLock { list in
            guard let i = list.firstIndex(where: { $0.base == base }) else { return false }
            list.remove(at: i)
            return true
        }
    }

    /// Removes `device` from `base` if it is the one registered there; returns whether it was.
    @discardableResult
    public func unregister(_ device: any BusDevice, base: UInt64) -> Bool {
        entries.withLock { list in
            guard let i = list.firstIndex(where: { $0.base == base && $0.device === device }) else { return false }
            list.remove(at: i)
            return true
        }
    }

    /// Moves `device` from `old` (where it must be registered; nil: nowhere yet) to [base, base+size) in one
    /// step, so every access sees it at the old place or at the new one. Throws, changing nothing, when the
    /// new range is empty or overlaps another device.
    public func move(_ device: any BusDevice, from old: UInt64?, to base: UInt64, size: UInt64, name: String) throws(BusError) {
        guard size > 0, base &+ size > base else { throw .emptyRange(name: name) }
        try entries.withLock { (list: inout [Entry]) throws(BusError) in
            let oldIndex = old.flatMap { o in list.firstIndex { $0.base == o && $0.device === device } }
            for (i, e) in list.enumerated() where i != oldIndex && base < e.end && e.base < base + size {
                throw BusError.overlap(name: name, base: base, size: size, existing: "\(e.name) at 0x\(String(e.base, radix: 16))+0x\(String(e.size, radix: 16))")
            }
            if let i = oldIndex { list.remove(at: i) }
            let idx = list.firstIndex { $0.base > base } ?? list.count
            list.insert(Entry(base: base, size: size, name: name, device: device), at: idx)
        }
    }

    /// The registered ranges, sorted by base.
    public var registrations: [Entry] { entries.withLock { $0 } }

    @inline(__always)
    private func lookup(_ address: UInt64) -> (any BusDevice, UInt64)? {
        entries.withLock { list in
            var lo = 0, hi = list.count
            while lo < hi {
                let mid = (lo + hi) / 2
                if list[mid].end <= address { lo = mid + 1 } else { hi = mid }
            }
            guard lo < list.count, list[lo].base <= address else { return nil }
            return (list[lo].device, address - list[lo].base)
        }
    }

    /// Dispatches a read; unclaimed reads fill `data` with 0xff. Returns whether a device claimed it.
    @discardableResult
    public func read(_ address: UInt64, _ data: UnsafeMutableRawBufferPointer) -> Bool {
        if let (dev, off) = lookup(address) {
            dev.read(offset: off, data: data)
            return true
        }
        data.initializeMemory(as: UInt8.self, repeating: 0xff)
        unclaimedReadCount.add(1, ordering: .relaxed)
        log.log(.debug, "unclaimed read", "unclaimed \(name) read at 0x\(String(address, radix: 16)) size \(data.count)")
        return false
    }

    /// Dispatches a write; unclaimed writes are dropped. Returns whether a device claimed it.
    @discardableResult
    public func write(_ address: UInt64, _ data: UnsafeRawBufferPointer) -> Bool {
        if let (dev, off) = lookup(address) {
            dev.write(offset: off, data: data)
            return true
        }
        unclaimedWriteCount.add(1, ordering: .relaxed)
        log.log(.debug, "unclaimed write", "unclaimed \(name) write at 0x\(String(address, radix: 16)) size \(data.count)")
        return false
    }
}

/// Little-endian helpers for device register accesses of 1, 2, 4 or 8 bytes.
public extension UnsafeRawBufferPointer {
    /// The access as an integer (little-endian), zero-extended; bytes beyond 8 are ignored.
    var littleEndianValue: UInt64 {
        var v: UInt64 = 0
        for i in 0..<Swift.min(count, 8) { v |= UInt64(self[i]) << (8 * UInt64(i)) }
        return v
    }
}

public extension UnsafeMutableRawBufferPointer {
    /// Stores `value` little-endian into every byte of the buffer (up to 8; further bytes read as 0).
    func storeLittleEndian(_ value: UInt64) {
        for i in 0..<count { self[i] = i < 8 ? UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) : 0 }
    }
}
