import Logging
import Synchronization

/// A function on the PCI bus. The configuration space is the device's; `configWritten` lets it react
/// (enabling features, INTx disable) after the space has applied the write. The device only *declares*
/// its BARs (`PCIConfigSpace.addBar`) and what lives in them (`barRegions`): the bus gives them addresses
/// in the PCI windows when the function is added, and maps and unmaps them (bus registrations, memory
/// slots, ioeventfds) when the guest moves them or turns decoding on or off. `PCIBus` serialises the
/// guest's configuration accesses to one function: `configWritten` never runs twice at once for one
/// function, and no configuration access to that function (read or write) runs until it and the BAR
/// placement have finished, so a BAR move is atomic to the guest. It must not make configuration accesses
/// to its own function through the bus.
public protocol PCIFunction: AnyObject, Sendable {
    var config: PCIConfigSpace { get }
    func configWritten(offset: Int, size: Int)
    /// What the bus maps into BAR `index` while decoding is on (offsets relative to the BAR's base).
    func barRegions(_ index: Int) -> [PCIBarRegion]
    /// The function's MSI-X table, if it has one: the bus maps its table and PBA into their BARs.
    var msix: MSIXTable? { get }
}

public extension PCIFunction {
    func configWritten(offset: Int, size: Int) {}
    func barRegions(_ index: Int) -> [PCIBarRegion] { [] }
    var msix: MSIXTable? { nil }
}

/// One piece of a BAR: trapped accesses (a `BusDevice` on the MMIO or port bus), host memory mapped
/// straight into the guest (a KVM memory slot), or an ioeventfd (a doorbell written without an exit).
public struct PCIBarRegion: @unchecked Sendable {
    public enum Backing {
        case trap(any BusDevice)
        /// `host` stays valid while the function is on the bus; `slot` is the function's own (`allocateMemorySlot`).
        case memory(slot: UInt32, host: UnsafeMutableRawPointer)
        /// A guest write of `size` bytes (4 or 8) at the region signals the eventfd.
        case ioEventFD(Int32)
    }
    public let offset: UInt64
    public let size: UInt64
    public let name: String
    public let backing: Backing
    public init(offset: UInt64 = 0, size: UInt64, name: String, backing: Backing) {
        self.offset = offset; self.size = size; self.name = name; self.backing = backing
    }
}

/// The host bridge at 00:00.0.
public final class PCIHostBridge: PCIFunction {
    public let config = PCIConfigSpace(vendorID: 0x8086, deviceID: 0x1237, classCode: 0x06, subclass: 0x00)
    public init() {}
}

/// PCI bus 0 behind configuration mechanism #1 (ports 0xcf8 address, 0xcfc-0xcff data). Absent devices
/// and malformed accesses read all ones; writes to them are dropped. Device numbers, INTx GSIs and BAR
/// addresses come from the machine's `ResourceAllocator`; BARs are mapped through the `PCIPlatform`.
///
/// Threads and ownership:
/// - vCPU threads access the ports concurrently; the address register is one atomic shared by all of
///   them, as on hardware (guests serialise their own address/data pairs);
/// - the table of functions is behind one Mutex, held only to look a function up or add one;
/// - each function has its own configuration lock, held across a configuration access: for a write, the
///   config space update, the function's `configWritten` and the BAR placement (bus moves, KVM calls, under
///   which the buses' and the MSI-X table's own locks are taken); for a read, the read. Accesses to one
///   function are serialised; different functions proceed in parallel. The table lock is never held with
///   a function's lock, and a function's lock never while taking the table lock;
/// - the platform is referenced weakly (it holds the bus); without it BARs are not mapped.
public final class PCIBus: BusDevice {
    public static let configAddressPort: UInt64 = 0xcf8
    public static let portRangeSize: UInt64 = 8

    /// Where `add` put a function: its device number and the GSI its INTx pin is routed to (nil: no pin,
    /// or every PCI GSI is taken; the function then has MSI only).
    public struct Placement: Sendable, Equatable {
        public let device: Int
        public let gsi: UInt32?
        public init(device: Int, gsi: UInt32?) { self.device = device; self.gsi = gsi }
    }

    /// A PCI INTx route for the firmware tables: device, pin (1 = INTA#), IOAPIC input.
    public struct InterruptRoute: Sendable, Equatable {
        public let device: Int
        public let pin: Int
        public let gsi: UInt32
        public init(device: Int, pin: Int, gsi: UInt32) { self.device = device; self.pin = pin; self.gsi = gsi }
    }

    /// A function, its INTx route, and the lock that serialises configuration accesses to it; the lock
    /// guards where its BARs are mapped (BAR index -> base).
    private final class Slot: Sendable {
        let function: any PCIFunction
        let device: Int
        let route: InterruptRoute?
        let configLock = Mutex<[Int: UInt64]>([:])
        init(_ f: any PCIFunction, device: Int, route: InterruptRoute?) { function = f; self.device = device; self.route = route }
    }

    private struct WeakPlatform { weak var platform: (any PCIPlatform)? }

    private let addressRegister = Atomic<UInt32>(0)
    private let functions = Mutex<[Int: Slot]>([:])   // key: device << 3 | function
    private let platformRef = Mutex(WeakPlatform())
    private let resetControlRef = Mutex<(any BusDevice)?>(nil)
    public let resources: ResourceAllocator
    private let log: RateLimitedLog

    public init(resources: ResourceAllocator = ResourceAllocator(), logger: Logger = Logger(label: "minivisor.pci")) {
        self.resources = resources
        log = RateLimitedLog(logger: logger, source: "PCI bus")
        functions.withLock { $0[0] = Slot(PCIHostBridge(), device: 0, route: nil) }
    }

    /// Writes the summary of log lines the rate limit held back (at the VM's end).
    public func flushSuppressedLog() { log.flush() }

    /// Connects the bus to the platform that maps BARs (the machine, or a test fake). Once, before devices run.
    public func attach(_ platform: any PCIPlatform) {
        platformRef.withLock { $0.platform = platform }
    }
    private var platform: (any PCIPlatform)? { platformRef.withLock { $0.platform } }

    /// The chipset register at 0xcf9 (`ResetControl`), inside this bus's ports: byte accesses there go to
    /// it (a 4-byte access at 0xcf8 stays the address register). Once, before devices run.
    public func attachResetControl(_ device: any BusDevice) {
        resetControlRef.withLock { $0 = device }
    }
    private var resetControl: (any BusDevice)? { resetControlRef.withLock { $0 } }

    public enum PCIError: Error, CustomStringConvertible {
        case slotTaken(Int, Int)
        case badSlot(Int, Int)
        public var description: String {
            switch self {
            case let .slotTaken(d, f): return "PCI slot 00:\(d).\(f) is already taken: pick another device number or let the machine choose"
            case let .badSlot(d, f): return "PCI slot 00:\(d).\(f) does not exist: use device 1-31, function 0-7"
            }
        }
    }

    /// Places `fn` at 00:device.0 (`device` nil: the lowest free device number), gives every BAR it
    /// declared an address in the PCI MMIO or port window (like firmware; decoding stays off until the
    /// guest enables it), and routes its INTx pin to a free PCI GSI (written to the interrupt line
    /// register). Throws `PCIError` or `ResourceError` (nothing stays allocated then).
    @discardableResult
    public func add(_ fn: any PCIFunction, device: Int? = nil) throws -> Placement {
        if let d = device, !(1..<32).contains(d) { throw PCIError.badSlot(d, 0) }
        let number: Int
        do { number = try resources.allocatePCIDevice(device) } catch {
            if let d = device { throw PCIError.slotTaken(d, 0) }
            throw error
        }
        var mmio: [UInt64] = [], ports: [UInt64] = []
        var gsi: UInt32? = nil
        do {
            for bar in fn.config.declaredBars {
                let base: UInt64
                if bar.kind == .io { base = try resources.allocatePorts(size: bar.size); ports.append(base) }
                else { base = try resources.allocateMMIO(size: bar.size); mmio.append(base) }
                fn.config.setBarAddress(bar.index, base)
            }
            let pin = Int(fn.config.read(offset: 0x3d, size: 1))
            if (1...4).contains(pin) {
                gsi = try? resources.allocateGSI()
                if let g = gsi { fn.config.setRaw(0x3c, [UInt8(g)]) }
                else { log.log(.warning, "no INTx route", "00:\(number).0 INTx not routed: every PCI GSI is taken (the device can use MSI)") }
            }
            let route = gsi.map { InterruptRoute(device: number, pin: pin, gsi: $0) }
            try functions.withLock { f in
                guard f[number << 3] == nil else { throw PCIError.slotTaken(number, 0) }
                f[number << 3] = Slot(fn, device: number, route: route)
            }
        } catch {
            for b in mmio { resources.releaseMMIO(base: b) }
            for b in ports { resources.releasePorts(base: b) }
            if let g = gsi { resources.releaseGSI(g) }
            resources.releasePCIDevice(number)
            throw error
        }
        return Placement(device: number, gsi: gsi)
    }

    /// The lowest free device number (function 0), if any.
    public func freeDeviceNumber() -> Int? {
        functions.withLock { f in (1..<32).first { f[$0 << 3] == nil } }
    }

    public func function(device: Int, function: Int = 0) -> (any PCIFunction)? {
        slot(device: device, function: function)?.function
    }

    /// The INTx routes of every function on the bus, by device number: what the MP table describes.
    public var interruptRoutes: [InterruptRoute] {
        functions.withLock { f in f.values.compactMap(\.route).sorted { $0.device < $1.device } }
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
        return s.configLock.withLock { _ in s.function.config.read(offset: offset, size: size) }
    }

    /// Config write: applies it to the function's config space and lets the function react, as one step
    /// with respect to every other configuration access to that function.
    public func configWrite(bus: Int, device: Int, function: Int, offset: Int, size: Int, value: UInt32) {
        guard bus == 0, let s = slot(device: device, function: function) else { return }
        guard PCIConfigSpace.isValidAccess(offset, size) else { return }
        s.configLock.withLock { placed in
            s.function.config.write(offset: offset, size: size, value: value)
            s.function.configWritten(offset: offset, size: size)
            // Command register or a BAR changed: map the BARs where the guest put them.
            if offset < 0x28 && offset + size > 0x04 { placeBARs(s, &placed) }
            s.function.msix?.configChanged()
        }
    }

    // MARK: BAR placement

    /// The regions of BAR `index`: the function's own and its MSI-X table and PBA.
    private func regions(_ fn: any PCIFunction, _ index: Int) -> [PCIBarRegion] {
        var r = fn.barRegions(index)
        if let m = fn.msix {
            if m.tableBAR == index { r.append(PCIBarRegion(offset: m.tableOffset, size: m.tableBytes, name: "msix-table", backing: .trap(m.tableWindow))) }
            if m.pbaBAR == index { r.append(PCIBarRegion(offset: m.pbaOffset, size: m.pbaBytes, name: "msix-pba", backing: .trap(m.pbaWindow))) }
        }
        return r
    }

    /// Maps every BAR with regions at the address its register holds while its decoding (memory or I/O)
    /// is on, and unmaps it otherwise. A trapped region moves in one step on its bus, so an access sees it
    /// at the old or the new place. When a BAR cannot be placed (another device there, an ioeventfd
    /// address taken, KVM refusing the slot) nothing of it stays anywhere; the next configuration write
    /// tries again. Under the function's configuration lock.
    private func placeBARs(_ s: Slot, _ placed: inout [Int: UInt64]) {
        guard let platform else { return }
        let command = s.function.config.command
        for bar in s.function.config.declaredBars {
            let index = bar.index
            let regions = regions(s.function, index)
            guard !regions.isEmpty else { continue }
            let io = bar.kind == .io
            let decode = command & (io ? PCIConfigSpace.commandIO : PCIConfigSpace.commandMemory) != 0
            let want = decode ? s.function.config.barAddress(index) : nil
            let old = placed[index]
            guard old != want else { continue }
            let bus = io ? platform.pioBus : platform.mmioBus
            if let o = old { Self.unmapDirect(regions, at: o, io: io, platform) }
            placed[index] = nil
            if let n = want {
                do {
                    for r in regions {
                        switch r.backing {
                        case .trap(let d): try bus.move(d, from: old.map { $0 + r.offset }, to: n + r.offset, size: r.size, name: r.name)
                        case .ioEventFD(let fd): try platform.registerIOEventFD(fd, address: n + r.offset, length: UInt32(r.size), isPIO: io, deassign: false)
                        case let .memory(slot, host): try platform.setMemoryRegion(slot: slot, guestPhysicalAddress: n + r.offset, size: r.size, userAddress: host)
                        }
                    }
                    placed[index] = n
                } catch {
                    log.log(.warning, "BAR placement failure", "00:\(s.device).0 BAR\(index): cannot place it at 0x\(String(n, radix: 16)): \(error)")
                    Self.unmapDirect(regions, at: n, io: io, platform)
                    for r in regions { if case .trap(let d) = r.backing { bus.unregister(d, base: n + r.offset) } }
                }
            }
            if let o = old, placed[index] != o {
                for r in regions { if case .trap(let d) = r.backing { bus.unregister(d, base: o + r.offset) } }
            }
        }
    }

    /// Removes a BAR's ioeventfds and memory slots at `base` (those not there are skipped); trapped
    /// regions stay for the caller to move or unregister.
    private static func unmapDirect(_ regions: [PCIBarRegion], at base: UInt64, io: Bool, _ platform: any PCIPlatform) {
        for r in regions {
            switch r.backing {
            case .trap: break
            case .ioEventFD(let fd): try? platform.registerIOEventFD(fd, address: base + r.offset, length: UInt32(r.size), isPIO: io, deassign: true)
            case .memory(let slot, _): try? platform.setMemoryRegion(slot: slot, guestPhysicalAddress: 0, size: 0, userAddress: nil)
            }
        }
    }

    // Port layout relative to 0xcf8: 0-3 address register (a byte at 1 is the reset control), 4-7 data window.
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let size = data.count
        if offset == 1 && size == 1, let r = resetControl { r.read(offset: 0, data: data); return }
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
        if offset == 1 && size == 1, let r = resetControl { r.write(offset: 0, data: data); return }
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
