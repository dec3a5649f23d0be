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
}

extension String {
    func leftPad(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
