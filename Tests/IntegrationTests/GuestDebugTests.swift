import Dispatch
import Glibc
import Minivisor
import Synchronization
import Testing

final class StopQueue: Sendable {
    let q = Mutex<[DebugStop]>([])
    let sem = DispatchSemaphore(value: 0)
    func push(_ s: DebugStop) { q.withLock { $0.append(s) }; sem.signal() }
    func next(_ seconds: Int = 5) -> DebugStop? {
        guard sem.wait(timeout: .now() + .seconds(seconds)) == .success else { return nil }
        return q.withLock { $0.removeFirst() }
    }
}

/// The machine's debug facilities the gdb stub is built on, driven directly: single-step, a hardware
/// execution breakpoint and a software breakpoint each stop the vCPU where they should (measured on
/// kvm-pvm, where ring-0 code runs in KVM's instruction emulator, and valid on hardware hosts).
@Suite("Guest debugging (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct GuestDebugTests {
    static let compute: UInt64 = 0x100020   // nm Guests/build/debugme.elf (checked below)

    func boot() throws -> (Machine, StopQueue) {
        var c = MachineConfiguration()
        c.memoryBytes = 64 << 20
        c.timeout = .seconds(60)
        c.serialOutput = .none
        let path = try Support.guest("debugme")
        let (_, nm) = Support.run("/usr/bin/nm", [path])
        #expect(nm.contains(String(Self.compute, radix: 16).leftPad(16) + " T compute"), "compute moved: update GuestDebugTests.compute")
        let m = try Machine(configuration: c, image: .file(path))
        let q = StopQueue()
        m.setDebugHandler { q.push($0) }
        try m.start(paused: true)
        return (m, q)
    }

    @Test func singleStepRunsOneInstruction() throws {
        let (m, q) = try boot()
        #expect(try m.registers(0).rip == 0x100000)
        try m.step(0)
        #expect(q.next() == .stopped(cpu: 0, reason: .step))
        #expect(try m.registers(0).rip == 0x100001)   // crt0 starts with cld (one byte)
        m.requestStop(.powerOff)
        _ = m.wait()
    }

    @Test func hardwareBreakpointStopsAtTheFunction() throws {
        let (m, q) = try boot()
        var d = KVMVCPU.GuestDebug()
        d.hardwareBreakpoints = ([Self.compute, 0, 0, 0], 0x1)
        try m.setGuestDebug(0, d)
        try m.resume()
        #expect(q.next() == .stopped(cpu: 0, reason: .hardwareBreakpoint(0)))
        try m.pause()
        #expect(try m.registers(0).rip == Self.compute)
        m.requestStop(.powerOff)
        _ = m.wait()
    }

    @Test func softwareBreakpointStopsOnTheInt3() throws {
        let (m, q) = try boot()
        let original: UInt8 = try m.memory.read(at: Self.compute)
        try m.memory.write(UInt8(0xcc), at: Self.compute)
        m.setSoftwareBreakpoints([Self.compute])
        var d = KVMVCPU.GuestDebug()
        d.softwareBreakpoints = true
        try m.setGuestDebug(0, d)
        try m.resume()
        #expect(q.next() == .stopped(cpu: 0, reason: .softwareBreakpoint(Self.compute)))
        try m.pause()
        #expect(try m.registers(0).rip == Self.compute)
        // Put the byte back, turn debugging off, and the guest ends normally (42 untouched).
        try m.memory.write(original, at: Self.compute)
        m.setSoftwareBreakpoints([])
        try m.setGuestDebug(0, KVMVCPU.GuestDebug())
        try m.resume()
        #expect(m.wait() == .debugExit(42))
    }

    /// The linear address of debugme's `rounds` (written 1, 2, 3 before compute runs), from nm.
    static func symbol(_ name: String) throws -> UInt64 {
        let (_, nm) = Support.run("/usr/bin/nm", [try Support.guest("debugme")])
        let line = nm.split(separator: "\n").first { $0.hasSuffix(" \(name)") }
        return try #require(line.flatMap { UInt64($0.prefix(16), radix: 16) }, "\(name) missing from debugme: \(nm)")
    }

    /// A write watchpoint through a read-only page, on any host: each write to the watched variable
    /// stops the vCPU after the writing instruction (memory already holds the new value, RIP is past
    /// it); writes elsewhere on the page complete without a stop and are counted.
    @Test func writeWatchStopsAfterEachWrite() throws {
        let (m, q) = try boot()
        #expect(m.supportsWriteWatches, "KVM_CAP_READONLY_MEM is missing on this host")
        let rounds = try Self.symbol("rounds"), progress = try Self.symbol("progress")
        #expect(rounds >> 12 == progress >> 12, "progress no longer shares rounds' page: the silent-write count below needs it")
        let pa = try #require(try m.translate(0, rounds))
        try m.setWriteWatches([.init(address: rounds, ranges: [pa..<(pa + 4)])])
        let initial = m.ramSlots.layout
        #expect(initial.contains { $0.readOnly && $0.guestAddress == pa & ~0xfff && $0.size == 0x1000 }, "\(initial)")
        for value in 1...3 {
            try m.resume()
            #expect(q.next() == .stopped(cpu: 0, reason: .writeWatch(rounds)))
            try m.pause()
            #expect(try m.memory.read(Int32.self, at: pa) == Int32(value))
            let rip = try m.registers(0).rip
            let code = try m.memory.readBytes(at: rip - 6, count: 2)
            #expect(code == [0x89, 0x05], "RIP is just past the `mov %eax, rounds(%rip)`: 0x\(String(rip, radix: 16))")
        }
        // progress = 1 and 2 land on the same read-only page: performed, no stop.
        try m.resume()
        #expect(m.wait() == .debugExit(42))
        #expect(m.writeWatchHits == 3)
        #expect(m.unwatchedWritesOnWatchedPages >= 2)
    }

    /// A watch across a page boundary, hit by one store that straddles it: KVM splits the store into one
    /// exit per page, and both parts must land in memory before the vCPU stops (the second part exits
    /// while the first one's instruction is being completed).
    @Test func aStoreAcrossTwoWatchedPagesLandsWhole() throws {
        let (m, q) = try boot()
        let at = try Self.symbol("straddle") + 4094
        let low = try #require(try m.translate(0, at)), high = try #require(try m.translate(0, at + 2))
        try m.setWriteWatches([.init(address: at, ranges: [low..<(low + 2), high..<(high + 2)])])
        #expect(m.ramSlots.readOnlyPages.count == 2)
        try m.resume()
        #expect(q.next() == .stopped(cpu: 0, reason: .writeWatch(at)))
        try m.pause()
        #expect(try m.memory.readBytes(at: low, count: 2) + m.memory.readBytes(at: high, count: 2) == [0x44, 0x33, 0x22, 0x11])
        #expect(m.writeWatchHits == 2, "one exit per page, both inside the watch")
        let rip = try m.registers(0).rip
        #expect(try m.memory.readBytes(at: rip - 10, count: 2) == [0xc7, 0x05], "RIP is past the movl: 0x\(String(rip, radix: 16))")
        try m.setWriteWatches([])
        try m.resume()
        #expect(m.wait() == .debugExit(42))
    }

    /// Removing the watchpoints gives RAM its single slot back; two watchpoints on one page and one
    /// across a page boundary make the pages read-only once each; a watch outside RAM is refused.
    @Test func watchLayoutIsRestoredAndNonRAMRefused() throws {
        let (m, q) = try boot()
        let before = m.ramSlots.layout
        #expect(before.count == 1 && !before[0].readOnly)
        try m.setWriteWatches([
            .init(address: 1, ranges: [0x105040..<0x105044]),
            .init(address: 2, ranges: [0x105044..<0x105048]),
            .init(address: 3, ranges: [0x106ffe..<0x107000, 0x107000..<0x107002]),
        ])
        #expect(m.ramSlots.readOnlyPages == [0x105000, 0x106000, 0x107000])
        #expect(m.ramSlots.layout.filter(\.readOnly).map { $0.guestAddress..<$0.end } == [0x105000..<0x108000])
        #expect(throws: RAMSlotError.notRAM(page: 0xfec00000)) {
            try m.setWriteWatches([.init(address: 4, ranges: [0xfec00000..<0xfec00004])])
        }
        #expect(m.ramSlots.readOnlyPages.count == 3, "a refused change keeps the watchpoints")
        try m.setWriteWatches([])
        #expect(m.ramSlots.layout == before)
        try m.resume()
        #expect(m.wait() == .debugExit(42))
        #expect(m.writeWatchHits == 0)
        _ = q
    }
}

extension String {
    func leftPad(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
