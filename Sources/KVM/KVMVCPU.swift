import CKVM
import Glibc
import SystemPackage

/// One KVM vCPU. Owned by a single OS thread: all its ioctls, `run()` included, must be called from that
/// thread (KVM serialises vCPU ioctls on a per-vCPU mutex that KVM_RUN holds). `kick()`-side state is
/// only the kvm_run page's immediate_exit byte, written by other threads before they signal this one.
public final class KVMVCPU: @unchecked Sendable {
    public let id: UInt32
    public let fd: FileDescriptor
    public let runPage: UnsafeMutableRawPointer
    let runSize: Int
    private var runStruct: UnsafeMutablePointer<kvm_run> { runPage.assumingMemoryBound(to: kvm_run.self) }

    init(id: UInt32, fd: FileDescriptor, run: UnsafeMutableRawPointer, runSize: Int) {
        self.id = id
        self.fd = fd
        self.runPage = run
        self.runSize = runSize
    }

    deinit {
        munmap(runPage, runSize)
        try? fd.close()
    }

    /// KVM_RUN until the next exit, decoded. EINTR becomes `.interrupted`.
    public func run() throws -> VMExit {
        let r = ckvm_ioctl_int(fd.rawValue, CKVM_KVM_RUN, 0)
        if r < 0 {
            let e = Glibc.errno
            if e == EINTR || e == EAGAIN { return .interrupted }
            throw KVMError("KVM_RUN(vCPU \(id))", errno: e)
        }
        return decodeExit()
    }

    /// Sets kvm_run.immediate_exit: the next KVM_RUN returns EINTR at once.
    public func setImmediateExit(_ on: Bool) {
        ckvm_run_set_immediate_exit(runStruct, on ? 1 : 0)
    }

    /// The guest's RFLAGS.IF as of the last exit.
    public var interruptFlag: Bool { ckvm_run_if_flag(runStruct) != 0 }

    @inline(__always)
    func decodeExit() -> VMExit {
        let run = runStruct
        switch Int32(ckvm_run_exit_reason(run)) {
        case KVM_EXIT_IO:
            var dir: UInt8 = 0, size: UInt8 = 0, port: UInt16 = 0, count: UInt32 = 0, off: UInt64 = 0
            ckvm_run_io(run, &dir, &size, &port, &count, &off)
            return .io(port: port, size: Int(size), isWrite: dir == UInt8(KVM_EXIT_IO_OUT), count: Int(count),
                       data: runPage + Int(off))
        case KVM_EXIT_MMIO:
            return .mmio(address: ckvm_run_mmio_addr(run), size: Int(ckvm_run_mmio_len(run)),
                         isWrite: ckvm_run_mmio_is_write(run) != 0, data: UnsafeMutableRawPointer(ckvm_run_mmio_data(run)))
        case KVM_EXIT_HLT: return .halt
        case KVM_EXIT_SHUTDOWN: return .shutdown
        case KVM_EXIT_FAIL_ENTRY:
            return .failEntry(reason: ckvm_run_fail_entry_reason(run), cpu: ckvm_run_fail_entry_cpu(run))
        case KVM_EXIT_INTERNAL_ERROR:
            let sub = ckvm_run_internal_suberror(run)
            let n = min(ckvm_run_internal_ndata(run), 16)
            let data = (0..<n).map { ckvm_run_internal_data(run, $0) }
            var bytes: [UInt8] = []
            if sub == UInt32(KVM_INTERNAL_ERROR_EMULATION),
               ckvm_run_emulation_flags(run) & UInt64(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0 {
                let len = min(Int(ckvm_run_emulation_insn_size(run)), 15)
                let p = ckvm_run_emulation_insn_bytes(run)!
                bytes = (0..<len).map { p[$0] }
            }
            return .internalError(.init(suberror: sub, data: data, instructionBytes: bytes))
        case KVM_EXIT_SYSTEM_EVENT: return .systemEvent(type: ckvm_run_system_event_type(run))
        case KVM_EXIT_DEBUG:
            return .debug(.init(exception: ckvm_run_debug_exception(run), pc: ckvm_run_debug_pc(run),
                                dr6: ckvm_run_debug_dr6(run), dr7: ckvm_run_debug_dr7(run)))
        case KVM_EXIT_INTR: return .interrupted
        default: return .unknown(reason: ckvm_run_exit_reason(run))
        }
    }

    // MARK: registers

    public func getRegisters() throws -> kvm_regs {
        var r = kvm_regs()
        _ = try check("KVM_GET_REGS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_REGS, &r) }
        return r
    }

    public func setRegisters(_ regs: kvm_regs) throws {
        var r = regs
        _ = try check("KVM_SET_REGS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_REGS, &r) }
    }

    public func getSpecialRegisters() throws -> kvm_sregs {
        var s = kvm_sregs()
        _ = try check("KVM_GET_SREGS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_SREGS, &s) }
        return s
    }

    public func setSpecialRegisters(_ sregs: kvm_sregs) throws {
        var s = sregs
        _ = try check("KVM_SET_SREGS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_SREGS, &s) }
    }

    public func getFPU() throws -> kvm_fpu {
        var f = kvm_fpu()
        _ = try check("KVM_GET_FPU(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_FPU, &f) }
        return f
    }

    public func setFPU(_ fpu: kvm_fpu) throws {
        var f = fpu
        _ = try check("KVM_SET_FPU(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_FPU, &f) }
    }

    /// KVM_GET_XSAVE: the guest's XSAVE area in KVM's 4 KiB layout (legacy FXSAVE region first, the
    /// XSAVE header at 512).
    public func getXSAVE() throws -> kvm_xsave {
        var x = kvm_xsave()
        _ = try check("KVM_GET_XSAVE(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_XSAVE, &x) }
        return x
    }

    public func setXSAVE(_ xsave: kvm_xsave) throws {
        var x = xsave
        _ = try check("KVM_SET_XSAVE(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_XSAVE, &x) }
    }

    /// The guest's MXCSR, from its XSAVE area (KVM_GET_FPU's copy of it is not kept on every host).
    public func getMXCSR() throws -> UInt32 {
        let x = try getXSAVE()
        return withUnsafeBytes(of: x.region) { $0.load(fromByteOffset: 24, as: UInt32.self) }
    }

    /// Sets the guest's MXCSR through its XSAVE area (marking the SSE state present, so KVM copies it).
    public func setMXCSR(_ value: UInt32) throws {
        var x = try getXSAVE()
        withUnsafeMutableBytes(of: &x.region) { r in
            r.storeBytes(of: value, toByteOffset: 24, as: UInt32.self)
            let bv = r.load(fromByteOffset: 512, as: UInt64.self)
            r.storeBytes(of: bv | 2, toByteOffset: 512, as: UInt64.self)
        }
        try setXSAVE(x)
    }

    /// KVM_SET_MSRS. Returns how many of the entries KVM accepted (it stops at the first it refuses).
    @discardableResult
    public func setMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws -> Int {
        guard let buf = ckvm_msrs_alloc(UInt32(msrs.count)) else { throw KVMError("calloc", errno: ENOMEM) }
        defer { free(buf) }
        let e = ckvm_msrs_entries(buf)!
        for (i, m) in msrs.enumerated() { e[i].index = m.index; e[i].data = m.value }
        return Int(try check("KVM_SET_MSRS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_MSRS, buf) })
    }

    /// KVM_GET_MSRS for the given indices; MSRs KVM does not know are left out of the result.
    public func getMSRs(_ indices: [UInt32]) throws -> [UInt32: UInt64] {
        guard let buf = ckvm_msrs_alloc(UInt32(indices.count)) else { throw KVMError("calloc", errno: ENOMEM) }
        defer { free(buf) }
        let e = ckvm_msrs_entries(buf)!
        for (i, idx) in indices.enumerated() { e[i].index = idx }
        let n = try check("KVM_GET_MSRS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_MSRS, buf) }
        var out: [UInt32: UInt64] = [:]
        for i in 0..<Int(n) { out[e[i].index] = e[i].data }
        return out
    }

    public func setCPUID(_ entries: [kvm_cpuid_entry2]) throws {
        guard let buf = ckvm_cpuid2_alloc(UInt32(entries.count)) else { throw KVMError("calloc", errno: ENOMEM) }
        defer { free(buf) }
        let p = ckvm_cpuid2_entries(buf)!
        for (i, e) in entries.enumerated() { p[i] = e }
        _ = try check("KVM_SET_CPUID2(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_CPUID2, buf) }
    }

    public func getLAPIC() throws -> kvm_lapic_state {
        var l = kvm_lapic_state()
        _ = try check("KVM_GET_LAPIC(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_LAPIC, &l) }
        return l
    }

    public func setLAPIC(_ lapic: kvm_lapic_state) throws {
        var l = lapic
        _ = try check("KVM_SET_LAPIC(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_LAPIC, &l) }
    }

    public enum MPState: UInt32, Sendable {
        case runnable = 0, uninitialized = 1, initReceived = 2, halted = 3, sipiReceived = 4, stopped = 5
        case checkStop = 6, operating = 7, load = 8, apResetHold = 9, suspended = 10
    }

    public func getMPState() throws -> MPState? {
        var s = kvm_mp_state()
        _ = try check("KVM_GET_MP_STATE(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_MP_STATE, &s) }
        return MPState(rawValue: s.mp_state)
    }

    public func setMPState(_ state: MPState) throws {
        var s = kvm_mp_state(mp_state: state.rawValue)
        _ = try check("KVM_SET_MP_STATE(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_MP_STATE, &s) }
    }

    public func getEvents() throws -> kvm_vcpu_events {
        var e = kvm_vcpu_events()
        _ = try check("KVM_GET_VCPU_EVENTS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_GET_VCPU_EVENTS, &e) }
        return e
    }

    public func setEvents(_ events: kvm_vcpu_events) throws {
        var e = events
        _ = try check("KVM_SET_VCPU_EVENTS(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_VCPU_EVENTS, &e) }
    }

    /// Injects exception `vector` (with an optional error code) for delivery at the next entry.
    public func injectException(_ vector: UInt8, errorCode: UInt32? = nil) throws {
        var e = try getEvents()
        ckvm_events_inject_exception(&e, vector, errorCode == nil ? 0 : 1, errorCode ?? 0)
        try setEvents(e)
    }

    /// KVM_TRANSLATE: guest-virtual to guest-physical with the vCPU's current page tables.
    public func translate(_ linear: UInt64) throws -> UInt64? {
        var t = kvm_translation()
        t.linear_address = linear
        _ = try check("KVM_TRANSLATE(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_TRANSLATE, &t) }
        return t.valid != 0 ? t.physical_address : nil
    }

    // MARK: debugging

    /// What KVM_SET_GUEST_DEBUG asks of the vCPU.
    public struct GuestDebug: Sendable, Equatable {
        /// Exit with KVM_EXIT_DEBUG after every instruction.
        public var singleStep = false
        /// Exit on #BP (int3) instead of delivering it to the guest.
        public var softwareBreakpoints = false
        /// DR0-DR3 and DR7 for hardware breakpoints and watchpoints (exits on #DB instead of delivering it).
        public var hardwareBreakpoints: (addresses: [UInt64], dr7: UInt64)? = nil
        public init() {}
        public var enabled: Bool { singleStep || softwareBreakpoints || hardwareBreakpoints != nil }
        public static func == (a: GuestDebug, b: GuestDebug) -> Bool {
            a.singleStep == b.singleStep && a.softwareBreakpoints == b.softwareBreakpoints
                && a.hardwareBreakpoints?.addresses == b.hardwareBreakpoints?.addresses
                && a.hardwareBreakpoints?.dr7 == b.hardwareBreakpoints?.dr7
        }
    }

    /// KVM_SET_GUEST_DEBUG: single-step, #BP and #DB interception, hardware debug registers.
    public func setGuestDebug(_ debug: GuestDebug) throws {
        var g = kvm_guest_debug()
        if debug.enabled {
            g.control = UInt32(KVM_GUESTDBG_ENABLE)
            if debug.singleStep { g.control |= UInt32(KVM_GUESTDBG_SINGLESTEP) }
            if debug.softwareBreakpoints { g.control |= UInt32(KVM_GUESTDBG_USE_SW_BP) }
            if let hw = debug.hardwareBreakpoints {
                g.control |= UInt32(KVM_GUESTDBG_USE_HW_BP)
                withUnsafeMutableBytes(of: &g.arch.debugreg) { r in
                    for (i, a) in hw.addresses.prefix(4).enumerated() { r.storeBytes(of: a, toByteOffset: i * 8, as: UInt64.self) }
                    r.storeBytes(of: hw.dr7, toByteOffset: 7 * 8, as: UInt64.self)
                }
            }
        }
        _ = try check("KVM_SET_GUEST_DEBUG(vCPU \(id))") { ckvm_ioctl(fd.rawValue, CKVM_KVM_SET_GUEST_DEBUG, &g) }
    }

    /// KVM_GET_STATS_FD: the vCPU's binary statistics (reading them never makes the vCPU exit).
    public func statistics() throws -> VCPUStatistics {
        let sfd = try check("KVM_GET_STATS_FD(vCPU \(id))") { ckvm_ioctl_int(fd.rawValue, CKVM_KVM_GET_STATS_FD, 0) }
        return VCPUStatistics(fd: sfd)
    }
}

/// A vCPU's binary statistics file. Any thread may read it, at any time, without disturbing the vCPU.
public final class VCPUStatistics: @unchecked Sendable {
    let fd: Int32
    private let blockingOffset: Int
    private let exitsOffset: Int
    init(fd: Int32) {
        self.fd = fd
        blockingOffset = ckvm_stats_offset(fd, "blocking")
        exitsOffset = ckvm_stats_offset(fd, "exits")
    }
    deinit { Glibc.close(fd) }

    /// Whether the kernel reports the "blocking" and "exits" statistics this type reads.
    public var isUsable: Bool { blockingOffset >= 0 && exitsOffset >= 0 }

    private func value(at offset: Int) -> UInt64? {
        guard offset >= 0 else { return nil }
        var v: UInt64 = 0
        return pread(fd, &v, 8, off_t(offset)) == 8 ? v : nil
    }
    /// The vCPU thread is blocked in the kernel (HLT, or waiting for INIT/SIPI).
    public var blocking: Bool? { value(at: blockingOffset).map { $0 != 0 } }
    /// VM exits so far, those KVM handles itself included.
    public var exits: UInt64? { value(at: exitsOffset) }
}
