import SoftGPU

/// The vGPU's register file as one table (GVT-g's MMIO table `gvt/handlers.c`, in the style of
/// `CommandTable`): one row per register (or register array) with its block, offset, element count and
/// stride, policy, writable mask and reset value, and read/write handlers for the registers that are not
/// plain storage (computed values such as STATUS or the statistics, and side effects such as RING_TAIL's
/// doorbell, RESET, IIR's write-1-to-clear). Values live in the flat `Storage` (engine registers too: an
/// engine RESET puts its rows back to their reset values), except the interrupt registers
/// (`VirtualInterrupts`) and the display pipe (`DisplayPipe`), the models their rows delegate to.
///
/// The rows are the single description of BAR0's register space: the trap handlers (`VGPU.readRegister` /
/// `writeRegister`), `RegisterPolicy.table` (and so the scanner's LOAD_REGISTER_IMM whitelist), the fuzzer
/// and `VGPURegisterFileTests`, which checks docs/vgpu.md (section 5 for the tracked registers, sections 2
/// and 7 for the PV page, the error block and the statistics block) against them.
///
/// Handlers run under the vGPU's state lock and must not call out or take another lock: a write handler
/// returns the effects (`WriteEffects`) that `writeRegister` carries out after dropping the lock.
/// Offsets without a row are privileged.
public enum VGPURegisterFile {
    /// Where a row is documented.
    public enum Block: Sendable, Equatable {
        /// The tracked registers of the GPU's own register map (docs/vgpu.md section 5).
        case tracked
        /// The PV information page (section 2).
        case pv
        /// The error block (section 7).
        case error
        /// The statistics block (section 7).
        case statistics
    }

    /// What a register write asks `writeRegister` to do once the state lock is dropped.
    struct WriteEffects {
        /// A trapped doorbell: scan the row's engine's ring up to this tail.
        var doorbellTail: UInt32? = nil
        /// RESET of the row's engine.
        var resetEngine = false
        /// Device-level reset of the vGPU (PV_DEVICE_RESET).
        var resetDevice = false
        /// A PV doorbell write that reached the trap: ring that engine's PV doorbell.
        var pvDoorbell: EngineID? = nil
        /// Wake the mediator thread (PIPE_CONF: vblanks start or stop).
        var kickMediator = false
        /// Interrupts that newly became pending: signal them.
        var deliver: UInt32 = 0
        /// IIR or IER changed: drive INTA# to its new level.
        var updateINTx = false
    }

    /// Reads element `element` of a row (under the state lock; `vgpu` for its constants and counters).
    typealias ReadHandler = @Sendable (_ vgpu: VGPU, _ s: VGPU.State, _ element: UInt32) -> UInt32
    /// Writes the (already masked) `value` to element `element`.
    typealias WriteHandler = @Sendable (_ s: inout VGPU.State, _ element: UInt32, _ value: UInt32,
                                        _ effects: inout WriteEffects) -> Void

    public struct Row: Sendable, Equatable {
        /// The name in docs/vgpu.md (without an engine prefix, array index or lo/hi suffix of a pair).
        public let name: String
        public let block: Block
        /// The engine whose block holds the register; nil for global registers.
        public let engine: EngineID?
        /// The offset of the first element.
        public let offset: UInt32
        /// Elements (1 for a plain register; 2 for a lo/hi pair; 64 for SCRATCH, 32 dwords for the GPRs).
        public let count: UInt32
        /// Bytes between elements.
        public let stride: UInt32
        public let policy: RegisterPolicy
        /// What a guest reads after creation (and, for engine registers, after RESET); nil for registers
        /// whose value is computed by the read handler (the GPU's configuration, per-vGPU constants,
        /// counters kept elsewhere).
        public let reset: UInt32?
        /// Reads the value from wherever it lives; nil: the flat storage (`Storage`).
        let read: ReadHandler?
        /// Stores the value and asks for side effects; nil: the flat storage.
        let write: WriteHandler?

        /// A tracked register (section 5), of engine `engine` or global.
        init(_ name: String, _ engine: EngineID?, _ offset: UInt32, count: UInt32 = 1, stride: UInt32 = 4,
             _ policy: RegisterPolicy, reset: UInt32? = 0, read: ReadHandler? = nil, write: WriteHandler? = nil) {
            self.init(name, .tracked, engine, offset, count, stride, policy, reset, read, write)
        }

        /// A register of the vGPU's own blocks (PV page, error block, statistics).
        init(_ name: String, _ block: Block, _ offset: UInt32, count: UInt32 = 1,
             _ policy: RegisterPolicy, reset: UInt32? = 0, read: ReadHandler? = nil, write: WriteHandler? = nil) {
            self.init(name, block, nil, offset, count, 4, policy, reset, read, write)
        }

        private init(_ name: String, _ block: Block, _ engine: EngineID?, _ offset: UInt32, _ count: UInt32, _ stride: UInt32,
                     _ policy: RegisterPolicy, _ reset: UInt32?, _ read: ReadHandler?, _ write: WriteHandler?) {
            self.name = name; self.block = block; self.engine = engine; self.offset = offset; self.count = count
            self.stride = stride; self.policy = policy; self.reset = reset; self.read = read; self.write = write
        }

        public static func == (a: Row, b: Row) -> Bool {
            a.name == b.name && a.block == b.block && a.engine == b.engine && a.offset == b.offset && a.count == b.count
                && a.stride == b.stride && a.policy == b.policy && a.reset == b.reset
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

    /// A display register: the pipe model keeps it (and its flip latch); completed flips are latched.
    private static func display(_ name: String, _ r: UInt32, _ policy: RegisterPolicy) -> Row {
        let read: ReadHandler = { _, s, _ in s.display.read(r) }
        let write: WriteHandler = { s, _, v, fx in
            let bits = s.display.write(r, v)
            fx.deliver |= s.interrupts.latch(bits)
            if r == Reg.pipeConf { fx.kickMediator = true }
        }
        return Row(name, nil, r, policy, read: read, write: policy == .readOnly ? nil : write)
    }

    /// A read-only counter of the statistics block (low 32 bits).
    private static func statistic(_ name: String, _ r: UInt32, _ value: @escaping @Sendable (VGPU.Statistics) -> UInt64) -> Row {
        Row(name, .statistics, r, .readOnly, reset: nil, read: { v, _, _ in lo(value(v.statistics)) })
    }

    /// A read-only 64-bit value of the PV page as a lo/hi pair, computed from the vGPU.
    private static func pvPair(_ name: String, _ r: UInt32, _ value: @escaping @Sendable (VGPU) -> UInt64) -> Row {
        Row(name, .pv, r, count: 2, .readOnly, reset: nil, read: { v, _, k in k == 0 ? lo(value(v)) : hi(value(v)) })
    }

    /// Every register, in address order within each block.
    public static let rows: [Row] = {
        var r: [Row] = [
            Row("GPU_ID", nil, Reg.gpuID, .readOnly, reset: Reg.gpuIDValue),
            Row("GM_SIZE_MB", nil, Reg.gmSizeMiB, .readOnly, reset: nil, read: { v, _, _ in lo(v.host.gpu.config.gmSize >> 20) }),
            Row("APERTURE_SIZE_MB", nil, Reg.apertureSizeMiB, .readOnly, reset: nil,
                read: { v, _, _ in lo(v.host.gpu.config.apertureSize >> 20) }),
        ]
        for e in EngineID.allCases {
            let i = e.rawValue
            r += [
                // The trapped doorbell: scanned by writeRegister after the lock is dropped.
                Row("RING_TAIL", e, Reg.ringTail(e), .emulated,
                    write: { s, _, v, fx in s.regs[Reg.ringTail(e)] = v; fx.doorbellTail = v }),
                // Dword aligned; only while the engine is idle (it is where the next scan starts).
                Row("RING_HEAD", e, Reg.ringHead(e), .emulated, write: { s, _, v, _ in
                    if !s.engines[i].busy { s.regs[Reg.ringHead(e)] = v & ~3; s.engines[i].scannedTail = v & ~3 }
                }),
                Row("RING_START", e, Reg.ringStart(e), .gmAddress),
                Row("RING_CTL", e, Reg.ringCtl(e), .writeMasked(0x1ff001)),
                Row("STATUS", e, Reg.status(e), .readOnly, reset: Reg.statusIdle, read: { _, s, _ in s.status(e) }),
                Row("ERROR_CODE", e, Reg.errorCode(e), .readOnly),
                Row("FAULT_ADDR_LO", e, Reg.faultAddressLo(e), .readOnly),
                Row("FAULT_ADDR_HI", e, Reg.faultAddressHi(e), .readOnly),
                Row("ERROR_IP_LO", e, Reg.errorIPLo(e), .readOnly),
                Row("ERROR_IP_HI", e, Reg.errorIPHi(e), .readOnly),
                // Bit 0 resets the engine (writeRegister, without the lock); reads 0, keeps nothing.
                Row("RESET", e, Reg.reset(e), .emulated,
                    read: { _, _, _ in 0 }, write: { _, _, v, fx in if v & 1 != 0 { fx.resetEngine = true } }),
                Row("COMMAND_COUNT", e, Reg.commandCount(e), .readOnly),
                Row("ACTHD", e, Reg.acthd(e), .readOnly),
                Row("GPR", e, Reg.gpr(e, dword: 0), count: Reg.gprDwords, .commandLoad),
            ]
        }
        r += [
            Row("SCRATCH", nil, Reg.scratchBase, count: Reg.scratchDwords, .emulated),
            // The engines' error bits are levels, read from the engine state.
            Row("ISR", nil, Reg.isr, .readOnly, read: { _, s, _ in
                s.interrupts.isr | (s.regs[Reg.errorCode(.rcs)] != 0 ? Interrupt.rcsError : 0)
                    | (s.regs[Reg.errorCode(.bcs)] != 0 ? Interrupt.bcsError : 0)
            }),
            Row("IMR", nil, Reg.imr, .emulated, reset: 0xffff_ffff,
                read: { _, s, _ in s.interrupts.imr }, write: { s, _, v, _ in s.interrupts.imr = v }),
            // Write 1 to clear; pulse latches clear with IIR (softgpu.md 4.3).
            Row("IIR", nil, Reg.iir, .emulated, read: { _, s, _ in s.interrupts.iir }, write: { s, _, v, fx in
                s.interrupts.acknowledge(v); fx.updateINTx = true
            }),
            Row("IER", nil, Reg.ier, .emulated, read: { _, s, _ in s.interrupts.ier }, write: { s, _, v, fx in
                fx.deliver |= s.interrupts.enable(v); fx.updateINTx = true
            }),
            display("PIPE_CONF", Reg.pipeConf, .writeMasked(Reg.pipeConfEnable)),
            display("VBLANK_COUNT", Reg.vblankCount, .readOnly),
            display("FLIP_COUNT", Reg.flipCount, .readOnly),
            display("CURSOR_FLIP_COUNT", Reg.cursorFlipCount, .readOnly),
            display("DISPLAY_FAULTS", Reg.displayFaults, .readOnly),
            display("CUR_CTL", Reg.curCtl, .writeMasked(Reg.planeEnable)),
            display("CUR_BASE", Reg.curBase, .gmAddress),   // arms a cursor flip
            display("CUR_POS", Reg.curPos, .emulated),
            display("PRI_CTL", Reg.priCtl, .writeMasked(Reg.planeEnable | (0xf << 26))),
            display("PRI_STRIDE", Reg.priStride, .emulated),
            display("PRI_SIZE", Reg.priSize, .emulated),
            display("PRI_SURF", Reg.priSurf, .gmAddress),   // arms a primary flip
        ]
        // The PV information page (docs/vgpu.md section 2).
        r += [
            Row("PV_MAGIC", .pv, VGPURegs.pvMagic, .readOnly, reset: VGPURegs.pvMagicValue),
            Row("PV_VERSION", .pv, VGPURegs.pvVersion, .readOnly, reset: VGPURegs.pvVersionValue),
            Row("PV_VGPU_ID", .pv, VGPURegs.pvVGPUID, .readOnly, reset: nil, read: { v, _, _ in UInt32(v.id) }),
            pvPair("PV_APERTURE_BASE", VGPURegs.pvApertureBase) { $0.slices.aperture.lowerBound },
            pvPair("PV_APERTURE_SIZE", VGPURegs.pvApertureSize) { UInt64($0.slices.aperture.count) },
            pvPair("PV_HIDDEN_BASE", VGPURegs.pvHiddenBase) { $0.slices.hidden.lowerBound },
            pvPair("PV_HIDDEN_SIZE", VGPURegs.pvHiddenSize) { UInt64($0.slices.hidden.count) },
            pvPair("PV_GM_SIZE", VGPURegs.pvGMSize) { $0.host.gpu.config.gmSize },
            // A page address: the low 12 bits of the low half read 0.
            Row("PV_SHARED_PAGE", .pv, VGPURegs.pvSharedPage, count: 2, .emulated,
                write: { s, k, v, _ in s.regs[VGPURegs.pvSharedPage + 4 * k] = k == 0 ? v & ~0xfff : v }),
        ]
        for e in EngineID.allCases {
            // Normally an ioeventfd catches these in the kernel; a write that reaches the trap rings the same bell.
            r.append(Row("PV_DOORBELL_" + "\(e)".uppercased(), .pv, VGPURegs.pvDoorbell(e), .emulated,
                         read: { _, _, _ in 0 }, write: { _, _, _, fx in fx.pvDoorbell = e }))
        }
        // Bit 0 resets the whole vGPU (writeRegister, without the lock); reads 0.
        r.append(Row("PV_DEVICE_RESET", .pv, VGPURegs.pvDeviceReset, .emulated,
                     read: { _, _, _ in 0 }, write: { _, _, v, fx in if v & 1 != 0 { fx.resetDevice = true } }))
        // The error block (section 7): filled by a rejection, ERR_STATUS is write-1-to-clear.
        r += [
            Row("ERR_STATUS", .error, VGPURegs.errStatus, .emulated,
                write: { s, _, v, _ in s.regs[VGPURegs.errStatus] &= ~v }),
            Row("ERR_ENGINE", .error, VGPURegs.errEngine, .readOnly),
            Row("ERR_REASON", .error, VGPURegs.errReason, .readOnly),
            Row("ERR_OPCODE", .error, VGPURegs.errOpcode, .readOnly),
            Row("ERR_CMD_GM", .error, VGPURegs.errCommandGM, count: 2, .readOnly),
            Row("ERR_LEVEL", .error, VGPURegs.errLevel, .readOnly),
            Row("ERR_OPERAND", .error, VGPURegs.errOperand, count: 2, .readOnly),
            Row("ERR_COUNT", .error, VGPURegs.errCount, .readOnly),
            Row("ERR_OFFSET", .error, VGPURegs.errOffset, .readOnly),
            Row("ERR_HANG_COUNT", .error, VGPURegs.errHangCount, .readOnly),
        ]
        // The statistics block (section 7): read-only counters; the rest of the block reads 0 and ignores writes.
        r += [
            statistic("VGPU_STAT_BAD_ACCESS", VGPURegs.statBadAccess) { $0.badAccesses },
            statistic("VGPU_STAT_PRIVILEGED_WRITES", VGPURegs.statPrivilegedWrites) { $0.privilegedWrites },
            statistic("VGPU_STAT_REFUSED_ADDRESS", VGPURegs.statRefusedAddress) { $0.refusedAddressWrites },
            statistic("VGPU_STAT_GTT_REJECTED", VGPURegs.statGTTRejected) { $0.gttRejected },
            statistic("VGPU_STAT_GTT_DROPPED", VGPURegs.statGTTDropped) { $0.gttDroppedOutside },
            statistic("VGPU_STAT_SUBMISSIONS", VGPURegs.statSubmissions) { $0.submissions },
            statistic("VGPU_STAT_REJECTIONS", VGPURegs.statRejections) { $0.rejections },
            Row(reservedStatistics, .statistics, VGPURegs.statRejections + 4,
                count: (VGPURegs.statBlock.upperBound - VGPURegs.statRejections - 4) / 4, .readOnly),
        ]
        return r
    }()

    /// The name of the row covering the statistics block's unassigned offsets (undocumented, reads 0).
    public static let reservedStatistics = "VGPU_STAT_RESERVED"

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

    /// Per engine: the storage slots of its rows and their reset values (what RESET restores).
    static let engineResets: [[(slot: Int, value: UInt32)]] = EngineID.allCases.map { e in
        rows.indices.filter { rows[$0].engine == e }.flatMap { i in
            rows[i].offsets.map { (index[$0]!.slot, rows[i].reset ?? 0) }
        }
    }

    /// The row holding `offset` and the element's index in it; nil for untracked (privileged) offsets.
    public static func row(at offset: UInt32) -> (row: Row, element: UInt32)? {
        index[offset].map { (rows[$0.row], $0.element) }
    }

    /// Flat storage for the rows' values: one dword per element, starting at the reset values. Reads of
    /// offsets without a row return 0 and writes to them are ignored (the BAR0 path never makes them: they
    /// are privileged).
    struct Storage: Sendable, Equatable {
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

        /// A 64-bit value kept as a lo/hi pair of registers.
        subscript(lo lo: UInt32, hi hi: UInt32) -> UInt64 {
            get { UInt64(self[lo]) | UInt64(self[hi]) << 32 }
            set { self[lo] = UInt32(truncatingIfNeeded: newValue); self[hi] = UInt32(truncatingIfNeeded: newValue >> 32) }
        }

        /// A 64-bit value kept as a lo/hi pair at `offset` and `offset + 4`.
        subscript(pair offset: UInt32) -> UInt64 {
            get { self[lo: offset, hi: offset + 4] }
            set { self[lo: offset, hi: offset + 4] = newValue }
        }

        /// Engine `e`'s registers as after RESET.
        mutating func reset(engine e: EngineID) {
            for (slot, value) in VGPURegisterFile.engineResets[e.rawValue] { values[slot] = value }
        }
    }
}

@inline(__always) func lo(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v) }
@inline(__always) func hi(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v >> 32) }
