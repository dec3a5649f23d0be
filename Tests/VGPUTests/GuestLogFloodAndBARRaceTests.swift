import TestSupport
import Glibc
import KVM
import Logging
import Machine
import SoftGPU
import Synchronization
import Testing
@testable import VGPU

/// A fake device context (no /dev/kvm) with one vGPU; the context's and the vGPU's log go to `capture`.
/// Guest-style accesses go through the same entry points a vCPU exit uses: the port bus (PCI mechanism #1
/// at 0xcf8) and the MMIO bus.
final class LoggedRig: Sendable {
    let capture = LogCapture()
    let machine: FakeDeviceContext
    let vgpu: VGPU
    let device: Int

    init(level: Logger.Level = .warning) throws {
        let logger = capture.logger(level: level)
        let m = try FakeDeviceContext(logger: logger)
        let v = try VGPU(context: m, host: GPUHost(), logger: logger)
        machine = m
        vgpu = v
        device = (0..<32).first { m.pciBus.function(device: $0) === v } ?? -1
    }

    deinit { vgpu.shutdown() }

    /// `out` of `size` bytes to `port`, as a vCPU's port exit delivers it.
    func out(_ port: UInt64, _ value: UInt32, size: Int = 4) {
        var v = value
        withUnsafeBytes(of: &v) { _ = machine.pioBus.write(port, UnsafeRawBufferPointer(rebasing: $0.prefix(size))) }
    }
    func inp(_ port: UInt64, size: Int = 4) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { _ = machine.pioBus.read(port, UnsafeMutableRawBufferPointer(rebasing: $0.prefix(size))) }
        return v
    }
    /// A configuration write to the vGPU through mechanism #1 (address, then data).
    func configWrite(_ offset: Int, _ value: UInt32, size: Int = 4) {
        out(0xcf8, 0x8000_0000 | UInt32(device) << 11 | UInt32(offset & 0xfc))
        out(0xcfc + UInt64(offset & 3), value, size: size)
    }
    func configRead(_ offset: Int) -> UInt32 {
        out(0xcf8, 0x8000_0000 | UInt32(device) << 11 | UInt32(offset & 0xfc))
        return inp(0xcfc)
    }
    func mmioRead32(_ address: UInt64) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { _ = machine.mmioBus.read(address, $0) }
        return v
    }
    func mmioWrite32(_ address: UInt64, _ value: UInt32) {
        var v = value
        withUnsafeBytes(of: &v) { _ = machine.mmioBus.write(address, $0) }
    }
    var bar0Registrations: [Bus.Entry] { machine.mmioBus.registrations.filter { $0.device === vgpu } }
}

@Suite("vGPU: guest-triggered log floods and config-space races (fake device context)", .serialized)
struct GuestLogFloodAndBARRaceTests {
    @Test func tenThousandCommandWritesWithTheApertureOverRAMLogABoundedNumberOfLines() throws {
        let rig = try LoggedRig()
        // BAR2 over guest RAM: the aperture cannot be mapped there, and every command-register write that
        // leaves memory decoding on tries again.
        let bar2 = try #require(rig.vgpu.config.barAddress(2))
        rig.configWrite(0x18, 0)
        rig.configWrite(0x1c, 0)
        for _ in 0..<10_000 { rig.configWrite(0x04, 0x6, size: 2) }
        // The device still works once the guest puts the aperture somewhere sensible.
        rig.configWrite(0x18, UInt32(truncatingIfNeeded: bar2))
        rig.configWrite(0x1c, UInt32(truncatingIfNeeded: bar2 >> 32))
        #expect(rig.machine.slot(rig.vgpu.apertureSlot)?.gpa == bar2 + rig.vgpu.slices.aperture.lowerBound)
        rig.vgpu.shutdown()
        rig.machine.pciBus.flushSuppressedLog()   // the VM's end: the last summary is written
        let texts = rig.capture.texts
        let failures = texts.filter { $0.contains("BAR2: cannot place it") }
        let summaries = texts.filter { $0.contains("similar messages suppressed") }
        #expect(failures.count > 0)
        #expect(failures.count <= 2 * RateLimitedLog.Policy.default.burst, "\(failures.count) lines for 10,000 writes")
        #expect(failures.count + suppressedTotal(summaries) == 10_000, "\(failures.count) lines, summaries: \(summaries)")
        #expect(rig.capture.bytes < 8_000, "\(rig.capture.bytes) bytes of log")
    }

    @Test func fiveThousandRejectedSubmissionsLogABoundedNumberOfLines() throws {
        let rig = try LoggedRig()
        rig.configWrite(0x04, 0x6, size: 2)
        let bar0 = try #require(rig.vgpu.config.barAddress(0))
        let s = rig.vgpu.slices
        let ringGM = s.aperture.lowerBound
        let ringGPA: UInt64 = 0x20_0000
        var gtt = ringGPA | 1
        withUnsafeBytes(of: &gtt) { _ = rig.machine.mmioBus.write(bar0 + VGPURegs.gttWindow + (ringGM >> 12) * 8, $0) }
        var bad = CommandBuilder()
        bad.loadRegisterImm([(Reg.ringStart(.bcs), 0)])   // a privileged register: rejected by the scanner
        if bad.dwords.count % 2 == 1 { bad.noop(count: 1) }
        for (i, d) in bad.dwords.enumerated() { try rig.machine.memory.write(d, at: ringGPA + UInt64(i * 4)) }
        let n = 5_000
        for _ in 0..<n {
            rig.mmioWrite32(bar0 + UInt64(Reg.reset(.rcs)), 1)
            rig.mmioWrite32(bar0 + UInt64(Reg.ringStart(.rcs)), UInt32(ringGM))
            rig.mmioWrite32(bar0 + UInt64(Reg.ringHead(.rcs)), 0)
            rig.mmioWrite32(bar0 + UInt64(Reg.ringCtl(.rcs)), Reg.ringCtl(pages: 1))
            rig.mmioWrite32(bar0 + UInt64(Reg.ringTail(.rcs)), UInt32(bad.dwords.count * 4))
        }
        #expect(rig.vgpu.statistics.rejections == UInt64(n))   // every rejection is counted
        rig.vgpu.shutdown()
        let texts = rig.capture.texts
        let rejected = texts.filter { $0.contains("rejected") && !$0.contains("similar messages suppressed") }
        let summaries = texts.filter { $0.contains("similar messages suppressed") }
        #expect(rejected.count > 0)
        #expect(rejected.count <= 2 * RateLimitedLog.Policy.default.burst, "\(rejected.count) lines for \(n) rejections")
        #expect(rejected.count + suppressedTotal(summaries) == n, "\(rejected.count) lines, summaries: \(summaries)")
        #expect(rig.capture.bytes < 8_000, "\(rig.capture.bytes) bytes of log")
    }

    @Test func concurrentBARMovesAndCommandTogglesLeaveOneCleanPlacement() throws {
        let rig = try LoggedRig()
        let bases: [UInt64] = (0..<8).map { 0xE000_0000 + $0 * VGPURegs.bar0Size }
        rig.configWrite(0x04, 0x6, size: 2)
        let threads = 4, rounds = 400
        Hammer.run(threads: threads) { t in
            var rng = UInt64(0x9e37_79b9_7f4a_7c15) &* UInt64(t + 1)
            for _ in 0..<rounds {
                rng = rng &* 6364136223846793005 &+ 1442695040888963407
                let r = Int(rng >> 33)
                if r % 4 == 0 {
                    rig.configWrite(0x04, r % 8 == 0 ? 0x4 : 0x6, size: 2)   // memory decoding off / on
                } else {
                    rig.configWrite(0x10, UInt32(bases[(r >> 3) % bases.count]))
                }
            }
        }
        // Whatever the interleaving, the guest can now place BAR0 anywhere it used, and it decodes there alone.
        for base in bases + [bases[0]] {
            rig.configWrite(0x10, UInt32(base))
            rig.configWrite(0x04, 0x6, size: 2)
            #expect(UInt64(rig.configRead(0x10)) & ~0xf == base)
            #expect(rig.bar0Registrations.map(\.base) == [base])
            #expect(rig.mmioRead32(base + UInt64(VGPURegs.pvMagic)) == VGPURegs.pvMagicValue)
        }
        // The doorbells moved too: a registration left behind at a base would make this move fail.
        let texts = rig.capture.texts
        let trouble = texts.filter { $0.contains("overlaps") || $0.contains("File exists") || $0.contains("cannot place") }
        #expect(trouble.isEmpty, "\(trouble.count) lines, first: \(trouble.first ?? "")")
        // And it still works as a GPU register file.
        let bar0 = bases[0]
        rig.mmioWrite32(bar0 + UInt64(Reg.gpr(.rcs, dword: 0)), 0x1234)
        #expect(rig.mmioRead32(bar0 + UInt64(Reg.gpr(.rcs, dword: 0))) == 0x1234)
    }
}

