import CKVM
import Dispatch
import Glibc
import KVM
import Logging
import Synchronization

/// Where a VM is in its life. `created` -> (`boot`) -> `start` -> `running` <-> `paused` -> `stopped`.
public enum RunState: String, Sendable, Equatable {
    /// Built (and maybe booted); no vCPU has run yet.
    case created
    /// vCPU threads run the guest.
    case running
    /// Every vCPU is stopped at an instruction boundary; its state can be read and written.
    case paused
    /// The VM ended (see `Machine.stopReason`); it cannot run again.
    case stopped
}

/// A request the VM's state does not allow, or a vCPU that could not do what it was asked.
public enum LifecycleError: Error, Equatable, CustomStringConvertible, Sendable {
    case notBooted
    case alreadyBooted
    case wrongState(operation: String, state: RunState)
    case noSuchVCPU(Int, count: Int)
    case vcpuStopped(Int)
    case vcpu(Int, String)

    public var description: String {
        switch self {
        case .notBooted: return "the machine has no image: call boot(_:) before start()"
        case .alreadyBooted: return "the machine is booted already: build a new Machine for another image"
        case let .wrongState(op, state): return "cannot \(op) a VM that is \(state.rawValue): check runState first"
        case let .noSuchVCPU(i, n): return "there is no vCPU \(i): this VM has vCPUs 0-\(n - 1)"
        case .vcpuStopped(let i): return "vCPU \(i) has stopped (the VM ended): its state is gone"
        case let .vcpu(i, what): return "vCPU \(i): \(what)"
        }
    }
}

/// A virtual machine: KVM VM, guest RAM, buses with the legacy devices and PCI, and one OS thread per
/// vCPU. Build it (`init(configuration:)`: memory, irqchip, vCPUs, devices; higher layers add the
/// vGPU), `boot(_:)` an image through a `BootProtocol`, then `run()` (= `start()` + `wait()`) until the
/// guest ends. While it runs, `pause()`, `resume()`, `vcpuState(_:)` and `setVCPUState(_:_:)` work from
/// any thread; the debugger (`GDBStub`) uses the same per-vCPU command mailbox.
///
/// Threads and ownership:
/// - the thread that builds and boots the machine owns the vCPUs until `start()`;
/// - the thread that calls `wait()` (or `run()`; the monitor) waits on events (a stop, a pause or
///   resume, the timeout) and, every `haltPollInterval`, reads the vCPUs' KVM statistics (no exits):
///   only when every vCPU is blocked in the kernel and has not exited since the last look does it ask
///   them (one kick each) whether they sit halted with interrupts off (a power-off). It joins the vCPU
///   threads. With `seccomp == .vmThreadsAndMonitor` (the CLI) it runs under the monitor filter;
/// - each vCPU thread owns its `KVMVCPU` from `start()` on: every vCPU ioctl happens there, other threads
///   post commands to its mailbox (`VCPUContext`) and wait for the answer; it runs under the vCPU filter;
/// - `pause()`, `resume()`, `step`, state access and `requestStop` may be called from any thread except
///   a vCPU thread (they wait for the vCPUs' answers); `requestStop` from any thread, devices included;
/// - the serial stdin reader (with `serialInputFromStdin`) runs under the device seccomp filter;
/// - devices are shared by all vCPU threads and guard their own state (see `BusDevice`);
/// - devices get the machine as their `DeviceContext` (bus registration through the PCI bus, which maps
///   BARs; memory slots, ioeventfds, irqfds, IRQ lines, MSIs, guest memory) from any thread; resources
///   come from `resources`, whose own lock is never held while calling out;
/// - write watchpoints: `setWriteWatches` (VM not running) makes pages read-only through `ramSlots`
///   (RAM's memory slots, its own lock) and stores the watch list in `State`; a vCPU thread whose guest
///   wrote to such a page performs the write and looks the list up (`performWatchedPageWrite`);
/// - the machine's own state (run state, boot plan, stop reason, pausable devices, debug handler, write
///   watchpoints) is one `State` behind one Mutex, never held while calling out.
public final class Machine: MachineControl, DeviceContext, @unchecked Sendable {
    public let configuration: MachineConfiguration
    public let kvm: KVMSystem
    public let vm: KVMVirtualMachine
    public let memory: GuestMemory
    public let pioBus: Bus
    public let mmioBus: Bus
    public let pciBus: PCIBus
    /// PCI device numbers, GSIs, PCI MMIO and port windows, KVM memory slots.
    public let resources: ResourceAllocator
    /// The KVM memory slots backing RAM (read-only pages for write watchpoints).
    public let ramSlots: RAMSlotLayout
    public let serial: Serial16550
    /// The i8042 keyboard controller (port 0x60/0x64, IRQ 1): `keyboardInput` types into the guest.
    public let keyboard: I8042
    public let logger: Logger
    /// Lines the guest can cause from vCPU exits (int3 recoveries, unhandled exits), rate-limited per kind.
    let vcpuLog: RateLimitedLog

    let vcpus: [VCPUContext]
    let stopping = Atomic<Bool>(false)
    /// Signalled on every event the monitor waits for (stop, pause, resume).
    private let events = DispatchSemaphore(value: 0)
    /// Guest writes to write-watched pages: those that hit a watched range and those that did not.
    let watchHits = Atomic<UInt64>(0)
    let watchedPageWrites = Atomic<UInt64>(0)
    /// Instructions the host's KVM could not emulate that minivisor's emulator completed, per kind.
    public let emulatedInstructions = EmulationStatistics()
    /// Halt queries sent (each is one forced exit per vCPU).
    let haltQueries = Atomic<UInt64>(0)

    private struct State {
        var runState: RunState = .created
        var bootPlan: BootPlan?
        var hasPIT = false
        var stopReason: ExitReason?
        var pausable: [any PausableDevice] = []
        var debugHandler: (@Sendable (DebugStop) -> Void)?
        var stdinReader: StdinReader?
        var writeWatches: [WriteWatch] = []
    }
    private let state = Mutex(State())

    /// Builds the machine without an image: KVM VM, RAM, irqchip, vCPUs (CPUID, MSRs, FPU, LAPIC) and the
    /// legacy devices. Call `boot(_:)` next. Throws `KVMUnavailable`, `ConfigurationError`, `KVMError`.
    public init(configuration: MachineConfiguration, logger: Logger = Logger(label: "minivisor")) throws {
        self.configuration = configuration
        self.logger = logger
        vcpuLog = RateLimitedLog(logger: logger, source: "vCPUs")
        kvm = try KVMSystem(path: configuration.kvmDevicePath)
        let maxVCPUs = Int(max(kvm.extensionValue(KVM_CAP_MAX_VCPUS), kvm.extensionValue(KVM_CAP_NR_VCPUS), 1))
        try ConfigurationError.validate(configuration, maxVCPUs: min(maxVCPUs, 255))
        vm = try kvm.createVM()
        try vm.setIdentityMapAddress(MemoryLayout.identityMapAddress)
        try vm.setTSSAddress(MemoryLayout.tssAddress)
        try vm.createIRQChip()
        memory = try GuestMemory(bytes: configuration.memoryBytes)
        resources = ResourceAllocator()
        let ram = memory
        ramSlots = try RAMSlotLayout(regions: memory.regions, resources: resources,
                                     readOnlySupported: kvm.extensionValue(KVM_CAP_READONLY_MEM) > 0) { [vm] slot, piece in
            try vm.setUserMemoryRegion(slot: slot, guestPhysicalAddress: piece?.guestAddress ?? 0, size: piece?.size ?? 0,
                                       userAddress: piece.map { ram.hostBase + Int($0.hostOffset) }, readOnly: piece?.readOnly ?? false)
        }

        pioBus = Bus(name: "port", logger: logger)
        mmioBus = Bus(name: "mmio", logger: logger)
        pciBus = PCIBus(resources: resources, logger: logger)
        let vm = self.vm
        serial = try Serial16550(output: configuration.serialOutput) { level in try? vm.setIRQLine(4, level: level) }
        keyboard = I8042 { level in try? vm.setIRQLine(1, level: level) }

        let supported = try kvm.supportedCPUID()
        var contexts: [VCPUContext] = []
        for i in 0..<configuration.cpuCount {
            let vcpu = try vm.createVCPU(id: UInt32(i))
            let cpuid = CPUSetup.cpuid(supported: supported, apicID: UInt32(i), cpuCount: configuration.cpuCount,
                                       host: configuration.host)
            try CPUSetup.configure(vcpu, cpuid: cpuid)
            contexts.append(VCPUContext(vcpu: vcpu, statistics: try? vcpu.statistics()))
        }
        vcpus = contexts

        try pioBus.register(serial, base: 0x3f8, size: 8, name: "serial0")
        try pioBus.register(DebugExit(control: self), base: DebugExit.port, size: 1, name: "debug-exit")
        keyboard.attach(self)
        try pioBus.register(keyboard, base: I8042.base, size: 5, name: "i8042")
        try pioBus.register(PMDevice(control: self), base: PMDevice.eventBlock, size: PMDevice.size, name: "acpi-pm1")
        try pioBus.register(PVPanic(control: self), base: PVPanic.port, size: 1, name: "pvpanic")
        try pioBus.register(BootTimer(report: configuration.bootTimerReport), base: BootTimer.port, size: 1, name: "boot-timer")
        try pioBus.register(pciBus, base: PCIBus.configAddressPort, size: PCIBus.portRangeSize, name: "pci-conf1")
        pciBus.attachResetControl(ResetControl(control: self))
        try pioBus.register(FirmwareConfig(cpuCount: configuration.cpuCount, ramBytes: memory.size,
                                           files: FirmwareConfig.standardFiles(memory: memory)),
                            base: FirmwareConfig.selectorPort, size: FirmwareConfig.size, name: "fw_cfg")
        pciBus.attach(self)
    }

    /// Builds the machine and boots `image` (`init(configuration:)` then `boot(_:)`). Throws what
    /// those throw (`ImageError` for the image).
    public convenience init(configuration: MachineConfiguration, image: BootImage, logger: Logger = Logger(label: "minivisor")) throws {
        try self.init(configuration: configuration, logger: logger)
        try boot(image)
    }

    /// Loads `image` through the boot protocol that recognises it (`ImageLoader.protocols`), creates the
    /// PIT the protocol's guests expect (`MachineConfiguration.pit`) and sets the boot processor's entry
    /// state. Once, before `start()`; devices may still be added after it (the firmware tables are
    /// written by `start()`).
    public func boot(_ image: BootImage) throws {
        let current = state.withLock { ($0.runState, $0.bootPlan != nil) }
        guard current.0 == .created else { throw LifecycleError.wrongState(operation: "boot", state: current.0) }
        guard !current.1 else { throw LifecycleError.alreadyBooted }
        let plan = try ImageLoader.load(image, into: memory, cpuCount: configuration.cpuCount,
                                        cmdline: configuration.cmdline, modules: configuration.modules,
                                        initrd: configuration.initrd, host: configuration.host)
        // Multiboot kernels and Linux expect a PC, PIT included; minivisor's own guests use the LAPIC timer.
        let pit = configuration.pit == .on || (configuration.pit == .auto && (plan.kind == .multiboot || plan.kind == .linux))
        if pit { try vm.createPIT2() }
        try CPUSetup.setEntry(vcpus[0].vcpu, entry: plan.entry)
        state.withLock { s in
            s.bootPlan = plan
            s.hasPIT = pit
        }
    }

    /// How the booted image is entered; nil before `boot(_:)`.
    public var bootPlan: BootPlan? { state.withLock { $0.bootPlan } }

    /// Whether the in-kernel PIT was created (see `MachineConfiguration.pit`).
    public var hasPIT: Bool { state.withLock { $0.hasPIT } }

    /// The VM's run state.
    public var runState: RunState { state.withLock { $0.runState } }

    /// Why the VM ended; nil while it has not.
    public var stopReason: ExitReason? { state.withLock { $0.stopReason } }

    /// Number of vCPUs.
    public var vcpuCount: Int { vcpus.count }

    /// Where the ACPI tables' RSDP is (for a Linux loader's boot_params.acpi_rsdp_addr); nil before
    /// `boot(_:)` and for guests without ACPI tables. `start()` writes the tables.
    public var rsdpAddress: UInt64? { bootPlan?.rsdpAddress }

    /// What the firmware tables describe: CPUs, PCI interrupt routes and windows, as of now.
    public var acpiInventory: ACPIInventory {
        ACPIInventory(cpuCount: configuration.cpuCount, pciInterrupts: pciBus.interruptRoutes, pciMMIOWindow: resources.mmioWindow)
    }

    /// Writes the firmware tables from the finished device inventory at the places the boot plan
    /// reserved: the MP table (CPUs, IOAPIC, ISA and PCI interrupt routes, from `pciBus.interruptRoutes`)
    /// and the ACPI tables (`ACPITables`, from the same inventory). `start()` calls it just before the
    /// vCPUs first run; devices added later are not described.
    func writeFirmwareTables(plan: BootPlan) throws {
        let inventory = acpiInventory
        let routes = inventory.pciInterrupts.map { (device: $0.device, pin: $0.pin, ioapicPin: Int($0.gsi)) }
        try memory.write(bytes: BootStructures.mpTable(cpuCount: configuration.cpuCount, pciInterrupts: routes, at: plan.mpTableAddress),
                         at: plan.mpTableAddress)
        if let rsdp = plan.rsdpAddress {
            try memory.write(bytes: ACPITables(inventory: inventory, at: rsdp).bytes, at: rsdp)
        }
    }

    // MARK: DeviceContext

    public func setMemoryRegion(slot: UInt32, guestPhysicalAddress: UInt64, size: UInt64, userAddress: UnsafeMutableRawPointer?) throws {
        try vm.setUserMemoryRegion(slot: slot, guestPhysicalAddress: guestPhysicalAddress, size: size, userAddress: userAddress)
    }

    public func registerIOEventFD(_ fd: Int32, address: UInt64, length: UInt32, isPIO: Bool, deassign: Bool) throws {
        try vm.registerIOEventFD(fd, address: address, length: length, isPIO: isPIO, deassign: deassign)
    }

    public func registerIRQFD(_ fd: Int32, gsi: UInt32, deassign: Bool) throws {
        try vm.registerIRQFD(fd, gsi: gsi, deassign: deassign)
    }

    public func setIRQLine(_ gsi: UInt32, level: Bool) throws { try vm.setIRQLine(gsi, level: level) }

    public func signalMSI(address: UInt64, data: UInt32) throws { try vm.signalMSI(address: address, data: data) }

    @discardableResult
    public func enterDeviceSandbox(thread: String) -> Bool { enterSeccomp(.device, thread: thread) }

    /// Registers a device that `pause()` and `resume()` also stop and restart.
    public func addPausableDevice(_ device: any PausableDevice) {
        state.withLock { $0.pausable.append(device) }
    }

    /// Ends the VM; the first reason wins. Safe from any thread, including vCPU threads and devices.
    public func requestStop(_ reason: ExitReason) {
        let first = state.withLock { s -> Bool in
            guard s.stopReason == nil else { return false }
            s.stopReason = reason
            return true
        }
        guard first else { return }
        stopping.store(true, ordering: .sequentiallyConsistent)
        serial.cancelOutput()   // a vCPU waiting on a full pipe or terminal gives up
        for c in vcpus { c.wakeForStop() }
        events.signal()
    }

    // MARK: running

    /// Starts the vCPU threads (all of them stopped at the entry state when `paused`, as for a debugger
    /// that wants the first instruction) and returns. `wait()` then monitors the VM until it ends.
    public func start(paused: Bool = false) throws {
        // Outputs are opened here at the latest (VirtualMachine opens them earlier, checked against its
        // inputs), never lazily on a vCPU thread, whose seccomp filter does not allow creating files.
        try serial.openOutput()
        let previous = state.withLock { s -> (RunState, BootPlan?) in
            let r = (s.runState, s.bootPlan)
            if r.0 == .created && r.1 != nil { s.runState = paused ? .paused : .running }
            return r
        }
        guard previous.0 == .created else { throw LifecycleError.wrongState(operation: "start", state: previous.0) }
        guard let plan = previous.1 else { throw LifecycleError.notBooted }
        // The device inventory is final now: describe it to the guest before it first runs.
        do { try writeFirmwareTables(plan: plan) } catch {
            requestStop(.hostError("cannot write the firmware tables (MP, ACPI): \(error)"))
            return
        }
        guard ckvm_install_kick_handler(ckvm_kick_signal()) == 0 else {
            requestStop(.hostError("cannot install the vCPU kick signal handler"))
            return
        }
        if configuration.serialInputFromStdin {
            let reader = StdinReader(serial: serial, escapes: configuration.serialConsoleEscapes,
                                     quit: { [unowned self] in self.requestStop(.consoleQuit) },
                                     beforeLoop: { [unowned self] in self.enterSeccomp(.device, thread: "serial-stdin") })
            state.withLock { $0.stdinReader = reader }
        }
        // A timeout that has run out before the start (zero or negative) ends the VM before its first
        // instruction, not in a race between the monitor's first look at the clock and the guest's end.
        if let t = configuration.timeout, t <= .zero { requestStop(.timeout) }
        for (i, c) in vcpus.enumerated() {
            let ok = c.start(name: "vcpu\(i)", paused: paused) { [unowned self] in self.vcpuLoop(c) }
            if !ok { requestStop(.hostError("cannot create the thread for vCPU \(i)")) }
        }
    }

    /// Monitors the started VM until it ends (see the type's header), joins its threads and returns why
    /// it ended. Call once, after `start()`.
    public func wait() -> ExitReason {
        enterSeccomp(.monitor, thread: "monitor")
        let deadline = configuration.timeout.map { ContinuousClock.now + $0 }
        var probe = HaltProbe(count: vcpus.count)
        while !stopping.load(ordering: .sequentiallyConsistent) {
            // At most an hour per wait (a longer interval is waited in slices), so the nanoseconds below fit.
            var wait = min(configuration.haltPollInterval, .seconds(3600))
            if let d = deadline { wait = min(wait, max(.zero, d - ContinuousClock.now)) }
            let ns = wait.components.seconds * 1_000_000_000 + wait.components.attoseconds / 1_000_000_000
            if events.wait(timeout: .now() + .nanoseconds(Int(max(ns, 1_000_000)))) == .success { continue }
            if let d = deadline, ContinuousClock.now >= d { requestStop(.timeout); continue }
            guard runState == .running else { probe.reset(); continue }
            // Power-off detection: ask only when every vCPU is blocked in the kernel and quiet.
            let readings = vcpus.map { c -> HaltProbe.Reading? in
                guard let s = c.statistics, s.isUsable, let b = s.blocking, let e = s.exits else { return nil }
                return .init(blocking: b, exits: e)
            }
            guard probe.shouldAsk(readings) else { continue }
            haltQueries.add(1, ordering: .relaxed)
            let answers = vcpus.map { $0.post(.queryHalt) }.map { $0.wait() }
            let halted = answers.allSatisfy { if case .success(.halted(true)) = $0 { return true }; return false }
            if halted && runState == .running {
                logger.debug("all vCPUs halted with interrupts disabled: powering off")
                requestStop(.powerOff)
            } else {
                probe.answered()
            }
        }
        for c in vcpus { c.join() }
        state.withLock { s in
            s.runState = .stopped
            s.stdinReader?.stop()
        }
        // The VM's end: say how many guest-triggered lines the rate limits held back.
        vcpuLog.flush()
        pioBus.flushSuppressedLog()
        mmioBus.flushSuppressedLog()
        pciBus.flushSuppressedLog()
        let reason = stopReason ?? .hostError("stopped without a reason")
        let handler = state.withLock { $0.debugHandler }
        handler?(.ended(reason))
        return reason
    }

    /// Boots nothing new: starts the vCPUs and monitors the VM until it ends (`start()` + `wait()`).
    /// Returns why it ended. Can be called once.
    public func run() -> ExitReason {
        do { try start() } catch { return .hostError("\(error)") }
        return wait()
    }

    // MARK: pause, resume, state

    /// Stops every vCPU at an instruction boundary (an I/O or MMIO access in progress completes first)
    /// and the pausable devices; returns once all have stopped. Pausing a paused VM does nothing more.
    public func pause() throws {
        let previous = state.withLock { s -> RunState in
            let r = s.runState
            if r == .running { s.runState = .paused }
            return r
        }
        // Also when paused: after a debug stop one vCPU is paused and the others still run until this.
        guard previous == .running || previous == .paused else { throw LifecycleError.wrongState(operation: "pause", state: previous) }
        let results = vcpus.map { $0.post(.pause) }.map { $0.wait() }
        if previous == .running { for device in state.withLock({ $0.pausable }) { device.pause() } }
        events.signal()
        try Self.check(results, operation: "pause", vm: self)
    }

    /// Continues every vCPU exactly where it stopped. Resuming a running VM does nothing.
    public func resume() throws {
        let previous = state.withLock { s -> RunState in
            let r = s.runState
            if r == .paused { s.runState = .running }
            return r
        }
        switch previous {
        case .running: return
        case .paused: break
        default: throw LifecycleError.wrongState(operation: "resume", state: previous)
        }
        for device in state.withLock({ $0.pausable }) { device.resume() }
        let results = vcpus.map { $0.post(.resume) }.map { $0.wait() }
        events.signal()
        try Self.check(results, operation: "resume", vm: self)
    }

    /// The vCPUs' answers to a pause or resume: a vCPU that ended meanwhile (the guest stopped the VM
    /// while it was being paused) is the VM's state, `.stopped`, not a vCPU failure.
    private static func check(_ results: [Result<VCPUResponse, LifecycleError>], operation: String, vm: Machine) throws {
        for (i, r) in results.enumerated() {
            switch r {
            case .success: continue
            case .failure(.vcpuStopped): throw LifecycleError.wrongState(operation: operation, state: .stopped)
            case .failure(let e): throw LifecycleError.vcpu(i, "\(e)")
            }
        }
    }

    /// Sends `command` to vCPU `index` and waits for its answer. The VM must be paused for commands that
    /// read or write state (the vCPU answers them between instructions only when it is stopped).
    func command(_ index: Int, _ command: VCPUCommand) throws -> VCPUResponse {
        guard vcpus.indices.contains(index) else { throw LifecycleError.noSuchVCPU(index, count: vcpus.count) }
        switch vcpus[index].post(command).wait() {
        case .success(let r): return r
        // The guest ended the VM while this was asked: that is the VM's state, not a vCPU failure.
        case .failure(.vcpuStopped): throw LifecycleError.wrongState(operation: "send a command to", state: .stopped)
        case .failure(let e): throw e
        }
    }

    /// `command(index, cmd)` for the operations that need the VM paused (`op` names one in the error).
    @discardableResult
    private func commandWhilePaused(_ op: String, _ index: Int, _ cmd: VCPUCommand) throws -> VCPUResponse {
        let s = runState
        guard s == .paused else { throw LifecycleError.wrongState(operation: op, state: s) }
        return try command(index, cmd)
    }

    /// The full architectural state of paused vCPU `index`.
    public func vcpuState(_ index: Int) throws -> VCPUState {
        guard case .state(let s) = try commandWhilePaused("read the vCPU state of", index, .getState) else { throw LifecycleError.vcpu(index, "no state returned") }
        return s
    }

    /// Writes the state of paused vCPU `index`; it continues from there on `resume()`.
    public func setVCPUState(_ index: Int, _ newState: VCPUState) throws {
        try commandWhilePaused("write the vCPU state of", index, .setState(newState))
    }

    /// The general-purpose registers of paused vCPU `index` (a cheaper `vcpuState(_:).registers`).
    public func registers(_ index: Int) throws -> kvm_regs {
        guard case .registers(let r) = try commandWhilePaused("read the registers of", index, .getRegisters) else { throw LifecycleError.vcpu(index, "no registers returned") }
        return r
    }

    /// Writes the general-purpose registers of paused vCPU `index`.
    public func setRegisters(_ index: Int, _ regs: kvm_regs) throws {
        try commandWhilePaused("write the registers of", index, .setRegisters(regs))
    }

    /// Guest-virtual to guest-physical with vCPU `index`'s page tables (nil: not mapped). Paused VMs only.
    public func translate(_ index: Int, _ linear: UInt64) throws -> UInt64? {
        guard case .address(let a) = try commandWhilePaused("translate addresses of", index, .translate(linear)) else { return nil }
        return a
    }

    /// How many int3 emulation failures were turned into guest #BP exceptions.
    public var recoveredBreakpoints: UInt64 { emulatedInstructions.count(.int3) }

    /// Exits handled per vCPU (KVM_RUN returns, kicks included), summed.
    public var exitCount: UInt64 { vcpus.reduce(0) { $0 + $1.exits.load(ordering: .relaxed) } }

    /// Times the monitor asked the vCPUs whether they sit halted (one kick each).
    public var haltQueryCount: UInt64 { haltQueries.load(ordering: .relaxed) }

    // MARK: debugging (used by the gdb stub)

    /// Installs the handler told about debug stops (a vCPU stopped by a breakpoint, watchpoint or
    /// single-step; it is paused when the handler runs) and the VM's end. Called on vCPU threads and the
    /// monitor: it must only queue the event.
    public func setDebugHandler(_ handler: (@Sendable (DebugStop) -> Void)?) {
        state.withLock { $0.debugHandler = handler }
    }

    func reportDebugStop(_ stop: DebugStop) {
        let handler = state.withLock { s -> (@Sendable (DebugStop) -> Void)? in
            if s.runState == .running { s.runState = .paused }
            return s.debugHandler
        }
        events.signal()
        handler?(stop)
    }

    /// Whether a debugger has claimed int3 at `address` (then an int3 there stops the vCPU).
    func isDebuggerBreakpoint(_ address: UInt64) -> Bool {
        softwareBreakpoints.withLock { $0.contains(address) }
    }
    let softwareBreakpoints = Mutex<Set<UInt64>>([])

    /// Addresses (linear) where a debugger placed int3: an int3 there stops the vCPU and reports it
    /// instead of delivering #BP to the guest.
    public func setSoftwareBreakpoints(_ addresses: Set<UInt64>) {
        softwareBreakpoints.withLock { $0 = addresses }
    }

    /// Sets guest debugging (hardware breakpoints, watchpoints, #BP interception) on paused vCPU `index`.
    public func setGuestDebug(_ index: Int, _ debug: KVMVCPU.GuestDebug) throws {
        try commandWhilePaused("set guest debugging on", index, .setGuestDebug(debug))
    }

    /// A write watchpoint: guest writes that overlap `ranges` stop the writing vCPU once the writing
    /// instruction completed (`DebugStop.Reason.writeWatch(address)`).
    public struct WriteWatch: Sendable, Equatable {
        /// The debugger's name for it (gdb: the guest-virtual address), reported back on a hit.
        public var address: UInt64
        /// The watched bytes, guest-physical (one range per guest page the watched bytes lie in).
        public var ranges: [Range<UInt64>]
        public init(address: UInt64, ranges: [Range<UInt64>]) {
            self.address = address
            self.ranges = ranges
        }
    }

    /// Whether `setWriteWatches` works on this host (KVM can make guest memory read-only).
    public var supportsWriteWatches: Bool { ramSlots.readOnlySupported }

    /// Replaces the write watchpoints. Works on any host with KVM_CAP_READONLY_MEM (no debug registers
    /// involved): the pages holding watched bytes become read-only slots (`ramSlots`), so a guest write
    /// there exits; the vCPU thread performs the write itself, and stops when it touched a watched byte.
    /// Writes by devices through host pointers (the vGPU's) and through other mappings of the same RAM
    /// (the vGPU aperture) are not seen. The VM must not be running (created or paused). Throws
    /// `LifecycleError` for the wrong state and `RAMSlotError` (a range that is not RAM, no read-only
    /// memory on this host, KVM refusing); the previous watchpoints then stay.
    public func setWriteWatches(_ watches: [WriteWatch]) throws {
        let s = runState
        guard s == .paused || s == .created else { throw LifecycleError.wrongState(operation: "change the write watchpoints of", state: s) }
        var pages: Set<UInt64> = []
        for w in watches {
            for r in w.ranges where !r.isEmpty {
                guard memory.contains(r.lowerBound, length: UInt64(r.count)) else {
                    throw RAMSlotError.notRAM(page: r.lowerBound & ~(MemoryLayout.pageSize - 1))
                }
                var p = r.lowerBound & ~(MemoryLayout.pageSize - 1)
                while p < r.upperBound { pages.insert(p); p += MemoryLayout.pageSize }
            }
        }
        try ramSlots.setReadOnlyPages(pages)
        state.withLock { $0.writeWatches = watches }
    }

    /// Guest writes to write-watched pages that touched a watched byte (each stopped the vCPU).
    public var writeWatchHits: UInt64 { watchHits.load(ordering: .relaxed) }

    /// Guest writes to write-watched pages that touched no watched byte (completed without a stop).
    public var unwatchedWritesOnWatchedPages: UInt64 { watchedPageWrites.load(ordering: .relaxed) }

    /// On a vCPU thread: a guest write of `data` at guest-physical `address` in RAM exited because the page is
    /// read-only (write-watched). Performs it and returns the watchpoint it hit, if any.
    func performWatchedPageWrite(_ address: UInt64, _ data: UnsafeRawBufferPointer) -> UInt64? {
        try? memory.write(data, at: address)
        let written = address..<(address + UInt64(data.count))
        let hit = state.withLock { s in s.writeWatches.first { $0.ranges.contains { $0.overlaps(written) } }?.address }
        if hit == nil { watchedPageWrites.add(1, ordering: .relaxed) } else { watchHits.add(1, ordering: .relaxed) }
        return hit
    }

    /// Runs paused vCPU `index` for one instruction while the others stay paused; the stop arrives at
    /// the debug handler (`DebugStop.stopped(cpu:, reason: .step)`), or another stop comes first.
    public func step(_ index: Int) throws {
        try commandWhilePaused("single-step", index, .step)
    }
}

/// A debug event, for the gdb stub.
public enum DebugStop: Sendable, Equatable {
    public enum Reason: Sendable, Equatable {
        /// A single-step finished.
        case step
        /// A software breakpoint (int3 the debugger placed) at this address; RIP points at it.
        case softwareBreakpoint(UInt64)
        /// A hardware breakpoint (DR0-DR3 index).
        case hardwareBreakpoint(Int)
        /// A watchpoint (DR0-DR3 index) triggered by an access.
        case watchpoint(Int)
        /// A write watchpoint (`Machine.setWriteWatches`) was written: the writing instruction has
        /// completed, memory holds the new value. The watchpoint's `address`.
        case writeWatch(UInt64)
        /// Another debug exception (dr6 as KVM reported it).
        case other(dr6: UInt64)
    }
    /// vCPU `cpu` stopped itself; it is paused.
    case stopped(cpu: Int, reason: Reason)
    /// The VM ended.
    case ended(ExitReason)
}

/// The monitor's power-off test without forced exits: it asks the vCPUs (one kick each) only when
/// all are blocked in the kernel and none exited since the previous look, and after a "no" only when
/// something ran since. Without KVM statistics it asks every time (one kick per vCPU per interval).
struct HaltProbe {
    struct Reading: Equatable { let blocking: Bool; let exits: UInt64 }
    private var previous: [Reading?]
    private var afterAnswer: [Reading?]? = nil
    private var captureAfterAnswer = false

    init(count: Int) { previous = Array(repeating: nil, count: count) }

    mutating func reset() {
        previous = Array(repeating: nil, count: previous.count)
        afterAnswer = nil
        captureAfterAnswer = false
    }

    /// Whether to ask, given this look's readings (nil where statistics are unavailable).
    mutating func shouldAsk(_ readings: [Reading?]) -> Bool {
        defer { previous = readings }
        if readings.contains(where: { $0 == nil }) { return true }
        if captureAfterAnswer {
            captureAfterAnswer = false
            afterAnswer = readings
            return false
        }
        let quiet = zip(readings, previous).allSatisfy { r, p in r!.blocking && p != nil && r!.exits == p!.exits }
        guard quiet else { return false }
        if let settled = afterAnswer, settled.map({ $0?.exits }) == readings.map({ $0?.exits }) { return false }
        return true
    }

    /// The vCPUs said "not all halted with interrupts off": wait until something runs again.
    mutating func answered() { captureAfterAnswer = true }
}
