import Synchronization

/// The engines of the model.
public enum EngineID: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// Render/compute: MI commands and the compute commands (SAXPY, SGEMM).
    case rcs = 0
    /// Blitter: MI commands and the 2D commands (COLOR_BLT, SRC_COPY_BLT).
    case bcs = 1

    public var description: String { self == .rcs ? "RCS" : "BCS" }
}

/// A set of engines (which engines accept a command).
public struct EngineSet: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let rcs = EngineSet(rawValue: 1 << 0)
    public static let bcs = EngineSet(rawValue: 1 << 1)
    public static let all: EngineSet = [.rcs, .bcs]
    public init(_ e: EngineID) { self.init(rawValue: 1 << UInt8(e.rawValue)) }
    public func contains(_ e: EngineID) -> Bool { contains(EngineSet(e)) }
}

/// MMIO register offsets (byte offsets into the 2 MiB register space; all registers are 32 bits and
/// must be accessed as aligned dwords). See docs/softgpu.md for the full map.
public enum Reg {
    public static let mmioSize: UInt32 = 0x20_0000

    // Identification (read-only).
    public static let gpuID: UInt32 = 0x0000          // reads `gpuIDValue`
    public static let gmSizeMiB: UInt32 = 0x0004      // GM size in MiB
    public static let apertureSizeMiB: UInt32 = 0x0008
    public static let gpuIDValue: UInt32 = 0x5346_4750 // ASCII "SFGP", most significant byte first

    // Engine blocks: base + offset.
    public static func engineBase(_ e: EngineID) -> UInt32 { e == .rcs ? 0x2000 : 0x22000 }
    public static let ringTailOffset: UInt32 = 0x30
    public static let ringHeadOffset: UInt32 = 0x34
    public static let ringStartOffset: UInt32 = 0x38
    public static let ringCtlOffset: UInt32 = 0x3C
    public static let statusOffset: UInt32 = 0x40
    public static let errorCodeOffset: UInt32 = 0x44
    public static let faultAddressLoOffset: UInt32 = 0x48
    public static let faultAddressHiOffset: UInt32 = 0x4C
    public static let errorIPLoOffset: UInt32 = 0x50
    public static let errorIPHiOffset: UInt32 = 0x54
    public static let resetOffset: UInt32 = 0x58
    public static let commandCountOffset: UInt32 = 0x5C
    public static let acthdOffset: UInt32 = 0x74
    public static let gprOffset: UInt32 = 0x600        // 16 x 64-bit general purpose registers (32 dwords)
    public static let gprDwords: UInt32 = 32

    public static func ringTail(_ e: EngineID) -> UInt32 { engineBase(e) + ringTailOffset }
    public static func ringHead(_ e: EngineID) -> UInt32 { engineBase(e) + ringHeadOffset }
    public static func ringStart(_ e: EngineID) -> UInt32 { engineBase(e) + ringStartOffset }
    public static func ringCtl(_ e: EngineID) -> UInt32 { engineBase(e) + ringCtlOffset }
    public static func status(_ e: EngineID) -> UInt32 { engineBase(e) + statusOffset }
    public static func errorCode(_ e: EngineID) -> UInt32 { engineBase(e) + errorCodeOffset }
    public static func faultAddressLo(_ e: EngineID) -> UInt32 { engineBase(e) + faultAddressLoOffset }
    public static func faultAddressHi(_ e: EngineID) -> UInt32 { engineBase(e) + faultAddressHiOffset }
    public static func errorIPLo(_ e: EngineID) -> UInt32 { engineBase(e) + errorIPLoOffset }
    public static func errorIPHi(_ e: EngineID) -> UInt32 { engineBase(e) + errorIPHiOffset }
    public static func reset(_ e: EngineID) -> UInt32 { engineBase(e) + resetOffset }
    public static func commandCount(_ e: EngineID) -> UInt32 { engineBase(e) + commandCountOffset }
    public static func acthd(_ e: EngineID) -> UInt32 { engineBase(e) + acthdOffset }
    /// Dword `i` (0..<32) of the GPR block: GPR n is dwords 2n (low) and 2n+1 (high).
    public static func gpr(_ e: EngineID, dword i: UInt32) -> UInt32 { engineBase(e) + gprOffset + 4 * i }

    // RING_CTL fields.
    public static let ringCtlEnable: UInt32 = 1 << 0
    /// Bits 20:12 hold the ring size in pages minus one (1..512 pages).
    public static func ringCtl(pages: Int, enable: Bool = true) -> UInt32 {
        (UInt32(max(1, min(512, pages)) - 1) << 12) | (enable ? ringCtlEnable : 0)
    }
    public static func ringPages(ctl: UInt32) -> Int { Int((ctl >> 12) & 0x1FF) + 1 }

    // Engine STATUS bits.
    public static let statusRingEnabled: UInt32 = 1 << 0
    public static let statusBusy: UInt32 = 1 << 1
    public static let statusError: UInt32 = 1 << 2
    public static let statusIdle: UInt32 = 1 << 3

    // Interrupt block (one block for all sources).
    public static let isr: UInt32 = 0x44300
    public static let imr: UInt32 = 0x44304
    public static let iir: UInt32 = 0x44308
    public static let ier: UInt32 = 0x4430C

    // Software scratch registers (64 dwords, command-writable).
    public static let scratchBase: UInt32 = 0x8000
    public static let scratchDwords: UInt32 = 64
    public static func scratch(_ i: UInt32) -> UInt32 { scratchBase + 4 * i }

    // Display (one pipe, primary plane + cursor).
    public static let pipeConf: UInt32 = 0x70008          // bit 31: pipe enable (vblanks are generated)
    public static let vblankCount: UInt32 = 0x70040       // RO
    public static let flipCount: UInt32 = 0x70044         // RO: completed primary flips
    public static let cursorFlipCount: UInt32 = 0x70048   // RO: completed cursor flips
    public static let displayFaults: UInt32 = 0x7004C     // RO: invalid pages met by scanout (total)
    public static let curCtl: UInt32 = 0x70080            // bit 31 enable (64x64 ARGB8888)
    public static let curBase: UInt32 = 0x70084           // GM address, page aligned
    public static let curPos: UInt32 = 0x70088            // x: bits 15:0, y: bits 31:16, both signed
    public static let priCtl: UInt32 = 0x70180            // bit 31 enable, bits 29:26 format
    public static let priStride: UInt32 = 0x70188         // bytes
    public static let priSize: UInt32 = 0x70190           // width bits 15:0, height bits 31:16
    public static let priSurf: UInt32 = 0x7019C           // GM address (bits 31:12)

    public static let pipeConfEnable: UInt32 = 1 << 31
    public static let planeEnable: UInt32 = 1 << 31
    /// PRI_CTL format field value for XRGB8888 (the only supported format).
    public static let formatXRGB8888: UInt32 = 6
    public static func priCtl(enable: Bool, format: UInt32 = formatXRGB8888) -> UInt32 {
        (enable ? planeEnable : 0) | ((format & 0xF) << 26)
    }
}

/// Interrupt bits (identical in ISR, IMR, IIR and IER).
public enum Interrupt {
    public static let rcsUser: UInt32 = 1 << 0
    public static let rcsError: UInt32 = 1 << 1
    public static let rcsIdle: UInt32 = 1 << 2
    public static let bcsUser: UInt32 = 1 << 8
    public static let bcsError: UInt32 = 1 << 9
    public static let bcsIdle: UInt32 = 1 << 10
    public static let vblank: UInt32 = 1 << 16
    public static let flipDone: UInt32 = 1 << 17
    public static let cursorFlipDone: UInt32 = 1 << 18
    public static let all: UInt32 = rcsUser | rcsError | rcsIdle | bcsUser | bcsError | bcsIdle | vblank | flipDone | cursorFlipDone

    public static func user(_ e: EngineID) -> UInt32 { e == .rcs ? rcsUser : bcsUser }
    public static func error(_ e: EngineID) -> UInt32 { e == .rcs ? rcsError : bcsError }
    public static func idle(_ e: EngineID) -> UInt32 { e == .rcs ? rcsIdle : bcsIdle }
}

/// Description of one register, for the mediator (which registers exist, which commands may write).
public struct RegisterInfo: Sendable, Equatable {
    public enum Access: Sendable, Equatable {
        case readWrite, readOnly, writeOnly
        /// Write 1 to clear.
        case writeOneToClear
    }
    public let name: String
    public let offset: UInt32
    public let access: Access
    /// LOAD_REGISTER_IMM may write it (the hardware whitelist; anything else is an engine error).
    public let commandWritable: Bool
}

/// The register map as data.
public enum RegisterMap {
    public static let all: [RegisterInfo] = {
        var r: [RegisterInfo] = [
            .init(name: "GPU_ID", offset: Reg.gpuID, access: .readOnly, commandWritable: false),
            .init(name: "GM_SIZE_MB", offset: Reg.gmSizeMiB, access: .readOnly, commandWritable: false),
            .init(name: "APERTURE_SIZE_MB", offset: Reg.apertureSizeMiB, access: .readOnly, commandWritable: false),
            .init(name: "ISR", offset: Reg.isr, access: .readOnly, commandWritable: false),
            .init(name: "IMR", offset: Reg.imr, access: .readWrite, commandWritable: false),
            .init(name: "IIR", offset: Reg.iir, access: .writeOneToClear, commandWritable: false),
            .init(name: "IER", offset: Reg.ier, access: .readWrite, commandWritable: false),
            .init(name: "PIPE_CONF", offset: Reg.pipeConf, access: .readWrite, commandWritable: false),
            .init(name: "VBLANK_COUNT", offset: Reg.vblankCount, access: .readOnly, commandWritable: false),
            .init(name: "FLIP_COUNT", offset: Reg.flipCount, access: .readOnly, commandWritable: false),
            .init(name: "CURSOR_FLIP_COUNT", offset: Reg.cursorFlipCount, access: .readOnly, commandWritable: false),
            .init(name: "DISPLAY_FAULTS", offset: Reg.displayFaults, access: .readOnly, commandWritable: false),
            .init(name: "CUR_CTL", offset: Reg.curCtl, access: .readWrite, commandWritable: true),
            .init(name: "CUR_BASE", offset: Reg.curBase, access: .readWrite, commandWritable: true),
            .init(name: "CUR_POS", offset: Reg.curPos, access: .readWrite, commandWritable: true),
            .init(name: "PRI_CTL", offset: Reg.priCtl, access: .readWrite, commandWritable: true),
            .init(name: "PRI_STRIDE", offset: Reg.priStride, access: .readWrite, commandWritable: true),
            .init(name: "PRI_SIZE", offset: Reg.priSize, access: .readWrite, commandWritable: true),
            .init(name: "PRI_SURF", offset: Reg.priSurf, access: .readWrite, commandWritable: true),
        ]
        for e in EngineID.allCases {
            let p = "\(e)_"
            r += [
                .init(name: p + "RING_TAIL", offset: Reg.ringTail(e), access: .readWrite, commandWritable: false),
                .init(name: p + "RING_HEAD", offset: Reg.ringHead(e), access: .readWrite, commandWritable: false),
                .init(name: p + "RING_START", offset: Reg.ringStart(e), access: .readWrite, commandWritable: false),
                .init(name: p + "RING_CTL", offset: Reg.ringCtl(e), access: .readWrite, commandWritable: false),
                .init(name: p + "STATUS", offset: Reg.status(e), access: .readOnly, commandWritable: false),
                .init(name: p + "ERROR_CODE", offset: Reg.errorCode(e), access: .readOnly, commandWritable: false),
                .init(name: p + "FAULT_ADDR_LO", offset: Reg.faultAddressLo(e), access: .readOnly, commandWritable: false),
                .init(name: p + "FAULT_ADDR_HI", offset: Reg.faultAddressHi(e), access: .readOnly, commandWritable: false),
                .init(name: p + "ERROR_IP_LO", offset: Reg.errorIPLo(e), access: .readOnly, commandWritable: false),
                .init(name: p + "ERROR_IP_HI", offset: Reg.errorIPHi(e), access: .readOnly, commandWritable: false),
                .init(name: p + "RESET", offset: Reg.reset(e), access: .writeOnly, commandWritable: false),
                .init(name: p + "COMMAND_COUNT", offset: Reg.commandCount(e), access: .readOnly, commandWritable: false),
                .init(name: p + "ACTHD", offset: Reg.acthd(e), access: .readOnly, commandWritable: false),
            ]
            for i in 0..<Reg.gprDwords {
                r.append(.init(name: p + "GPR\(i / 2)_\(i % 2 == 0 ? "LO" : "HI")", offset: Reg.gpr(e, dword: i),
                               access: .readWrite, commandWritable: true))
            }
        }
        for i in 0..<Reg.scratchDwords {
            r.append(.init(name: "SCRATCH\(i)", offset: Reg.scratch(i), access: .readWrite, commandWritable: true))
        }
        return r.sorted { $0.offset < $1.offset }
    }()

    private static let byOffset: [UInt32: RegisterInfo] = Dictionary(uniqueKeysWithValues: all.map { ($0.offset, $0) })

    public static func info(_ offset: UInt32) -> RegisterInfo? { byOffset[offset] }

    /// True when LOAD_REGISTER_IMM may write `offset`.
    public static func isCommandWritable(_ offset: UInt32) -> Bool { byOffset[offset]?.commandWritable ?? false }
}

/// Registers that are plain storage: the GPR blocks and the scratch block. Any thread.
final class StorageRegisters: @unchecked Sendable {
    private let values = Mutex([UInt32](repeating: 0, count: Int(Reg.gprDwords) * EngineID.allCases.count + Int(Reg.scratchDwords)))

    private static func index(_ offset: UInt32) -> Int? {
        guard offset & 3 == 0 else { return nil }
        for e in EngineID.allCases {
            let b = Reg.engineBase(e) + Reg.gprOffset
            if offset >= b && offset < b + 4 * Reg.gprDwords { return e.rawValue * Int(Reg.gprDwords) + Int((offset - b) / 4) }
        }
        if offset >= Reg.scratchBase && offset < Reg.scratchBase + 4 * Reg.scratchDwords {
            return EngineID.allCases.count * Int(Reg.gprDwords) + Int((offset - Reg.scratchBase) / 4)
        }
        return nil
    }

    static func handles(_ offset: UInt32) -> Bool { index(offset) != nil }

    func read(_ offset: UInt32) -> UInt32? {
        guard let i = Self.index(offset) else { return nil }
        return values.withLock { $0[i] }
    }

    @discardableResult
    func write(_ offset: UInt32, _ value: UInt32) -> Bool {
        guard let i = Self.index(offset) else { return false }
        values.withLock { $0[i] = value }
        return true
    }

    func gprs(engine e: EngineID) -> [UInt32] {
        values.withLock { v in Array(v[(e.rawValue * Int(Reg.gprDwords))..<((e.rawValue + 1) * Int(Reg.gprDwords))]) }
    }

    func setGPRs(engine e: EngineID, _ gprs: [UInt32]) {
        values.withLock { v in
            for i in 0..<min(gprs.count, Int(Reg.gprDwords)) { v[e.rawValue * Int(Reg.gprDwords) + i] = gprs[i] }
        }
    }

    func reset(engine e: EngineID) {
        values.withLock { v in
            for i in 0..<Int(Reg.gprDwords) { v[e.rawValue * Int(Reg.gprDwords) + i] = 0 }
        }
    }
}
