import CKVM
import Glibc
import KVM

/// What the host's KVM can and cannot do, as far as guest setup cares.
public struct HostProfile: Sendable, Equatable {
    /// The host's KVM emulates guest ring-0 code in software (kvm-pvm): some instructions stop the vCPU
    /// with an emulation failure, so their CPUID features are hidden from guests.
    public var softwareKVM: Bool

    public init(softwareKVM: Bool) { self.softwareKVM = softwareKVM }

    public static func detect() -> HostProfile {
        HostProfile(softwareKVM: access("/sys/module/kvm_pvm", F_OK) == 0)
    }
}

/// Per-vCPU architectural setup: CPUID, MSRs, registers, FPU, LAPIC. Order matters (CPUID first: KVM
/// decides which MSRs exist from it).
enum CPUSetup {
    // CPUID bits (leaf 1 ECX / EDX, leaf 7 EBX).
    static let ecxFMA: UInt32 = 1 << 12, ecxCX16: UInt32 = 1 << 13, ecxMOVBE: UInt32 = 1 << 22
    static let ecxTSCDeadline: UInt32 = 1 << 24, ecxXSAVE: UInt32 = 1 << 26, ecxOSXSAVE: UInt32 = 1 << 27
    static let ecxAVX: UInt32 = 1 << 28, ecxF16C: UInt32 = 1 << 29, ecxHypervisor: UInt32 = 1 << 31
    static let edxHTT: UInt32 = 1 << 28
    static let leaf7EBXInvpcid: UInt32 = 1 << 10
    /// AVX2 and the AVX-512 family need XSAVE-managed state.
    static let leaf7EBXNeedsXSAVE: UInt32 = (1 << 5) | (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31)

    /// The guest CPUID for vCPU `apicID`: the host's supported set, with topology filled in, the
    /// hypervisor and TSC-deadline bits set, and (on software KVM) unemulatable features hidden.
    static func cpuid(supported: [kvm_cpuid_entry2], apicID: UInt32, cpuCount: Int, host: HostProfile) -> [kvm_cpuid_entry2] {
        var out: [kvm_cpuid_entry2] = []
        for var e in supported {
            switch e.function {
            case 1:
                let logical = UInt32(min(max(cpuCount, 1), 255))
                e.ebx = (e.ebx & 0x0000_00ff) | (8 << 8) | (logical << 16) | (apicID << 24)
                e.ecx |= ecxHypervisor | ecxTSCDeadline
                if cpuCount > 1 { e.edx |= edxHTT } else { e.edx &= ~edxHTT }
                // CX16 and MOVBE stay: minivisor's instruction emulator completes cmpxchg16b and movbe (KVM's own
                // emulator raises #UD for them when the table lacks the bit, though the guest's cpuid shows MOVBE).
                if host.softwareKVM { e.ecx &= ~(ecxXSAVE | ecxOSXSAVE | ecxAVX | ecxF16C | ecxFMA) }
            case 7 where e.index == 0:
                if host.softwareKVM { e.ebx &= ~(leaf7EBXInvpcid | leaf7EBXNeedsXSAVE) }
            case 0xd:
                if host.softwareKVM { continue }   // no XSAVE: no XSAVE state leaf
            case 0xb, 0x1f:
                e.edx = apicID
            default: break
            }
            out.append(e)
        }
        return out
    }

    static let bootMSRs: [(index: UInt32, value: UInt64)] = [
        (0x174, 0), (0x175, 0), (0x176, 0),                 // SYSENTER_CS/ESP/EIP
        (0xc000_0081, 0), (0xc000_0082, 0), (0xc000_0083, 0), (0xc000_0084, 0), (0xc000_0102, 0),  // STAR..KERNEL_GS_BASE
        (0x10, 0),                                           // TSC
        (0x1a0, 1),                                          // MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6),                              // MTRRdefType: enabled, write-back
    ]

    static func segment(selector: UInt16, type: UInt8, code64: Bool = false, db: Bool, base: UInt64 = 0,
                        limit: UInt32 = 0xffff_ffff, granularity: Bool = true) -> kvm_segment {
        var s = kvm_segment()
        s.base = base; s.limit = limit; s.selector = selector; s.type = type
        s.present = 1; s.dpl = 0; s.db = db ? 1 : 0; s.s = 1; s.l = code64 ? 1 : 0; s.g = granularity ? 1 : 0
        return s
    }

    /// Sets CPUID, MSRs, FPU and LAPIC LINT pins: what every vCPU gets whatever it boots.
    static func configure(_ vcpu: KVMVCPU, cpuid: [kvm_cpuid_entry2]) throws {
        try vcpu.setCPUID(cpuid)
        _ = try vcpu.setMSRs(bootMSRs)
        var fpu = kvm_fpu()
        fpu.fcw = 0x37f
        fpu.mxcsr = 0x1f80
        try vcpu.setFPU(fpu)
        var lapic = try vcpu.getLAPIC()
        withUnsafeMutableBytes(of: &lapic.regs) { r in
            func setLVT(_ off: Int, mode: UInt32) {
                var v = r.loadUnaligned(fromByteOffset: off, as: UInt32.self)
                v = (v & ~0x700) | (mode << 8)
                r.storeBytes(of: v, toByteOffset: off, as: UInt32.self)
            }
            setLVT(0x350, mode: 7)   // LINT0: ExtINT
            setLVT(0x360, mode: 4)   // LINT1: NMI
        }
        try vcpu.setLAPIC(lapic)
    }

    /// The boot processor's entry state for `entry` (APs wait for INIT/SIPI in the in-kernel LAPIC).
    static func setEntry(_ vcpu: KVMVCPU, entry: BootEntry) throws {
        var sregs = try vcpu.getSpecialRegisters()
        var regs = kvm_regs()
        regs.rflags = 0x2
        switch entry {
        case .long64(let rip), .linux64(let rip, _):
            let data = segment(selector: BootLayout.dataSelector, type: 0x3, db: true)
            sregs.cs = segment(selector: BootLayout.code64Selector, type: 0xb, code64: true, db: false)
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
            sregs.tr = segment(selector: BootLayout.tssSelector, type: 0xb, db: false, limit: 0x67, granularity: false)
            sregs.tr.s = 0
            sregs.gdt.base = BootLayout.gdt
            sregs.gdt.limit = UInt16(BootLayout.gdtEntries.count * 8 - 1)
            sregs.idt.base = 0
            sregs.idt.limit = 0
            sregs.cr0 = 0x8005_0033
            sregs.cr3 = BootLayout.pml4
            sregs.cr4 = 0x620
            sregs.efer = 0x500
            regs.rip = rip
            regs.rsp = BootLayout.bootStackTop
            if case .linux64(_, let bootParams) = entry {
                regs.rsi = bootParams   // Linux 64-bit boot protocol: RSI = boot_params, interrupts off
            } else {
                regs.rdi = BootLayout.bootInfo
                regs.rsi = UInt64(BootMagic.minivisorBootInfo)
            }
        case let .multiboot(eip, info):
            let data = segment(selector: BootLayout.dataSelector, type: 0x3, db: true)
            sregs.cs = segment(selector: BootLayout.code32Selector, type: 0xb, db: true)
            sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
            sregs.tr = segment(selector: BootLayout.tssSelector, type: 0xb, db: false, limit: 0x67, granularity: false)
            sregs.tr.s = 0
            sregs.gdt.base = BootLayout.gdt
            sregs.gdt.limit = UInt16(BootLayout.gdtEntries.count * 8 - 1)
            sregs.cr0 = 0x11
            sregs.cr4 = 0
            sregs.efer = 0
            regs.rip = UInt64(eip)
            regs.rax = UInt64(BootMagic.multibootBootloader)
            regs.rbx = UInt64(info)
        case .real16(let seg):
            sregs.cs.selector = seg
            sregs.cs.base = UInt64(seg) << 4
            regs.rip = 0
            regs.rsp = 0x7000
        }
        try vcpu.setSpecialRegisters(sregs)
        try vcpu.setRegisters(regs)
    }

    /// A short register dump for failure reports.
    static func registerDump(_ vcpu: KVMVCPU) -> String {
        guard let r = try? vcpu.getRegisters(), let s = try? vcpu.getSpecialRegisters() else {
            return "  (registers unavailable)"
        }
        func h(_ v: UInt64) -> String { let t = String(v, radix: 16); return String(repeating: "0", count: max(0, 16 - t.count)) + t }
        return """
          rip=\(h(r.rip)) rsp=\(h(r.rsp)) rflags=\(h(r.rflags))
          rax=\(h(r.rax)) rbx=\(h(r.rbx)) rcx=\(h(r.rcx)) rdx=\(h(r.rdx))
          rsi=\(h(r.rsi)) rdi=\(h(r.rdi)) rbp=\(h(r.rbp))
          cr0=\(h(s.cr0)) cr2=\(h(s.cr2)) cr3=\(h(s.cr3)) cr4=\(h(s.cr4)) efer=\(h(s.efer))
          cs=\(String(s.cs.selector, radix: 16)) (base \(String(s.cs.base, radix: 16)), l=\(s.cs.l) db=\(s.cs.db)) ss=\(String(s.ss.selector, radix: 16)) gdt=\(String(s.gdt.base, radix: 16))/\(s.gdt.limit) idt=\(String(s.idt.base, radix: 16))/\(s.idt.limit)
        """
    }
}
