import CKVM

/// The register views the gdb stub offers: x86-64 for ELF64 guests, i386 for multiboot guests (32-bit
/// protected mode). The order of registers is gdb's (its features org.gnu.gdb.i386.core, .sse and, for
/// x86-64, .segments); `target.xml` names them so gdb needs no guessing.
enum RegisterView {
    case x86_64
    case i386

    /// Registers in `g` packet order: name, size in bytes.
    var registers: [(name: String, bytes: Int)] {
        switch self {
        case .x86_64:
            let gprs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + (8...15).map { "r\($0)" }
            return gprs.map { ($0, 8) } + [("rip", 8), ("eflags", 4)]
                + Self.segmentNames.map { ($0, 4) } + Self.x87 + (0..<16).map { ("xmm\($0)", 16) } + [("mxcsr", 4)]
                + [("fs_base", 8), ("gs_base", 8)]
        case .i386:
            let gprs = ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
            return gprs.map { ($0, 4) } + [("eip", 4), ("eflags", 4)]
                + Self.segmentNames.map { ($0, 4) } + Self.x87 + (0..<8).map { ("xmm\($0)", 16) } + [("mxcsr", 4)]
        }
    }

    static let segmentNames = ["cs", "ss", "ds", "es", "fs", "gs"]
    static let x87: [(name: String, bytes: Int)] = (0..<8).map { ("st\($0)", 10) }
        + ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"].map { ($0, 4) }

    /// The bytes of register `index` (little-endian), from a vCPU state.
    func value(_ index: Int, _ s: VCPUState) -> [UInt8] {
        let r = s.registers, sr = s.specialRegisters, f = s.fpu
        func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
        let name = registers[index].name, n = registers[index].bytes
        if let v = Self.gpr(name, r) { return le(v, n) }
        switch name {
        case "eflags": return le(r.rflags, 4)
        case "cs": return le(UInt64(sr.cs.selector), 4)
        case "ss": return le(UInt64(sr.ss.selector), 4)
        case "ds": return le(UInt64(sr.ds.selector), 4)
        case "es": return le(UInt64(sr.es.selector), 4)
        case "fs": return le(UInt64(sr.fs.selector), 4)
        case "gs": return le(UInt64(sr.gs.selector), 4)
        case "fs_base": return le(sr.fs.base, 8)
        case "gs_base": return le(sr.gs.base, 8)
        case "fctrl": return le(UInt64(f.fcw), 4)
        case "fstat": return le(UInt64(f.fsw), 4)
        case "ftag":
            // KVM keeps the abridged tag (1 = valid); gdb shows the full one (00 valid, 11 empty).
            var full: UInt64 = 0
            for i in 0..<8 where f.ftwx & (1 << UInt8(i)) == 0 { full |= 3 << UInt64(2 * i) }
            return le(full, 4)
        case "fioff": return le(f.last_ip, 4)
        case "fooff": return le(f.last_dp, 4)
        case "fop": return le(UInt64(f.last_opcode), 4)
        case "fiseg", "foseg": return le(0, 4)
        case "mxcsr": return le(UInt64(f.mxcsr), 4)
        default: break
        }
        if name.hasPrefix("st"), let i = Int(name.dropFirst(2)) {
            return withUnsafeBytes(of: f.fpr) { Array($0[(i * 16)..<(i * 16 + 10)]) }
        }
        if name.hasPrefix("xmm"), let i = Int(name.dropFirst(3)) {
            return withUnsafeBytes(of: f.xmm) { Array($0[(i * 16)..<(i * 16 + 16)]) }
        }
        return [UInt8](repeating: 0, count: n)
    }

    /// Writes register `index` into `regs` when it is a general-purpose register, RIP/EIP or EFLAGS;
    /// returns false for the others (segment, x87 and SSE registers are read-only through the stub).
    func set(_ index: Int, _ bytes: [UInt8], _ r: inout kvm_regs) -> Bool {
        var v: UInt64 = 0
        for (i, b) in bytes.prefix(8).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        let name = registers[index].name
        func merge(_ old: UInt64) -> UInt64 { self == .i386 ? (old & ~0xffff_ffff) | (v & 0xffff_ffff) : v }
        switch name {
        case "rax", "eax": r.rax = merge(r.rax)
        case "rbx", "ebx": r.rbx = merge(r.rbx)
        case "rcx", "ecx": r.rcx = merge(r.rcx)
        case "rdx", "edx": r.rdx = merge(r.rdx)
        case "rsi", "esi": r.rsi = merge(r.rsi)
        case "rdi", "edi": r.rdi = merge(r.rdi)
        case "rbp", "ebp": r.rbp = merge(r.rbp)
        case "rsp", "esp": r.rsp = merge(r.rsp)
        case "r8": r.r8 = v
        case "r9": r.r9 = v
        case "r10": r.r10 = v
        case "r11": r.r11 = v
        case "r12": r.r12 = v
        case "r13": r.r13 = v
        case "r14": r.r14 = v
        case "r15": r.r15 = v
        case "rip", "eip": r.rip = merge(r.rip)
        case "eflags": r.rflags = (r.rflags & ~0xffff_ffff) | (v & 0xffff_ffff)
        default: return false
        }
        return true
    }

    static func gpr(_ name: String, _ r: kvm_regs) -> UInt64? {
        switch name {
        case "rax", "eax": return r.rax
        case "rbx", "ebx": return r.rbx
        case "rcx", "ecx": return r.rcx
        case "rdx", "edx": return r.rdx
        case "rsi", "esi": return r.rsi
        case "rdi", "edi": return r.rdi
        case "rbp", "ebp": return r.rbp
        case "rsp", "esp": return r.rsp
        case "r8": return r.r8
        case "r9": return r.r9
        case "r10": return r.r10
        case "r11": return r.r11
        case "r12": return r.r12
        case "r13": return r.r13
        case "r14": return r.r14
        case "r15": return r.r15
        case "rip", "eip": return r.rip
        default: return nil
        }
    }

    /// target.xml: the architecture and gdb's standard x86 features, types kept to what gdb predefines.
    var targetXML: String {
        let arch = self == .x86_64 ? "i386:x86-64" : "i386"
        let wide = self == .x86_64 ? 64 : 32
        var core = "<feature name=\"org.gnu.gdb.i386.core\">\n"
        var sse = "<feature name=\"org.gnu.gdb.i386.sse\">\n"
            + "<vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/><vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/>"
            + "<vector id=\"v16i8\" type=\"int8\" count=\"16\"/><vector id=\"v8i16\" type=\"int16\" count=\"8\"/>"
            + "<vector id=\"v4i32\" type=\"int32\" count=\"4\"/><vector id=\"v2i64\" type=\"int64\" count=\"2\"/>"
            + "<union id=\"vec128\"><field name=\"v4_float\" type=\"v4f\"/><field name=\"v2_double\" type=\"v2d\"/>"
            + "<field name=\"v16_int8\" type=\"v16i8\"/><field name=\"v8_int16\" type=\"v8i16\"/>"
            + "<field name=\"v4_int32\" type=\"v4i32\"/><field name=\"v2_int64\" type=\"v2i64\"/>"
            + "<field name=\"uint128\" type=\"uint128\"/></union>\n"
        var segments = "<feature name=\"org.gnu.gdb.i386.segments\">\n"
        for (i, reg) in registers.enumerated() {
            let n = reg.name
            let type: String
            if ["rip", "eip"].contains(n) { type = "code_ptr" }
            else if ["rsp", "rbp", "esp", "ebp"].contains(n) { type = "data_ptr" }
            else if n.hasPrefix("st") { type = "i387_ext" }
            else if n.hasPrefix("xmm") { type = "vec128" }
            else if reg.bytes == 8 { type = "int64" }
            else { type = wide == 64 && i < 16 ? "int64" : "int32" }
            let group = Self.x87.contains(where: { $0.name == n }) && !n.hasPrefix("st") ? " group=\"float\"" : (n == "mxcsr" ? " group=\"vector\"" : "")
            let line = "<reg name=\"\(n)\" bitsize=\"\(reg.bytes * 8)\" type=\"\(type)\" regnum=\"\(i)\"\(group)/>\n"
            if n.hasPrefix("xmm") || n == "mxcsr" { sse += line }
            else if n.hasSuffix("_base") { segments += line }
            else { core += line }
        }
        var xml = "<?xml version=\"1.0\"?>\n<!DOCTYPE target SYSTEM \"gdb-target.dtd\">\n<target version=\"1.0\">\n"
        xml += "<architecture>\(arch)</architecture>\n" + core + "</feature>\n" + sse + "</feature>\n"
        if self == .x86_64 { xml += segments + "</feature>\n" }
        return xml + "</target>\n"
    }
}
