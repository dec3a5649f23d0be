import CX86

/// One decoded x86 instruction, as the emulator needs it: mnemonic, length, widths, prefixes and operands.
/// Decoding is Zydis's (Debian's libzydis-dev, through the CX86 shim).
public struct DecodedInstruction: Sendable, Equatable {
    /// A register an operand names: a general-purpose register (index 0-15 = rax rcx rdx rbx rsp rbp rsi
    /// rdi r8-r15, with its width in bits), ah/ch/dh/bh, the instruction pointer, a segment register
    /// (0-5 = es cs ss ds fs gs), or another register the emulator does not model (`other`, by name).
    public enum Register: Sendable, Equatable {
        case gpr(index: Int, bits: Int)
        case highByte(index: Int)
        case rip
        case segment(Int)
        case other(String)
    }

    /// A memory operand: segment:[base + index * scale + displacement].
    public struct MemoryOperand: Sendable, Equatable {
        public var segment: Int?
        public var base: Register?
        public var index: Register?
        public var scale: Int
        public var displacement: Int64
        public init(segment: Int?, base: Register?, index: Register?, scale: Int, displacement: Int64) {
            self.segment = segment; self.base = base; self.index = index; self.scale = scale; self.displacement = displacement
        }
    }

    public enum Operand: Sendable, Equatable {
        case register(Register)
        case memory(MemoryOperand)
        case immediate(UInt64)
    }

    /// Lower-case mnemonic as Zydis names it ("ldmxcsr", "int3").
    public let mnemonic: String
    let mnemonicValue: Int32
    public let length: Int
    public let operandBits: Int
    public let addressBits: Int
    public let hasLock: Bool
    /// Explicit operands, in Intel order (destination first); each with its size in bits.
    public let operands: [(operand: Operand, bits: Int)]

    public static func == (a: DecodedInstruction, b: DecodedInstruction) -> Bool {
        a.mnemonicValue == b.mnemonicValue && a.length == b.length && a.operandBits == b.operandBits
            && a.addressBits == b.addressBits && a.hasLock == b.hasLock
            && a.operands.map(\.operand) == b.operands.map(\.operand) && a.operands.map(\.bits) == b.operands.map(\.bits)
    }

    /// Decodes the first instruction in `bytes` for code of `modeBits` (16, 32 or 64); nil when the bytes
    /// do not start with a valid instruction.
    public init?(_ bytes: [UInt8], modeBits: Int) {
        var raw = cx86_instruction()
        let rc = bytes.withUnsafeBufferPointer { cx86_decode($0.baseAddress, $0.count, Int32(modeBits), &raw) }
        guard rc == 0 else { return nil }
        mnemonicValue = raw.mnemonic
        mnemonic = String(cString: cx86_mnemonic_name(raw.mnemonic))
        length = Int(raw.length)
        operandBits = Int(raw.operand_width)
        addressBits = Int(raw.address_width)
        hasLock = raw.has_lock != 0
        let count = Int(raw.visible_count)
        operands = withUnsafeBytes(of: raw.operands) { buf in
            let ops = buf.bindMemory(to: cx86_operand.self)
            return (0..<min(count, ops.count)).compactMap { i -> (Operand, Int)? in
                let o = ops[i]
                switch Int32(o.type) {
                case Int32(CX86_OPERAND_REGISTER):
                    guard let r = Self.register(o.reg) else { return nil }
                    return (.register(r), Int(o.size))
                case Int32(CX86_OPERAND_MEMORY):
                    let m = MemoryOperand(segment: o.segment.kind == CX86_REG_SEGMENT ? Int(o.segment.index) : nil,
                                          base: Self.register(o.base), index: Self.register(o.index),
                                          scale: Int(o.scale), displacement: o.disp)
                    return (.memory(m), Int(o.size))
                case Int32(CX86_OPERAND_IMMEDIATE): return (.immediate(o.imm), Int(o.size))
                default: return nil
                }
            }
        }
    }

    private static func register(_ r: cx86_register) -> Register? {
        switch Int32(r.kind) {
        case Int32(CX86_REG_NONE): return nil
        case Int32(CX86_REG_GPR): return .gpr(index: Int(r.index), bits: Int(r.width))
        case Int32(CX86_REG_GPR_HIGH8): return .highByte(index: Int(r.index))
        case Int32(CX86_REG_RIP): return .rip
        case Int32(CX86_REG_SEGMENT): return .segment(Int(r.index))
        default: return .other(String(cString: cx86_register_name(r.zydis)))
        }
    }

    /// The ZydisMnemonic value of a mnemonic name, for keying tables; nil if Zydis has no such mnemonic.
    public static func mnemonicValue(of name: String) -> Int32? {
        let v = cx86_mnemonic_from_name(name)
        return v < 0 ? nil : v
    }
}
