import CKVM
import Dispatch
import Glibc
import KVM
import Logging
import Synchronization

/// A virtual machine: KVM VM, guest RAM, buses with the legacy devices and PCI, and one OS thread per
/// vCPU. Build it, add devices (higher layers add the vGPU), then `run()` blocks until the guest ends.
///
/// Threads and ownership:
/// - the thread that calls `run()` (the monitor) starts the vCPU threads, watches for timeout and for
///   every vCPU halting with interrupts off, and joins the vCPU threads;
/// - each vCPU thread owns its `KVMVCPU` (all vCPU ioctls happen there) and dispatches exits to the buses;
/// - devices are shared by all vCPU threads and guard their own state (see `BusDevice`);
/// - `stopReason` (Mutex) and `stopping` (Atomic) may be touched from any thread: the first stop wins.
public final class Machine: MachineControl, @unchecked Sendable {
    public let configuration: MachineConfiguration
    public let kvm: KVMSystem
    public let vm: KVMVirtualMachine
    public let memory: GuestMemory
    public let pioBus: Bus
    public let mmioBus: Bus
    public let pciBus: PCIBus
    public let serial: Serial16550
    public let bootPlan: BootPlan
    /// Whether the in-kernel PIT was created (see `MachineConfiguration.pit`).
    public let hasPIT: Bool
    public let logger: Logger

    let vcpus: [VCPUContext]
    private let stopReason = Mutex<ExitReason?>(nil)
    let stopping = Atomic<Bool>(false)
    private let stopSignal = DispatchSemaphore(value: 0)
    private let nextSlot = Mutex<UInt32>(0)
    private let started = Atomic<Bool>(false)
    let int3Recoveries = Atomic<UInt64>(0)

    /// Creates the VM and loads `image`. Throws `KVMUnavailable`, `ConfigurationError`, `ImageError`,
    /// or `KVMError` (with the failing operation and errno).
    public init(configuration: MachineConfiguration, image: BootImage, logger: Logger = Logger(label: "minivisor")) throws {
        self.configuration = configuration
        self.logger = logger
        kvm = try KVMSystem(path: configuration.kvmDevicePath)
        let maxVCPUs = Int(max(kvm.extensionValue(KVM_CAP_MAX_VCPUS), kvm.extensionValue(KVM_CAP_NR_VCPUS), 1))
        try ConfigurationError.validate(configuration, maxVCPUs: min(maxVCPUs, 255))
        vm = try kvm.createVM()
        try vm.setIdentityMapAddress(MemoryLayout.identityMapAddress)
        try vm.setTSSAddress(MemoryLayout.tssAddress)
        try vm.createIRQChip()
        memory = try GuestMemory(bytes: configuration.memoryBytes)
        let slot = try memory.register(with: vm)
        nextSlot.withLock { $0 = slot }

        pioBus = Bus(name: "port", logger: logger)
        mmioBus = Bus(name: "mmio", logger: logger)
        pciBus = PCIBus()
        let vm = self.vm
        serial = try Serial16550(output: configuration.serialOutput) { level in try? vm.setIRQLine(4, level: level) }

        bootPlan = try ImageLoader.load(image, into: memory, cpuCount: configuration.cpuCount,
                                        cmdline: configuration.cmdline, modules: configuration.modules)

        switch configuration.pit {
        case .on: try vm.createPIT2()
        case .off: break
        case .auto: if bootPlan.kind == .multiboot { try vm.createPIT2() }
        }
        hasPIT = configuration.pit == .on || (configuration.pit == .auto && bootPlan.kind == .multiboot)

        let supported = try kvm.supportedCPUID()
        var contexts: [VCPUContext] = []
        for i in 0..<configuration.cpuCount {
            let vcpu = try vm.createVCPU(id: UInt32(i))
            let cpuid = CPUSetup.cpuid(supported: supported, apicID: UInt32(i), cpuCount: configuration.cpuCount,
                                       host: configuration.host)
            try CPUSetup.configure(vcpu, cpuid: cpuid, isBSP: i == 0, entry: bootPlan.entry)
            contexts.append(VCPUContext(vcpu: vcpu))
        }
        vcpus = contexts

        try pioBus.register(serial, base: 0x3f8, size: 8, name: "serial0")
        try pioBus.register(DebugExit(control: self), base: DebugExit.port, size: 1, name: "debug-exit")
        try pioBus.register(I8042(control: self), base: I8042.base, size: 5, name: "i8042")
        try pioBus.register(PowerOff(control: self), base: PowerOff.port, size: 2, name: "power-off")
        try pioBus.register(pciBus, base: PCIBus.configAddressPort, size: PCIBus.portRangeSize, name: "pci-conf1")
    }

    /// PCI INTx routes described to the guest in the MP table: (device, pin 1-4, IOAPIC pin).
    private let pciRoutes = Mutex<[(device: Int, pin: Int, ioapicPin: Int)]>([])

    /// Routes INTx pin `pin` (1 = INTA#) of PCI device `device` to an IOAPIC input (GSI 16-23, level,
    /// active low) and rewrites the MP table so the guest finds the route. Call before `run()`.
    /// Returns the GSI, or nil when all eight PCI GSIs are taken.
    public func routePCIInterrupt(device: Int, pin: Int) -> UInt32? {
        let routes = pciRoutes.withLock { r -> [(device: Int, pin: Int, ioapicPin: Int)]? in
            let used = Set(r.map(\.ioapicPin))
            guard let gsi = (16..<24).first(where: { !used.contains($0) }) else { return nil }
            r.append((device, pin, gsi))
            return r
        }
        guard let routes else { return nil }
        try? memory.write(bytes: BootStructures.mpTable(cpuCount: configuration.cpuCount, pciInterrupts: routes),
                          at: BootLayout.mpTable)
        return UInt32(routes.last!.ioapicPin)
    }

    /// A fresh KVM memory slot number for devices that map memory into the guest.
    public func allocateMemorySlot() -> UInt32 {
        nextSlot.withLock { s in defer { s += 1 }; return s }
    }

    /// Ends the VM; the first reason wins. Safe from any thread, including vCPU threads and devices.
    public func requestStop(_ reason: ExitReason) {
        let first = stopReason.withLock { r -> Bool in
            guard r == nil else { return false }
            r = reason
            return true
        }
        guard first else { return }
        stopping.store(true, ordering: .sequentiallyConsistent)
        serial.cancelOutput()   // a vCPU waiting on a full pipe or terminal gives up
        for c in vcpus { c.kick() }
        stopSignal.signal()
    }

    /// Runs the guest until it ends, on dedicated vCPU threads. Returns why it ended. Can be called once.
    public func run() -> ExitReason {
        guard !started.exchange(true, ordering: .sequentiallyConsistent) else {
            return .hostError("Machine.run() called twice")
        }
        if ckvm_install_kick_handler(ckvm_kick_signal()) != 0 {
            return .hostError("cannot install the vCPU kick signal handler")
        }
        var stdinReader: StdinReader? = nil
        if configuration.serialInputFromStdin { stdinReader = StdinReader(serial: serial) }
        for (i, c) in vcpus.enumerated() {
            let ok = c.start(name: "vcpu\(i)") { [unowned self] in self.vcpuLoop(c) }
            if !ok { requestStop(.hostError("cannot create the thread for vCPU \(i)")) }
        }
        let deadline = configuration.timeout.map { ContinuousClock.now + $0 }
        let interval = configuration.haltPollInterval
        var generation: UInt64 = 0
        while true {
            let wait = deadline.map { min(interval, max(.zero, $0 - ContinuousClock.now)) } ?? interval
            let ns = wait.components.seconds * 1_000_000_000 + wait.components.attoseconds / 1_000_000_000
            if stopSignal.wait(timeout: .now() + .nanoseconds(Int(max(ns, 1_000_000)))) == .success { break }
            if let d = deadline, ContinuousClock.now >= d { requestStop(.timeout); continue }
            // Power-off detection: every vCPU answered the last query "halted with IF=0" (or never started).
            if generation > 0 && vcpus.allSatisfy({ $0.haltAnswer(for: generation) == true }) {
                logger.debug("all vCPUs halted with interrupts disabled: powering off")
                requestStop(.powerOff)
                continue
            }
            generation += 1
            for c in vcpus { c.queryHalt(generation) }
        }
        for c in vcpus { c.join() }
        stdinReader?.stop()
        return stopReason.withLock { $0 } ?? .hostError("stopped without a reason")
    }

    /// How many int3 emulation failures were turned into guest #BP exceptions.
    public var recoveredBreakpoints: UInt64 { int3Recoveries.load(ordering: .relaxed) }

    /// Exits handled per vCPU, summed.
    public var exitCount: UInt64 { vcpus.reduce(0) { $0 + $1.exits.load(ordering: .relaxed) } }
}
