import SoftGPU

/// How the vGPU treats a guest access to one register (GVT-g's tracked-register table).
public enum RegisterPolicy: Sendable, Equatable {
    /// The vGPU keeps its own value; the guest reads back what it wrote.
    case emulated
    /// Writes are ignored; reads return the vGPU's value.
    case readOnly
    /// Only the bits of the mask can be written.
    case writeMasked(UInt32)
    /// The value is a GM address that must lie in the vGPU's slices; other writes are refused and counted.
    case gmAddress
    /// Emulated, and LOAD_REGISTER_IMM in a command stream may write it.
    case commandLoad
    /// Writes are dropped and counted; reads return 0.
    case privileged

    /// The policy of every register the vGPU knows, from the rows of `VGPURegisterFile`. Offsets missing
    /// here are privileged.
    public static let table: [UInt32: RegisterPolicy] = {
        var t: [UInt32: RegisterPolicy] = [:]
        for row in VGPURegisterFile.rows { for off in row.offsets { t[off] = row.policy } }
        return t
    }()

    public static func of(_ offset: UInt32) -> RegisterPolicy { table[offset] ?? .privileged }

    /// Whether LOAD_REGISTER_IMM may write `offset` (the scanner's whitelist).
    public static func commandLoadAllowed(_ offset: UInt32) -> Bool { of(offset) == .commandLoad }
}

/// Offsets of the vGPU's own blocks in BAR0 (docs/vgpu.md).
public enum VGPURegs {
    public static let bar0Size: UInt64 = 16 << 20
    public static let gttWindow: UInt64 = 8 << 20
    public static let pvMagic: UInt32 = 0x78000
    public static let pvVersion: UInt32 = 0x78004
    public static let pvVGPUID: UInt32 = 0x78008
    public static let pvApertureBase: UInt32 = 0x78010
    public static let pvApertureSize: UInt32 = 0x78018
    public static let pvHiddenBase: UInt32 = 0x78020
    public static let pvHiddenSize: UInt32 = 0x78028
    public static let pvGMSize: UInt32 = 0x78030
    public static let pvSharedPage: UInt32 = 0x78040
    public static let pvDoorbellRCS: UInt32 = 0x78100
    public static let pvDoorbellBCS: UInt32 = 0x78104
    public static func pvDoorbell(_ e: EngineID) -> UInt32 { e == .rcs ? pvDoorbellRCS : pvDoorbellBCS }
    /// Device-level reset of the vGPU (write 1), docs/vgpu.md section 4 ("Device reset").
    public static let pvDeviceReset: UInt32 = 0x78108
    public static let pvMagicValue: UInt32 = 0x5550_474d   // "MGPU"
    public static let pvVersionValue: UInt32 = 0x0001_0000

    public static let errStatus: UInt32 = 0x79000
    public static let errEngine: UInt32 = 0x79004
    public static let errReason: UInt32 = 0x79008
    public static let errOpcode: UInt32 = 0x7900c
    public static let errCommandGM: UInt32 = 0x79010
    public static let errLevel: UInt32 = 0x79018
    public static let errOperand: UInt32 = 0x7901c
    public static let errCount: UInt32 = 0x79024
    public static let errOffset: UInt32 = 0x79028
    /// Watchdog resets of the vGPU since it was created.
    public static let errHangCount: UInt32 = 0x7902c
    /// ERR_STATUS bits (write 1 to clear): a submission was rejected; the watchdog reset the vGPU.
    public static let errStatusRejected: UInt32 = 1 << 0
    public static let errStatusHang: UInt32 = 1 << 1
    /// ERR_REASON after a watchdog reset (the scanner's reasons are 1-12).
    public static let hangReason: UInt32 = 13

    /// Statistics block (read-only, low 32 bits of each counter; writes are ignored), docs/vgpu.md section 7.
    public static let statBlock: Range<UInt32> = 0x7a000..<0x7b000
    public static let statBadAccess: UInt32 = 0x7a000          // VGPU_STAT_BAD_ACCESS
    public static let statPrivilegedWrites: UInt32 = 0x7a004   // VGPU_STAT_PRIVILEGED_WRITES
    public static let statRefusedAddress: UInt32 = 0x7a008     // VGPU_STAT_REFUSED_ADDRESS
    public static let statGTTRejected: UInt32 = 0x7a00c        // VGPU_STAT_GTT_REJECTED
    public static let statGTTDropped: UInt32 = 0x7a010         // VGPU_STAT_GTT_DROPPED
    public static let statSubmissions: UInt32 = 0x7a014        // VGPU_STAT_SUBMISSIONS
    public static let statRejections: UInt32 = 0x7a018         // VGPU_STAT_REJECTIONS

    /// Interrupt bits the vGPU adds to the SoftGPU set: a submission was rejected.
    public static let rcsRejected: UInt32 = 1 << 3
    public static let bcsRejected: UInt32 = 1 << 11
    public static func rejected(_ e: EngineID) -> UInt32 { e == .rcs ? rcsRejected : bcsRejected }
    /// Interrupt bits the vGPU adds: the watchdog found a submission on this engine hung and reset the vGPU.
    public static let rcsHang: UInt32 = 1 << 4
    public static let bcsHang: UInt32 = 1 << 12
    public static func hang(_ e: EngineID) -> UInt32 { e == .rcs ? rcsHang : bcsHang }
    /// ERROR_CODE of an engine whose submission was rejected: 0x100 + reason.
    public static let rejectedErrorBase: UInt32 = 0x100
}
