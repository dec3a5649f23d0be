import Machine
import SoftGPU
import Synchronization
import Testing
@testable import VGPU

/// The GTT shadow and the register-policy table on their own: guest memory and a SoftGPU, no KVM.
@Suite("GTT shadow and register policies (no KVM)")
struct ShadowAndPolicyTests {
    let slices = GMSlices(aperture: 0x0200_0000..<0x0600_0000, hidden: 0x1800_0000..<0x2800_0000)
    let busBase: UInt64 = 1 << 40

    func make() throws -> (GTTShadow, GuestMemory, SoftGPU) {
        let memory = try GuestMemory(bytes: 32 << 20)
        let gpu = SoftGPU(config: GPUConfig())
        try gpu.systemMemory.register(base: busBase, length: memory.size, pointer: memory.hostBase, name: "ram")
        return (GTTShadow(slices: slices, gtt: gpu.gtt, memory: memory, busBase: busBase,
                          scratchBus: SystemMemory.scratchPageAddress), memory, gpu)
    }

    @Test func validEntriesTranslateToBusAddresses() throws {
        let (shadow, _, gpu) = try make()
        defer { gpu.shutdown() }
        let page = Int(slices.hidden.lowerBound >> 12) + 3
        #expect(shadow.write(page: page, offset: 0, size: 8, value: 0x12_3000 | 0x3))   // valid + read-only
        #expect(shadow.read(page: page) == 0x12_3000 | 0x3)
        #expect(gpu.gtt.entry(page) == (busBase + 0x12_3000) | 0x3)
        // The GPU now reaches that guest page.
        try gpu.gtt.write32(0xcafe, at: UInt64(page) << 12)
        #expect(gpu.gtt.hostPointer(forPage: page)!.load(as: UInt32.self) == 0xcafe)
    }

    @Test(arguments: [UInt64(0xd000_0000), 32 << 20, 1 << 45, 0xfff0_0000_0000_0000])
    func nonRAMPointsAtTheScratchPage(gpa: UInt64) throws {
        let (shadow, _, gpu) = try make()
        defer { gpu.shutdown() }
        let page = Int(slices.aperture.lowerBound >> 12)
        shadow.write(page: page, offset: 0, size: 8, value: gpa | 1)
        #expect(gpu.gtt.entry(page) == SystemMemory.scratchPageAddress | 1)
        #expect(shadow.rejected.load(ordering: .relaxed) == 1)
    }

    @Test func entriesOutsideTheSlicesAreDropped() throws {
        let (shadow, _, gpu) = try make()
        defer { gpu.shutdown() }
        for page in [0, Int(slices.aperture.upperBound >> 12), Int(slices.hidden.lowerBound >> 12) - 1, Int.max / 4096] {
            #expect(!shadow.write(page: page, offset: 0, size: 8, value: 0x1000 | 1))
            #expect(shadow.read(page: page) == 0)
        }
        #expect(gpu.gtt.entry(0) == 0)
        #expect(shadow.droppedOutside.load(ordering: .relaxed) == 4)
    }

    @Test func halfWritesNeverMapAnythingButRAMOrScratch() throws {
        let (shadow, _, gpu) = try make()
        defer { gpu.shutdown() }
        let page = Int(slices.hidden.lowerBound >> 12)
        shadow.write(page: page, offset: 0, size: 4, value: 0x4000 | 1)     // low half: valid, RAM
        #expect(gpu.gtt.entry(page) == (busBase + 0x4000) | 1)
        shadow.write(page: page, offset: 4, size: 4, value: 0x10)           // high half: now 0x10_0000_4000, not RAM
        #expect(gpu.gtt.entry(page) == SystemMemory.scratchPageAddress | 1)
        shadow.write(page: page, offset: 4, size: 4, value: 0)              // back to RAM
        #expect(gpu.gtt.entry(page) == (busBase + 0x4000) | 1)
        shadow.write(page: page, offset: 0, size: 4, value: 0x4000)         // invalid
        #expect(gpu.gtt.entry(page) == 0)
    }

    @Test func aperturePagesAreReportedForTheCPUWindow() throws {
        let (shadow, _, gpu) = try make()
        defer { gpu.shutdown() }
        let seen = Mutex<[(Int, UInt64?)]>([])
        shadow.onAperturePageChange = { page, offset in seen.withLock { $0.append((page, offset)) } }
        let ap = Int(slices.aperture.lowerBound >> 12) + 1
        shadow.write(page: ap, offset: 0, size: 8, value: 0x8000 | 1)
        shadow.write(page: ap, offset: 0, size: 8, value: 0xd000_0000 | 1)
        shadow.write(page: Int(slices.hidden.lowerBound >> 12), offset: 0, size: 8, value: 0x8000 | 1)   // hidden: no CPU view
        let events = seen.withLock { $0 }
        #expect(events.count == 2)
        #expect(events[0].0 == ap && events[0].1 == 0x8000)
        #expect(events[1].0 == ap && events[1].1 == nil)
    }

    @Test func policyTable() {
        #expect(RegisterPolicy.of(Reg.ringTail(.rcs)) == .emulated)
        #expect(RegisterPolicy.of(Reg.ringStart(.bcs)) == .gmAddress)
        #expect(RegisterPolicy.of(Reg.ringCtl(.rcs)) == .writeMasked(0x1ff001))
        #expect(RegisterPolicy.of(Reg.status(.bcs)) == .readOnly)
        #expect(RegisterPolicy.of(Reg.gpr(.rcs, dword: 31)) == .commandLoad)
        #expect(RegisterPolicy.of(Reg.priSurf) == .gmAddress)
        #expect(RegisterPolicy.of(Reg.isr) == .readOnly)
        #expect(RegisterPolicy.of(0x1234_0000) == .privileged)
        // The scanner's whitelist is exactly the command-load policy, a subset of SoftGPU's hardware list.
        for (offset, policy) in RegisterPolicy.table {
            #expect(RegisterPolicy.commandLoadAllowed(offset) == (policy == .commandLoad))
            if policy == .commandLoad { #expect(RegisterMap.isCommandWritable(offset)) }
        }
        #expect(RegisterPolicy.table.values.filter { $0 == .commandLoad }.count == 64)
    }
}
