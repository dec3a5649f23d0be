import Glibc
import KVM
import Logging
import Machine
import SoftGPU
import Synchronization

/// A mediated pass-through vGPU attached to one machine through its `DeviceContext` (docs/vgpu.md). It
/// declares its BARs (BAR0: registers, GTT window and the PV doorbells as ioeventfds; BAR2: the aperture,
/// its slice backed by a memory slot); the PCI bus places, maps and moves them.
///
/// Threads and ownership:
/// - vCPU threads call the BAR0 handlers (`read`/`write`) and `configWritten`; all virtual state is in
///   `state` (a Mutex) and is never held across a call into the GPU, the context or another lock;
/// - `configWritten` runs under the PCI bus's configuration lock for this function (the bus then places
///   the BARs, under the same lock);
/// - pausing the VM (`PausableDevice`) stops the executors from starting another pass; `pause()` returns
///   once the pass on each engine (if any) has ended; each executor holds its `runLocks[e]` across a pass,
///   and `pause()` takes it only to wait for that (no other lock is held with it);
/// - every log line a guest can cause goes through `log` (rate-limited per kind, `RateLimitedLog`);
/// - a doorbell is scanned and shadowed on the thread that rang it: the vCPU thread for a trapped TAIL
///   write, the mediator thread for a PV doorbell (an ioeventfd it polls); the mediator thread also ticks
///   virtual vblanks;
/// - one executor thread per engine runs the accepted shadow submissions in order on the shared engine,
///   holding that engine's lock in `GPUHost`, so scanning the next submission overlaps running this one;
/// - the mediator and executor threads run under the device seccomp filter (`SeccompFilter.device`,
///   unless the machine's `seccomp` is `.off`); the SoftGPU's own engine threads are not filtered;
/// - `passes[e]` says whether this vGPU's pass is on the physical engine `e` right now. The executor sets
///   it, together with starting the pass, and clears it when the pass has ended; RESET and `shutdown()`
///   reset the physical engine only while holding it set, so an abort can only ever hit this vGPU's own
///   work, never another vGPU's pass on the shared engine. It is the one lock held while calling out (into
///   the SoftGPU engine: starting a pass, or `Engine.reset()`, which returns at the engine's next command
///   boundary); under it only the state and lifecycle locks are taken, briefly, never the other way round;
/// - each engine's `generation` (in `state`) counts its RESETs: a scan or pass that began before a RESET
///   sees a different generation when it ends and leaves no trace (no queue entry, HEAD, error or interrupt);
/// - interrupts are injected (the context's MSI or IRQ line) from whichever thread raised them, after the
///   state lock is dropped; INTA# is driven under `intxLevel`, a serialising lock held across reading the
///   state (briefly) and the IRQ-line call, so the line always follows the latest state.
public final class VGPU: PCIFunction, BusDevice, PausableDevice, @unchecked Sendable {
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
    let arena: HostBuffer
    let busBase: UInt64
    /// This vGPU's own scratch page (host memory at this bus address): rejected GTT entries point here, so
    /// no page is shared between vGPUs.
    let scratchBus: UInt64

    // Aperture window: host memory behind the vGPU's slice of BAR2, registered as one KVM slot.
    let apertureWindow: UnsafeMutableRawPointer
    let apertureSlot: UInt32

    /// A scanned submission waiting for the engine.
    struct Queued {
        let submission: ScannedSubmission
        let start: UInt32, ringBytes: UInt32, head: UInt32, tail: UInt32
    }

    struct EngineState {
        var start: UInt32 = 0, ctl: UInt32 = 0, head: UInt32 = 0, tail: UInt32 = 0
        /// Where the next scan starts: the tail of the last accepted submission.
        var scannedTail: UInt32 = 0
        /// Accepted (scanned and copied) submissions not yet run, in doorbell order.
        var queue: [Queued] = []
        var executing = false
        var error: UInt32 = 0, faultAddress: UInt64 = 0, errorIP: UInt64 = 0
        var commandCount: UInt32 = 0, acthd: UInt32 = 0
        var gprs = [UInt32](repeating: 0, count: Int(Reg.gprDwords))
        /// RESETs (and shutdown) so far: work begun under an older generation is discarded.
        var generation: UInt64 = 0
        var busy: Bool { executing || !queue.isEmpty }
    }

    struct State {
        var engines = [EngineState(), EngineState()]
        /// Emulated registers without their own field (display, SCRATCH), in the register file's flat storage.
        var regs = VGPURegisterFile.Storage()
        var isr: UInt32 = 0, imr: UInt32 = 0xffff_ffff, iir: UInt32 = 0, ier: UInt32 = 0
        var sharedPage: UInt64 = 0
        var errStatus: UInt32 = 0, errEngine: UInt32 = 0, errReason: UInt32 = 0, errOpcode: UInt32 = 0
        var errCommandGM: UInt64 = 0, errLevel: UInt32 = 0, errOperand: UInt64 = 0, errCount: UInt32 = 0
        var errOffset: UInt32 = 0
        var vblanks: UInt32 = 0, flips: UInt32 = 0, cursorFlips: UInt32 = 0
        /// Flips armed by PRI_SURF / CUR_BASE writes or DISPLAY_FLIPs; they complete at the next vblank.
        var armedFlips: UInt32 = 0
    }
    let state = Mutex(State())
    /// One scan at a time per engine (a trapped TAIL write on a vCPU thread and a PV doorbell on the
    /// mediator thread may race).
    let scanLocks = [GPUHost.EngineLock(), GPUHost.EngineLock()]
    /// Per engine: true while this vGPU's pass is on the physical engine (see "Threads and ownership").
    let passes = [PassFlag(), PassFlag()]
    private let lifecycle = Mutex<Bool>(true)   // running
    /// True while the VM is paused: the executors start no pass.
    private let pausedFlag = Mutex<Bool>(false)
    /// Per engine: held by the executor across a pass, so that `pause()` can wait for it to end.
    let runLocks = [GPUHost.EngineLock(), GPUHost.EngineLock()]

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

    /// When the first submission started being handled and the last one completed (for benchmarks).
    let activity = Mutex<(first: ContinuousClock.Instant?, last: ContinuousClock.Instant?)>((nil, nil))

    /// Time the vGPU's passes held an engine (configure, run, wait), summed.
    let engineNanos = Atomic<UInt64>(0)
    public var engineBusy: Duration { .nanoseconds(Int64(engineNanos.load(ordering: .relaxed))) }

    /// Wall time from the first doorbell the mediator handled to the last completed submission.
    public var activeWindow: Duration? {
        activity.withLock { a in a.first.flatMap { f in a.last.map { $0 - f } } }
    }

    // Doorbells and the mediator thread.
    /// The IOAPIC input INTA# is routed to (nil: no route left), and whether it is currently asserted.
    private(set) var intxGSI: UInt32? = nil
    let intxLevel = Mutex<Bool>(false)   // INTA# asserted; see `updateINTx`
    let control: EventFD
    let doorbells: [EventFD]
    /// Wakes an engine's executor thread (blocking eventfds).
    let work: [EventFD]
    private var threads: [pthread_t] = []
    let vblankInterval: Duration

    /// Creates the vGPU, adds it to the context's PCI bus (at 00:`slot`.0, or the lowest free device
    /// number; the bus gives BAR0 and BAR2 addresses in the PCI MMIO window and routes INTA#), registers it
    /// as a pausable device and starts its mediator and executor threads.
    public init(context: any DeviceContext, host: GPUHost, type: VGPUType = .default, slot: Int? = nil,
                refreshRate: Double = 60, logger: Logger = Logger(label: "minivisor.vgpu")) throws {
        self.context = context
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
            arena = try host.gpu.mapHostMemory(gm: arenaGM, bytes: arenaBytes, name: "vgpu\(id)-shadow")
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
        let busBase = self.busBase, scratchBus = self.scratchBus, arena = self.arena
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
        work = [try EventFD(nonBlocking: false), try EventFD(nonBlocking: false)]

        config = PCIConfigSpace(vendorID: VGPU.vendorID, deviceID: VGPU.deviceID, classCode: 0x03, subclass: 0x80,
                                subsystemVendorID: VGPU.vendorID, subsystemID: VGPU.deviceID, interruptPin: 1)
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
            intxGSI = placement.gsi
        } catch {
            context.resources.releaseMemorySlot(apertureSlot)
            releaseHostResources()
            throw error   // deinit unmaps the aperture window
        }
        context.addPausableDevice(self)
        startMediator()
    }

    deinit {
        munmap(apertureWindow, Int(slices.aperture.count))
    }

    /// Stops the mediator and executor threads, aborting this vGPU's GPU work at the engines' next command
    /// boundary (queued submissions are dropped), detaches the vGPU's memory from the GPU and frees its
    /// slices. Call after the VM has stopped; returns within milliseconds even with long jobs queued.
    public func shutdown() {
        let wasRunning = lifecycle.withLock { r -> Bool in defer { r = false }; return r }
        guard wasRunning else { return }
        for e in EngineID.allCases { abortEngineWork(e) }
        control.signal()
        for w in work { w.signal() }
        for t in threads { pthread_join(t, nil) }
        for e in EngineID.allCases {
            host.engineLocks[e.rawValue].withLock { _ = host.gpu.waitIdle(e, timeout: 5) }
        }
        gtt.clearAll()
        _ = host.gpu.systemMemory.unregister(base: busBase)
        host.gpu.systemMemory.free(busAddress: scratchBus)
        arena.release()
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

    /// The VM resumes: the executors run what was queued meanwhile.
    public func resume() {
        pausedFlag.withLock { $0 = false }
        for w in work { w.signal() }
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

    func readRegister(_ r: UInt32) -> UInt32 {
        switch r {
        case VGPURegs.pvMagic: return VGPURegs.pvMagicValue
        case VGPURegs.pvVersion: return VGPURegs.pvVersionValue
        case VGPURegs.pvVGPUID: return UInt32(id)
        case VGPURegs.pvApertureBase: return lo(slices.aperture.lowerBound)
        case VGPURegs.pvApertureBase + 4: return hi(slices.aperture.lowerBound)
        case VGPURegs.pvApertureSize: return lo(UInt64(slices.aperture.count))
        case VGPURegs.pvApertureSize + 4: return hi(UInt64(slices.aperture.count))
        case VGPURegs.pvHiddenBase: return lo(slices.hidden.lowerBound)
        case VGPURegs.pvHiddenBase + 4: return hi(slices.hidden.lowerBound)
        case VGPURegs.pvHiddenSize: return lo(UInt64(slices.hidden.count))
        case VGPURegs.pvHiddenSize + 4: return hi(UInt64(slices.hidden.count))
        case VGPURegs.pvGMSize: return lo(host.gpu.config.gmSize)
        case VGPURegs.pvGMSize + 4: return hi(host.gpu.config.gmSize)
        case VGPURegs.pvSharedPage: return state.withLock { lo($0.sharedPage) }
        case VGPURegs.pvSharedPage + 4: return state.withLock { hi($0.sharedPage) }
        case VGPURegs.errStatus...VGPURegs.errOffset: return readErrorBlock(r)
        case VGPURegs.statBlock: return readStatistic(r)
        default: break
        }
        guard let (row, element) = VGPURegisterFile.row(at: r), row.policy != .privileged else { return 0 }
        if row.reset == nil { return host.gpu.readRegister(r) }   // mirrors the physical GPU's configuration
        let engine = row.engine?.rawValue ?? 0
        return state.withLock { s in row.read.map { $0(s, engine, element) } ?? s.regs[r] }
    }

    func writeRegister(_ r: UInt32, _ value: UInt32) {
        switch r {
        case VGPURegs.pvSharedPage: state.withLock { $0.sharedPage = ($0.sharedPage & ~0xffff_ffff) | UInt64(value & ~0xfff) }; return
        case VGPURegs.pvSharedPage + 4: state.withLock { $0.sharedPage = ($0.sharedPage & 0xffff_ffff) | UInt64(value) << 32 }; return
        case VGPURegs.pvDoorbellRCS, VGPURegs.pvDoorbellBCS:
            // Normally an ioeventfd catches these in the kernel; a write that reaches us rings the same bell.
            doorbells[r == VGPURegs.pvDoorbellRCS ? 0 : 1].signal()
            return
        case VGPURegs.errStatus:
            if value & 1 != 0 { state.withLock { $0.errStatus = 0 } }
            return
        case VGPURegs.statBlock:
            return   // read-only counters
        default: break
        }
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
        let engine = row.engine?.rawValue ?? 0
        let fx = state.withLock { s -> VGPURegisterFile.WriteEffects in
            var fx = VGPURegisterFile.WriteEffects()
            if let write = row.write { write(&s, engine, element, masked, &fx) } else { s.regs[r] = masked }
            return fx
        }
        // A trapped TAIL write is copied and scanned here, on the vCPU thread, before the guest runs on:
        // whatever the guest changes after this doorbell cannot affect the submission.
        if let tail = fx.doorbellTail, let e = row.engine { doorbell(e, tail: tail) }
        // RESET returns to the guest only once the engine has stopped this vGPU's work.
        if fx.resetEngine, let e = row.engine { abortEngineWork(e) }
        if fx.kickMediator { control.signal() }
        if fx.deliver != 0 { signalInterrupt() }
        if fx.updateINTx { updateINTx() }
    }

    func readErrorBlock(_ r: UInt32) -> UInt32 {
        state.withLock { s in
            switch r {
            case VGPURegs.errStatus: return s.errStatus
            case VGPURegs.errEngine: return s.errEngine
            case VGPURegs.errReason: return s.errReason
            case VGPURegs.errOpcode: return s.errOpcode
            case VGPURegs.errCommandGM: return lo(s.errCommandGM)
            case VGPURegs.errCommandGM + 4: return hi(s.errCommandGM)
            case VGPURegs.errLevel: return s.errLevel
            case VGPURegs.errOperand: return lo(s.errOperand)
            case VGPURegs.errOperand + 4: return hi(s.errOperand)
            case VGPURegs.errCount: return s.errCount
            case VGPURegs.errOffset: return s.errOffset
            default: return 0
            }
        }
    }

    /// The statistics block: the low 32 bits of each counter, 0 for unassigned offsets.
    func readStatistic(_ r: UInt32) -> UInt32 {
        let s = statistics
        let v: UInt64
        switch r {
        case VGPURegs.statBadAccess: v = s.badAccesses
        case VGPURegs.statPrivilegedWrites: v = s.privilegedWrites
        case VGPURegs.statRefusedAddress: v = s.refusedAddressWrites
        case VGPURegs.statGTTRejected: v = s.gttRejected
        case VGPURegs.statGTTDropped: v = s.gttDroppedOutside
        case VGPURegs.statSubmissions: v = s.submissions
        case VGPURegs.statRejections: v = s.rejections
        default: v = 0
        }
        return lo(v)
    }

    // MARK: interrupts

    /// Latches `bits` into the virtual ISR/IIR (honouring IMR) and injects an MSI for newly pending ones.
    func raise(_ bits: UInt32) {
        let newly = state.withLock { VGPU.latch(bits, in: &$0) }
        if newly != 0 { signalInterrupt() }
    }

    /// Latches `bits` into ISR/IIR under the state lock; returns the bits that newly became pending
    /// (IIR & IER), for which the caller signals the interrupt after dropping the lock. Latching in the same
    /// critical section as the state change it reports means a driver that sees the change (STATUS, HEAD,
    /// the error block) also sees the interrupt bit.
    static func latch(_ bits: UInt32, in s: inout State) -> UInt32 {
        let before = s.iir & s.ier
        // ISR latches pulses; the engines' error bits are levels, read from the engine state.
        s.isr |= bits & ~(Interrupt.rcsError | Interrupt.bcsError)
        s.iir |= bits & ~s.imr
        return (s.iir & s.ier) & ~before
    }

    /// Tells the guest: an MSI when MSI is enabled, else INTA# (level: asserted while IIR & IER != 0,
    /// unless the command register's INTx-disable bit is set).
    func signalInterrupt() {
        if let msi = config.msiMessage {
            try? context?.signalMSI(address: msi.address, data: msi.data)
        } else {
            updateINTx()
        }
    }

    /// Drives INTA# to its current level (only while MSI is off).
    func updateINTx() {
        guard let gsi = intxGSI else { return }
        // Reading the state, deciding and driving the line happen under `intxLevel`, a serialising lock:
        // otherwise a vCPU clearing IIR and an executor raising it could drive the line in the opposite
        // order to the states they read, leaving INTA# asserted with nothing pending (or the reverse).
        // Lock order: `intxLevel`, then `state` briefly; nothing takes them the other way round.
        intxLevel.withLock { asserted in
            let pending = state.withLock { $0.iir & $0.ier != 0 }
            let level = pending && config.msiMessage == nil && config.command & PCIConfigSpace.commandINTxDisable == 0
            guard level != asserted else { return }
            asserted = level
            try? context?.setIRQLine(gsi, level: level)
        }
    }

    // MARK: statistics

    public struct Statistics: Sendable, Equatable {
        public var badAccesses: UInt64, privilegedWrites: UInt64, refusedAddressWrites: UInt64
        public var gttRejected: UInt64, gttDroppedOutside: UInt64
        public var submissions: UInt64, rejections: UInt64
    }

    public var statistics: Statistics {
        Statistics(badAccesses: badAccesses.load(ordering: .relaxed), privilegedWrites: privilegedWrites.load(ordering: .relaxed),
                   refusedAddressWrites: refusedAddressWrites.load(ordering: .relaxed), gttRejected: gtt.rejected.load(ordering: .relaxed),
                   gttDroppedOutside: gtt.droppedOutside.load(ordering: .relaxed), submissions: submissions.load(ordering: .relaxed),
                   rejections: rejections.load(ordering: .relaxed))
    }

    // MARK: mediator thread

    private func startMediator() {
        // The threads hold the vGPU until shutdown() stops them.
        if let t = OSThread.spawn(name: "vgpu\(id)-mediator", { [self] in
            context?.enterDeviceSandbox(thread: "vgpu\(id)-mediator")
            mediatorLoop()
        }) { threads.append(t) }
        for e in EngineID.allCases {
            if let t = OSThread.spawn(name: "vgpu\(id)-\(e)", { [self] in
                context?.enterDeviceSandbox(thread: "vgpu\(id)-\(e)")
                executorLoop(e)
            }) { threads.append(t) }
        }
    }

    var isRunning: Bool { lifecycle.withLock { $0 } }
}

@inline(__always) func lo(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v) }
@inline(__always) func hi(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v >> 32) }

