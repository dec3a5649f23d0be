import Synchronization

/// One entry of a firmware memory map (e820): `type` 1 = usable RAM, 2 = reserved.
public struct E820Entry: Sendable, Equatable {
    public static let ram: UInt32 = 1
    public static let reserved: UInt32 = 2
    public let address: UInt64
    public let length: UInt64
    public let type: UInt32
    public init(address: UInt64, length: UInt64, type: UInt32) {
        self.address = address; self.length = length; self.type = type
    }

    /// The machine's memory as a BIOS would report it: RAM below `BootLayout.firmwareReserved`
    /// (0x9fc00), that range reserved (MP table, BIOS area with the ACPI tables), then RAM from 1 MiB to
    /// the MMIO hole and from 4 GiB. What fw_cfg's `etc/e820` holds; a Linux loader's e820 map can use it.
    public static func map(_ memory: GuestMemory) -> [E820Entry] {
        let low = BootLayout.firmwareReserved
        var map = [E820Entry(address: 0, length: low.lowerBound, type: ram),
                   E820Entry(address: low.lowerBound, length: low.upperBound - low.lowerBound, type: reserved)]
        for r in memory.regions {
            let start = max(r.guestAddress, low.upperBound)
            if r.end > start { map.append(E820Entry(address: start, length: r.end - start, type: ram)) }
        }
        return map
    }
}

/// QEMU's firmware configuration interface (docs/specs/fw_cfg.rst in QEMU) on the x86 I/O ports: a
/// 16-bit write to the selector port 0x510 picks an item and rewinds it; each 1-byte read of the data port
/// 0x511 returns the item's next byte (0 past its end, or for an unknown item). Traditional interface
/// only (no DMA: FW_CFG_ID reads 1); writes to the data port are ignored, as in QEMU since 2.4.
///
/// Items: FW_CFG_SIGNATURE (0x00) "QEMU", FW_CFG_ID (0x01), FW_CFG_RAM_SIZE (0x03, u64), FW_CFG_NB_CPUS
/// (0x05, u16), FW_CFG_MAX_CPUS (0x0f, u16), FW_CFG_FILE_DIR (0x19) and the files from 0x20 on:
/// `etc/e820` (the memory map, 20-byte little-endian entries: address, length, type). Numbers are little
/// endian; the file directory is big endian (a u32 count, then 64-byte entries: u32 size, u16 select,
/// u16 reserved, 56-byte NUL-padded name), as QEMU defines them.
///
/// Threads and ownership: vCPU threads, concurrently; the items are immutable after `init`; the selected
/// item and read position are one `State` behind one Mutex (guests serialise their own select/read
/// sequences, as on QEMU).
public final class FirmwareConfig: BusDevice {
    public static let selectorPort: UInt64 = 0x510
    public static let dataPort: UInt64 = 0x511
    /// Ports from `selectorPort`: selector (2 bytes at 0x510, overlapping) and data (0x511).
    public static let size: UInt64 = 2

    public enum Key {
        public static let signature: UInt16 = 0x00
        public static let id: UInt16 = 0x01
        public static let ramSize: UInt16 = 0x03
        public static let cpuCount: UInt16 = 0x05
        public static let maxCPUs: UInt16 = 0x0f
        public static let fileDirectory: UInt16 = 0x19
        public static let firstFile: UInt16 = 0x20
    }

    public struct File: Sendable, Equatable {
        public let name: String
        public let bytes: [UInt8]
        public init(name: String, bytes: [UInt8]) { self.name = name; self.bytes = bytes }
    }

    private let items: [UInt16: [UInt8]]
    private struct State { var key: UInt16 = 0; var position = 0 }
    private let state = Mutex(State())

    /// The items for a machine of `cpuCount` CPUs and `ramBytes` of RAM, plus `files` (names up to 55 bytes).
    public init(cpuCount: Int, ramBytes: UInt64, files: [File]) {
        var items: [UInt16: [UInt8]] = [
            Key.signature: Array("QEMU".utf8),
            Key.id: AML.le(1, 4),   // bit 0: the traditional interface; no DMA
            Key.ramSize: AML.le(ramBytes, 8),
            Key.cpuCount: AML.le(UInt64(cpuCount), 2),
            Key.maxCPUs: AML.le(UInt64(cpuCount), 2),
        ]
        var directory = Self.be(UInt64(files.count), 4)
        for (i, f) in files.enumerated() {
            precondition(f.name.utf8.count < 56, "fw_cfg file names are at most 55 bytes")
            let key = Key.firstFile + UInt16(i)
            items[key] = f.bytes
            let name: [UInt8] = Array(f.name.utf8) + [UInt8](repeating: 0, count: 56 - f.name.utf8.count)
            directory += Self.be(UInt64(f.bytes.count), 4)
            directory += Self.be(UInt64(key), 2)
            directory += [0, 0]
            directory += name
        }
        items[Key.fileDirectory] = directory
        self.items = items
    }

    /// The standard files of a machine: `etc/e820` from `memory`.
    public static func standardFiles(memory: GuestMemory) -> [File] {
        let e820 = E820Entry.map(memory).flatMap { AML.le($0.address, 8) + AML.le($0.length, 8) + AML.le(UInt64($0.type), 4) }
        return [File(name: "etc/e820", bytes: e820)]
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard offset == 1, data.count == 1 else {
            // The selector reads back as QEMU's does not (it is write-only): all ones.
            data.storeLittleEndian(UInt64.max)
            return
        }
        let byte = state.withLock { s -> UInt8 in
            guard let item = items[s.key], s.position < item.count else { return 0 }
            defer { s.position += 1 }
            return item[s.position]
        }
        data[0] = byte
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count == 2 else { return }
        let key = UInt16(truncatingIfNeeded: data.littleEndianValue)
        state.withLock { $0 = State(key: key & 0xbfff, position: 0) }   // bit 14 (write) is not part of the key
    }

    static func be(_ v: UInt64, _ n: Int) -> [UInt8] { AML.le(v, n).reversed() }
}
