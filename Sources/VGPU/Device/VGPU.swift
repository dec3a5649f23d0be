import Glibc
import KVM
import Logging
import Machine
import SoftGPU
import Synchronization

/// A mediated pass-through vGPU attached to one machine through its `DeviceContext` (docs/vgpu.md): the PCI
/// function. It declares its BARs (BAR0: registers, GTT window and the PV doorbells as ioeventfds; BAR2:
/// the aperture, its slice backed by a memory slot); the PCI bus places, maps and moves them. Its parts:
/// the register file (`VGPURegisterFile`, Registers/), the virtual interrupts (`VirtualInterrupts` and
/// `InterruptLine`, Interrupts/), the submission pipeline (Submission/: scan, `ShadowPlacement`, run), the
/// virtual display (`DisplayPipe`, Display/) and the GTT shadow (Memory/); its checked work runs on the
/// GPU's shared engines through their `EngineDispatcher`s (Scheduling/).
///
/// Threads and ownership:
/// - vCPU threads call the BAR0 handlers (`read`/`write`) and `configWritten`; all virtual state is in
///   `state` (one Mutex) and is never held across a call into the GPU, the context or another lock
///   (register rows' handlers run under it and only return effects);
/// - `configWritten` runs under the PCI bus's configuration lock for this function (the bus then places
///   the BARs, under the same lock);
/// - every log line a guest can cause goes through `log` (rate-limited per kind, `RateLimitedLog`);
/// - a doorbell is scanned and shadowed on the thread that rang it: the vCPU thread for a trapped TAIL
///   write, the mediator thread for a PV doorbell (an ioeventfd it polls); `scanLocks[e]` keeps one scan
///   per engine at a time. The mediator thread also ticks virtual vblanks. It is placed by `ThreadPlacement`
///   (pinned to the device CPU when one is set), then runs under the device
///   seccomp filter (`SeccompFilter.device`, unless the machine's `seccomp` is `.off`);
/// - accepted submissions are queued in `state` and run by the engine's dispatcher thread (GPUHost's
///   `EngineDispatcher`, shared by every vGPU on the GPU, weighted time slices by default) through
///   `runPass`, which switches the engine to this vGPU's context (GPRs, a preempted pass's position) and
///   back, keeps a preempted pass in `state` (its shadows stay in the vGPU's own arena), and holds
///   `runLocks[e]` across the pass; pausing the VM (`PausableDevice`) stops new passes and `pause()`
///   returns once the pass in progress (if any) has ended, by taking `runLocks[e]` (no other lock is held
///   with it);
/// - `passes[e]` says whether this vGPU's pass is on the physical engine `e` right now. `runPass` sets it
///   together with starting the pass and clears it when the pass has ended; RESET and `shutdown()` reset
///   the physical engine only while holding it set, so an abort can only ever hit this vGPU's own work,
///   never another vGPU's pass on the shared engine. It is the one lock held while calling out (into the
///   SoftGPU engine: starting a pass, or `Engine.reset()`, which returns at the engine's next command
///   boundary); under it only the state and lifecycle locks are taken, briefly, never the other way round;
/// - each engine's `generation` (in `state`) counts its RESETs: a scan or pass that began before a RESET
///   sees a different generation when it ends and leaves no trace (no queue entry, HEAD, error or interrupt);
/// - interrupts are latched in `state` with the change they report and delivered by `line`
///   (`InterruptLine`: MSI, or INTA# under its own serialising lock) after the state lock is dropped;
/// - the GPU's watchdog thread (`GPUWatchdog`) asks `runningSubmission` which submission holds an engine
///   (the pass in `EngineState.running`, set and cleared under `passes[e]`) and calls `hung`, which resets
///   the whole vGPU as `PV_DEVICE_RESET` does for the engines (both engines' `abortEngineWork`), then fills
///   the error block and raises the hang interrupt; a guest's `PV_DEVICE_RESET` runs on its vCPU thread;
/// - `trace` (a `GPUTrace`, `--trace`) is written from whichever thread saw the event.
public final class VGPU: PCIFunction, BusDevice, PausableDevice, DispatchClient, WatchdogClient, @unchecked Sendable {
    public static let vendorID: UInt16 = 0x4d56
    public static let deviceID: UInt16 = 0x0001

    public let id: Int
    public let slices: GMSlices
    /// The type the vGPU was created with (its slice sizes and scheduling weight).
    public let type: VGPUType
    public let host: GPUHost
    public let config: PCIConfigSpace
    /// Guest RAM: strong (it does not refer back to the vGPU).
    let memory: GuestMemory
    /// The machine (or a test's fake) is reached weakly: its PCI bus holds the vGPU, so a strong
    /// reference would be a cycle.
    weak let context: (any DeviceContext)?
    /// The PCI device number the bus gave the vGPU (set once, in `init`).
    public private(set) var pciDevice: Int = -1
    let gtt: GTTShadow
    let logger: Logger
    /// Lines the guest can cause (placement failures, refusals, rejections): rate-limited per kind.
    let log: RateLimitedLog
    let apertureSize: UInt64
    /// Host-owned GM for the shadow rings and batches (`arena(_:)`: one half per engine).
    let arenaBuffer: HostBuffer
    let busBase: UInt64
    /// This vGPU's own scratch page (host memory at this bus address): rejected GTT entries point here, so
    /// no page is shared between vGPUs.
    let scratchBus: UInt64

    // Aperture window: host memory behind the vGPU's slice of BAR2, registered as one KVM slot.
    let apertureWindow: UnsafeMutableRawPointer
    let apertureSlot: UInt32

    /// Per engine: what the pipeline keeps besides the engine's registers (which are rows of the register
    /// file, in `State.regs`).
    struct EngineState {
        /// Where the next scan starts: the tail of the last accepted submission.
        var scannedTail: UInt32 = 0
        /// Accepted (scanned and copied) submissions not yet run, in doorbell order.
        var queue: [Queued] = []
        var executing = false
        /// A pass the scheduler preempted: its shadows stay in the arena and it resumes, with the engine
        /// context saved at the switch, on this vGPU's next pass (before anything queued after it).
        var suspended: Pass? = nil
        /// RESETs (and shutdown) so far: work begun under an older generation is discarded.
        var generation: UInt64 = 0
        /// The pass on the physical engine now (for the watchdog); nil when none.
        var running: RunningPass? = nil
        var busy: Bool { executing || suspended != nil || !queue.isEmpty }
    }

    /// A pass on the physical engine, as the watchdog follows it: which of its submissions the engine is
    /// in (from the physical HEAD) and how much engine time it has had (the engine thread's CPU time).
    struct RunningPass {
        var generation: UInt64
        /// Per submission: where its ring fragment starts in the physical ring, its number, and where the
        /// guest wrote it (its ring's start and size, its HEAD).
        var ringStarts: [UInt64]
        var numbers: [UInt64]
        var guestRings: [(start: UInt32, bytes: UInt32, head: UInt32)]
        /// The physical HEAD last seen, and the submission it is in.
        var head: UInt64 = 0
        var current: Int
        /// The engine thread's CPU time when HEAD was first seen where it is.
        var cpuAtCurrent: Duration
    }

    struct State {
        var engines = [EngineState(), EngineState()]
        /// Per engine: submissions queued so far (their numbers), never reset.
        var submitted: [UInt64] = [0, 0]
        /// Per engine: the generation of the last pass the watchdog aborted (its turn ends as "hang").
        var hangAborted: [UInt64?] = [nil, nil]
        /// Every register's value (the register file's flat storage), engine registers included.
        var regs = VGPURegisterFile.Storage()
        var interrupts = VirtualInterrupts()
        var display = DisplayPipe()

        /// Engine `e`'s STATUS, from its ring enable, its queue and its error.
        func status(_ e: EngineID) -> UInt32 {
            let busy = engines[e.rawValue].busy
            var v: UInt32 = regs[Reg.ringCtl(e)] & Reg.ringCtlEnable != 0 ? Reg.statusRingEnabled : 0
            if busy { v |= Reg.statusBusy }
            if regs[Reg.errorCode(e)] != 0 { v |= Reg.statusError }
            if !busy { v |= Reg.statusIdle }
            return v
        }
    }
    let state = Mutex(State())
    /// One scan at a time per engine (a trapped TAIL write on a vCPU thread and a PV doorbell on the
    /// mediator thread may race).
    let scanLocks = [SerialLock(), SerialLock()]
    /// Per engine: true while this vGPU's pass is on the physical engine (see "Threads and ownership").
    let passes = [PassFlag(), PassFlag()]
    private let lifecycle = Mutex<Bool>(true)   // running
    /// True while the VM is paused: `runPass` starts no pass and `readyWork` offers nothing.
    private let pausedFlag = Mutex<Bool>(false)
    /// Per engine: held by `runPass` across a pass, so that `pause()` and `shutdown()` can wait for it to end.
    let runLocks = [SerialLock(), SerialLock()]

    /// A lock serialising a section; a class so that it can live in an array.
    final class SerialLock: Sendable {
        private let mutex = Mutex(())
        func withLock<R>(_ body: () -> R) -> R { mutex.withLock { _ in body() } }
    }

    /// Whether this vGPU's pass is on a physical engine; a class so that it can live in an array.
    final class PassFlag: Sendable {
        private let mutex = Mutex<Bool>(false)
        func withLock<R>(_ body: (inout Bool) -> R) -> R { mutex.withLock { body(&$0) } }
    }

    // Statistics.
    let badAccesses = Atomic<UInt64>(0)
    let privilegedWrites = Atomic<UInt64>(0)
    let refusedAddressWrites = Atomic<UInt64>(0)
    let submissions = Atomic<UInt64>(0)
    let rejections = Atomic<UInt64>(0)
    let hangResets = Atomic<UInt64>(0)
    let deviceResets = Atomic<UInt64>(0)

    /// One watchdog reset of this vGPU, with its timing.
    public struct HangReport: Sendable, Equatable {
        public var engine: EngineID
        /// This vGPU's number for the submission on that engine.
        public var submission: UInt64
        /// When the submission began holding the engine (as the watchdog saw it), when it passed the limit,
        /// when the watchdog noticed, and when the engine had stopped the vGPU's work.
        public var started, limitExceeded, detected, resetDone: ContinuousClock.Instant
        /// From passing the limit to the engine being free again.
        public var timeToReset: Duration { resetDone - limitExceeded }
    }
    /// The last 64 watchdog resets (oldest first).
    public var hangReports: [HangReport] { hangLog.withLock { $0 } }
    let hangLog = Mutex<[HangReport]>([])

    /// Where scheduling events of this vGPU go (`--trace`); nil: nowhere.
    public let trace: GPUTrace?

    /// When the first submission started being handled and the last one completed (for benchmarks).
    let activity = Mutex<(first: ContinuousClock.Instant?, last: ContinuousClock.Instant?)>((nil, nil))

    /// Time the vGPU's passes held an engine (configure, run, wait), summed.
    let engineNanos = Atomic<UInt64>(0)
    public var engineBusy: Duration { .nanoseconds(Int64(engineNanos.load(ordering: .relaxed))) }
    /// Submissions that ran to completion on an engine (counted by the dispatcher's passes; for benchmarks).
    let completedCount = Atomic<UInt64>(0)
    public var completedSubmissions: UInt64 { completedCount.load(ordering: .relaxed) }

    /// From the first doorbell the mediator handled to the last completed submission.
    public var activeInterval: ClosedRange<ContinuousClock.Instant>? {
        activity.withLock { a in a.first.flatMap { f in a.last.flatMap { f <= $0 ? f...$0 : nil } } }
    }

    /// Wall time from the first doorbell the mediator handled to the last completed submission.
    public var activeWindow: Duration? {
        activity.withLock { a in a.first.flatMap { f in a.last.map { $0 - f } } }
    }

    /// Delivers the virtual interrupts (MSI or INTA#).
    let line: InterruptLine
    /// The IOAPIC input INTA# is routed to (nil: no route left).
    var intxGSI: UInt32? { line.routedGSI }
    // Doorbells and the mediator thread.
    let control: EventFD
    let doorbells: [EventFD]
    private var mediatorThread: pthread_t? = nil
    let vblankInterval: Duration

    /// Creates the vGPU, adds it to the context's PCI bus (at 00:`slot`.0, or the lowest free device
    /// number; the bus gives BAR0 and BAR2 addresses in the PCI MMIO window and routes INTA#), registers it
    /// as a pausable device, starts its mediator thread and attaches it to the GPU's engine dispatchers.
    public init(context: any DeviceContext, host: GPUHost, type: VGPUType = .default, slot: Int? = nil,
                refreshRate: Double = 60, trace: GPUTrace? = nil, logger: Logger = Logger(label: "minivisor.vgpu")) throws {
        self.context = context
        self.trace = trace
        let memory = context.memory
        self.memory = memory
        self.host = host
        self.logger = logger
        let (id, slices) = try host.allocate(type: type)
        self.type = type
        self.id = id
        log = RateLimitedLog(logger: logger, source: "vgpu\(id)")
        self.slices = slices
        apertureSize = host.gpu.config.apertureSize
        vblankInterval = .nanoseconds(Int64(1e9 / max(refreshRate, 1)))
        var scratch: UInt64? = nil
        do {
            let (arenaGM, arenaBytes) = host.shadowArena(id: id)
            scratch = try host.gpu.systemMemory.allocate(bytes: 4096, name: "vgpu\(id)-scratch").base
            arenaBuffer = try host.gpu.mapHostMemory(gm: arenaGM, bytes: arenaBytes, name: "vgpu\(id)-shadow")
            busBase = host.busWindow(bytes: memory.size)
            try host.gpu.systemMemory.register(base: busBase, length: memory.size, pointer: memory.hostBase,
                                               name: "vm-ram-vgpu\(id)")
        } catch {
            if let b = scratch { host.gpu.systemMemory.free(busAddress: b) }
            host.release(id: id)
            throw error
        }
        scratchBus = scratch!
        gtt = GTTShadow(slices: slices, gtt: host.gpu.gtt, memory: memory, busBase: busBase, scratchBus: scratchBus)

        let sliceBytes = Int(slices.aperture.count)
        /// Undoes what this initialiser took from the GPU host when a later step fails.
        let busBase = self.busBase, scratchBus = self.scratchBus, arena = self.arenaBuffer
        func releaseHostResources() {
            _ = host.gpu.systemMemory.unregister(base: busBase)
            host.gpu.systemMemory.free(busAddress: scratchBus)
            arena.release()
            host.release(id: id)
        }
        guard let w = mmap(nil, sliceBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              w != MAP_FAILED else {
            releaseHostResources()
            throw KVMError("mmap(aperture window)")
        }
        apertureWindow = w
        do { apertureSlot = try context.allocateMemorySlot() } catch {
            munmap(w, sliceBytes)
            releaseHostResources()
            throw error
        }

        control = try EventFD()
        doorbells = [try EventFD(), try EventFD()]

        let config = PCIConfigSpace(vendorID: VGPU.vendorID, deviceID: VGPU.deviceID, classCode: 0x03, subclass: 0x80,
                                    subsystemVendorID: VGPU.vendorID, subsystemID: VGPU.deviceID, interruptPin: 1)
        self.config = config
        line = InterruptLine(config: config, context: context)
        config.addBar(PCIBar(index: 0, size: VGPURegs.bar0Size, kind: .memory32))
        config.addBar(PCIBar(index: 2, size: apertureSize, kind: .memory64, prefetchable: true))
        config.addMSICapability()

        let window = UInt(bitPattern: apertureWindow)
        let sliceBase = slices.aperture.lowerBound
        let memfd = memory.memfd
        gtt.onAperturePageChange = { page, fileOffset in
            let addr = UnsafeMutableRawPointer(bitPattern: window)! + Int(UInt64(page) << 12 - sliceBase)
            if let off = fileOffset {
                _ = mmap(addr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, memfd, off_t(off))
            } else {
                _ = mmap(addr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
            }
        }

        do {
            let placement = try context.addPCIFunction(self, device: slot)
            pciDevice = placement.device
            line.route(gsi: placement.gsi)
        } catch {
            context.resources.releaseMemorySlot(apertureSlot)
            releaseHostResources()
            throw error   // deinit unmaps the aperture window
        }
        context.addPausableDevice(self)
        startThreads()
    }

    deinit {
        munmap(apertureWindow, Int(slices.aperture.count))
    }

    /// Stops the mediator thread and leaves the engine dispatchers, aborting this vGPU's GPU work at the
    /// engines' next command boundary (queued submissions are dropped), detaches the vGPU's memory from the
    /// GPU and frees its slices. Call after the VM has stopped; returns within milliseconds even with long
    /// jobs queued. Other vGPUs' work on the shared engines is not touched.
    public func shutdown() {
        let wasRunning = lifecycle.withLock { r -> Bool in defer { r = false }; return r }
        guard wasRunning else { return }
        host.watchdog.detach(self)
        for e in EngineID.allCases { abortEngineWork(e) }
        control.signal()
        if let t = mediatorThread { pthread_join(t, nil) }
        for e in EngineID.allCases {
            host.dispatcher(e).detach(self)
            runLocks[e.rawValue].withLock {}   // the pass in progress (aborted above) has ended; no other starts
        }
        gtt.clearAll()
        _ = host.gpu.systemMemory.unregister(base: busBase)
        host.gpu.systemMemory.free(busAddress: scratchBus)
        arenaBuffer.release()
        host.release(id: id)
        log.flush()
    }

    /// RESET of engine `e` (and shutdown): a new generation with the engine's virtual state as after reset
    /// (ring registers, error, GPRs, counters 0; accepted submissions not yet run dropped), then, if this
    /// vGPU's pass is on the physical engine, a reset of that engine, which aborts the pass at its next
    /// command boundary (between row blocks inside SGEMM, SAXPY and blits). Returns when the pass has
    /// stopped. IIR keeps its latched bits; the error block (ERR_*) is left as it is.
    func abortEngineWork(_ e: EngineID) {
        let i = e.rawValue
        state.withLock { s in
            let generation = s.engines[i].generation &+ 1
            s.engines[i] = EngineState()
            s.engines[i].generation = generation
            s.regs.reset(engine: e)
        }
        let engine = host.gpu.engine(e)
        passes[i].withLock { onEngine in if onEngine { engine.reset() } }
    }

    // MARK: PCI

    public func configWritten(offset: Int, size: Int) {
        // INTx disable or MSI enable may have changed which line is live.
        updateINTx()
    }

    /// BAR0: the registers and GTT window (trapped), with the two PV doorbells as ioeventfds; BAR2: the
    /// aperture, of which this vGPU's slice is host memory (`apertureWindow`) in its own memory slot.
    public func barRegions(_ index: Int) -> [PCIBarRegion] {
        switch index {
        case 0:
            return [PCIBarRegion(size: VGPURegs.bar0Size, name: "vgpu\(id)-bar0", backing: .trap(self))]
                + EngineID.allCases.map { e in
                    PCIBarRegion(offset: UInt64(VGPURegs.pvDoorbell(e)), size: 4, name: "vgpu\(id)-doorbell-\(e)",
                                 backing: .ioEventFD(doorbells[e.rawValue].fd))
                }
        case 2:
            return [PCIBarRegion(offset: slices.aperture.lowerBound, size: UInt64(slices.aperture.count), name: "vgpu\(id)-aperture",
                                 backing: .memory(slot: apertureSlot, host: apertureWindow))]
        default:
            return []
        }
    }

    // MARK: pausing

    /// The VM pauses: no further pass starts; returns once the pass on each engine (if any) has ended.
    public func pause() {
        pausedFlag.withLock { $0 = true }
        for l in runLocks { l.withLock {} }
    }

    /// The VM resumes: the dispatchers run what was queued meanwhile.
    public func resume() {
        pausedFlag.withLock { $0 = false }
        for d in host.dispatchers { d.notify() }
    }

    var isPaused: Bool { pausedFlag.withLock { $0 } }

    // MARK: BAR0

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        let size = data.count
        if offset >= VGPURegs.gttWindow {
            guard (size == 4 || size == 8), offset % UInt64(size) == 0, offset + UInt64(size) <= VGPURegs.bar0Size else {
                return badAccess(data)
            }
            let rel = offset - VGPURegs.gttWindow
            let entry = gtt.read(page: Int(rel / 8))
            data.storeLittleEndian(size == 8 ? entry : (rel % 8 == 0 ? entry & 0xffff_ffff : entry >> 32))
            return
        }
        guard size == 4, offset % 4 == 0 else { return badAccess(data) }
        data.storeLittleEndian(UInt64(readRegister(UInt32(offset))))
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        let size = data.count
        if offset >= VGPURegs.gttWindow {
            guard (size == 4 || size == 8), offset % UInt64(size) == 0, offset + UInt64(size) <= VGPURegs.bar0Size else {
                badAccesses.add(1, ordering: .relaxed)
                return
            }
            let rel = offset - VGPURegs.gttWindow
            gtt.write(page: Int(rel / 8), offset: Int(rel % 8), size: size, value: data.littleEndianValue)
            return
        }
        guard size == 4, offset % 4 == 0 else {
            badAccesses.add(1, ordering: .relaxed)
            return
        }
        writeRegister(UInt32(offset), UInt32(truncatingIfNeeded: data.littleEndianValue))
    }

    private func badAccess(_ data: UnsafeMutableRawBufferPointer) {
        badAccesses.add(1, ordering: .relaxed)
        data.storeLittleEndian(UInt64.max)
    }

    /// A register read: the row's read handler or its storage (privileged offsets read 0).
    func readRegister(_ r: UInt32) -> UInt32 {
        guard let (row, element) = VGPURegisterFile.row(at: r), row.policy != .privileged else { return 0 }
        return state.withLock { s in row.read.map { $0(self, s, element) } ?? s.regs[r] }
    }

    /// A register write: the row's policy and mask, then its write handler (or storage) under the state
    /// lock, then the effects it asked for, without the lock.
    func writeRegister(_ r: UInt32, _ value: UInt32) {
        guard let (row, element) = VGPURegisterFile.row(at: r), row.policy != .privileged else {
            privilegedWrites.add(1, ordering: .relaxed)
            log.log(.debug, "privileged register write",
                    "vgpu\(id): dropped write 0x\(String(value, radix: 16)) to privileged register 0x\(String(r, radix: 16))")
            return
        }
        switch row.policy {
        case .readOnly:
            return
        case .gmAddress:
            guard value & 0xfff == 0, slices.contains(UInt64(value), length: 4096) else {
                refusedAddressWrites.add(1, ordering: .relaxed)
                log.log(.debug, "refused GM address",
                        "vgpu\(id): refused GM address 0x\(String(value, radix: 16)) for register 0x\(String(r, radix: 16))")
                return
            }
        default: break
        }
        let masked = value & row.writableMask
        let fx = state.withLock { s -> VGPURegisterFile.WriteEffects in
            var fx = VGPURegisterFile.WriteEffects()
            if let write = row.write { write(&s, element, masked, &fx) } else { s.regs[r] = masked }
            return fx
        }
        // A trapped TAIL write is copied and scanned here, on the vCPU thread, before the guest runs on:
        // whatever the guest changes after this doorbell cannot affect the submission.
        if let tail = fx.doorbellTail, let e = row.engine { doorbell(e, tail: tail) }
        // RESET returns to the guest only once the engine has stopped this vGPU's work.
        if fx.resetEngine, let e = row.engine {
            trace?.instant("RESET", vgpu: id, engine: e)
            abortEngineWork(e)
        }
        if fx.resetDevice { resetDevice() }
        if let e = fx.pvDoorbell { doorbells[e.rawValue].signal() }
        if fx.kickMediator { control.signal() }
        if fx.deliver != 0 { signalInterrupt() }
        if fx.updateINTx { updateINTx() }
    }

    /// Tells the guest about newly pending interrupts (MSI, or INTA# to its level).
    func signalInterrupt() { line.signal { state.withLock { $0.interrupts.pending } } }

    /// Drives INTA# to its current level (only while MSI is off).
    func updateINTx() { line.update { state.withLock { $0.interrupts.pending } } }

    /// Latches `bits` into the virtual ISR/IIR (honouring IMR) and signals newly pending ones.
    func raise(_ bits: UInt32) {
        let newly = state.withLock { $0.interrupts.latch(bits) }
        if newly != 0 { signalInterrupt() }
    }

    // MARK: statistics

    public struct Statistics: Sendable, Equatable {
        public var badAccesses: UInt64, privilegedWrites: UInt64, refusedAddressWrites: UInt64
        public var gttRejected: UInt64, gttDroppedOutside: UInt64
        public var submissions: UInt64, rejections: UInt64
    }

    /// Watchdog resets and device resets (PV_DEVICE_RESET) so far.
    public var resets: (hangs: UInt64, device: UInt64) {
        (hangResets.load(ordering: .relaxed), deviceResets.load(ordering: .relaxed))
    }

    public var statistics: Statistics {
        Statistics(badAccesses: badAccesses.load(ordering: .relaxed), privilegedWrites: privilegedWrites.load(ordering: .relaxed),
                   refusedAddressWrites: refusedAddressWrites.load(ordering: .relaxed), gttRejected: gtt.rejected.load(ordering: .relaxed),
                   gttDroppedOutside: gtt.droppedOutside.load(ordering: .relaxed), submissions: submissions.load(ordering: .relaxed),
                   rejections: rejections.load(ordering: .relaxed))
    }

    // MARK: threads

    private func startThreads() {
        // The mediator thread holds the vGPU until shutdown() stops it.
        mediatorThread = OSThread.spawn(name: "vgpu\(id)-mediator", { [self] in
            ThreadPlacement.placeDeviceThread()   // before the filter (no sched_setaffinity in it)
            context?.enterDeviceSandbox(thread: "vgpu\(id)-mediator")
            mediatorLoop()
        })
        // The dispatcher threads (started by the first vGPU on the GPU) enter that vGPU's device filter.
        let sandbox: @Sendable (String) -> Void = { [weak context] name in _ = context?.enterDeviceSandbox(thread: name) }
        for d in host.dispatchers { d.attach(self, sandbox: sandbox) }
        host.watchdog.attach(self, sandbox: sandbox)
    }

    var isRunning: Bool { lifecycle.withLock { $0 } }
}

