import TestSupport
import Foundation
import SoftGPU
import Testing
@testable import VGPU

/// The vGPU register file's rows against docs/vgpu.md section 5 and the SoftGPU's `Reg` constants, the way
/// `TableConsistencyTests` checks the command table; and what a guest reads and writes through BAR0 against
/// the rows (reset values, writable masks, read-only and privileged registers).
@Suite("vGPU register file (no KVM)")
struct VGPURegisterFileTests {
    static let docPath: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)   // Tests/VGPUTests/VGPURegisterFileTests.swift
        return (parts + ["docs", "vgpu.md"]).joined(separator: "/")
    }()

    enum Kind: String { case readOnly, emulated, writeMasked, gmAddress, commandLoad, privileged }

    static func kind(_ p: RegisterPolicy) -> Kind {
        switch p {
        case .readOnly: .readOnly
        case .emulated: .emulated
        case .writeMasked: .writeMasked
        case .gmAddress: .gmAddress
        case .commandLoad: .commandLoad
        case .privileged: .privileged
        }
    }

    /// One name of the documented table: the row names it stands for, its policy and, for write-masked
    /// registers, the mask given in parentheses.
    struct Documented { var rows: [String]; var kind: Kind; var mask: UInt32?; var text: String }

    /// Splits at commas and semicolons outside parentheses.
    static func split(_ s: Substring) -> [String] {
        var out: [String] = [], cur = "", depth = 0
        for c in s {
            if c == "(" { depth += 1 } else if c == ")" { depth -= 1 }
            if depth == 0 && (c == "," || c == ";") { out.append(cur); cur = "" } else { cur.append(c) }
        }
        out.append(cur)
        return out.map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// "0x1ff001", "bit 31", "bit 31, bits 29:26" -> the mask.
    static func mask(_ s: String) -> UInt32? {
        if s.hasPrefix("0x") { return UInt32(s.dropFirst(2), radix: 16) }
        var m: UInt32 = 0
        for part in s.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            if part.hasPrefix("bits "), let colon = part.firstIndex(of: ":"),
               let hi = UInt32(part[part.index(part.startIndex, offsetBy: 5)..<colon]), let lo = UInt32(part[part.index(after: colon)...]) {
                for b in lo...hi { m |= 1 << b }
            } else if part.hasPrefix("bit "), let b = UInt32(part.dropFirst(4)) {
                m |= 1 << b
            } else { return nil }
        }
        return m
    }

    /// The "registers | policy" table of docs/vgpu.md section 5.
    static func documented() throws -> [Documented] {
        let text = try String(contentsOfFile: docPath, encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let start = try #require(lines.firstIndex { $0.hasPrefix("| registers | policy |") }, "no policy table in \(docPath)")
        var out: [Documented] = []
        for line in lines[(start + 2)...] {
            guard line.hasPrefix("|") else { break }
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            let policyText = cells[1]
            let kind: Kind
            switch true {
            case policyText.hasPrefix("read-only"): kind = .readOnly
            case policyText.hasPrefix("emulated"): kind = .emulated
            case policyText.hasPrefix("write-masked"): kind = .writeMasked
            case policyText.hasPrefix("GM address"): kind = .gmAddress
            case policyText.hasPrefix("command-load"): kind = .commandLoad
            case policyText.hasPrefix("privileged"): kind = .privileged
            default: Issue.record("unknown policy '\(policyText)' in \(docPath)"); continue
            }
            for token in split(Substring(cells[0])) {
                var name = token, note: String? = nil
                if let open = token.firstIndex(of: "("), let close = token.lastIndex(of: ")") {
                    name = token[..<open].trimmingCharacters(in: .whitespaces)
                    note = String(token[token.index(after: open)..<close])
                }
                if name.hasPrefix("engine ") { name.removeFirst("engine ".count) }
                let rows: [String]
                switch name {
                case "everything else": continue
                case "FAULT_ADDR", "ERROR_IP": rows = [name + "_LO", name + "_HI"]
                case "VBLANK/FLIP/CURSOR_FLIP counts": rows = ["VBLANK_COUNT", "FLIP_COUNT", "CURSOR_FLIP_COUNT"]
                case "SCRATCH0-63": rows = ["SCRATCH"]
                case "GPR0-15 of both engines": rows = ["GPR"]
                default: rows = [name]
                }
                out.append(Documented(rows: rows, kind: kind, mask: kind == .writeMasked ? note.flatMap(mask) : nil, text: token))
            }
        }
        return out
    }

    @Test func everyRowHasTheDocumentedPolicyAndMask() throws {
        let doc = try Self.documented()
        #expect(!doc.isEmpty)
        var documentedNames = Set<String>()
        for d in doc {
            for name in d.rows {
                documentedNames.insert(name)
                let rows = VGPURegisterFile.rows.filter { $0.name == name }
                #expect(!rows.isEmpty, "docs/vgpu.md names \(d.text), which is not a row of VGPURegisterFile")
                for row in rows {
                    #expect(Self.kind(row.policy) == d.kind, "\(name): row \(row.policy), documented \(d.kind)")
                    if d.kind == .writeMasked {
                        #expect(d.mask != nil, "\(d.text): write-masked without a mask in docs/vgpu.md")
                        #expect(row.writableMask == d.mask, "\(name): row mask 0x\(String(row.writableMask, radix: 16)), documented \(d.text)")
                    }
                }
            }
        }
        for row in VGPURegisterFile.rows where row.block == .tracked {
            #expect(documentedNames.contains(row.name), "row \(row.name) is missing from docs/vgpu.md section 5")
        }
        // The documented array sizes.
        #expect(VGPURegisterFile.rows.filter { $0.name == "SCRATCH" }.map(\.count) == [64])
        #expect(VGPURegisterFile.rows.filter { $0.name == "GPR" }.map(\.count) == [32, 32])   // GPR0-15, two dwords each
    }

    /// Every row's offset, stride and count against the SoftGPU's constants, looked up by name here
    /// independently of the table.
    @Test func everyRowSitsAtItsRegOffset() {
        func expected(_ name: String, _ e: EngineID?) -> UInt32? {
            if let e {
                switch name {
                case "RING_TAIL": return Reg.ringTail(e)
                case "RING_HEAD": return Reg.ringHead(e)
                case "RING_START": return Reg.ringStart(e)
                case "RING_CTL": return Reg.ringCtl(e)
                case "STATUS": return Reg.status(e)
                case "ERROR_CODE": return Reg.errorCode(e)
                case "FAULT_ADDR_LO": return Reg.faultAddressLo(e)
                case "FAULT_ADDR_HI": return Reg.faultAddressHi(e)
                case "ERROR_IP_LO": return Reg.errorIPLo(e)
                case "ERROR_IP_HI": return Reg.errorIPHi(e)
                case "RESET": return Reg.reset(e)
                case "COMMAND_COUNT": return Reg.commandCount(e)
                case "ACTHD": return Reg.acthd(e)
                case "GPR": return Reg.gpr(e, dword: 0)
                default: return nil
                }
            }
            switch name {
            case "GPU_ID": return Reg.gpuID
            case "GM_SIZE_MB": return Reg.gmSizeMiB
            case "APERTURE_SIZE_MB": return Reg.apertureSizeMiB
            case "SCRATCH": return Reg.scratch(0)
            case "ISR": return Reg.isr
            case "IMR": return Reg.imr
            case "IIR": return Reg.iir
            case "IER": return Reg.ier
            case "PIPE_CONF": return Reg.pipeConf
            case "VBLANK_COUNT": return Reg.vblankCount
            case "FLIP_COUNT": return Reg.flipCount
            case "CURSOR_FLIP_COUNT": return Reg.cursorFlipCount
            case "DISPLAY_FAULTS": return Reg.displayFaults
            case "CUR_CTL": return Reg.curCtl
            case "CUR_BASE": return Reg.curBase
            case "CUR_POS": return Reg.curPos
            case "PRI_CTL": return Reg.priCtl
            case "PRI_STRIDE": return Reg.priStride
            case "PRI_SIZE": return Reg.priSize
            case "PRI_SURF": return Reg.priSurf
            default: return nil
            }
        }
        var seen = Set<UInt32>()
        for row in VGPURegisterFile.rows where row.block == .tracked {
            #expect(expected(row.name, row.engine) == row.offset, "\(row.name) \(row.engine.map { "\($0)" } ?? ""): 0x\(String(row.offset, radix: 16))")
            #expect(row.count >= 1 && row.stride == 4)
            for off in row.offsets {
                #expect(off % 4 == 0 && off < Reg.mmioSize && off < VGPURegs.pvMagic)
                #expect(seen.insert(off).inserted, "0x\(String(off, radix: 16)) is in two rows")
                #expect(VGPURegisterFile.row(at: off)?.row == row)
            }
        }
        #expect(Reg.gpr(.bcs, dword: 31) == VGPURegisterFile.rows.last { $0.name == "GPR" }!.offsets.last)
        #expect(Reg.scratch(Reg.scratchDwords - 1) == VGPURegisterFile.rows.first { $0.name == "SCRATCH" }!.offsets.last)
    }

    /// Engine registers live in the flat storage with the rest: RESET of one engine puts every row of that
    /// engine back to its reset value (through BAR0, as a guest sees it) and leaves the other engine's alone.
    @Test func engineResetRestoresTheEnginesRowsOnly() throws {
        let rig = try Rig()
        let gm = UInt32(rig.vgpu.slices.aperture.lowerBound)
        for e in EngineID.allCases {
            rig.w32(Reg.ringStart(e), gm)
            rig.w32(Reg.ringCtl(e), Reg.ringCtl(pages: 2))   // enabled
            rig.w32(Reg.gpr(e, dword: 3), 0xabcd)
        }
        rig.w32(Reg.reset(.rcs), 1)
        for row in VGPURegisterFile.rows where row.engine == .rcs {
            for off in row.offsets { #expect(rig.r32(off) == row.reset, "\(row.name) of RCS after RESET") }
        }
        #expect(rig.r32(Reg.ringStart(.bcs)) == gm)
        #expect(rig.r32(Reg.ringCtl(.bcs)) == Reg.ringCtl(pages: 2))
        #expect(rig.r32(Reg.gpr(.bcs, dword: 3)) == 0xabcd)
        // Rows without a handler are the storage: no engine row keeps a value anywhere else.
        #expect(VGPURegisterFile.rows.filter { $0.engine != nil && $0.read != nil }.map(\.name).sorted() == ["RESET", "RESET", "STATUS", "STATUS"])
    }

    /// The table derived from the rows is the hand-written policy table it replaced (kept here as the
    /// reference), so the LRI whitelist and the BAR0 policies did not change.
    @Test func derivedPolicyTableEqualsTheOldHandWrittenOne() {
        var t: [UInt32: RegisterPolicy] = [Reg.gpuID: .readOnly, Reg.gmSizeMiB: .readOnly, Reg.apertureSizeMiB: .readOnly]
        for e in EngineID.allCases {
            t[Reg.ringTail(e)] = .emulated
            t[Reg.ringHead(e)] = .emulated
            t[Reg.ringStart(e)] = .gmAddress
            t[Reg.ringCtl(e)] = .writeMasked(0x1ff001)
            for r in [Reg.status(e), Reg.errorCode(e), Reg.faultAddressLo(e), Reg.faultAddressHi(e), Reg.errorIPLo(e),
                      Reg.errorIPHi(e), Reg.commandCount(e), Reg.acthd(e)] { t[r] = .readOnly }
            t[Reg.reset(e)] = .emulated
            for i in 0..<Reg.gprDwords { t[Reg.gpr(e, dword: i)] = .commandLoad }
        }
        t[Reg.isr] = .readOnly
        t[Reg.imr] = .emulated
        t[Reg.iir] = .emulated
        t[Reg.ier] = .emulated
        for i in 0..<Reg.scratchDwords { t[Reg.scratch(i)] = .emulated }
        t[Reg.pipeConf] = .writeMasked(Reg.pipeConfEnable)
        for r in [Reg.vblankCount, Reg.flipCount, Reg.cursorFlipCount, Reg.displayFaults] { t[r] = .readOnly }
        t[Reg.curCtl] = .writeMasked(Reg.planeEnable)
        t[Reg.curBase] = .gmAddress
        t[Reg.curPos] = .emulated
        t[Reg.priCtl] = .writeMasked(Reg.planeEnable | (0xf << 26))
        t[Reg.priStride] = .emulated
        t[Reg.priSize] = .emulated
        t[Reg.priSurf] = .gmAddress
        // The vGPU's own blocks (PV page, error block, statistics), rows too since they left their switch statements.
        for r in [VGPURegs.pvMagic, VGPURegs.pvVersion, VGPURegs.pvVGPUID] { t[r] = .readOnly }
        for r in [VGPURegs.pvApertureBase, VGPURegs.pvApertureSize, VGPURegs.pvHiddenBase, VGPURegs.pvHiddenSize, VGPURegs.pvGMSize] {
            t[r] = .readOnly; t[r + 4] = .readOnly
        }
        t[VGPURegs.pvSharedPage] = .emulated; t[VGPURegs.pvSharedPage + 4] = .emulated
        t[VGPURegs.pvDoorbellRCS] = .emulated; t[VGPURegs.pvDoorbellBCS] = .emulated
        t[VGPURegs.pvDeviceReset] = .emulated   // added with the watchdog (issue 8)
        t[VGPURegs.errStatus] = .emulated
        for r in stride(from: VGPURegs.errEngine, through: VGPURegs.errHangCount, by: 4) { t[r] = .readOnly }
        for r in VGPURegs.statBlock where r % 4 == 0 { t[r] = .readOnly }
        #expect(RegisterPolicy.table == t)
    }

    /// What a guest sees through BAR0 on a fresh vGPU: every element reads its row's reset value; read-only
    /// registers ignore writes; registers without side effects read back what was written, masked by the
    /// row's writable mask; an untracked offset is privileged.
    @Test func bar0AgreesWithTheRows() throws {
        let rig = try Rig()
        for row in VGPURegisterFile.rows {
            for off in row.offsets where row.reset != nil || row.block == .tracked {
                let want = row.reset ?? rig.host.gpu.readRegister(off)
                #expect(rig.r32(off) == want, "\(row.name) at 0x\(String(off, radix: 16)) after creation")
            }
        }
        for row in VGPURegisterFile.rows where row.policy == .readOnly && !row.name.hasSuffix("COUNT") {
            for off in row.offsets {
                let before = rig.r32(off)
                rig.w32(off, 0xffff_ffff)
                #expect(rig.r32(off) == before, "\(row.name) is read-only")
            }
        }
        // Side-effect free rows (TAIL rings, HEAD is dword aligned, RESET, IIR and IER have handlers).
        let plain: Set<String> = ["SCRATCH", "CUR_POS", "PRI_STRIDE", "PRI_SIZE", "PRI_CTL", "CUR_CTL", "RING_CTL", "IMR"]
        for row in VGPURegisterFile.rows where plain.contains(row.name) {
            for off in row.offsets {
                rig.w32(off, 0xffff_ffff)
                #expect(rig.r32(off) == row.writableMask, "\(row.name) at 0x\(String(off, radix: 16))")
                rig.w32(off, 0x1234_5678)
                #expect(rig.r32(off) == 0x1234_5678 & row.writableMask, "\(row.name) at 0x\(String(off, radix: 16))")
            }
        }
        let privileged: UInt32 = 0x100
        #expect(VGPURegisterFile.row(at: privileged) == nil)
        rig.w32(privileged, 0xffff_ffff)
        #expect(rig.r32(privileged) == 0)
        #expect(rig.vgpu.statistics.privilegedWrites == 1)
    }

    /// The PV page, the error block and the statistics block (docs/vgpu.md sections 2, 4 and 7): their
    /// documented offsets must be the `VGPURegs` constants, each documented once, and each a row of its block
    /// at that offset (a lo/hi pair is a row of two elements).
    @Test func documentedBlockOffsetsAreTheVGPURegsConstants() throws {
        let constants: [String: UInt32] = [
            "PV_MAGIC": VGPURegs.pvMagic, "PV_VERSION": VGPURegs.pvVersion, "PV_VGPU_ID": VGPURegs.pvVGPUID,
            "PV_APERTURE_BASE": VGPURegs.pvApertureBase, "PV_APERTURE_SIZE": VGPURegs.pvApertureSize,
            "PV_HIDDEN_BASE": VGPURegs.pvHiddenBase, "PV_HIDDEN_SIZE": VGPURegs.pvHiddenSize, "PV_GM_SIZE": VGPURegs.pvGMSize,
            "PV_SHARED_PAGE": VGPURegs.pvSharedPage, "PV_DOORBELL_RCS": VGPURegs.pvDoorbellRCS,
            "PV_DOORBELL_BCS": VGPURegs.pvDoorbellBCS, "PV_DEVICE_RESET": VGPURegs.pvDeviceReset,
            "ERR_STATUS": VGPURegs.errStatus, "ERR_ENGINE": VGPURegs.errEngine, "ERR_REASON": VGPURegs.errReason,
            "ERR_OPCODE": VGPURegs.errOpcode, "ERR_CMD_GM": VGPURegs.errCommandGM, "ERR_LEVEL": VGPURegs.errLevel,
            "ERR_OPERAND": VGPURegs.errOperand, "ERR_COUNT": VGPURegs.errCount, "ERR_OFFSET": VGPURegs.errOffset,
            "ERR_HANG_COUNT": VGPURegs.errHangCount,
            "VGPU_STAT_BAD_ACCESS": VGPURegs.statBadAccess, "VGPU_STAT_PRIVILEGED_WRITES": VGPURegs.statPrivilegedWrites,
            "VGPU_STAT_REFUSED_ADDRESS": VGPURegs.statRefusedAddress, "VGPU_STAT_GTT_REJECTED": VGPURegs.statGTTRejected,
            "VGPU_STAT_GTT_DROPPED": VGPURegs.statGTTDropped, "VGPU_STAT_SUBMISSIONS": VGPURegs.statSubmissions,
            "VGPU_STAT_REJECTIONS": VGPURegs.statRejections,
        ]
        let text = try String(contentsOfFile: Self.docPath, encoding: .utf8)
        var documented: [String: UInt32] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("| 0x7") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 2, let offset = UInt32(cells[0].split(separator: " ")[0].dropFirst(2), radix: 16),
                  let name = cells[1].split(separator: " ").first.map(String.init) else { continue }
            #expect(documented[name] == nil, "\(name) is documented twice")
            documented[name] = offset
            if cells[0].contains("/") {   // lo / hi pairs
                #expect(cells[0].hasSuffix(String(offset + 4, radix: 16)), "\(name): \(cells[0]) is not a lo/hi pair")
            }
        }
        #expect(Set(documented.keys) == Set(constants.keys))
        let blockRows = VGPURegisterFile.rows.filter { $0.block != .tracked && $0.name != VGPURegisterFile.reservedStatistics }
        #expect(Set(blockRows.map(\.name)) == Set(documented.keys))
        for row in blockRows {
            #expect(documented[row.name] == row.offset, "row \(row.name) at 0x\(String(row.offset, radix: 16))")
            let pair = text.contains("| 0x\(String(row.offset, radix: 16)) / 0x\(String(row.offset + 4, radix: 16)) | \(row.name) lo/hi")
            #expect(row.count == (pair ? 2 : 1), "\(row.name): \(row.count) elements")
        }
        for (name, offset) in constants {
            #expect(documented[name] == offset, "\(name): VGPURegs 0x\(String(offset, radix: 16)), docs \(documented[name].map { "0x" + String($0, radix: 16) } ?? "missing")")
        }
    }
}
