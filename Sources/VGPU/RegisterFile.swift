import SoftGPU

/// The vGPU's register file as one table (GVT-g's MMIO table, in the style of `CommandTable`): one row per
/// register (or register array) with its offset, element count and stride, policy, writable mask and reset
/// value. `RegisterPolicy.table` and the BAR0 path's policy checks are derived from these rows;
/// docs/vgpu.md section 5 is checked against them by `VGPURegisterFileTests`.
///
/// Registers not in a row are privileged. The PV page, the error block and the statistics block
/// (`VGPURegs`) are outside the tracked-register space and are not rows.
public enum VGPURegisterFile {
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

        init(_ name: String, _ engine: EngineID? = nil, _ offset: UInt32, count: UInt32 = 1, stride: UInt32 = 4,
             _ policy: RegisterPolicy, reset: UInt32? = 0) {
            self.name = name; self.engine = engine; self.offset = offset; self.count = count; self.stride = stride
            self.policy = policy; self.reset = reset
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
                Row("RING_TAIL", e, Reg.ringTail(e), .emulated),            // the (trapped) doorbell
                Row("RING_HEAD", e, Reg.ringHead(e), .emulated),
                Row("RING_START", e, Reg.ringStart(e), .gmAddress),
                Row("RING_CTL", e, Reg.ringCtl(e), .writeMasked(0x1ff001)),
                Row("STATUS", e, Reg.status(e), .readOnly, reset: Reg.statusIdle),
                Row("ERROR_CODE", e, Reg.errorCode(e), .readOnly),
                Row("FAULT_ADDR_LO", e, Reg.faultAddressLo(e), .readOnly),
                Row("FAULT_ADDR_HI", e, Reg.faultAddressHi(e), .readOnly),
                Row("ERROR_IP_LO", e, Reg.errorIPLo(e), .readOnly),
                Row("ERROR_IP_HI", e, Reg.errorIPHi(e), .readOnly),
                Row("RESET", e, Reg.reset(e), .emulated),
                Row("COMMAND_COUNT", e, Reg.commandCount(e), .readOnly),
                Row("ACTHD", e, Reg.acthd(e), .readOnly),
                Row("GPR", e, Reg.gpr(e, dword: 0), count: Reg.gprDwords, .commandLoad),
            ]
        }
        r += [
            Row("SCRATCH", nil, Reg.scratchBase, count: Reg.scratchDwords, .emulated),
            Row("ISR", nil, Reg.isr, .readOnly),
            Row("IMR", nil, Reg.imr, .emulated, reset: 0xffff_ffff),
            Row("IIR", nil, Reg.iir, .emulated),   // write 1 to clear
            Row("IER", nil, Reg.ier, .emulated),
            Row("PIPE_CONF", nil, Reg.pipeConf, .writeMasked(Reg.pipeConfEnable)),
            Row("VBLANK_COUNT", nil, Reg.vblankCount, .readOnly),
            Row("FLIP_COUNT", nil, Reg.flipCount, .readOnly),
            Row("CURSOR_FLIP_COUNT", nil, Reg.cursorFlipCount, .readOnly),
            Row("DISPLAY_FAULTS", nil, Reg.displayFaults, .readOnly),
            Row("CUR_CTL", nil, Reg.curCtl, .writeMasked(Reg.planeEnable)),
            Row("CUR_BASE", nil, Reg.curBase, .gmAddress),
            Row("CUR_POS", nil, Reg.curPos, .emulated),
            Row("PRI_CTL", nil, Reg.priCtl, .writeMasked(Reg.planeEnable | (0xf << 26))),
            Row("PRI_STRIDE", nil, Reg.priStride, .emulated),
            Row("PRI_SIZE", nil, Reg.priSize, .emulated),
            Row("PRI_SURF", nil, Reg.priSurf, .gmAddress),
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
