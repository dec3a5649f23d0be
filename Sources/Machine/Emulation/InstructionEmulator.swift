import CKVM
import CX86
import KVM
import Synchronization

/// The instruction kinds the emulator handles, one handler each; also the keys of its statistics.
public enum EmulatedInstructionKind: String, CaseIterable, Sendable, Comparable {
    case int3, fwait, ldmxcsr, stmxcsr, popcnt, movbe, cmpxchg8b, cmpxchg16b

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// Why the emulator refused an instruction. The VM then stops with status 8 and a line naming the bytes
/// and this cause.
public enum EmulationError: Error, Equatable, CustomStringConvertible, Sendable {
    /// KVM gave no bytes and none could be read at CS:RIP.
    case noInstructionBytes
    /// The bytes are not a valid instruction in the vCPU's mode.
    case undecodable(modeBits: Int)
    /// A valid instruction the emulator has no handler for.
    case unsupported(mnemonic: String)
    /// A handled instruction in a form or situation the emulator does not model.
    case unsupportedForm(mnemonic: String, why: String)
    /// An operand lies (partly) in guest-physical space that is not RAM (MMIO or a hole).
    case notRAM(mnemonic: String, linear: UInt64, physical: UInt64)
    /// Reading or updating the vCPU through KVM failed.
    case kvm(String)

    public var description: String {
        let fix = "keep the guest off this instruction in ring 0 on this host (e.g. clearcpuid=), or run on a host with hardware virtualisation"
        switch self {
        case .noInstructionBytes:
            return "KVM gave no instruction bytes and none are readable at CS:RIP: \(fix)"
        case .undecodable(let bits):
            return "the bytes are not a valid \(bits)-bit instruction: \(fix)"
        case .unsupported(let m):
            return "minivisor's instruction emulator has no handler for \(m): \(fix)"
        case let .unsupportedForm(m, why):
            return "minivisor's instruction emulator does not handle \(m) \(why): \(fix)"
        case let .notRAM(m, linear, physical):
            return "\(m) operand at linear 0x\(String(linear, radix: 16)) is guest-physical 0x\(String(physical, radix: 16)), not RAM (the emulator does not forward MMIO): \(fix)"
        case .kvm(let s):
            return "cannot read or update the vCPU: \(s)"
        }
    }
}

/// How an emulation failure ended.
public enum EmulationOutcome: Sendable, Equatable {
    /// Done as the CPU would have: the registers, memory and flags are updated, or the guest gets the
    /// exception the CPU would raise (its own #BP, #GP, #PF, #NM, #UD or #MF). The vCPU can run on.
    case emulated(EmulatedInstructionKind)
    /// Refused: nothing changed. `bytes` are the instruction bytes at CS:RIP (for the error line).
    case refused(bytes: [UInt8], EmulationError)
}

/// How many instructions of each kind the emulator completed.
///
/// Threads and ownership: one per machine, shared by its vCPU threads (which `record`) and any reader;
/// the counts live in one private `State` behind one Mutex, never held while calling out.
public final class EmulationStatistics: Sendable {
    private struct State { var counts: [EmulatedInstructionKind: UInt64] = [:] }
    private let state = Mutex(State())

    public init() {}

    func record(_ kind: EmulatedInstructionKind) {
        state.withLock { $0.counts[kind, default: 0] += 1 }
    }

    public var counts: [EmulatedInstructionKind: UInt64] { state.withLock { $0.counts } }

    public func count(_ kind: EmulatedInstructionKind) -> UInt64 { counts[kind] ?? 0 }

    public var total: UInt64 { counts.values.reduce(0, +) }

    /// "int3 3, ldmxcsr 1" (kinds by name), or "none".
    public var summary: String {
        let c = counts.sorted { $0.key < $1.key }
        return c.isEmpty ? "none" : c.map { "\($0.key.rawValue) \($0.value)" }.joined(separator: ", ")
    }
}

/// A guest exception the emulated instruction raises instead of completing (RIP stays on it).
struct GuestException: Error, Equatable {
    var vector: UInt8
    var errorCode: UInt32?
    /// For #PF: the faulting linear address (CR2).
    var faultAddress: UInt64?

    static let undefinedOpcode = GuestException(vector: 6)
    static let deviceNotAvailable = GuestException(vector: 7)
    static let generalProtection = GuestException(vector: 13, errorCode: 0)
    static let mathFault = GuestException(vector: 16)
    static let stackFault = GuestException(vector: 12, errorCode: 0)
}

/// What a handler did when the instruction completed.
enum StepEnd: Equatable {
    /// Continue after the instruction.
    case next
    /// A trap: continue after the instruction, delivering `vector` first (int3 -> #BP).
    case trap(UInt8)
}

/// A table-driven emulator for the instructions this host's KVM cannot emulate in guest ring 0 (kvm-pvm:
/// int3, ldmxcsr, fwait, popcnt, movbe, cmpxchg16b, ...): decodes with Zydis, reads and writes operands
/// through the guest's page tables (KVM_TRANSLATE), updates registers, MXCSR and flags through KVM, and
/// delivers the exception the CPU would raise. What it does not know it refuses, changing nothing.
///
/// Threads and ownership: stateless (the table is immutable); `handleEmulationFailure` runs on the thread
/// that owns the vCPU, after KVM_RUN returned the emulation failure and before the next KVM_RUN.
/// Other vCPUs keep running: only `cmpxchg8b`/`cmpxchg16b` are atomic towards them (as `lock` makes
/// them); the other memory writes are plain stores, like the CPU's unlocked ones.
///
/// Not modelled: segment limits and the permission bits of page-table entries (KVM_TRANSLATE does not
/// report them), alignment checks (#AC), and single-step traps after an emulated instruction.
public enum InstructionEmulator {
    struct Handler: Sendable {
        let kind: EmulatedInstructionKind
        let run: @Sendable (inout EmulationStep) throws -> StepEnd
    }

    /// Zydis mnemonic name -> handler. One entry per instruction kind (cmpxchg8b/16b share code).
    static let entries: [(mnemonic: String, handler: Handler)] = [
        ("int3", Handler(kind: .int3) { _ in .trap(3) }),
        ("fwait", Handler(kind: .fwait, run: fwait)),
        ("ldmxcsr", Handler(kind: .ldmxcsr, run: ldmxcsr)),
        ("stmxcsr", Handler(kind: .stmxcsr, run: stmxcsr)),
        ("popcnt", Handler(kind: .popcnt, run: popcnt)),
        ("movbe", Handler(kind: .movbe, run: movbe)),
        ("cmpxchg8b", Handler(kind: .cmpxchg8b, run: cmpxchg)),
        ("cmpxchg16b", Handler(kind: .cmpxchg16b, run: cmpxchg)),
    ]

    /// The table, keyed by the decoder's mnemonic value. Names Zydis does not know are left out (a test
    /// checks that none are).
    static let table: [Int32: Handler] = {
        var t: [Int32: Handler] = [:]
        for e in entries { if let m = DecodedInstruction.mnemonicValue(of: e.mnemonic) { t[m] = e.handler } }
        return t
    }()

    /// The mnemonics the emulator handles.
    public static var mnemonics: [String] { entries.map(\.mnemonic) }

    /// Handles one KVM emulation failure on `cpu`: emulates the instruction at CS:RIP (from
    /// `reportedBytes`, KVM's copy, when it gave them; else read through the page tables) and updates
    /// the vCPU, or refuses and changes nothing.
    public static func handleEmulationFailure(cpu: any EmulatedCPU, memory: any EmulatedMemory, reportedBytes: [UInt8],
                                              statistics: EmulationStatistics? = nil) -> EmulationOutcome {
        let regs: kvm_regs, sregs: kvm_sregs
        do {
            regs = try cpu.getRegisters()
            sregs = try cpu.getSpecialRegisters()
        } catch { return .refused(bytes: reportedBytes, .kvm("\(error)")) }
        let mode = modeBits(sregs, rflags: regs.rflags)
        let bytes = reportedBytes.isEmpty ? fetch(cpu: cpu, memory: memory, regs: regs, sregs: sregs, modeBits: mode) : reportedBytes
        guard !bytes.isEmpty else { return .refused(bytes: [], .noInstructionBytes) }
        guard let instruction = DecodedInstruction(bytes, modeBits: mode) else {
            return .refused(bytes: bytes, .undecodable(modeBits: mode))
        }
        let shown = Array(bytes.prefix(instruction.length))
        guard let handler = table[instruction.mnemonicValue] else {
            return .refused(bytes: shown, .unsupported(mnemonic: instruction.mnemonic))
        }
        var step = EmulationStep(cpu: cpu, memory: memory, instruction: instruction, regs: regs, sregs: sregs, modeBits: mode)
        do {
            let end: StepEnd
            do {
                end = try handler.run(&step)
            } catch let exception as GuestException {
                try deliver(exception, cpu: cpu, sregs: sregs)
                statistics?.record(handler.kind)
                return .emulated(handler.kind)
            }
            step.regs.rip = (step.regs.rip &+ UInt64(instruction.length)) & (mode == 64 ? ~0 : 0xffff_ffff)
            step.regs.rflags &= ~(UInt64(1) << 16)   // RF: cleared once an instruction completes
            try cpu.setRegisters(step.regs)
            if case .trap(let vector) = end { try cpu.injectException(vector, errorCode: nil) }
        } catch let e as EmulationError {
            return .refused(bytes: shown, e)
        } catch {
            return .refused(bytes: shown, .kvm("\(error)"))
        }
        statistics?.record(handler.kind)
        return .emulated(handler.kind)
    }

    /// 16, 32 or 64: the vCPU's code size (real and virtual-8086 mode are 16).
    static func modeBits(_ s: kvm_sregs, rflags: UInt64) -> Int {
        if s.cr0 & 1 == 0 || rflags & (1 << 17) != 0 { return 16 }
        if s.efer & (1 << 10) != 0 && s.cs.l != 0 { return 64 }
        return s.cs.db != 0 ? 32 : 16
    }

    /// Up to 15 bytes at CS:RIP, through the page tables, stopping at the first byte that is not RAM.
    static func fetch(cpu: any EmulatedCPU, memory: any EmulatedMemory, regs: kvm_regs, sregs: kvm_sregs, modeBits: Int) -> [UInt8] {
        let mask: UInt64 = modeBits == 64 ? ~0 : 0xffff_ffff
        var out: [UInt8] = []
        var linear = (sregs.cs.base &+ regs.rip) & mask
        while out.count < 15 {
            let inPage = Int(4096 - (linear & 0xfff))
            let n = min(15 - out.count, inPage)
            let physical: UInt64?
            if sregs.cr0 & 0x8000_0000 != 0 { physical = (try? cpu.translate(linear)) ?? nil } else { physical = linear }
            guard let pa = physical, let p = memory.ramPointer(pa, length: n) else { break }
            out += UnsafeRawBufferPointer(start: p, count: n)
            linear = (linear &+ UInt64(n)) & mask
        }
        return out
    }

    /// Delivers `e` as the CPU would for a fault: RIP stays on the instruction; CR2 first for #PF.
    static func deliver(_ e: GuestException, cpu: any EmulatedCPU, sregs: kvm_sregs) throws {
        if let address = e.faultAddress {
            var s = sregs
            s.cr2 = address
            try cpu.setSpecialRegisters(s)
        }
        try cpu.injectException(e.vector, errorCode: e.errorCode)
    }

    static let hostMXCSRMask = cx86_host_mxcsr_mask()

    // MARK: handlers

    /// fwait/wait: #NM when CR0.MP and CR0.TS are set; #MF when an unmasked x87 exception is pending
    /// (FSW.ES); otherwise nothing.
    static func fwait(_ s: inout EmulationStep) throws -> StepEnd {
        if s.sregs.cr0 & 0b1010 == 0b1010 { throw GuestException.deviceNotAvailable }
        let fpu = try s.kvm { try s.cpu.getFPU() }
        if fpu.fsw & 0x80 != 0 {
            guard s.sregs.cr0 & (1 << 5) != 0 else {
                throw EmulationError.unsupportedForm(mnemonic: "fwait", why: "with an x87 exception pending and CR0.NE clear (FERR# is not modelled)")
            }
            throw GuestException.mathFault
        }
        return .next
    }

    /// The checks every SSE instruction makes first: #UD without CR4.OSFXSR or with CR0.EM, #NM with CR0.TS.
    static func checkSSE(_ s: EmulationStep) throws {
        if s.sregs.cr0 & (1 << 2) != 0 || s.sregs.cr4 & (1 << 9) == 0 { throw GuestException.undefinedOpcode }
        if s.sregs.cr0 & (1 << 3) != 0 { throw GuestException.deviceNotAvailable }
    }

    /// ldmxcsr m32: MXCSR from memory; #GP(0) when it sets a bit outside MXCSR_MASK.
    static func ldmxcsr(_ s: inout EmulationStep) throws -> StepEnd {
        try checkSSE(s)
        let value = UInt32(truncatingIfNeeded: try s.readOperand(0))
        if value & ~hostMXCSRMask != 0 { throw GuestException.generalProtection }
        try s.kvm { try s.cpu.setMXCSR(value) }
        return .next
    }

    /// stmxcsr m32: MXCSR to memory.
    static func stmxcsr(_ s: inout EmulationStep) throws -> StepEnd {
        try checkSSE(s)
        let mxcsr = try s.kvm { try s.cpu.getMXCSR() }
        try s.writeOperand(0, UInt64(mxcsr))
        return .next
    }

    /// popcnt r, r/m: the number of set bits; OF SF AF CF PF cleared, ZF = (source == 0).
    static func popcnt(_ s: inout EmulationStep) throws -> StepEnd {
        let source = try s.readOperand(1)
        try s.writeOperand(0, UInt64(source.nonzeroBitCount))
        s.regs.rflags &= ~UInt64(EmulationStep.arithmeticFlags)
        if source == 0 { s.regs.rflags |= EmulationStep.zf }
        return .next
    }

    /// movbe r, m / movbe m, r: a load or store with the bytes reversed; flags unchanged.
    static func movbe(_ s: inout EmulationStep) throws -> StepEnd {
        let bits = try s.explicitOperand(0).bits
        let value = try s.readOperand(1)
        let swapped: UInt64
        switch bits {
        case 16: swapped = UInt64(UInt16(truncatingIfNeeded: value).byteSwapped)
        case 32: swapped = UInt64(UInt32(truncatingIfNeeded: value).byteSwapped)
        default: swapped = value.byteSwapped
        }
        try s.writeOperand(0, swapped)
        return .next
    }

    /// cmpxchg8b m64 / cmpxchg16b m128: compares EDX:EAX (RDX:RAX) with the memory operand; if equal,
    /// ZF = 1 and ECX:EBX (RCX:RBX) is stored, else ZF = 0 and the operand is loaded into EDX:EAX
    /// (RDX:RAX). One locked host compare-exchange on the guest's RAM; cmpxchg16b needs 16-byte alignment
    /// (#GP(0)).
    static func cmpxchg(_ s: inout EmulationStep) throws -> StepEnd {
        guard case .memory(let m) = s.instruction.operands.first?.operand else { throw GuestException.undefinedOpcode }
        let wide = s.instruction.mnemonic == "cmpxchg16b"
        let size = wide ? 16 : 8
        let linear = try s.linearAddress(m)
        if wide && linear & 15 != 0 { throw GuestException.generalProtection }
        let equal: Bool
        if wide {
            let p = try s.hostPointer(linear: linear, count: 16, write: true)
            var expected: [UInt64] = [s.regs.rax, s.regs.rdx]
            let desired: [UInt64] = [s.regs.rbx, s.regs.rcx]
            equal = cx86_cmpxchg16(p, &expected, desired) != 0
            if !equal { s.regs.rax = expected[0]; s.regs.rdx = expected[1] }
        } else {
            var expected = (s.regs.rdx & 0xffff_ffff) << 32 | (s.regs.rax & 0xffff_ffff)
            let desired = (s.regs.rcx & 0xffff_ffff) << 32 | (s.regs.rbx & 0xffff_ffff)
            if linear & 7 == 0 {
                let p = try s.hostPointer(linear: linear, count: 8, write: true)
                equal = cx86_cmpxchg8(p, &expected, desired) != 0
            } else {
                // Split across cache lines (or pages): the host would take a split lock; compare and store
                // as two steps instead (another vCPU's racing write to the same misaligned bytes is lost).
                let current = try s.readMemory(linear, count: size).littleEndianValue
                equal = current == expected
                try s.writeMemory(linear, bytes: (equal ? desired : current).littleEndianBytes(count: size))
                expected = current
            }
            if !equal {
                s.regs.rax = expected & 0xffff_ffff
                s.regs.rdx = expected >> 32
            }
        }
        if equal { s.regs.rflags |= EmulationStep.zf } else { s.regs.rflags &= ~EmulationStep.zf }
        return .next
    }
}

/// One instruction being emulated: the decoded form, the vCPU's registers (updated in place and written
/// back by the emulator when the instruction completes) and access to guest memory.
struct EmulationStep {
    let cpu: any EmulatedCPU
    let memory: any EmulatedMemory
    let instruction: DecodedInstruction
    var regs: kvm_regs
    let sregs: kvm_sregs
    let modeBits: Int

    static let zf: UInt64 = 1 << 6
    /// CF PF AF ZF SF OF.
    static let arithmeticFlags: UInt64 = 0x8d5

    /// The current privilege level (CS.RPL; 0 in real mode, 3 in virtual-8086 mode).
    var cpl: Int {
        if sregs.cr0 & 1 == 0 { return 0 }
        if regs.rflags & (1 << 17) != 0 { return 3 }
        return Int(sregs.cs.selector & 3)
    }

    /// Runs a KVM call, turning its error into a refusal.
    func kvm<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw EmulationError.kvm("\(error)") }
    }

    // MARK: registers

    func gpr(_ index: Int) -> UInt64 {
        switch index {
        case 0: return regs.rax
        case 1: return regs.rcx
        case 2: return regs.rdx
        case 3: return regs.rbx
        case 4: return regs.rsp
        case 5: return regs.rbp
        case 6: return regs.rsi
        case 7: return regs.rdi
        case 8: return regs.r8
        case 9: return regs.r9
        case 10: return regs.r10
        case 11: return regs.r11
        case 12: return regs.r12
        case 13: return regs.r13
        case 14: return regs.r14
        default: return regs.r15
        }
    }

    mutating func setGPR(_ index: Int, _ v: UInt64) {
        switch index {
        case 0: regs.rax = v
        case 1: regs.rcx = v
        case 2: regs.rdx = v
        case 3: regs.rbx = v
        case 4: regs.rsp = v
        case 5: regs.rbp = v
        case 6: regs.rsi = v
        case 7: regs.rdi = v
        case 8: regs.r8 = v
        case 9: regs.r9 = v
        case 10: regs.r10 = v
        case 11: regs.r11 = v
        case 12: regs.r12 = v
        case 13: regs.r13 = v
        case 14: regs.r14 = v
        default: regs.r15 = v
        }
    }

    static func mask(_ bits: Int) -> UInt64 { bits >= 64 ? ~0 : (UInt64(1) << UInt64(bits)) - 1 }

    func readRegister(_ r: DecodedInstruction.Register) throws -> UInt64 {
        switch r {
        case let .gpr(i, bits): return gpr(i) & Self.mask(bits)
        case .highByte(let i): return (gpr(i) >> 8) & 0xff
        case .rip: return regs.rip &+ UInt64(instruction.length)
        case .segment, .other: throw EmulationError.unsupportedForm(mnemonic: instruction.mnemonic, why: "with register operand \(r)")
        }
    }

    /// Writes a register as the CPU does: 32-bit writes clear bits 63..32, 8- and 16-bit writes keep the rest.
    mutating func writeRegister(_ r: DecodedInstruction.Register, _ v: UInt64) throws {
        switch r {
        case let .gpr(i, bits):
            if bits >= 32 { setGPR(i, v & Self.mask(bits)) } else { setGPR(i, (gpr(i) & ~Self.mask(bits)) | (v & Self.mask(bits))) }
        case .highByte(let i): setGPR(i, (gpr(i) & ~0xff00) | ((v & 0xff) << 8))
        default: throw EmulationError.unsupportedForm(mnemonic: instruction.mnemonic, why: "with register operand \(r)")
        }
    }

    // MARK: operands

    /// Explicit operand `n` with its size; a refusal when the instruction has fewer, or one wider than 64 bits.
    func explicitOperand(_ n: Int) throws -> (operand: DecodedInstruction.Operand, bits: Int) {
        guard n < instruction.operands.count, instruction.operands[n].bits <= 64 else {
            throw EmulationError.unsupportedForm(mnemonic: instruction.mnemonic, why: "in this operand form")
        }
        return instruction.operands[n]
    }

    /// The value of explicit operand `n` (registers, memory, immediates), zero-extended.
    func readOperand(_ n: Int) throws -> UInt64 {
        let (operand, bits) = try explicitOperand(n)
        switch operand {
        case .register(let r): return try readRegister(r)
        case .immediate(let v): return v & Self.mask(bits)
        case .memory(let m): return try readMemory(try linearAddress(m), count: bits / 8).littleEndianValue
        }
    }

    mutating func writeOperand(_ n: Int, _ value: UInt64) throws {
        let (operand, bits) = try explicitOperand(n)
        switch operand {
        case .register(let r): try writeRegister(r, value)
        case .memory(let m): try writeMemory(try linearAddress(m), bytes: value.littleEndianBytes(count: bits / 8))
        case .immediate: throw EmulationError.unsupportedForm(mnemonic: instruction.mnemonic, why: "writing an immediate")
        }
    }

    /// The linear address of a memory operand: base + index * scale + displacement (RIP-relative from the
    /// next instruction) at the instruction's address size, plus the segment base (only FS and GS in
    /// 64-bit mode). #GP(0) (#SS(0) for the stack segment) when not canonical in 64-bit mode.
    func linearAddress(_ m: DecodedInstruction.MemoryOperand) throws -> UInt64 {
        var offset = UInt64(bitPattern: m.displacement)
        if let b = m.base { offset &+= try readRegister(b) }
        if let i = m.index { offset &+= try readRegister(i) &* UInt64(max(m.scale, 1)) }
        offset &= Self.mask(instruction.addressBits)
        let segmentBase: UInt64
        switch m.segment {
        case 4?: segmentBase = sregs.fs.base
        case 5?: segmentBase = sregs.gs.base
        case 0?: segmentBase = modeBits == 64 ? 0 : sregs.es.base
        case 1?: segmentBase = modeBits == 64 ? 0 : sregs.cs.base
        case 2?: segmentBase = modeBits == 64 ? 0 : sregs.ss.base
        default: segmentBase = modeBits == 64 ? 0 : sregs.ds.base
        }
        if modeBits != 64 { return (segmentBase &+ offset) & 0xffff_ffff }
        let linear = segmentBase &+ offset
        let top = Int64(bitPattern: linear << 16) >> 16   // canonical: bits 63..47 equal
        if UInt64(bitPattern: top) != linear { throw m.segment == 2 ? GuestException.stackFault : GuestException.generalProtection }
        return linear
    }

    // MARK: memory

    /// Guest-physical address of a linear one; #PF (not present, CR2 = linear) when the page tables
    /// do not map it.
    func physical(_ linear: UInt64, write: Bool) throws -> UInt64 {
        guard sregs.cr0 & 0x8000_0000 != 0 else { return linear }
        guard let pa = try kvm({ try cpu.translate(linear) }) else {
            throw GuestException(vector: 14, errorCode: (write ? 2 : 0) | (cpl == 3 ? 4 : 0), faultAddress: linear)
        }
        return pa
    }

    /// Host bytes behind [linear, linear + count), which must not cross a page.
    func hostPointer(linear: UInt64, count: Int, write: Bool) throws -> UnsafeMutableRawPointer {
        let pa = try physical(linear, write: write)
        guard let p = memory.ramPointer(pa, length: count) else {
            throw EmulationError.notRAM(mnemonic: instruction.mnemonic, linear: linear, physical: pa)
        }
        return p
    }

    /// The page-sized pieces of [linear, linear + count): every piece is translated (and may fault)
    /// before any byte is touched, as the CPU checks the whole access first.
    func pieces(_ linear: UInt64, count: Int, write: Bool) throws -> [UnsafeMutableRawBufferPointer] {
        var out: [UnsafeMutableRawBufferPointer] = []
        var address = linear, left = count
        while left > 0 {
            let n = min(left, Int(4096 - (address & 0xfff)))
            out.append(UnsafeMutableRawBufferPointer(start: try hostPointer(linear: address, count: n, write: write), count: n))
            address = (address &+ UInt64(n)) & (modeBits == 64 ? ~0 : 0xffff_ffff)
            left -= n
        }
        return out
    }

    func readMemory(_ linear: UInt64, count: Int) throws -> [UInt8] {
        try pieces(linear, count: count, write: false).flatMap { Array($0) }
    }

    func writeMemory(_ linear: UInt64, bytes: [UInt8]) throws {
        var i = 0
        for piece in try pieces(linear, count: bytes.count, write: true) {
            for j in 0..<piece.count { piece[j] = bytes[i + j] }
            i += piece.count
        }
    }
}

extension Array where Element == UInt8 {
    /// The bytes as a little-endian integer (at most 8 bytes).
    var littleEndianValue: UInt64 {
        var v: UInt64 = 0
        for (i, b) in prefix(8).enumerated() { v |= UInt64(b) << UInt64(8 * i) }
        return v
    }
}

extension UInt64 {
    func littleEndianBytes(count: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: self >> UInt64(8 * $0)) }
    }
}
