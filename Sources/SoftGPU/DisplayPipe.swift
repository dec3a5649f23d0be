/// One display pipe's registers and events (softgpu.md 4.4, vgpu.md 4): pipe enable, the plane registers
/// with their write masks, the vblank and flip counters and the flip latch. The one model of a pipe: the
/// software GPU's `DisplayEngine` and each vGPU's virtual display keep one of these.
///
/// A value type without locks: its owner keeps it inside its own locked state and raises the interrupt
/// bits the mutating operations return (after or while updating its state, as it latches interrupts).
///
/// Flips: a PRI_SURF or CUR_BASE write (MMIO or LOAD_REGISTER_IMM) or a DISPLAY_FLIP arms a flip of its
/// plane; the next vblank completes every armed flip together (FLIP_COUNT / CURSOR_FLIP_COUNT + 1,
/// FLIP_DONE / CURSOR_FLIP_DONE). While PIPE_CONF is off there are no vblanks, so a flip completes at once,
/// and turning the pipe off completes the flips still armed.
public struct DisplayPipe: Sendable, Equatable {
    public private(set) var pipeConf: UInt32 = 0
    public private(set) var priCtl: UInt32 = 0
    public private(set) var priStride: UInt32 = 0
    public private(set) var priSize: UInt32 = 0
    public private(set) var priSurf: UInt32 = 0
    public private(set) var curCtl: UInt32 = 0
    public private(set) var curBase: UInt32 = 0
    public private(set) var curPos: UInt32 = 0
    public private(set) var vblankCount: UInt32 = 0
    public private(set) var flipCount: UInt32 = 0
    public private(set) var cursorFlipCount: UInt32 = 0
    /// Invalid GM pages met by scanout (DISPLAY_FAULTS), counted by the owner's scanout.
    public var faults: UInt32 = 0
    /// Flips armed and not yet completed: `Interrupt.flipDone` and/or `Interrupt.cursorFlipDone`.
    public private(set) var armed: UInt32 = 0

    public enum Plane: UInt32, Sendable { case primary = 0, cursor = 1 }

    public init() {}

    /// Whether `offset` is in the display block.
    public static func handles(_ offset: UInt32) -> Bool { offset >= 0x70000 && offset < 0x71000 }

    /// The bits a write can change, for the writable registers (nil: read-only or not a display register).
    public static func writableMask(_ offset: UInt32) -> UInt32? {
        switch offset {
        case Reg.pipeConf: return Reg.pipeConfEnable
        case Reg.curCtl: return Reg.planeEnable
        case Reg.priCtl: return Reg.planeEnable | (0xF << 26)
        case Reg.curBase, Reg.priSurf: return ~0xFFF
        case Reg.curPos, Reg.priStride, Reg.priSize: return 0xffff_ffff
        default: return nil
        }
    }

    public var isEnabled: Bool { pipeConf & Reg.pipeConfEnable != 0 }

    /// The plane registers scanout composes from.
    public var planes: DisplayEngine.Planes {
        DisplayEngine.Planes(priCtl: priCtl, priStride: priStride, priSize: priSize, priSurf: priSurf,
                             curCtl: curCtl, curBase: curBase, curPos: curPos)
    }

    public func read(_ offset: UInt32) -> UInt32 {
        switch offset {
        case Reg.pipeConf: return pipeConf
        case Reg.vblankCount: return vblankCount
        case Reg.flipCount: return flipCount
        case Reg.cursorFlipCount: return cursorFlipCount
        case Reg.displayFaults: return faults
        case Reg.curCtl: return curCtl
        case Reg.curBase: return curBase
        case Reg.curPos: return curPos
        case Reg.priCtl: return priCtl
        case Reg.priStride: return priStride
        case Reg.priSize: return priSize
        case Reg.priSurf: return priSurf
        default: return 0
        }
    }

    /// A register write (masked here); returns the interrupt bits to raise now (flips completed at once).
    public mutating func write(_ offset: UInt32, _ value: UInt32) -> UInt32 {
        let v = value & (Self.writableMask(offset) ?? 0)
        switch offset {
        case Reg.pipeConf:
            pipeConf = v
            return isEnabled ? 0 : completeArmed()
        case Reg.curCtl: curCtl = v
        case Reg.curBase: curBase = v; return arm(Interrupt.cursorFlipDone)
        case Reg.curPos: curPos = v
        case Reg.priCtl: priCtl = v
        case Reg.priStride: priStride = v
        case Reg.priSize: priSize = v
        case Reg.priSurf: priSurf = v; return arm(Interrupt.flipDone)
        default: break
        }
        return 0
    }

    /// DISPLAY_FLIP: a new surface (and, for the primary plane, stride); returns the interrupt bits to raise now.
    public mutating func flip(_ plane: Plane, surface: UInt64, stride: UInt32) -> UInt32 {
        switch plane {
        case .primary:
            priSurf = UInt32(truncatingIfNeeded: surface) & ~0xFFF
            priStride = stride
            return arm(Interrupt.flipDone)
        case .cursor:
            curBase = UInt32(truncatingIfNeeded: surface) & ~0xFFF
            return arm(Interrupt.cursorFlipDone)
        }
    }

    /// One vertical blank: counts it and completes the armed flips; returns VBLANK plus their done bits.
    public mutating func vblank() -> UInt32 {
        vblankCount &+= 1
        return Interrupt.vblank | completeArmed()
    }

    private mutating func arm(_ bit: UInt32) -> UInt32 {
        armed |= bit
        return isEnabled ? 0 : completeArmed()
    }

    private mutating func completeArmed() -> UInt32 {
        defer { armed = 0 }
        if armed & Interrupt.flipDone != 0 { flipCount &+= 1 }
        if armed & Interrupt.cursorFlipDone != 0 { cursorFlipCount &+= 1 }
        return armed
    }
}
