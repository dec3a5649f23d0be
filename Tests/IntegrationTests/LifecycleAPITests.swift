import Glibc
import Minivisor
import Testing

/// The VM lifecycle through the library API: pause a running guest, read and change its state, resume
/// it and observe the change; the monitor's halt detection costs no exits while the guest idles.
@Suite("VM lifecycle API (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct LifecycleAPITests {
    static func configuration(_ capture: SerialCapture? = nil, timeout: Duration = .seconds(60)) -> MachineConfiguration {
        var c = MachineConfiguration()
        c.memoryBytes = 16 << 20
        c.timeout = timeout
        if let capture { c.serialOutput = .callback { capture.append($0) } } else { c.serialOutput = .none }
        return c
    }

    /// Real mode: spin while AX is 0, then write BL to the debug-exit port.
    static let waitForAX: [UInt8] = [
        0x31, 0xc0,         // xor ax, ax
        0x31, 0xdb,         // xor bx, bx
        0x85, 0xc0,         // spin: test ax, ax
        0x74, 0xfc,         //       jz spin
        0x88, 0xd8,         // mov al, bl
        0xe6, 0xf4,         // out 0xf4, al
        0xeb, 0xfe,         // jmp $
    ]

    @Test func pauseChangeARegisterResume() throws {
        let vm = try VirtualMachine(image: .realModeBlob(Self.waitForAX, loadAddress: 0x7c00), configuration: Self.configuration())
        #expect(vm.runState == .created)
        try vm.start()
        #expect(vm.runState == .running)
        // Pause until the guest is inside its spin loop (IP 4 or 6 from CS base 0x7c00): right after
        // start() it may not have run its first instruction yet.
        var state: VCPUState
        var attempts = 0
        repeat {
            if attempts > 0 { try vm.resume(); usleep(1000) }
            try vm.pause()
            #expect(vm.runState == .paused)
            state = try vm.vcpuState(0)
            attempts += 1
        } while ![4, 6].contains(state.registers.rip) && attempts < 1000
        #expect([4, 6].contains(state.registers.rip), "rip \(state.registers.rip)")
        #expect(state.registers.rax & 0xffff == 0)
        #expect(state.specialRegisters.cs.base == 0x7c00)
        #expect(state.mpState == .runnable)
        state.registers.rax = 1
        state.registers.rbx = 42
        try vm.setVCPUState(0, state)
        #expect(try vm.vcpuState(0).registers.rbx == 42)
        try vm.resume()
        #expect(vm.runState == .running || vm.runState == .stopped)
        #expect(vm.wait() == .debugExit(42))
        #expect(vm.runState == .stopped)
        #expect(throws: LifecycleError.self) { try vm.pause() }
    }

    @Test func stateNeedsAPausedVM() throws {
        let vm = try VirtualMachine(image: .realModeBlob(Self.waitForAX, loadAddress: 0x7c00), configuration: Self.configuration())
        #expect(throws: LifecycleError.wrongState(operation: "read the vCPU state of", state: .created)) { try vm.vcpuState(0) }
        try vm.start()
        #expect(throws: LifecycleError.self) { try vm.vcpuState(0) }
        try vm.pause()
        #expect(throws: LifecycleError.noSuchVCPU(1, count: 1)) { try vm.vcpuState(1) }
        vm.stop(.debugExit(1))
        #expect(vm.wait() == .debugExit(1))
    }

    @Test func startPausedStopsBeforeTheFirstInstruction() throws {
        let vm = try VirtualMachine(image: .realModeBlob(Self.waitForAX, loadAddress: 0x7c00), configuration: Self.configuration())
        try vm.start(paused: true)
        #expect(vm.runState == .paused)
        var state = try vm.vcpuState(0)
        #expect(state.registers.rip == 0)
        state.registers.rip = 4     // skip the two xors: AX and BX keep what we set
        state.registers.rax = 7
        state.registers.rbx = 9
        try vm.setVCPUState(0, state)
        try vm.resume()
        #expect(vm.wait() == .debugExit(9))
    }

    /// Real mode: write "0123456789" to COM1 a hundred times (each byte one exit), then exit 0x2a.
    static let serialDigits: [UInt8] = [
        0xba, 0xf8, 0x03,   // mov dx, 0x3f8
        0xb9, 0x64, 0x00,   // mov cx, 100
        0xb0, 0x30,         // outer: mov al, '0'
        0xee,               // inner: out dx, al
        0xfe, 0xc0,         //        inc al
        0x3c, 0x3a,         //        cmp al, '9' + 1
        0x75, 0xf9,         //        jne inner
        0xe2, 0xf5,         //        loop outer
        0xb0, 0x2a,         // mov al, 42
        0xe6, 0xf4,         // out 0xf4, al
        0xeb, 0xfe,         // jmp $
    ]

    /// Pausing lands on instruction boundaries: an OUT whose exit was being handled completes before
    /// the state is read, so writing the state back and resuming neither repeats nor loses a byte.
    @Test func pauseAndResumeAreExact() throws {
        let capture = SerialCapture()
        let vm = try VirtualMachine(image: .realModeBlob(Self.serialDigits, loadAddress: 0x7c00), configuration: Self.configuration(capture))
        try vm.start()
        var rounds = 0
        while vm.runState != .stopped && rounds < 200 {
            do {
                try vm.pause()
                let s = try vm.vcpuState(0)
                try vm.setVCPUState(0, s)
                try vm.resume()
            } catch LifecycleError.wrongState(_, .stopped) {
                break
            }
            rounds += 1
        }
        #expect(vm.wait() == .debugExit(42))
        #expect(rounds > 0)
        #expect(capture.text == String(repeating: "0123456789", count: 100))
    }

    /// An idle guest (halted with interrupts on, nothing to wake it) costs no exits: the monitor reads
    /// KVM's statistics and asks the vCPU at most once. (The 50 ms halt query used to kick it 20 times a second.)
    @Test func idleGuestIsNotKicked() throws {
        let vm = try VirtualMachine(image: .realModeBlob([0xfb, 0xf4, 0xeb, 0xfd], loadAddress: 0x7c00),   // sti; hlt; jmp
                                    configuration: Self.configuration(timeout: .seconds(1)))
        #expect(vm.run() == .timeout)
        #expect(vm.machine.haltQueryCount <= 1, "halt queries: \(vm.machine.haltQueryCount)")
        #expect(vm.machine.exitCount <= 2, "exits: \(vm.machine.exitCount)")
    }
}
