import SoftGPU

/// The vGPU's register file as one table (GVT-g's MMIO table, in the style of `CommandTable`): one row per
/// register (or register array) with its offset, element count and stride, policy, writable mask and reset
/// value, and read/write handlers for the registers that are not plain storage (state kept in fields, such
/// as the engines' ring registers, and side effects, such as RING_TAIL's doorbell, RESET, IIR's
/// write-1-to-clear). `RegisterPolicy.table` and the whole BAR0 register path (`VGPU.readRegister` /
/// `writeRegister`) work from these rows; docs/vgpu.md section 5 is checked against them by
/// `VGPURegisterFileTests`.
///
/// Handlers run under the vGPU's state lock and must not call out: a write handler returns the effects
/// (`WriteEffects`) that `writeRegister` carries out after dropping the lock.
///
/// Registers not in a row are privileged. The PV page, the error block and the statistics block
/// (`VGPURegs`) are outside the tracked-register space and are not rows.
public enum VGPURegisterFile {
    /// What a register write asks `writeRegister` to do once the state lock is dropped.
    struct WriteEffects {
        /// A trapped doorbell: scan the row's engine's ring up to this tail.
        var doorbellTail: UInt32? = nil
        /// RESET of the row's engine.
        var resetEngine = false
        /// Wake the mediator thread (PIPE_CONF: vblanks start or stop).
        var kickMediator = false
        /// Interrupts that newly became pending (IER): signal them.
        var deliver: UInt32 = 0
        /// IIR or IER changed: drive INTA# to its new level.
        var updateINTx = false
    }

    /// Reads element `element` of a row of engine `engine` (its raw value; 0 for global rows).
    typealias ReadHandler = @Sendable (_ s: VGPU.State, _ engine: Int, _ element: UInt32) -> UInt32
    /// Writes the (already masked) `value` to element `element`.
    typealias WriteHandler = @Sendable (_ s: inout VGPU.State, _ engine: Int, _ element: UInt32, _ value: UInt32,
                                        _ effects: inout WriteEffects) -> Void

    public struct Row: Sendable, Equatable {
        /// The name in docs/vgpu.md and softgpu.md (without an engine prefix or array index).
        public let name: String
        /// The engine whose block holds the register; nil for global registers.
        public let engine: EngineID?
        /// The offset of the first element.
        public let offset: UInt32
        /// Elements (1 for a plain register; 64 for SCRATCH, 32 dwords for the GPRs).
        public let count: UInt32
        /// Bytes between elements.
        public let stride: UInt32
        public let policy: RegisterPolicy
        /// What a guest reads after creation (and, for engine registers, after RESET); nil for registers
        /// that mirror the physical GPU (its configuration).
        public let reset: UInt32?
        /// Reads the value from wherever it lives; nil: the flat storage (`Storage`).
        let read: ReadHandler?
        /// Stores the value and asks for side effects; nil: the flat storage.
        let write: WriteHandler?

        init(_ name: String, _ engine: EngineID? = nil, _ offset: UInt32, count: UInt32 = 1, stride: UInt32 = 4,
             _ policy: RegisterPolicy, reset: UInt32? = 0, read: ReadHandler? = nil, write: WriteHandler? = nil) {
            self.name = name; self.engine = engine; self.offset = offset; self.count = count; self.stride = stride
            self.policy = policy; self.reset = reset; self.read = read; self.write = write
        }

        public static func == (a: Row, b: Row) -> Bool {
            a.name == b.name && a.engine == b.engine && a.offset == b.offset && a.count == b.count && a.stride == b.stride
                && a.policy == b.policy && a.reset == b.reset
        }

        /// The bits a guest write can change (0 for read-only and privileged registers).
        public var writableMask: UInt32 {
            switch policy {
            case .readOnly, .privileged: return 0
            case .writeMasked(let m): return m
            case .emulated, .gmAddress, .commandLoad: return 0xffff_ffff
            }
        }

        /// The offsets of the row's elements.
        public var offsets: [UInt32] { (0..<count).map { offset + $0 * stride } }
    }

    /// Every tracked register, in address order within each block.
    public static let rows: [Row] = {
        var r: [Row] = [
            Row("GPU_ID", nil, Reg.gpuID, .readOnly, reset: Reg.gpuIDValue),
            Row("GM_SIZE_MB", nil, Reg.gmSizeMiB, .readOnly, reset: nil),
            Row("APERTURE_SIZE_MB", nil, Reg.apertureSizeMiB, .readOnly, reset: nil),
        ]
        for e in EngineID.allCases {
            r += [
                // The trapped doorbell: scanned by writeRegister after the lock is dropped.
                Row("RING_TAIL", e, Reg.ringTail(e), .emulated,
                    read: { s, i, _ in s.engines[i].tail },
                    write: { s, i, _, v, fx in s.engines[i].tail = v; fx.doorbellTail = v }),
                // Dword aligned; only while the engine is idle (it is where the next scan starts).
                Row("RING_HEAD", e, Reg.ringHead(e), .emulated,
                    read: { s, i, _ in s.engines[i].head },
                    write: { s, i, _, v, _ in
                        if !s.engines[i].busy { s.engines[i].head = v & ~3; s.engines[i].scannedTail = v & ~3 }
                    }),
                Row("RING_START", e, Reg.ringStart(e), .gmAddress,
                    read: { s, i, _ in s.engines[i].start }, write: { s, i, _, v, _ in s.engines[i].start = v }),
                Row("RING_CTL", e, Reg.ringCtl(e), .writeMasked(0x1ff001),
                    read: { s, i, _ in s.engines[i].ctl }, write: { s, i, _, v, _ in s.engines[i].ctl = v }),
                Row("STATUS", e, Reg.status(e), .readOnly, reset: Reg.statusIdle, read: { s, i, _ in
                    let es = s.engines[i]
                    var v: UInt32 = es.ctl & 1 != 0 ? Reg.statusRingEnabled : 0
                    if es.busy { v |= Reg.statusBusy }
                    if es.error != 0 { v |= Reg.statusError }
                    if !es.busy { v |= Reg.statusIdle }
                    return v
                }),
                Row("ERROR_CODE", e, Reg.errorCode(e), .readOnly, read: { s, i, _ in s.engines[i].error }),
                Row("FAULT_ADDR_LO", e, Reg.faultAddressLo(e), .readOnly, read: { s, i, _ in lo(s.engines[i].faultAddress) }),
                Row("FAULT_ADDR_HI", e, Reg.faultAddressHi(e), .readOnly, read: { s, i, _ in hi(s.engines[i].faultAddress) }),
                Row("ERROR_IP_LO", e, Reg.errorIPLo(e), .readOnly, read: { s, i, _ in lo(s.engines[i].errorIP) }),
                Row("ERROR_IP_HI", e, Reg.errorIPHi(e), .readOnly, read: { s, i, _ in hi(s.engines[i].errorIP) }),
                // Bit 0 resets the engine (writeRegister, without the lock); reads 0, keeps nothing.
                Row("RESET", e, Reg.reset(e), .emulated,
                    read: { _, _, _ in 0 }, write: { _, _, _, v, fx in if v & 1 != 0 { fx.resetEngine = true } }),
                Row("COMMAND_COUNT", e, Reg.commandCount(e), .readOnly, read: { s, i, _ in s.engines[i].commandCount }),
                Row("ACTHD", e, Reg.acthd(e), .readOnly, read: { s, i, _ in s.engines[i].acthd }),
                Row("GPR", e, Reg.gpr(e, dword: 0), count: Reg.gprDwords, .commandLoad,
                    read: { s, i, k in s.engines[i].gprs[Int(k)] }, write: { s, i, k, v, _ in s.engines[i].gprs[Int(k)] = v }),
            ]
        }
        r += [
            Row("SCRATCH", nil, Reg.scratchBase, count: Reg.scratchDwords, .emulated),
            // The engines' error bits are levels, read from the engine state.
            Row("ISR", nil, Reg.isr, .readOnly, read: { s, _, _ in
                s.isr | (s.engines[0].error != 0 ? Interrupt.rcsError : 0) | (s.engines[1].error != 0 ? Interrupt.bcsError : 0)
            }),
            Row("IMR", nil, Reg.imr, .emulated, reset: 0xffff_ffff,
                read: { s, _, _ in s.imr }, write: { s, _, _, v, _ in s.imr = v }),
            // Write 1 to clear; pulse latches clear with IIR (softgpu.md 4.3).
            Row("IIR", nil, Reg.iir, .emulated, read: { s, _, _ in s.iir }, write: { s, _, _, v, fx in
                s.iir &= ~v; s.isr &= ~v; fx.updateINTx = true
            }),
            Row("IER", nil, Reg.ier, .emulated, read: { s, _, _ in s.ier }, write: { s, _, _, v, fx in
                let before = s.iir & s.ier
                s.ier = v
                fx.deliver = (s.iir & s.ier) & ~before
                fx.updateINTx = true
            }),
            // The mediator starts or stops vblanks.
            Row("PIPE_CONF", nil, Reg.pipeConf, .writeMasked(Reg.pipeConfEnable),
                write: { s, _, _, v, fx in s.regs[Reg.pipeConf] = v; fx.kickMediator = true }),
            Row("VBLANK_COUNT", nil, Reg.vblankCount, .readOnly, read: { s, _, _ in s.vblanks }),
            Row("FLIP_COUNT", nil, Reg.flipCount, .readOnly, read: { s, _, _ in s.flips }),
            Row("CURSOR_FLIP_COUNT", nil, Reg.cursorFlipCount, .readOnly, read: { s, _, _ in s.cursorFlips }),
            Row("DISPLAY_FAULTS", nil, Reg.displayFaults, .readOnly, read: { _, _, _ in 0 }),
            Row("CUR_CTL", nil, Reg.curCtl, .writeMasked(Reg.planeEnable)),
            // Arms a cursor flip, completed at the next vblank.
            Row("CUR_BASE", nil, Reg.curBase, .gmAddress,
                write: { s, _, _, v, _ in s.regs[Reg.curBase] = v; s.armedFlips |= Interrupt.cursorFlipDone }),
            Row("CUR_POS", nil, Reg.curPos, .emulated),
            Row("PRI_CTL", nil, Reg.priCtl, .writeMasked(Reg.planeEnable | (0xf << 26))),
            Row("PRI_STRIDE", nil, Reg.priStride, .emulated),
            Row("PRI_SIZE", nil, Reg.priSize, .emulated),
            // Arms a primary flip, completed at the next vblank.
            Row("PRI_SURF", nil, Reg.priSurf, .gmAddress,
                write: { s, _, _, v, _ in s.regs[Reg.priSurf] = v; s.armedFlips |= Interrupt.flipDone }),
        ]
        return r
    }()

    /// Offset -> (row index, element index, slot in the flat storage), for every element of every row.
    static let index: [UInt32: (row: Int, element: UInt32, slot: Int)] = {
        var t: [UInt32: (row: Int, element: UInt32, slot: Int)] = [:]
        var slot = 0
        for (i, row) in rows.enumerated() {
            for (k, off) in row.offsets.enumerated() {
                precondition(t[off] == nil, "register 0x\(String(off, radix: 16)) is in two rows of VGPURegisterFile")
                t[off] = (i, UInt32(k), slot)
                slot += 1
            }
        }
        return t
    }()

    /// Elements of all rows together (the size of the flat storage).
    static let slots: Int = rows.reduce(0) { $0 + Int($1.count) }

    /// The row holding `offset` and the element's index in it; nil for untracked (privileged) offsets.
    public static func row(at offset: UInt32) -> (row: Row, element: UInt32)? {
        index[offset].map { (rows[$0.row], $0.element) }
    }

    /// Flat storage for the rows' values: one dword per element, starting at the reset values. Reads of
    /// untracked offsets return 0 and writes to them are ignored (the BAR0 path never makes them: they are
    /// privileged).
    struct Storage: Sendable {
        private var values: [UInt32]

        init() {
            var v = [UInt32](repeating: 0, count: VGPURegisterFile.slots)
            for i in VGPURegisterFile.index.values { v[i.slot] = VGPURegisterFile.rows[i.row].reset ?? 0 }
            values = v
        }

        subscript(offset: UInt32) -> UInt32 {
            get { VGPURegisterFile.index[offset].map { values[$0.slot] } ?? 0 }
            set { if let i = VGPURegisterFile.index[offset] { values[i.slot] = newValue } }
        }
    }
}
