import CKVM
import Glibc
import Machine
import Testing

@Suite("x86 decoder (Zydis)")
struct DecoderTests {
    typealias D = DecodedInstruction

    @Test func modrmRegisterIndirect() throws {
        let d = try #require(D([0x0f, 0xae, 0x10], modeBits: 64))   // ldmxcsr (%rax)
        #expect(d.mnemonic == "ldmxcsr" && d.length == 3)
        #expect(d.operands.count == 1)
        #expect(d.operands[0].bits == 32)
        #expect(d.operands[0].operand == .memory(.init(segment: 3, base: .gpr(index: 0, bits: 64), index: nil, scale: 0, displacement: 0)))
    }

    @Test func sibWithDisplacement() throws {
        let d = try #require(D([0x0f, 0xae, 0x5c, 0xcd, 0xf8], modeBits: 64))   // stmxcsr -8(%rbp,%rcx,8)
        // rbp as base: the stack segment is the default.
        #expect(d.operands[0].operand == .memory(.init(segment: 2, base: .gpr(index: 5, bits: 64), index: .gpr(index: 1, bits: 64), scale: 8, displacement: -8)))
    }

    @Test func sibWithoutBase() throws {
        let d = try #require(D([0x0f, 0x38, 0xf0, 0x0c, 0xcd, 0x10, 0, 0, 0], modeBits: 64))   // movbe 0x10(,%rcx,8),%ecx
        #expect(d.mnemonic == "movbe" && d.length == 9)
        #expect(d.operands[0].operand == .register(.gpr(index: 1, bits: 32)))
        #expect(d.operands[1].operand == .memory(.init(segment: 3, base: nil, index: .gpr(index: 1, bits: 64), scale: 8, displacement: 0x10)))
    }

    @Test func ripRelative() throws {
        let d = try #require(D([0x0f, 0xae, 0x1d, 0x40, 0x10, 0x00, 0x00], modeBits: 64))   // stmxcsr 0x1040(%rip)
        #expect(d.operands[0].operand == .memory(.init(segment: 3, base: .rip, index: nil, scale: 0, displacement: 0x1040)))
    }

    @Test func rexExtendedRegistersAndPrefixes() throws {
        let d = try #require(D([0x4c, 0x0f, 0x38, 0xf1, 0x54, 0x4e, 0x08], modeBits: 64))   // movbe %r10,0x8(%rsi,%rcx,2)
        #expect(d.operands[0].operand == .memory(.init(segment: 3, base: .gpr(index: 6, bits: 64), index: .gpr(index: 1, bits: 64), scale: 2, displacement: 8)))
        #expect(d.operands[1].operand == .register(.gpr(index: 10, bits: 64)))
        let locked = try #require(D([0xf0, 0x48, 0x0f, 0xc7, 0x0e], modeBits: 64))
        #expect(locked.mnemonic == "cmpxchg16b" && locked.hasLock && locked.operands[0].bits == 128)
        let gs = try #require(D([0x65, 0x0f, 0xae, 0x1c, 0x25, 0x10, 0, 0, 0], modeBits: 64))   // stmxcsr %gs:0x10
        #expect(gs.operands[0].operand == .memory(.init(segment: 5, base: nil, index: nil, scale: 0, displacement: 0x10)))
        let a32 = try #require(D([0x67, 0x0f, 0xae, 0x18], modeBits: 64))   // addr32 stmxcsr (%eax)
        #expect(a32.addressBits == 32 && a32.operands[0].operand == .memory(.init(segment: 3, base: .gpr(index: 0, bits: 32), index: nil, scale: 0, displacement: 0)))
    }

    @Test func thirtyTwoBitMode() throws {
        let d = try #require(D([0x0f, 0xc7, 0x0e], modeBits: 32))   // cmpxchg8b (%esi)
        #expect(d.mnemonic == "cmpxchg8b" && d.addressBits == 32 && d.operands[0].bits == 64)
        #expect(d.operands[0].operand == .memory(.init(segment: 3, base: .gpr(index: 6, bits: 32), index: nil, scale: 0, displacement: 0)))
    }

    @Test func invalidAndTruncatedBytes() {
        #expect(D([0x0f], modeBits: 64) == nil)
        #expect(D([0x0f, 0xae, 0x54, 0x98], modeBits: 64) == nil)   // SIB but no displacement byte
        #expect(D([0x06], modeBits: 64) == nil)                      // push es: invalid in 64-bit mode
    }

    @Test func everyTableEntryNamesAZydisMnemonic() {
        for m in InstructionEmulator.mnemonics { #expect(DecodedInstruction.mnemonicValue(of: m) != nil, "\(m)") }
    }
}

@Suite("Instruction emulator: refusals, memory, modes and statistics")
struct EmulatorTests {
    /// A 64-bit fake vCPU with `pages` pages of RAM at guest-physical and linear `base`.
    final class Machine64 {
        let host: UnsafeMutableRawPointer
        let base: UInt64 = 0x10_0000
        let size: UInt64
        let cpu = FakeCPU.longMode()
        let memory: FakeMemory
        init(pages: Int = 4) {
            size = UInt64(pages * 4096)
            host = UnsafeMutableRawPointer.allocate(byteCount: Int(size), alignment: 4096)
            host.initializeMemory(as: UInt8.self, repeating: 0, count: Int(size))
            memory = FakeMemory(base: base, size: size, host: host)
            cpu.mappedStart = base
            cpu.mappedEnd = base + size
            cpu.regs.rip = base
        }
        deinit { host.deallocate() }
        func run(_ bytes: [UInt8], statistics: EmulationStatistics? = nil) -> EmulationOutcome {
            InstructionEmulator.handleEmulationFailure(cpu: cpu, memory: memory, reportedBytes: bytes, statistics: statistics)
        }
        func u32(_ offset: Int) -> UInt32 { host.load(fromByteOffset: offset, as: UInt32.self) }
    }

    @Test func unknownInstructionIsRefusedWithItsBytesAndNothingChanges() {
        let m = Machine64()
        let before = m.cpu.regs
        let outcome = m.run([0x0f, 0xae, 0x2e, 0x90, 0x90])   // xrstor (%rsi), then nops
        guard case let .refused(bytes, why) = outcome else { Issue.record("expected a refusal, got \(outcome)"); return }
        #expect(bytes == [0x0f, 0xae, 0x2e])
        #expect(why == .unsupported(mnemonic: "xrstor"))
        #expect("\(why)".contains("no handler for xrstor"))
        #expect(m.cpu.writes == 0 && m.cpu.injected.isEmpty && m.cpu.regs.rip == before.rip)
    }

    @Test func undecodableBytesAreRefused() {
        let m = Machine64()
        #expect(m.run([0x0f]) == .refused(bytes: [0x0f], .undecodable(modeBits: 64)))
        #expect(m.cpu.writes == 0)
    }

    @Test func operandInMMIOIsRefusedNotCrashed() {
        let m = Machine64()
        // Linear page 0x7000_0000 maps to guest-physical 0xfee0_0000 (the LAPIC): not RAM.
        m.cpu.extraPages[0x7000_0000] = 0xfee0_0000
        m.cpu.regs.rax = 0x7000_0010
        for code: [UInt8] in [[0x0f, 0xae, 0x10], [0x0f, 0xae, 0x18], [0x48, 0x0f, 0xc7, 0x08]] {   // ldmxcsr, stmxcsr, cmpxchg16b (%rax)
            let outcome = m.run(code)
            guard case .refused(_, .notRAM(_, let linear, let physical)) = outcome else { Issue.record("expected notRAM, got \(outcome)"); continue }
            #expect(linear == 0x7000_0010 && physical == 0xfee0_0010)
        }
        #expect(m.cpu.writes == 0 && m.cpu.injected.isEmpty)
    }

    @Test func bytesAreFetchedThroughThePageTablesWhenKVMGivesNone() {
        let m = Machine64()
        // ldmxcsr (%rax) placed in the last 2 bytes of page 0 and the first byte of page 1.
        let at = 4094
        for (i, b) in [UInt8(0x0f), 0xae, 0x10].enumerated() { m.host.storeBytes(of: b, toByteOffset: at + i, as: UInt8.self) }
        m.host.storeBytes(of: UInt32(0x7f80), toByteOffset: 0x2000, as: UInt32.self)
        m.cpu.regs.rip = m.base + UInt64(at)
        m.cpu.regs.rax = m.base + 0x2000
        #expect(m.run([]) == .emulated(.ldmxcsr))
        #expect(m.cpu.fpu.mxcsr == 0x7f80 && m.cpu.regs.rip == m.base + UInt64(at) + 3)
    }

    @Test func nothingReadableAtRIPIsRefused() {
        let m = Machine64()
        m.cpu.regs.rip = 0xdead_0000
        #expect(m.run([]) == .refused(bytes: [], .noInstructionBytes))
    }

    @Test func gsSegmentBaseApplies() {
        let m = Machine64()
        m.cpu.sregs.gs.base = m.base + 0x1000
        m.cpu.sregs.ds.base = 0x5000   // ignored in 64-bit mode
        m.cpu.fpu.mxcsr = 0x1234
        m.cpu.regs.rax = m.base + 0x3000
        #expect(m.run([0x65, 0x0f, 0xae, 0x1c, 0x25, 0x10, 0, 0, 0]) == .emulated(.stmxcsr))   // stmxcsr %gs:0x10
        #expect(m.u32(0x1010) == 0x1234)
        #expect(m.run([0x0f, 0xae, 0x18]) == .emulated(.stmxcsr))                              // stmxcsr (%rax): DS base ignored
        #expect(m.u32(0x3000) == 0x1234)
    }

    @Test func nonCanonicalAddressRaisesGP() {
        let m = Machine64()
        m.cpu.regs.rax = 0x0000_8000_0000_0000
        #expect(m.run([0x0f, 0xae, 0x10]) == .emulated(.ldmxcsr))
        #expect(m.cpu.injected.map(\.vector) == [13] && m.cpu.injected.first?.errorCode == 0)
        #expect(m.cpu.regs.rip == m.base)
    }

    @Test func pageFaultSetsCR2AndErrorCodeAndLeavesRIP() {
        let m = Machine64()
        m.cpu.regs.rax = 0x4000_0000
        #expect(m.run([0x0f, 0xae, 0x18]) == .emulated(.stmxcsr))   // a write at CPL 0
        #expect(m.cpu.injected.map(\.vector) == [14] && m.cpu.injected.first?.errorCode == 2)
        #expect(m.cpu.sregs.cr2 == 0x4000_0000 && m.cpu.regs.rip == m.base)
    }

    @Test func sseInstructionsCheckCR0AndCR4() {
        let m = Machine64()
        m.cpu.regs.rax = m.base + 0x2000
        m.cpu.sregs.cr4 &= ~(1 << 9)                 // OSFXSR clear: #UD
        #expect(m.run([0x0f, 0xae, 0x10]) == .emulated(.ldmxcsr))
        m.cpu.sregs.cr4 |= 1 << 9
        m.cpu.sregs.cr0 |= 1 << 3                    // TS: #NM
        #expect(m.run([0x0f, 0xae, 0x18]) == .emulated(.stmxcsr))
        #expect(m.cpu.injected.map(\.vector) == [6, 7])
        m.cpu.sregs.cr0 |= 1 << 1                    // MP and TS: fwait raises #NM too
        #expect(m.run([0x9b]) == .emulated(.fwait))
        #expect(m.cpu.injected.map(\.vector) == [6, 7, 7])
        #expect(m.cpu.regs.rip == m.base)
    }

    @Test func thirtyTwoBitProtectedModeUsesSegmentBases() {
        let m = Machine64()
        let c = m.cpu
        c.sregs.cr0 = 0x11                            // PE, ET: no paging
        c.sregs.efer = 0
        c.sregs.cs.l = 0
        c.sregs.cs.db = 1
        c.sregs.ds.base = m.base                      // DS starts at the RAM; ESI is an offset into it
        c.regs.rip = 0x20
        c.sregs.cs.base = m.base
        c.regs.rsi = 0x100
        c.regs.rax = 7; c.regs.rdx = 0; c.regs.rbx = 0xabcd; c.regs.rcx = 0x1234
        m.host.storeBytes(of: UInt64(7), toByteOffset: 0x100, as: UInt64.self)
        #expect(m.run([0xf0, 0x0f, 0xc7, 0x0e]) == .emulated(.cmpxchg8b))   // lock cmpxchg8b (%esi)
        #expect(m.host.load(fromByteOffset: 0x100, as: UInt64.self) == 0x1234_0000_abcd)
        #expect(c.regs.rflags & 0x40 != 0 && c.regs.rip == 0x24)
    }

    @Test func statisticsCountPerKind() {
        let m = Machine64()
        let stats = EmulationStatistics()
        #expect(stats.summary == "none")
        _ = m.run([0xcc], statistics: stats)
        _ = m.run([0xcc], statistics: stats)
        _ = m.run([0xf3, 0x48, 0x0f, 0xb8, 0xc3], statistics: stats)
        _ = m.run([0x0f, 0xae, 0x2e], statistics: stats)   // refused: not counted
        #expect(stats.count(.int3) == 2 && stats.count(.popcnt) == 1 && stats.total == 3)
        #expect(stats.summary == "int3 2, popcnt 1")
    }
}
