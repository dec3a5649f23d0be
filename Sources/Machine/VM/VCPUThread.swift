import CKVM
import Dispatch
import Glibc
import KVM
import Synchronization

/// The full architectural state of one vCPU, as KVM exposes it.
public struct VCPUState: Sendable {
    public var registers: kvm_regs
    public var specialRegisters: kvm_sregs
    public var fpu: kvm_fpu
    /// The MSRs in `VCPUState.msrIndices` KVM knows on this host.
    public var msrs: [UInt32: UInt64]
    public var lapic: kvm_lapic_state
    public var events: kvm_vcpu_events
    public var mpState: KVMVCPU.MPState?

    /// SYSENTER, SYSCALL/STAR family, FS/GS bases, TSC, APIC base, PAT, MISC_ENABLE, TSC deadline,
    /// MTRR default type: what a guest's kernel sets and a restore needs (EFER is in the special registers).
    public static let msrIndices: [UInt32] = [
        0x174, 0x175, 0x176, 0xc000_0081, 0xc000_0082, 0xc000_0083, 0xc000_0084,
        0xc000_0100, 0xc000_0101, 0xc000_0102, 0x10, 0x1b, 0x277, 0x1a0, 0x6e0, 0x2ff,
    ]

    static func read(_ vcpu: KVMVCPU) throws -> VCPUState {
        var msrs: [UInt32: UInt64] = [:]
        for i in msrIndices { if let v = try? vcpu.getMSRs([i])[i] { msrs[i] = v } }
        return VCPUState(registers: try vcpu.getRegisters(), specialRegisters: try vcpu.getSpecialRegisters(),
                         fpu: try vcpu.getFPU(), msrs: msrs, lapic: try vcpu.getLAPIC(), events: try vcpu.getEvents(),
                         mpState: try vcpu.getMPState())
    }

    /// Writes the state in the order KVM needs (special registers before the registers, events last).
    func write(_ vcpu: KVMVCPU) throws {
        try vcpu.setSpecialRegisters(specialRegisters)
        try vcpu.setRegisters(registers)
        try vcpu.setFPU(fpu)
        let tsc = msrs[0x10]
        // The TSC goes first: KVM derives the TSC-deadline from it.
        if let tsc { try vcpu.setMSRs([(0x10, tsc)]) }
        for (i, v) in msrs.sorted(by: { $0.key < $1.key }) where i != 0x10 { _ = try vcpu.setMSRs([(i, v)]) }
        try vcpu.setLAPIC(lapic)
        if let mp = mpState { try vcpu.setMPState(mp) }
        var e = events
        // Only what KVM_SET_VCPU_EVENTS validates as settable together.
        e.flags &= UInt32(KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW)
        try vcpu.setEvents(e)
    }
}

/// What other threads can ask of a vCPU thread (its mailbox), in the spirit of Firecracker's
/// `VcpuEvent` and crosvm's `VcpuControl`. State commands are answered between instructions.
enum VCPUCommand: Sendable {
    /// Stop at the next instruction boundary and wait for commands.
    case pause
    /// Continue from where it stopped.
    case resume
    /// Run one instruction, then pause and report `DebugStop.Reason.step`.
    case step
    case getState
    case setState(VCPUState)
    case getRegisters
    case setRegisters(kvm_regs)
    case setGuestDebug(KVMVCPU.GuestDebug)
    case translate(UInt64)
    /// Whether the vCPU sits halted with interrupts off (or was never started): the power-off test.
    case queryHalt
}

enum VCPUResponse: Sendable {
    case done
    case state(VCPUState)
    case registers(kvm_regs)
    case address(UInt64?)
    case halted(Bool)
}

/// The answer to one posted command; `wait()` blocks until the vCPU thread gave it.
final class VCPUReply: Sendable {
    private let result = Mutex<Result<VCPUResponse, LifecycleError>?>(nil)
    private let ready = DispatchSemaphore(value: 0)
    func complete(_ r: Result<VCPUResponse, LifecycleError>) {
        result.withLock { $0 = r }
        ready.signal()
    }
    func wait() -> Result<VCPUResponse, LifecycleError> {
        ready.wait()
        return result.withLock { $0! }
    }
}

/// One vCPU and the OS thread that runs it.
///
/// Threads and ownership: the vCPU thread owns `vcpu` and everything in `Local`; other threads only
/// `post` commands (the mailbox, behind one Mutex), `kick()` it (the kvm_run immediate_exit byte and a
/// signal) and read the atomics and the statistics. The thread runs under the vCPU seccomp filter from
/// just before its first KVM_RUN (`vcpuLoop`).
final class VCPUContext: @unchecked Sendable {
    let vcpu: KVMVCPU
    let statistics: VCPUStatistics?
    let exits = Atomic<UInt64>(0)
    private let thread = Mutex<pthread_t?>(nil)
    private let threadStarted = Atomic<Bool>(false)

    private struct Mailbox {
        var commands: [(VCPUCommand, VCPUReply)] = []
        /// The thread has left its loop: commands fail at once.
        var finished = false
    }
    private let mailbox = Mutex(Mailbox())
    /// Signalled after every post: a paused vCPU thread waits on it.
    private let wake = DispatchSemaphore(value: 0)

    /// Owned by the vCPU thread.
    struct Local {
        var paused = false
        var stepping = false
        /// The last exit was an I/O or MMIO access KVM completes on the next KVM_RUN.
        var accessPending = false
        /// A guest write hit a write watchpoint (its address): the vCPU stops before running on.
        var watchHit: UInt64?
        var debug = KVMVCPU.GuestDebug()
    }
    var local = Local()

    init(vcpu: KVMVCPU, statistics: VCPUStatistics?) {
        self.vcpu = vcpu
        self.statistics = statistics
    }

    /// Starts the OS thread running `body`. Returns false when the thread cannot be created.
    func start(name: String, paused: Bool, _ body: @escaping @Sendable () -> Void) -> Bool {
        local.paused = paused   // before the thread exists: it sees this
        guard let tid = OSThread.spawn(name: name, body) else { return false }
        thread.withLock { $0 = tid }
        threadStarted.store(true, ordering: .sequentiallyConsistent)
        return true
    }

    /// Makes a blocking KVM_RUN return (EINTR) soon: immediate_exit for the race where the thread is
    /// about to enter KVM_RUN, and a signal for when it is inside.
    func kick() {
        vcpu.setImmediateExit(true)
        if let t = thread.withLock({ $0 }) { pthread_kill(t, ckvm_kick_signal()) }
    }

    /// The machine is stopping: leave KVM_RUN or the paused wait.
    func wakeForStop() {
        kick()
        wake.signal()
    }

    func join() {
        guard threadStarted.load(ordering: .sequentiallyConsistent), let t = thread.withLock({ $0 }) else { return }
        pthread_join(t, nil)
    }

    /// Queues `command` for the vCPU thread and makes it look soon. Fails at once when the thread has
    /// ended or never started.
    func post(_ command: VCPUCommand) -> VCPUReply {
        let reply = VCPUReply()
        let accepted = mailbox.withLock { m -> Bool in
            guard !m.finished, threadStarted.load(ordering: .sequentiallyConsistent) else { return false }
            m.commands.append((command, reply))
            return true
        }
        guard accepted else {
            reply.complete(.failure(.vcpuStopped(Int(vcpu.id))))
            return reply
        }
        wake.signal()
        kick()
        return reply
    }

    /// On the vCPU thread: answers queued commands; while paused, waits for more. Returns when the vCPU
    /// should run (or the machine stops).
    func serviceMailbox(_ machine: Machine) {
        while true {
            let commands = mailbox.withLock { m in defer { m.commands.removeAll() }; return m.commands }
            for (command, reply) in commands { reply.complete(handle(command, machine)) }
            if machine.stopping.load(ordering: .sequentiallyConsistent) { return }
            if !local.paused { return }
            wake.wait()
        }
    }

    /// On the vCPU thread, when it leaves its loop: fails what is queued and refuses new commands.
    func finish() {
        let commands = mailbox.withLock { m in
            m.finished = true
            defer { m.commands.removeAll() }
            return m.commands
        }
        for (_, reply) in commands { reply.complete(.failure(.vcpuStopped(Int(vcpu.id)))) }
    }

    /// Completes an I/O or MMIO access in progress without running further guest instructions (KVM
    /// finishes it on KVM_RUN before looking at immediate_exit), so state reads see an instruction boundary.
    /// An instruction whose access KVM splits (a write across a page boundary into MMIO or a read-only
    /// page) exits once per part: each further part is dispatched like any access.
    func completePendingAccess(_ machine: Machine) {
        while local.accessPending {
            local.accessPending = false
            vcpu.setImmediateExit(true)
            let exit = try? vcpu.run()
            vcpu.setImmediateExit(false)
            if let exit { _ = machine.dispatchAccess(exit, self) }
        }
    }

    private func applyDebug() throws {
        var d = local.debug
        d.singleStep = local.stepping
        try vcpu.setGuestDebug(d)
    }

    private func handle(_ command: VCPUCommand, _ machine: Machine) -> Result<VCPUResponse, LifecycleError> {
        let id = Int(vcpu.id)
        func attempt(_ body: () throws -> VCPUResponse) -> Result<VCPUResponse, LifecycleError> {
            do { return .success(try body()) } catch { return .failure(.vcpu(id, "\(error)")) }
        }
        switch command {
        case .pause:
            completePendingAccess(machine)
            local.paused = true
            return .success(.done)
        case .resume:
            local.paused = false
            return .success(.done)
        case .step:
            completePendingAccess(machine)
            local.stepping = true
            local.paused = false
            return attempt { try applyDebug(); return .done }
        case .getState:
            completePendingAccess(machine)
            return attempt { .state(try VCPUState.read(vcpu)) }
        case .setState(let s):
            completePendingAccess(machine)
            return attempt { try s.write(vcpu); return .done }
        case .getRegisters:
            completePendingAccess(machine)
            return attempt { .registers(try vcpu.getRegisters()) }
        case .setRegisters(let r):
            completePendingAccess(machine)
            return attempt { try vcpu.setRegisters(r); return .done }
        case .setGuestDebug(let d):
            local.debug = d
            return attempt { try applyDebug(); return .done }
        case .translate(let linear):
            return attempt { .address(try vcpu.translate(linear)) }
        case .queryHalt:
            var halted = false
            if let state = try? vcpu.getMPState() {
                switch state {
                case .uninitialized, .initReceived: halted = true     // never started: cannot wake by itself
                case .halted: halted = ((try? vcpu.getRegisters())?.rflags ?? 0x200) & 0x200 == 0
                default: halted = false
                }
            }
            return .success(.halted(halted))
        }
    }

    /// On the vCPU thread: the vCPU stopped for the debugger. It pauses and the machine tells the stub.
    func debugStop(_ reason: DebugStop.Reason, _ machine: Machine) {
        if local.stepping {
            local.stepping = false
            try? applyDebug()
        }
        local.paused = true
        machine.reportDebugStop(.stopped(cpu: Int(vcpu.id), reason: reason))
    }

    /// On the vCPU thread after a KVM_EXIT_DEBUG: why the vCPU stopped.
    func debugReason(_ d: VMExit.DebugExit) -> DebugStop.Reason {
        if d.exception == 3 { return .softwareBreakpoint(d.pc) }
        if d.dr6 & (1 << 14) != 0 || local.stepping { return .step }
        for i in 0..<4 where d.dr6 & (1 << UInt64(i)) != 0 {
            let rw = (d.dr7 >> UInt64(16 + 4 * i)) & 3
            return rw == 0 ? .hardwareBreakpoint(i) : .watchpoint(i)
        }
        return .other(dr6: d.dr6)
    }
}

extension Machine {
    /// The vCPU thread's loop: answer the mailbox, KVM_RUN, dispatch the exit, repeat until the machine stops.
    func vcpuLoop(_ c: VCPUContext) {
        defer { c.finish() }
        let vcpu = c.vcpu
        if ckvm_unblock_signal(ckvm_kick_signal()) != 0 {
            requestStop(.hostError("cannot unblock the kick signal on vCPU \(vcpu.id)"))
            return
        }
        guard enterSeccomp(.vcpu, thread: "vcpu\(vcpu.id)") else { return }
        while true {
            c.serviceMailbox(self)
            if stopping.load(ordering: .sequentiallyConsistent) { break }
            if let hit = c.local.watchHit {
                c.local.watchHit = nil
                c.debugStop(.writeWatch(hit), self)
                continue
            }
            let exit: VMExit
            do { exit = try vcpu.run() } catch {
                requestStop(.hostError("\(error)"))
                break
            }
            c.exits.add(1, ordering: .relaxed)
            c.local.accessPending = false
            if dispatchAccess(exit, c) {
                // A watched write stops the vCPU after its instruction, so the debugger sees the new value.
                if c.local.watchHit != nil { c.completePendingAccess(self) }
                continue
            }
            switch exit {
            case .io, .mmio:
                break   // dispatchAccess
            case .interrupted:
                vcpu.setImmediateExit(false)
            case .halt:
                break   // only without an in-kernel irqchip; the monitor's halt query covers power-off
            case .shutdown:
                requestStop(.tripleFault(cpu: vcpu.id, registers: CPUSetup.registerDump(vcpu)))
            case .failEntry(let reason, _):
                requestStop(.entryFailure(cpu: vcpu.id, reason: reason, registers: CPUSetup.registerDump(vcpu)))
            case .internalError(let e):
                if e.suberror == VMExit.InternalError.emulationFailure {
                    if let at = debuggerBreakpoint(vcpu, e) { c.debugStop(.softwareBreakpoint(at), self); continue }
                    if let refusal = emulate(vcpu, e) {
                        requestStop(.internalError(cpu: vcpu.id, detail: refusal, registers: CPUSetup.registerDump(vcpu)))
                    }
                    continue
                }
                requestStop(.internalError(cpu: vcpu.id, detail: e.description, registers: CPUSetup.registerDump(vcpu)))
            case .systemEvent(let type):
                switch Int32(type) {
                case KVM_SYSTEM_EVENT_RESET: requestStop(.reboot)
                case KVM_SYSTEM_EVENT_SHUTDOWN: requestStop(.powerOff)
                default: requestStop(.internalError(cpu: vcpu.id, detail: "system event \(type) (guest crash)", registers: CPUSetup.registerDump(vcpu)))
                }
            case .debug(let d):
                c.debugStop(c.debugReason(d), self)
            case .unknown(let reason):
                vcpuLog.log(.warning, "unhandled KVM exit", "vCPU \(vcpu.id): unhandled KVM exit reason \(reason)")
                requestStop(.hostError("unhandled KVM exit reason \(reason) on vCPU \(vcpu.id)"))
            }
        }
    }

    /// On vCPU `c`'s thread: hands an I/O or MMIO exit to the buses and marks the access pending (KVM
    /// completes it on the next KVM_RUN). A write to RAM exits only when its page is read-only (a write
    /// watchpoint): it is performed here, and a hit is left in `c.local.watchHit`. Returns false for
    /// other exits.
    func dispatchAccess(_ exit: VMExit, _ c: VCPUContext) -> Bool {
        switch exit {
        case let .io(port, size, isWrite, count, data):
            c.local.accessPending = true
            var p = data
            for _ in 0..<max(count, 1) {
                if isWrite { pioBus.write(UInt64(port), UnsafeRawBufferPointer(start: p, count: size)) }
                else { pioBus.read(UInt64(port), UnsafeMutableRawBufferPointer(start: p, count: size)) }
                p += size
            }
            return true
        case let .mmio(address, size, isWrite, data):
            c.local.accessPending = true
            if isWrite, memory.contains(address, length: UInt64(size)) {
                if let hit = performWatchedPageWrite(address, UnsafeRawBufferPointer(start: data, count: size)),
                   c.local.watchHit == nil { c.local.watchHit = hit }
            } else if isWrite {
                mmioBus.write(address, UnsafeRawBufferPointer(start: data, count: size))
            } else {
                mmioBus.read(address, UnsafeMutableRawBufferPointer(start: data, count: size))
            }
            return true
        default:
            return false
        }
    }

    /// An int3 emulation failure at an address where the debugger placed one: its linear address (RIP
    /// stays on the int3, as gdb expects for a software breakpoint).
    func debuggerBreakpoint(_ vcpu: KVMVCPU, _ e: VMExit.InternalError) -> UInt64? {
        guard let r = try? vcpu.getRegisters(), let s = try? vcpu.getSpecialRegisters() else { return nil }
        let linear = s.cs.base &+ r.rip
        guard isDebuggerBreakpoint(linear), instructionBytes(vcpu, e).first == 0xcc else { return nil }
        return linear
    }

    /// The bytes at the guest's RIP: from KVM's report, else read through the guest's page tables.
    func instructionBytes(_ vcpu: KVMVCPU, _ e: VMExit.InternalError) -> [UInt8] {
        if !e.instructionBytes.isEmpty { return e.instructionBytes }
        guard let r = try? vcpu.getRegisters(), let s = try? vcpu.getSpecialRegisters() else { return [] }
        let linear = s.cs.base &+ r.rip
        let physical: UInt64?
        if s.cr0 & 0x8000_0000 != 0 { physical = try? vcpu.translate(linear) } else { physical = linear }
        guard let pa = physical else { return [] }
        var out: [UInt8] = []
        for i in 0..<15 {
            guard let b: UInt8 = try? memory.read(at: pa + UInt64(i)) else { break }
            out.append(b)
        }
        return out
    }

    /// An emulation failure (kvm-pvm cannot emulate int3, ldmxcsr, popcnt, ... in guest ring 0): minivisor's
    /// instruction emulator does what the CPU would have. Nil when it did; else the one-line detail of
    /// the refusal (instruction bytes and why) for the status-8 stop.
    func emulate(_ vcpu: KVMVCPU, _ e: VMExit.InternalError) -> String? {
        switch InstructionEmulator.handleEmulationFailure(cpu: vcpu, memory: memory, reportedBytes: e.instructionBytes,
                                                          statistics: emulatedInstructions) {
        case .emulated(let kind):
            vcpuLog.log(.debug, "emulated \(kind.rawValue)", "vCPU \(vcpu.id): emulated \(kind.rawValue) (the host's KVM cannot)")
            return nil
        case let .refused(bytes, why):
            let shown = bytes.isEmpty ? "unavailable" : bytes.map { String(format2: $0) }.joined(separator: " ")
            return "emulation failure, instruction bytes \(shown): \(why)"
        }
    }
}

extension String {
    init(format2 b: UInt8) {
        let s = String(b, radix: 16)
        self = s.count == 1 ? "0" + s : s
    }
}

/// Feeds this process's standard input to the UART from a background thread, which runs under the
/// device seccomp filter (`beforeLoop` installs it). With `escapes` (a terminal on stdin), the
/// `ConsoleEscape` keys are taken out: Ctrl-A x calls `quit`, Ctrl-A h prints the list on stderr.
final class StdinReader: @unchecked Sendable {
    private let running = Atomic<Bool>(true)
    init(serial: Serial16550, escapes: Bool, quit: @escaping @Sendable () -> Void,
         beforeLoop: @escaping @Sendable () -> Void) {
        OSThread.detached(name: "serial-stdin") { [self] in
            beforeLoop()
            var escape = escapes ? ConsoleEscape() : nil
            var buf = [UInt8](repeating: 0, count: 16)
            while running.load(ordering: .relaxed) {
                var pfd = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 100) >= 0 else { continue }
                guard pfd.revents & Int16(POLLIN) != 0 else {
                    if pfd.revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 { return }
                    continue
                }
                let space = serial.receiveSpace
                if space == 0 { usleep(1000); continue }
                let n = buf.withUnsafeMutableBytes { read(0, $0.baseAddress!, min(space, 16)) }
                if n <= 0 { return }
                guard escape != nil else { serial.receive(Array(buf[0..<n])); continue }
                let (guest, actions) = escape!.filter(buf[0..<n])
                if !guest.isEmpty { serial.receive(guest) }
                for a in actions {
                    switch a {
                    case .quit: quit(); return
                    case .help: _ = ConsoleEscape.help.utf8CString.withUnsafeBytes { write(2, $0.baseAddress, $0.count - 1) }
                    }
                }
            }
        }
    }
    func stop() { running.store(false, ordering: .relaxed) }
}

/// Dedicated OS threads (vCPUs and device workers never run on Swift concurrency's cooperative pool).
public enum OSThread {
    /// Creates a joinable thread running `body`; nil when the OS refuses.
    public static func spawn(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
        final class Box { let body: @Sendable () -> Void; let name: String; init(_ b: @escaping @Sendable () -> Void, _ n: String) { body = b; name = n } }
        let box = Unmanaged.passRetained(Box(body, name))
        var tid = pthread_t()
        let r = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            ckvm_set_thread_name(b.name)
            b.body()
            return nil
        }, box.toOpaque())
        guard r == 0 else { box.release(); return nil }
        return tid
    }

    /// A thread nobody joins.
    public static func detached(name: String, _ body: @escaping @Sendable () -> Void) {
        if let t = spawn(name: name, body) { pthread_detach(t) }
    }

    /// Waits for `thread` to end; called on `thread` itself (a service stopping itself), detaches it
    /// instead, since a thread cannot join itself.
    public static func join(_ thread: pthread_t) {
        if pthread_equal(thread, pthread_self()) != 0 { pthread_detach(thread) } else { pthread_join(thread, nil) }
    }
}
