import CKVM
import CNativeExec
import Glibc
import Machine
import Testing

/// Each instruction the emulator handles, run natively on the host CPU and through the emulator from the
/// same registers, flags, MXCSR, x87 state and memory; the results must match: registers, RIP, the
/// arithmetic flags, MXCSR, memory, and the exception raised (vector, error code, CR2).
///
/// Layout: one RWX region of three pages. Page 0 holds the code (native RIP = the region's address);
/// pages 1-2 are data. The fake vCPU maps the region linear = physical = host address, at CPL 3 like the
/// native run (so #PF error codes agree); everything outside the region is unmapped for both.
@Suite("Instruction emulator against the host CPU")
struct NativeComparisonTests {
    static let pages = 3

    struct Setup {
        var gpr: [Int: UInt64] = [:]          // index (0 rax, 1 rcx, 2 rdx, 3 rbx, 5 rbp, 6 rsi, 7 rdi, 8-15)
        var rflags: UInt64 = 0x202
        var mxcsr: UInt32 = 0x1f80
        var fcw: UInt16 = 0x37f
        var fsw: UInt16 = 0
        var data: [(offset: Int, bytes: [UInt8])] = []
    }

    /// Runs `code` both ways and compares. `expect` is the kind the emulator must report. Returns the
    /// native result for extra checks.
    @discardableResult
    func compare(_ code: [UInt8], _ kind: EmulatedInstructionKind, _ setupFor: (UInt64) -> Setup,
                 sourceLocation: SourceLocation = #_sourceLocation) throws -> native_result {
        let region = try #require(native_region_create(Self.pages), sourceLocation: sourceLocation)
        defer { native_region_destroy(region, Self.pages) }
        let base = UInt64(UInt(bitPattern: region))
        let dataBase = base + 4096
        let setup = setupFor(dataBase)
        let dataBytes = 4096 * (Self.pages - 1)
        func resetData() {
            memset(region + 4096, 0x5a, dataBytes)
            for d in setup.data { for (i, b) in d.bytes.enumerated() { region.storeBytes(of: b, toByteOffset: 4096 + d.offset + i, as: UInt8.self) } }
        }

        // Natively.
        resetData()
        var input = native_state()
        withUnsafeMutableBytes(of: &input.gpr) { g in for (i, v) in setup.gpr { g.storeBytes(of: v, toByteOffset: 8 * i, as: UInt64.self) } }
        input.rflags = setup.rflags
        input.mxcsr = setup.mxcsr
        withUnsafeMutableBytes(of: &input.fenv) { e in
            e.storeBytes(of: setup.fcw, toByteOffset: 0, as: UInt16.self)
            e.storeBytes(of: setup.fsw, toByteOffset: 4, as: UInt16.self)
            e.storeBytes(of: UInt16(0xffff), toByteOffset: 8, as: UInt16.self)   // tag word: all empty
        }
        var native = native_result()
        let rc = code.withUnsafeBufferPointer { native_run(region, $0.baseAddress, $0.count, &input, &native) }
        try #require(rc == 0, "the native run failed", sourceLocation: sourceLocation)
        let nativeData = Array(UnsafeRawBufferPointer(start: region + 4096, count: dataBytes))
        let nativeGPR = withUnsafeBytes(of: native.state.gpr) { g in (0..<16).map { g.load(fromByteOffset: 8 * $0, as: UInt64.self) } }

        // Through the emulator.
        resetData()
        let cpu = FakeCPU.longMode(cpl: 3)
        cpu.mappedStart = base
        cpu.mappedEnd = base + UInt64(4096 * Self.pages)
        let s0 = EmulationProbe(cpu)
        for (i, v) in setup.gpr { s0.setGPR(i, v) }
        cpu.regs.rip = base
        cpu.regs.rflags = setup.rflags
        cpu.fpu.mxcsr = setup.mxcsr
        cpu.fpu.fcw = setup.fcw
        cpu.fpu.fsw = setup.fsw
        let memory = FakeMemory(base: base, size: UInt64(4096 * Self.pages), host: region)
        let outcome = InstructionEmulator.handleEmulationFailure(cpu: cpu, memory: memory, reportedBytes: code)
        #expect(outcome == .emulated(kind), sourceLocation: sourceLocation)
        let emulatedData = Array(UnsafeRawBufferPointer(start: region + 4096, count: dataBytes))

        // Compare.
        let names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]
        for i in 0..<16 where i != 4 {
            #expect(s0.gpr(i) == nativeGPR[i], "\(names[i]): emulated 0x\(String(s0.gpr(i), radix: 16)), native 0x\(String(nativeGPR[i], radix: 16))",
                    sourceLocation: sourceLocation)
        }
        #expect(cpu.regs.rip &- base == native.state.rip &- base, "RIP offset", sourceLocation: sourceLocation)
        #expect(cpu.regs.rflags & 0x8d5 == native.state.rflags & 0x8d5,
                "flags: emulated 0x\(String(cpu.regs.rflags & 0x8d5, radix: 16)), native 0x\(String(native.state.rflags & 0x8d5, radix: 16))",
                sourceLocation: sourceLocation)
        #expect(cpu.fpu.mxcsr == native.state.mxcsr, "MXCSR", sourceLocation: sourceLocation)
        let firstDifference = zip(emulatedData, nativeData).enumerated().first { $0.element.0 != $0.element.1 }
        #expect(firstDifference == nil,
                "memory differs first at data offset \(firstDifference?.offset ?? 0): emulated \(firstDifference?.element.0 ?? 0), native \(firstDifference?.element.1 ?? 0)",
                sourceLocation: sourceLocation)
        if native.vector < 0 {
            #expect(cpu.injected.isEmpty, "the emulator injected \(cpu.injected) where the CPU raised nothing", sourceLocation: sourceLocation)
        } else {
            let v = UInt8(native.vector)
            let hasCode = [8, 10, 11, 12, 13, 14, 17].contains(v)
            #expect(cpu.injected.map(\.vector) == [v], "exception vector", sourceLocation: sourceLocation)
            if hasCode { #expect(cpu.injected.first?.errorCode == UInt32(native.error_code), "error code", sourceLocation: sourceLocation) }
            if v == 14 { #expect(cpu.sregs.cr2 == native.cr2, "CR2", sourceLocation: sourceLocation) }
        }
        return native
    }

    // MARK: int3, fwait

    @Test func int3DeliversBreakpointAfterIt() throws {
        let n = try compare([0xcc], .int3) { _ in Setup(gpr: [0: 7, 3: 9]) }
        #expect(n.vector == 3)
    }

    @Test func fwaitWithoutPendingExceptionDoesNothing() throws {
        let n = try compare([0x9b], .fwait) { _ in Setup(gpr: [0: 1]) }
        #expect(n.vector == -1)
    }

    @Test func fwaitWithPendingUnmaskedExceptionRaisesMF() throws {
        // FSW: IE and ES set; FCW: invalid-operation exception unmasked.
        let n = try compare([0x9b], .fwait) { _ in Setup(fcw: 0x37e, fsw: 0x81) }
        #expect(n.vector == 16)
    }

    // MARK: ldmxcsr / stmxcsr and addressing

    @Test func ldmxcsrFromRegisterAddress() throws {
        let n = try compare([0x0f, 0xae, 0x10], .ldmxcsr) { d in Setup(gpr: [0: d], data: [(0, [0x80, 0x7f, 0, 0])]) }
        #expect(n.vector == -1 && n.state.mxcsr == 0x7f80)
    }

    @Test func ldmxcsrThroughSIBAndDisplacement() throws {
        // ldmxcsr 0x10(%rax,%rbx,4): rax = data - 0x40, rbx = 0x20 -> data + 0x50.
        let n = try compare([0x0f, 0xae, 0x54, 0x98, 0x10], .ldmxcsr) { d in
            Setup(gpr: [0: d - 0x40, 3: 0x20], data: [(0x50, [0xc0, 0x9f, 0, 0])])
        }
        #expect(n.state.mxcsr == 0x9fc0)
    }

    @Test func ldmxcsrWithReservedBitRaisesGP() throws {
        let n = try compare([0x0f, 0xae, 0x10], .ldmxcsr) { d in Setup(gpr: [0: d], data: [(0, [0x80, 0x1f, 0x01, 0])]) }
        #expect(n.vector == 13)
    }

    @Test func ldmxcsrFromUnmappedAddressRaisesPF() throws {
        let n = try compare([0x0f, 0xae, 0x10], .ldmxcsr) { _ in Setup(gpr: [0: 0x1000]) }
        #expect(n.vector == 14)
    }

    @Test func stmxcsrToRegisterAddress() throws {
        try compare([0x0f, 0xae, 0x18], .stmxcsr) { d in Setup(gpr: [0: d + 0x20], mxcsr: 0x3fa0) }
    }

    @Test func stmxcsrRIPRelative() throws {
        // stmxcsr 0x1040(%rip): 7 bytes, so the operand is at code + 7 + 0x1040 = data + 0x47.
        try compare([0x0f, 0xae, 0x1d, 0x40, 0x10, 0x00, 0x00], .stmxcsr) { _ in Setup(mxcsr: 0x5f80) }
    }

    @Test func stmxcsrBaseIndexScaleNegativeDisplacement() throws {
        // stmxcsr -8(%rbp,%rcx,8): rbp = data + 0x100, rcx = 3 -> data + 0x110.
        try compare([0x0f, 0xae, 0x5c, 0xcd, 0xf8], .stmxcsr) { d in Setup(gpr: [5: d + 0x100, 1: 3], mxcsr: 0x1fbf) }
    }

    @Test func stmxcsrWithAddressSizePrefixTruncatesTo32Bits() throws {
        // addr32 stmxcsr (%eax): the address is EAX alone; rax's high half points at the data page, the
        // low half (outside the region) is unmapped: #PF with CR2 = the 32-bit address on both sides.
        let n = try compare([0x67, 0x0f, 0xae, 0x18], .stmxcsr) { d in Setup(gpr: [0: d + 0x10]) }
        #expect(n.vector == 14)
    }

    // MARK: popcnt

    @Test func popcnt64ClearsFlags() throws {
        try compare([0xf3, 0x48, 0x0f, 0xb8, 0xc3], .popcnt) { _ in
            Setup(gpr: [0: 0xdead_beef, 3: 0xf0f0_0000_1234_5678], rflags: 0x202 | 0x8d5)
        }
    }

    @Test func popcnt32ZeroExtends() throws {
        try compare([0xf3, 0x0f, 0xb8, 0xc3], .popcnt) { _ in Setup(gpr: [0: ~0, 3: 0xffff_ffff_0000_0003]) }
    }

    @Test func popcnt16KeepsUpperBits() throws {
        try compare([0x66, 0xf3, 0x0f, 0xb8, 0xc3], .popcnt) { _ in Setup(gpr: [0: 0x1122_3344_5566_7788, 3: 0x0000_ffff]) }
    }

    @Test func popcntOfZeroSetsZF() throws {
        try compare([0xf3, 0x48, 0x0f, 0xb8, 0xc3], .popcnt) { _ in Setup(gpr: [0: 5, 3: 0], rflags: 0x203) }
    }

    @Test func popcntFromMemory() throws {
        try compare([0xf3, 0x4c, 0x0f, 0xb8, 0x0e], .popcnt) { d in Setup(gpr: [6: d], data: [(0, [0xff, 1, 2, 3, 4, 5, 6, 0x80])]) }
        try compare([0xf3, 0x0f, 0xb8, 0x56, 0x04], .popcnt) { d in Setup(gpr: [6: d, 2: ~0], data: [(4, [0xff, 0xff, 0, 0x10])]) }
    }

    // MARK: movbe

    @Test func movbeLoads() throws {
        let bytes: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        try compare([0x48, 0x0f, 0x38, 0xf0, 0x06], .movbe) { d in Setup(gpr: [6: d], data: [(0, bytes)]) }
        try compare([0x66, 0x0f, 0x38, 0xf0, 0x06], .movbe) { d in Setup(gpr: [0: 0xaaaa_bbbb_cccc_dddd, 6: d], data: [(0, bytes)]) }
        // movbe 0x10(,%rcx,8),%ecx: no base, index * 8.
        try compare([0x0f, 0x38, 0xf0, 0x0c, 0xcd, 0x10, 0, 0, 0], .movbe) { d in Setup(gpr: [1: d / 8], data: [(0x10, bytes)]) }
    }

    @Test func movbeStores() throws {
        try compare([0x0f, 0x38, 0xf1, 0x06], .movbe) { d in Setup(gpr: [0: 0x1122_3344_5566_7788, 6: d]) }
        // movbe %r10,0x8(%rsi,%rcx,2)
        try compare([0x4c, 0x0f, 0x38, 0xf1, 0x54, 0x4e, 0x08], .movbe) { d in Setup(gpr: [10: 0x0102_0304_0506_0708, 6: d, 1: 0x40]) }
    }

    @Test func movbeAcrossAPageBoundary() throws {
        // The 8 bytes start 3 bytes before the end of the first data page.
        try compare([0x48, 0x0f, 0x38, 0xf0, 0x06], .movbe) { d in Setup(gpr: [6: d + 4093], data: [(4093, [9, 8, 7, 6, 5, 4, 3, 2])]) }
        try compare([0x48, 0x0f, 0x38, 0xf1, 0x06], .movbe) { d in Setup(gpr: [0: 0xa1a2_a3a4_a5a6_a7a8, 6: d + 4093]) }
    }

    // MARK: cmpxchg8b / cmpxchg16b

    static let old16: [UInt8] = [1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]

    @Test func cmpxchg16bEqualStores() throws {
        try compare([0xf0, 0x48, 0x0f, 0xc7, 0x0e], .cmpxchg16b) { d in
            Setup(gpr: [0: 1, 2: 2, 3: 0x3333, 1: 0x4444, 6: d + 0x30], data: [(0x30, Self.old16)])
        }
    }

    @Test func cmpxchg16bUnequalLoads() throws {
        try compare([0x48, 0x0f, 0xc7, 0x0e], .cmpxchg16b) { d in
            Setup(gpr: [0: 1, 2: 3, 3: 0x3333, 1: 0x4444, 6: d + 0x30], rflags: 0x2c3, data: [(0x30, Self.old16)])
        }
    }

    @Test func cmpxchg16bMisalignedRaisesGP() throws {
        let n = try compare([0xf0, 0x48, 0x0f, 0xc7, 0x0e], .cmpxchg16b) { d in Setup(gpr: [6: d + 8]) }
        #expect(n.vector == 13)
    }

    @Test func cmpxchg8b() throws {
        // Equal (lock cmpxchg8b (%rsi)); then unequal at a misaligned address (cmpxchg8b 3(%rsi)).
        try compare([0xf0, 0x0f, 0xc7, 0x0e], .cmpxchg8b) { d in
            Setup(gpr: [0: 0xffff_ffff_0000_0001, 2: 0xffff_ffff_0000_0002, 3: 5, 1: 6, 6: d], data: [(0, [1, 0, 0, 0, 2, 0, 0, 0])])
        }
        try compare([0x0f, 0xc7, 0x4e, 0x03], .cmpxchg8b) { d in
            Setup(gpr: [0: 0xffff_ffff_0000_0001, 2: 0xffff_ffff_0000_0002, 3: 5, 1: 6, 6: d], data: [(3, [1, 0, 0, 0, 9, 0, 0, 0])])
        }
    }
}

/// Reads and writes the fake vCPU's general-purpose registers by index (0 rax, 1 rcx, ... 15 r15).
struct EmulationProbe {
    let cpu: FakeCPU
    init(_ cpu: FakeCPU) { self.cpu = cpu }
    func gpr(_ i: Int) -> UInt64 {
        let r = cpu.regs
        return [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15][i]
    }
    func setGPR(_ i: Int, _ v: UInt64) {
        switch i {
        case 0: cpu.regs.rax = v
        case 1: cpu.regs.rcx = v
        case 2: cpu.regs.rdx = v
        case 3: cpu.regs.rbx = v
        case 4: cpu.regs.rsp = v
        case 5: cpu.regs.rbp = v
        case 6: cpu.regs.rsi = v
        case 7: cpu.regs.rdi = v
        case 8: cpu.regs.r8 = v
        case 9: cpu.regs.r9 = v
        case 10: cpu.regs.r10 = v
        case 11: cpu.regs.r11 = v
        case 12: cpu.regs.r12 = v
        case 13: cpu.regs.r13 = v
        case 14: cpu.regs.r14 = v
        default: cpu.regs.r15 = v
        }
    }
}
