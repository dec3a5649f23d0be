import Glibc
import KVM
import Machine
import SoftGPU
import Testing
@testable import VGPU

/// The I/O interrupt entries (source bus IRQ -> IOAPIC pin) of the MP table found through the floating
/// pointer at `address`, for source bus 0 (PCI): (device, pin 1-4, IOAPIC pin).
func mpPCIRoutes(_ memory: GuestMemory, floatingPointer address: UInt64) throws -> [(device: Int, pin: Int, ioapicPin: Int)] {
    let fp = try memory.readBytes(at: address, count: 16)
    guard Array(fp.prefix(4)) == Array("_MP_".utf8) else { return [] }
    let tableAddress = UInt64(fp[4]) | UInt64(fp[5]) << 8 | UInt64(fp[6]) << 16 | UInt64(fp[7]) << 24
    let header = try memory.readBytes(at: tableAddress, count: 44)
    guard Array(header.prefix(4)) == Array("PCMP".utf8) else { return [] }
    let length = Int(header[4]) | Int(header[5]) << 8
    let table = try memory.readBytes(at: tableAddress, count: length)
    var routes: [(Int, Int, Int)] = []
    var o = 44
    while o + 8 <= table.count, table[o] <= 4 {
        if table[o] == 3 && table[o + 4] == 0 { routes.append((Int(table[o + 5]) >> 2, Int(table[o + 5] & 3) + 1, Int(table[o + 7]))) }
        o += table[o] == 0 ? 20 : 8
    }
    return routes
}

/// The firmware tables the guest sees are built from the finished device inventory when the VM starts.
@Suite("Firmware tables from the device inventory (needs /dev/kvm)", .serialized,
       .enabled(if: KVMSystem.isAvailable, "needs read-write /dev/kvm"))
struct FirmwareTableTests {
    @Test func theMPTableTheGuestSeesListsTheVGPURoute() throws {
        var c = MachineConfiguration()
        c.memoryBytes = 64 << 20
        c.serialOutput = .none
        let machine = try Machine(configuration: c, image: .realModeBlob([0xfa, 0xf4], loadAddress: 0x7c00))
        let vgpu = try VGPU(context: machine, host: GPUHost())
        defer { vgpu.shutdown() }
        let plan = try #require(machine.bootPlan)
        let gsi = try #require(vgpu.intxGSI)
        // Added after boot: the table is not rewritten behind the image's back; it is written at start.
        #expect(try mpPCIRoutes(machine.memory, floatingPointer: plan.mpTableAddress).isEmpty)
        try machine.start(paused: true)
        let routes = try mpPCIRoutes(machine.memory, floatingPointer: plan.mpTableAddress)
        #expect(routes.count == 1)
        #expect(routes.first.map { $0.device == vgpu.pciDevice && $0.pin == 1 && $0.ioapicPin == Int(gsi) } == true,
                "routes \(routes), vGPU at device \(vgpu.pciDevice) GSI \(gsi)")
        machine.requestStop(.powerOff)
        _ = machine.wait()
    }

    @Test func theVGPUsBARsComeFromThePCIMMIOWindowAndAPausingMachinePausesIt() throws {
        // One 256 MiB aperture fits the PCI MMIO window (0xd0000000-0xfdffffff) with its natural alignment;
        // a second vGPU on the same machine is refused with the allocator's error, leaving nothing behind.
        var c = MachineConfiguration()
        c.memoryBytes = 64 << 20
        c.serialOutput = .none
        let machine = try Machine(configuration: c, image: .realModeBlob([0xfa, 0xf4], loadAddress: 0x7c00))
        let host = GPUHost()
        let a = try VGPU(context: machine, host: host)
        defer { a.shutdown() }
        do { _ = try VGPU(context: machine, host: host); Issue.record("a second aperture fitted") } catch {
            #expect("\(error)".hasPrefix("no PCI MMIO range of 268435456 bytes left in 0xd0000000-0xfdffffff"), "\(error)")
        }
        #expect(machine.pciBus.interruptRoutes.count == 1)
        let window = MemoryLayout.pciMMIOStart..<MemoryLayout.pciMMIOEnd
        var bars: [Range<UInt64>] = []
        for v in [a] {
            for (i, size) in [(0, VGPURegs.bar0Size), (2, host.gpu.config.apertureSize)] {
                let base = try #require(v.config.barAddress(i))
                #expect(window.contains(base) && base + size <= window.upperBound)
                bars.append(base..<(base + size))
            }
        }
        for (i, r) in bars.enumerated() { for q in bars[(i + 1)...] { #expect(!r.overlaps(q)) } }
        try machine.start()
        try machine.pause()
        #expect(a.isPaused)
        try machine.resume()
        #expect(!a.isPaused)
        machine.requestStop(.powerOff)
        _ = machine.wait()
    }
}

@Suite("vGPU on the device-context seam (fake context, no /dev/kvm)", .serialized)
struct VGPUSeamTests {
    @Test func theVGPURegistersItselfAsPausableAndEntersTheDeviceSandbox() throws {
        let rig = try Rig()
        #expect(rig.context.recorded.withLock { $0.pausable.contains { $0 === rig.vgpu } })
        // The mediator, the GPU's two engine dispatchers and its watchdog.
        #expect(rig.waitFor(seconds: 5) { rig.context.recorded.withLock { $0.sandboxedThreads.count } == 4 })
        #expect(rig.context.recorded.withLock { $0.sandboxedThreads }.contains { $0.hasSuffix("-watchdog") })
        // The PV doorbells are ioeventfds at BAR0 + the doorbell offsets, put there by the PCI bus.
        let bar0 = try #require(rig.vgpu.config.barAddress(0))
        #expect(rig.context.ioeventfd(at: bar0 + UInt64(VGPURegs.pvDoorbellRCS)) == rig.vgpu.doorbells[0].fd)
        #expect(rig.context.ioeventfd(at: bar0 + UInt64(VGPURegs.pvDoorbellBCS)) == rig.vgpu.doorbells[1].fd)
        let bar2 = try #require(rig.vgpu.config.barAddress(2))
        #expect(rig.context.slot(rig.vgpu.apertureSlot)?.gpa == bar2 + rig.vgpu.slices.aperture.lowerBound)
    }

    @Test func whilePausedNoSubmissionStartsAndResumeRunsWhatWasQueued() throws {
        let rig = try Rig()
        let s = rig.vgpu.slices
        let ringGM = s.aperture.lowerBound, fenceGM = s.hidden.lowerBound
        let ring = rig.setUpRing(.rcs, gm: ringGM)
        let fenceGPA = rig.back(gm: fenceGM, pages: 1)
        rig.vgpu.pause()
        var b = CommandBuilder()
        b.storeDataImm(gm: fenceGM, 0x5eed)
        try rig.put(b.dwords + (b.dwords.count % 2 == 1 ? [0] : []), at: ring)
        rig.w32(Reg.ringTail(.rcs), UInt32((b.dwords.count + 1) / 2 * 8))   // scanned and queued on this thread
        #expect(rig.vgpu.state.withLock { $0.engines[0].queue.count } == 1)
        // The dispatcher's own step, run here: paused, the vGPU offers nothing and starts nothing.
        #expect(rig.vgpu.readyWork(on: .rcs) == nil)
        #expect(rig.vgpu.runPass(on: .rcs) == 0)
        #expect(rig.vgpu.state.withLock { $0.engines[0].queue.count } == 1)
        #expect(rig.r32(Reg.status(.rcs)) & Reg.statusBusy != 0)
        #expect(try rig.context.memory.read(UInt32.self, at: fenceGPA) == 0)
        rig.vgpu.resume()
        #expect(try rig.waitFor { try rig.context.memory.read(UInt32.self, at: fenceGPA) == 0x5eed })
        #expect(rig.waitFor { rig.r32(Reg.status(.rcs)) & Reg.statusIdle != 0 })
    }
}
