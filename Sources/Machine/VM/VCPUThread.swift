import CKVM
import Glibc
import KVM
import Synchronization

/// One vCPU and the OS thread that runs it. The thread owns `vcpu`; other threads only call `kick()`
/// and `queryHalt(_:)`, which touch atomics, the kvm_run immediate_exit byte and send a signal.
/// The thread runs under the vCPU seccomp filter from just before its first KVM_RUN (`vcpuLoop`).
final class VCPUContext: @unchecked Sendable {
    let vcpu: KVMVCPU
    let exits = Atomic<UInt64>(0)
    private let thread = Mutex<pthread_t?>(nil)
    private let threadStarted = Atomic<Bool>(false)
    // Halt query protocol: the monitor bumps `haltQuery`; the vCPU thread answers at its next exit by
    // storing `haltedWithIFClear` and then `haltAnswered` = the query generation.
    private let haltQuery = Atomic<UInt64>(0)
    private let haltAnswered = Atomic<UInt64>(0)
    private let haltedWithIFClear = Atomic<Bool>(false)

    init(vcpu: KVMVCPU) { self.vcpu = vcpu }

    /// Starts the OS thread running `body`. Returns false when the thread cannot be created.
    func start(name: String, _ body: @escaping @Sendable () -> Void) -> Bool {
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

    func join() {
        guard threadStarted.load(ordering: .sequentiallyConsistent), let t = thread.withLock({ $0 }) else { return }
        pthread_join(t, nil)
    }

    func queryHalt(_ generation: UInt64) {
        haltQuery.store(generation, ordering: .sequentiallyConsistent)
        kick()
    }

    /// The answer for `generation`, or nil when the vCPU has not answered it yet.
    func haltAnswer(for generation: UInt64) -> Bool? {
        guard haltAnswered.load(ordering: .sequentiallyConsistent) == generation else { return nil }
        return haltedWithIFClear.load(ordering: .sequentiallyConsistent)
    }

    /// Called on the vCPU thread after KVM_RUN returned EINTR.
    func answerHaltQuery() {
        let q = haltQuery.load(ordering: .sequentiallyConsistent)
        guard q != haltAnswered.load(ordering: .sequentiallyConsistent) else { return }
        var halted = false
        if let state = try? vcpu.getMPState() {
            switch state {
            case .uninitialized, .initReceived: halted = true     // never started: cannot wake by itself
            case .halted: halted = ((try? vcpu.getRegisters())?.rflags ?? 0x200) & 0x200 == 0
            default: halted = false
            }
        }
        haltedWithIFClear.store(halted, ordering: .sequentiallyConsistent)
        haltAnswered.store(q, ordering: .sequentiallyConsistent)
    }
}

extension Machine {
    /// The vCPU thread's loop: KVM_RUN, dispatch the exit, repeat until the machine stops.
    func vcpuLoop(_ c: VCPUContext) {
        let vcpu = c.vcpu
        if ckvm_unblock_signal(ckvm_kick_signal()) != 0 {
            requestStop(.hostError("cannot unblock the kick signal on vCPU \(vcpu.id)"))
            return
        }
        guard enterSeccomp(.vcpu, thread: "vcpu\(vcpu.id)") else { return }
        while !stopping.load(ordering: .sequentiallyConsistent) {
            let exit: VMExit
            do { exit = try vcpu.run() } catch {
                requestStop(.hostError("\(error)"))
                break
            }
            c.exits.add(1, ordering: .relaxed)
            switch exit {
            case let .io(port, size, isWrite, count, data):
                var p = data
                for _ in 0..<max(count, 1) {
                    if isWrite { pioBus.write(UInt64(port), UnsafeRawBufferPointer(start: p, count: size)) }
                    else { pioBus.read(UInt64(port), UnsafeMutableRawBufferPointer(start: p, count: size)) }
                    p += size
                }
            case let .mmio(address, size, isWrite, data):
                if isWrite { mmioBus.write(address, UnsafeRawBufferPointer(start: data, count: size)) }
                else { mmioBus.read(address, UnsafeMutableRawBufferPointer(start: data, count: size)) }
            case .interrupted:
                vcpu.setImmediateExit(false)
                c.answerHaltQuery()
            case .halt:
                break   // only without an in-kernel irqchip; the monitor's halt query covers power-off
            case .shutdown:
                requestStop(.tripleFault(cpu: vcpu.id, registers: CPUSetup.registerDump(vcpu)))
            case .failEntry(let reason, _):
                requestStop(.entryFailure(cpu: vcpu.id, reason: reason, registers: CPUSetup.registerDump(vcpu)))
            case .internalError(let e):
                if e.suberror == VMExit.InternalError.emulationFailure && recoverBreakpoint(vcpu, e) { continue }
                requestStop(.internalError(cpu: vcpu.id, detail: describeFailure(vcpu, e), registers: CPUSetup.registerDump(vcpu)))
            case .systemEvent(let type):
                switch Int32(type) {
                case KVM_SYSTEM_EVENT_RESET: requestStop(.reboot)
                case KVM_SYSTEM_EVENT_SHUTDOWN: requestStop(.powerOff)
                default: requestStop(.internalError(cpu: vcpu.id, detail: "system event \(type) (guest crash)", registers: CPUSetup.registerDump(vcpu)))
                }
            case .debug:
                break
            case .unknown(let reason):
                vcpuLog.log(.warning, "unhandled KVM exit", "vCPU \(vcpu.id): unhandled KVM exit reason \(reason)")
                requestStop(.hostError("unhandled KVM exit reason \(reason) on vCPU \(vcpu.id)"))
            }
        }
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

    /// kvm-pvm cannot emulate int3 in ring 0; it stops the vCPU with an emulation failure. Do what the
    /// CPU would have done: step over the int3 and deliver #BP (vector 3) to the guest.
    func recoverBreakpoint(_ vcpu: KVMVCPU, _ e: VMExit.InternalError) -> Bool {
        let bytes = instructionBytes(vcpu, e)
        guard bytes.first == 0xcc, var regs = try? vcpu.getRegisters() else { return false }
        regs.rip &+= 1
        do {
            try vcpu.setRegisters(regs)
            try vcpu.injectException(3)
        } catch { return false }
        int3Recoveries.add(1, ordering: .relaxed)
        vcpuLog.log(.debug, "int3 recovery", "vCPU \(vcpu.id): int3 emulation failure at 0x\(String(regs.rip &- 1, radix: 16)) delivered as #BP")
        return true
    }

    func describeFailure(_ vcpu: KVMVCPU, _ e: VMExit.InternalError) -> String {
        guard e.suberror == VMExit.InternalError.emulationFailure else { return e.description }
        let bytes = instructionBytes(vcpu, e)
        let shown = bytes.isEmpty ? "unavailable" : bytes.map { String(format2: $0) }.joined(separator: " ")
        return "emulation failure, instruction bytes \(shown) (this host's KVM cannot emulate this instruction in guest ring 0)"
    }
}

extension String {
    init(format2 b: UInt8) {
        let s = String(b, radix: 16)
        self = s.count == 1 ? "0" + s : s
    }
}

/// Feeds this process's standard input to the UART from a background thread, which runs under the
/// device seccomp filter (`beforeLoop` installs it).
final class StdinReader: @unchecked Sendable {
    private let running = Atomic<Bool>(true)
    init(serial: Serial16550, beforeLoop: @escaping @Sendable () -> Void) {
        OSThread.detached(name: "serial-stdin") { [self] in
            beforeLoop()
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
                serial.receive(Array(buf[0..<n]))
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
}
