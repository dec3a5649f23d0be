import TestSupport
import CLibpng
import Glibc
import KVM
import Machine
import SoftGPU
import Testing
@testable import VGPU

/// Drives a vGPU from host code exactly as a guest driver would (BAR0 registers, the GTT window, rings in
/// guest RAM), on a fake device context (no /dev/kvm): what the vGPU asks of KVM is recorded there.
final class Rig {
    let context: FakeDeviceContext
    let vgpu: VGPU
    let host: GPUHost
    var nextPage: UInt64 = 0x200000   // guest RAM handed out for rings and surfaces

    init(host: GPUHost = GPUHost(), trace: GPUTrace? = nil) throws {
        context = try FakeDeviceContext()
        self.host = host
        vgpu = try VGPU(context: context, host: host, trace: trace)
        configWrite(4, size: 2, 0x6)   // memory decode + bus master
    }

    /// A configuration write through the PCI bus (which places the BARs), as the guest makes it.
    func configWrite(_ offset: Int, size: Int = 4, _ value: UInt32) {
        context.pciBus.configWrite(bus: 0, device: vgpu.pciDevice, function: 0, offset: offset, size: size, value: value)
    }

    deinit { vgpu.shutdown() }

    func w32(_ offset: UInt32, _ value: UInt32) {
        var v = value
        withUnsafeBytes(of: &v) { vgpu.write(offset: UInt64(offset), data: $0) }
    }
    func r32(_ offset: UInt32) -> UInt32 {
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { vgpu.read(offset: UInt64(offset), data: $0) }
        return v
    }
    func gttWrite(gm: UInt64, _ entry: UInt64) {
        var v = entry
        withUnsafeBytes(of: &v) { vgpu.write(offset: VGPURegs.gttWindow + (gm >> 12) * 8, data: $0) }
    }
    func gttRead(gm: UInt64) -> UInt64 {
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { vgpu.read(offset: VGPURegs.gttWindow + (gm >> 12) * 8, data: $0) }
        return v
    }
    /// Backs `pages` GM pages at `gm` with fresh guest RAM; returns the guest-physical address.
    @discardableResult
    func back(gm: UInt64, pages: Int) -> UInt64 {
        let gpa = nextPage
        for p in 0..<pages { gttWrite(gm: gm + UInt64(p) * 4096, (gpa + UInt64(p) * 4096) | 1) }
        nextPage += UInt64(pages) * 4096
        return gpa
    }

    /// Programs `engine`'s ring at `gm` (one page, backed by guest RAM) and returns its guest-physical address.
    func setUpRing(_ e: EngineID, gm: UInt64) -> UInt64 {
        let gpa = back(gm: gm, pages: 1)
        w32(Reg.ringStart(e), UInt32(gm))
        w32(Reg.ringHead(e), 0)
        w32(Reg.ringTail(e), 0)
        w32(Reg.ringCtl(e), Reg.ringCtl(pages: 1))
        return gpa
    }

    /// Writes `dwords` into the ring at byte `at` and rings the trapped TAIL doorbell; waits (bounded) until
    /// the mediator has consumed it. Returns the new tail.
    @discardableResult
    func submit(_ e: EngineID, ringGPA: UInt64, at: UInt32, _ dwords: [UInt32]) throws -> UInt32 {
        var padded = dwords
        if padded.count % 2 == 1 { padded.append(0) }   // tails are qword aligned
        for (i, d) in padded.enumerated() { try context.memory.write(d, at: ringGPA + UInt64(at) + UInt64(i * 4)) }
        let tail = at + UInt32(padded.count * 4)
        w32(Reg.ringTail(e), tail)
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if r32(Reg.status(e)) & (Reg.statusIdle | Reg.statusError) != 0 && r32(Reg.status(e)) & Reg.statusBusy == 0
                && (r32(Reg.ringHead(e)) == tail || r32(Reg.status(e)) & Reg.statusError != 0) { return tail }
            usleep(200)
        }
        Issue.record("submission on \(e) did not complete")
        return tail
    }

    /// Programs an RCS ring at `ringGM`, submits STORE_DATA_IMM of `value` to a fresh page at `fenceGM`, and
    /// returns what guest RAM behind that page holds afterwards.
    func storeThroughRCS(ringGM: UInt64, fenceGM: UInt64, value: UInt32) throws -> UInt32 {
        let ring = setUpRing(.rcs, gm: ringGM)
        let fenceGPA = back(gm: fenceGM, pages: 1)
        var b = CommandBuilder()
        b.storeDataImm(gm: fenceGM, value)
        try submit(.rcs, ringGPA: ring, at: 0, b.dwords)
        return try context.memory.read(UInt32.self, at: fenceGPA)
    }
}

@Suite("vGPU mediator, driven from the host on a fake device context", .serialized)
struct MediatorTests {
    @Test func pciIdentityAndPVInformation() throws {
        let rig = try Rig()
        #expect(rig.vgpu.config.read(offset: 0, size: 4) == 0x0001_4d56)
        #expect(rig.vgpu.config.read(offset: 0x0a, size: 2) == 0x0380)
        #expect(rig.r32(VGPURegs.pvMagic) == 0x5550_474d)
        #expect(rig.r32(VGPURegs.pvVersion) == 0x0001_0000)
        let s = rig.vgpu.slices
        #expect(UInt64(rig.r32(VGPURegs.pvApertureBase)) == s.aperture.lowerBound)
        #expect(UInt64(rig.r32(VGPURegs.pvApertureSize)) == UInt64(s.aperture.count))
        #expect(UInt64(rig.r32(VGPURegs.pvHiddenBase)) == s.hidden.lowerBound)
        let bar0 = try #require(rig.vgpu.config.barAddress(0))
        #expect(ResourceAllocator.defaultMMIOWindow.contains(bar0))
        #expect(rig.context.mmioBus.registrations.contains { $0.base == bar0 && $0.device === rig.vgpu })
    }

    @Test func gttShadowTranslatesValidatesAndDrops() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        let gm = s.aperture.lowerBound + 0x5000
        rig.gttWrite(gm: gm, 0x30_0000 | 1)
        #expect(rig.gttRead(gm: gm) == 0x30_0000 | 1)
        let shadow = rig.host.gpu.gtt.entry(Int(gm >> 12))
        #expect(shadow & 1 == 1 && shadow & GTTShadow.addressMask == rig.vgpu.busBase + 0x30_0000)
        // Pointing at the MMIO hole or past RAM: the vGPU's own scratch page, counted.
        rig.gttWrite(gm: gm + 0x1000, 0xd000_0000 | 1)
        rig.gttWrite(gm: gm + 0x2000, (1 << 40) | 1)
        #expect(rig.host.gpu.gtt.entry(Int((gm + 0x1000) >> 12)) == rig.vgpu.scratchBus | 1)
        #expect(rig.host.gpu.gtt.entry(Int((gm + 0x2000) >> 12)) == rig.vgpu.scratchBus | 1)
        #expect(rig.vgpu.statistics.gttRejected == 2)
        // Outside the slices: dropped, reads 0, shadow untouched.
        let foreign = s.aperture.upperBound + 0x1000
        rig.gttWrite(gm: foreign, 0x30_0000 | 1)
        #expect(rig.gttRead(gm: foreign) == 0)
        #expect(rig.host.gpu.gtt.entry(Int(foreign >> 12)) == 0)
        #expect(rig.vgpu.statistics.gttDroppedOutside == 1)
        // Two halves: high first with the low half still pointing at RAM, then low.
        var hiHalf: UInt32 = 0
        withUnsafeBytes(of: &hiHalf) { rig.vgpu.write(offset: VGPURegs.gttWindow + (gm >> 12) * 8 + 4, data: $0) }
        var loHalf: UInt32 = 0x31_0000 | 1
        withUnsafeBytes(of: &loHalf) { rig.vgpu.write(offset: VGPURegs.gttWindow + (gm >> 12) * 8, data: $0) }
        #expect(rig.gttRead(gm: gm) == 0x31_0000 | 1)
        #expect(rig.host.gpu.gtt.entry(Int(gm >> 12)) & GTTShadow.addressMask == rig.vgpu.busBase + 0x31_0000)
    }

    @Test func apertureWindowFollowsTheGTT() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        let gm = s.aperture.lowerBound + 0x3000
        rig.gttWrite(gm: gm, 0x40_0000 | 1)
        let cpuView = rig.vgpu.apertureWindow + Int(gm - s.aperture.lowerBound)
        cpuView.storeBytes(of: UInt32(0xfeed_f00d), as: UInt32.self)
        #expect(try rig.context.memory.read(UInt32.self, at: 0x40_0000) == 0xfeed_f00d)
        rig.gttWrite(gm: gm, 0x41_0000 | 1)
        try rig.context.memory.write(UInt32(0x1234_5678), at: 0x41_0000)
        #expect(cpuView.load(as: UInt32.self) == 0x1234_5678)
        rig.gttWrite(gm: gm, 0)   // invalid: the window shows a private zero page, guest RAM untouched
        cpuView.storeBytes(of: UInt32(0xdead), as: UInt32.self)
        #expect(try rig.context.memory.read(UInt32.self, at: 0x41_0000) == 0x1234_5678)
    }

    @Test func registerPolicies() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        rig.w32(0x1_0000, 0xffff_ffff)                  // not in the table: privileged
        #expect(rig.r32(0x1_0000) == 0)
        #expect(rig.vgpu.statistics.privilegedWrites == 1)
        rig.w32(Reg.gpuID, 0)                            // read-only
        #expect(rig.r32(Reg.gpuID) == Reg.gpuIDValue)
        rig.w32(Reg.ringCtl(.rcs), 0xffff_ffff)          // write-masked
        #expect(rig.r32(Reg.ringCtl(.rcs)) == 0x1ff001)
        rig.w32(Reg.priSurf, UInt32(s.hidden.lowerBound)) // GM address inside the slices
        #expect(rig.r32(Reg.priSurf) == UInt32(s.hidden.lowerBound))
        rig.w32(Reg.priSurf, 0)                          // outside: refused
        #expect(rig.r32(Reg.priSurf) == UInt32(s.hidden.lowerBound))
        #expect(rig.vgpu.statistics.refusedAddressWrites == 1)
        #expect(RegisterPolicy.commandLoadAllowed(Reg.gpr(.rcs, dword: 0)))
        #expect(!RegisterPolicy.commandLoadAllowed(Reg.ringStart(.bcs)))
        #expect(!RegisterPolicy.commandLoadAllowed(Reg.priSurf))
    }

    @Test func oddSizedAndMisalignedAccesses() throws {
        let rig = try Rig()
        var b: UInt8 = 0
        withUnsafeMutableBytes(of: &b) { rig.vgpu.read(offset: UInt64(VGPURegs.pvMagic), data: $0) }
        #expect(b == 0xff)
        var w: UInt32 = 0
        withUnsafeMutableBytes(of: &w) { rig.vgpu.read(offset: UInt64(VGPURegs.pvMagic) + 2, data: $0) }
        #expect(w == 0xffff_ffff)
        var h: UInt16 = 0x1234
        withUnsafeBytes(of: &h) { rig.vgpu.write(offset: UInt64(Reg.scratch(0)), data: $0) }
        #expect(rig.r32(Reg.scratch(0)) == 0)
        #expect(rig.vgpu.statistics.badAccesses == 3)
    }

    @Test func blitSubmissionRunsFromTheShadowAndRaisesInterrupts() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        rig.w32(Reg.imr, 0)
        rig.w32(Reg.ier, 0xffff_ffff)
        let ring = rig.setUpRing(.bcs, gm: s.aperture.lowerBound)
        let surfaceGM = s.hidden.lowerBound
        let surfaceGPA = rig.back(gm: surfaceGM, pages: 16)         // 64 x 64 x 4 bytes = 16 KiB... and more
        var b = CommandBuilder()
        b.colorBlt(dst: BlitSurface(gm: surfaceGM, pitch: 256, width: 64, height: 64), x1: 4, y1: 2, x2: 20, y2: 10, color: 0x00ff_8000)
        try rig.submit(.bcs, ringGPA: ring, at: 0, b.dwords)
        #expect(rig.r32(Reg.status(.bcs)) & Reg.statusError == 0, "error code \(rig.r32(Reg.errorCode(.bcs)))")
        #expect(try rig.context.memory.read(UInt32.self, at: surfaceGPA + 2 * 256 + 4 * 4) == 0x00ff_8000)
        #expect(try rig.context.memory.read(UInt32.self, at: surfaceGPA + 9 * 256 + 19 * 4) == 0x00ff_8000)
        #expect(try rig.context.memory.read(UInt32.self, at: surfaceGPA + 10 * 256 + 4 * 4) == 0)
        #expect(rig.r32(Reg.iir) & Interrupt.bcsIdle != 0)
        #expect(rig.vgpu.statistics.submissions == 1)
    }

    @Test func rejectedSubmissionIsReportedAndRecoverable() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        rig.w32(Reg.imr, 0)
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound)
        var bad = CommandBuilder()
        bad.loadRegisterImm([(Reg.ringStart(.bcs), 0)])              // privileged register
        try rig.submit(.rcs, ringGPA: ring, at: 0, bad.dwords)
        #expect(rig.r32(VGPURegs.errStatus) == 1)
        #expect(rig.r32(VGPURegs.errEngine) == 0)
        #expect(rig.r32(VGPURegs.errReason) == RejectReason.registerNotAllowed.rawValue)
        #expect(rig.r32(VGPURegs.errOpcode) == bad.dwords[0])
        #expect(UInt64(rig.r32(VGPURegs.errCommandGM)) == s.aperture.lowerBound)
        #expect(rig.r32(VGPURegs.errOffset) == 0)
        #expect(rig.r32(VGPURegs.errOperand) == Reg.ringStart(.bcs))
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusError != 0)
        #expect(rig.r32(Reg.errorCode(.rcs)) == 0x100 + RejectReason.registerNotAllowed.rawValue)
        #expect(rig.r32(Reg.iir) & VGPURegs.rcsRejected != 0)
        #expect(rig.vgpu.statistics.submissions == 0)
        // Further doorbells are ignored until RESET; after it the engine works again.
        rig.w32(Reg.reset(.rcs), 1)
        rig.w32(VGPURegs.errStatus, 1)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusError == 0)
        #expect(try rig.storeThroughRCS(ringGM: s.aperture.lowerBound + 0x10000, fenceGM: s.hidden.lowerBound + 0x100000,
                                        value: 0xabcd) == 0xabcd)
        #expect(rig.r32(VGPURegs.errStatus) == 0)
    }

    @Test func addressesOutsideTheSlicesAreRejected() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        let ring = rig.setUpRing(.rcs, gm: s.aperture.lowerBound)
        var b = CommandBuilder()
        b.storeDataImm(gm: 0x1000, 1)                          // host reserve
        try rig.submit(.rcs, ringGPA: ring, at: 0, b.dwords)
        #expect(rig.r32(VGPURegs.errReason) == RejectReason.addressOutsideSlices.rawValue)
        #expect(rig.r32(VGPURegs.errOperand) == 0x1000)
        #expect(rig.r32(VGPURegs.errOffset) == 0)
        // A bad command inside a batch, 8 bytes into it: the offset is relative to the batch.
        rig.w32(Reg.reset(.rcs), 1)
        let ring2 = rig.setUpRing(.rcs, gm: s.aperture.lowerBound + 0x20000)
        let batchGM = s.hidden.lowerBound + 0x200000
        let batchGPA = rig.back(gm: batchGM, pages: 1)
        var batch = CommandBuilder()
        batch.noop(count: 2)
        batch.storeDataImm(gm: 0x2000, 1)
        batch.batchBufferEnd()
        for (i, d) in batch.dwords.enumerated() { try rig.context.memory.write(d, at: batchGPA + UInt64(i * 4)) }
        var start = CommandBuilder()
        start.batchBufferStart(gm: batchGM, length: UInt32(batch.dwords.count * 4))
        try rig.submit(.rcs, ringGPA: ring2, at: 0, start.dwords)
        #expect(rig.r32(VGPURegs.errLevel) == 1)
        #expect(UInt64(rig.r32(VGPURegs.errCommandGM)) == batchGM + 8)
        #expect(rig.r32(VGPURegs.errOffset) == 8)
    }

    @Test func twoVGPUsAreIsolated() throws {
        let host = GPUHost()
        let a = try Rig(host: host)
        let b = try Rig(host: host)
        #expect(a.vgpu.slices.aperture.upperBound <= b.vgpu.slices.aperture.lowerBound)
        // B cannot map A's GM, and cannot point commands at it.
        let aGM = a.vgpu.slices.hidden.lowerBound
        let aGPA = a.back(gm: aGM, pages: 1)
        try a.context.memory.write(UInt32(7), at: aGPA)
        b.gttWrite(gm: aGM, 0x30_0000 | 1)
        #expect(host.gpu.gtt.entry(Int(aGM >> 12)) & GTTShadow.addressMask == a.vgpu.busBase + aGPA)
        let ring = b.setUpRing(.rcs, gm: b.vgpu.slices.aperture.lowerBound)
        var cmd = CommandBuilder()
        cmd.storeDataImm(gm: aGM, 0x666)
        try b.submit(.rcs, ringGPA: ring, at: 0, cmd.dwords)
        #expect(b.r32(VGPURegs.errReason) == RejectReason.addressOutsideSlices.rawValue)
        #expect(try a.context.memory.read(UInt32.self, at: aGPA) == 7)
    }

    @Test func failedBAR0PlacementLeavesNothingBehind() throws {
        let rig = try Rig()
        // Something else already owns the BCS doorbell address at the new place: BAR0 cannot go there.
        let blocked: UInt64 = 0xE100_0000
        let other = try EventFD()
        try rig.context.registerIOEventFD(other.fd, address: blocked + UInt64(VGPURegs.pvDoorbellBCS), length: 4, isPIO: false, deassign: false)
        func moveBAR0(_ base: UInt64) { rig.configWrite(0x10, UInt32(base)) }
        moveBAR0(blocked)
        #expect(!rig.context.mmioBus.registrations.contains { $0.base == blocked })
        #expect(!rig.context.mmioBus.registrations.contains { $0.name.hasSuffix("-bar0") })
        // The next move places it cleanly, doorbells included (registering them again would fail if stale).
        let fine: UInt64 = 0xE200_0000
        moveBAR0(fine)
        #expect(rig.context.mmioBus.registrations.contains { $0.base == fine })
        var v: UInt32 = 0
        withUnsafeMutableBytes(of: &v) { _ = rig.context.mmioBus.read(fine + UInt64(VGPURegs.pvMagic), $0) }
        #expect(v == VGPURegs.pvMagicValue)
        moveBAR0(blocked)
        moveBAR0(fine)
        #expect(rig.context.mmioBus.registrations.filter { $0.name.hasSuffix("-bar0") }.count == 1)
    }

    @Test func intxFallbackIsRoutedAndLevelTriggered() throws {
        let rig = try Rig()
        let gsi = rig.vgpu.config.read(offset: 0x3c, size: 1)
        #expect(gsi >= 16 && gsi < 24)
        // The bus's inventory (what the MP table describes, see FirmwareTableTests) names the route.
        #expect(rig.context.pciBus.interruptRoutes.contains(.init(device: rig.vgpu.pciDevice, pin: 1, gsi: gsi)))
        // With MSI off, INTA# follows IIR & IER.
        rig.w32(Reg.imr, 0)
        rig.w32(Reg.ier, Interrupt.vblank)
        rig.vgpu.vblank()
        #expect(rig.vgpu.line.asserted)
        #expect(rig.context.recorded.withLock { $0.irqLines[gsi] } == true)
        rig.w32(Reg.iir, Interrupt.vblank)
        #expect(!rig.vgpu.line.asserted)
        // INTx disable in the command register keeps the line low.
        rig.configWrite(4, size: 2, 0x406)
        rig.vgpu.vblank()
        #expect(!rig.vgpu.line.asserted)
    }

    @Test func randomGuestAccessesAreHarmless() throws {
        // A deterministic storm of BAR0 and configuration-space accesses of every size, biased toward the
        // registers that do something; afterwards the device still answers and still runs a submission.
        let rig = try Rig()
        var rng = SplitMix64(seed: 0x5eed)
        let interesting: [UInt32] = [Reg.ringTail(.rcs), Reg.ringHead(.rcs), Reg.ringStart(.rcs), Reg.ringCtl(.rcs),
                                     Reg.reset(.rcs), Reg.ringTail(.bcs), Reg.ringCtl(.bcs), Reg.reset(.bcs), Reg.iir,
                                     Reg.ier, Reg.imr, Reg.pipeConf, Reg.priSurf, Reg.priSize, Reg.priCtl,
                                     VGPURegs.pvSharedPage, VGPURegs.pvDoorbellRCS, VGPURegs.errStatus]
        let s = rig.vgpu.slices
        for i in 0..<20000 {
            let size = [1, 2, 4, 8][Int(rng.next() % 4)]
            var offset: UInt64
            switch rng.next() % 4 {
            case 0: offset = UInt64(interesting[Int(rng.next() % UInt64(interesting.count))])
            case 1: offset = VGPURegs.gttWindow + (rng.next() % (1 << 23))
            case 2: offset = rng.next() % VGPURegs.bar0Size
            default: offset = VGPURegs.gttWindow + ((s.aperture.lowerBound >> 12) + rng.next() % 64) * 8
            }
            var value = rng.next()
            if rng.next() % 3 == 0 { value = (value & 0x3ff_f000) | 1 }   // plausible GTT entries / addresses
            if rng.next() % 2 == 0 {
                withUnsafeBytes(of: &value) { rig.vgpu.write(offset: offset, data: UnsafeRawBufferPointer(rebasing: $0.prefix(size))) }
            } else {
                var out: UInt64 = 0
                withUnsafeMutableBytes(of: &out) { rig.vgpu.read(offset: offset, data: UnsafeMutableRawBufferPointer(rebasing: $0.prefix(size))) }
            }
            if i % 500 == 0 {   // configuration space too (BAR moves, MSI, command register)
                let off = Int(rng.next() % 256)
                rig.configWrite(off & ~3, UInt32(truncatingIfNeeded: rng.next()))
            }
        }
        // Put the device back where the test expects it and check it still works.
        rig.configWrite(4, size: 2, 0)
        rig.configWrite(0x10, 0xD000_0000)
        rig.configWrite(0x18, 0xE000_0000)
        rig.configWrite(0x1c, 0)
        rig.configWrite(4, size: 2, 0x6)
        #expect(rig.context.mmioBus.registrations.contains { $0.base == 0xD000_0000 && $0.device === rig.vgpu })
        #expect(rig.r32(VGPURegs.pvMagic) == VGPURegs.pvMagicValue)
        for e in EngineID.allCases { rig.w32(Reg.reset(e), 1) }
        let deadline = ContinuousClock.now + .seconds(20)
        while rig.r32(Reg.status(.rcs)) & Reg.statusBusy != 0 && ContinuousClock.now < deadline { usleep(1000) }
        rig.w32(Reg.reset(.rcs), 1)
        rig.w32(VGPURegs.errStatus, 1)
        #expect(try rig.storeThroughRCS(ringGM: s.aperture.lowerBound + 0x80000, fenceGM: s.hidden.lowerBound + 0x300000,
                                        value: 0x600d) == 0x600d)
    }

    @Test func scanoutAndPNG() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        let fb = s.aperture.lowerBound + 0x100000
        let gpa = rig.back(gm: fb, pages: 8)                           // 64 x 128 x 4 = 32 KiB
        for y in 0..<128 { for x in 0..<64 {
            try rig.context.memory.write(UInt32(x < 32 ? 0x00ff_0000 : 0x0000_00ff), at: gpa + UInt64(y * 256 + x * 4))
        } }
        rig.w32(Reg.priStride, 256)
        rig.w32(Reg.priSize, 128 << 16 | 64)
        rig.w32(Reg.priSurf, UInt32(fb))
        rig.w32(Reg.priCtl, Reg.priCtl(enable: true))
        let image = rig.vgpu.scanout()
        #expect(image.width == 64 && image.height == 128)
        #expect(image[0, 0] == 0x00ff_0000 && image[63, 127] == 0x0000_00ff)
        let path = "/tmp/minivisor-vgpu-test-\(getpid()).png"
        defer { unlink(path) }
        try PNGWriter.write(image, to: path)
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        #expect(png_image_begin_read_from_file(&png, path) != 0)
        png.format = UInt32(PNG_FORMAT_RGB)
        var buf = [UInt8](repeating: 0, count: Int(png.width * png.height * 3))
        #expect(png_image_finish_read(&png, nil, &buf, 0, nil) != 0)
        #expect(png.width == 64 && png.height == 128)
        #expect(Array(buf[0..<3]) == [0xff, 0, 0])
        #expect(Array(buf[(127 * 64 + 63) * 3..<(127 * 64 + 64) * 3]) == [0, 0, 0xff])
    }
}

/// A small deterministic generator (splitmix64) for reproducible random tests.
