import CKVM
import Machine

/// A vCPU as plain values: what the emulator read and wrote, and what it injected. No /dev/kvm.
final class FakeCPU: EmulatedCPU {
    var regs = kvm_regs()
    var sregs = kvm_sregs()
    var fpu = kvm_fpu()
    var injected: [(vector: UInt8, errorCode: UInt32?)] = []
    var writes = 0
    /// Linear -> physical; identity on [mappedStart, mappedEnd), else not mapped.
    var mappedStart: UInt64 = 0
    var mappedEnd: UInt64 = 0
    /// Extra linear pages mapped elsewhere (page base -> physical page base).
    var extraPages: [UInt64: UInt64] = [:]

    func getRegisters() throws -> kvm_regs { regs }
    func setRegisters(_ r: kvm_regs) throws { regs = r; writes += 1 }
    func getSpecialRegisters() throws -> kvm_sregs { sregs }
    func setSpecialRegisters(_ s: kvm_sregs) throws { sregs = s; writes += 1 }
    func getFPU() throws -> kvm_fpu { fpu }
    func setFPU(_ f: kvm_fpu) throws { fpu = f; writes += 1 }
    func getMXCSR() throws -> UInt32 { fpu.mxcsr }
    func setMXCSR(_ v: UInt32) throws { fpu.mxcsr = v; writes += 1 }
    func injectException(_ vector: UInt8, errorCode: UInt32?) throws { injected.append((vector, errorCode)) }
    func translate(_ linear: UInt64) throws -> UInt64? {
        if let p = extraPages[linear & ~0xfff] { return p | (linear & 0xfff) }
        return linear >= mappedStart && linear < mappedEnd ? linear : nil
    }

    /// 64-bit long mode, paging on, SSE enabled (CR4.OSFXSR), at `cpl`.
    static func longMode(cpl: UInt16 = 0) -> FakeCPU {
        let c = FakeCPU()
        c.sregs.cr0 = 0x8005_0033         // PG WP NE ET MP PE
        c.sregs.cr4 = 0x6a0               // OSXMMEXCPT OSFXSR PAE PGE
        c.sregs.efer = 0xd01              // NXE LMA LME SCE
        c.sregs.cs.l = 1
        c.sregs.cs.selector = cpl == 3 ? 0x33 : 0x08
        c.sregs.cs.dpl = UInt8(cpl)
        c.regs.rflags = 0x202
        c.fpu.mxcsr = 0x1f80
        c.fpu.fcw = 0x37f
        return c
    }
}

/// Guest-physical [base, base + size) backed by host bytes at `host`; everything else is not RAM.
final class FakeMemory: EmulatedMemory {
    let base: UInt64, size: UInt64, host: UnsafeMutableRawPointer
    init(base: UInt64, size: UInt64, host: UnsafeMutableRawPointer) { self.base = base; self.size = size; self.host = host }
    func ramPointer(_ address: UInt64, length: Int) -> UnsafeMutableRawPointer? {
        guard address >= base, address - base <= size, UInt64(length) <= size - (address - base) else { return nil }
        return host + Int(address - base)
    }
}
