import Glibc
import Synchronization

/// Configuration of the model.
public struct GPUConfig: Sendable {
    /// Graphics memory size (page aligned, at most 4 GiB).
    public var gmSize: UInt64 = 1 << 30
    /// The aperture (CPU-mappable) part: [0, apertureSize). The rest is hidden GM.
    public var apertureSize: UInt64 = 256 << 20
    /// Vblank timer rate in Hz; nil = no timer thread (use `tickVBlank()`).
    public var refreshRate: Double? = 60
    /// Commands one ring-level command may cause (its batches included) before `stepBudgetExceeded`.
    public var stepBudget: Int = 1 << 20
    /// Largest scanout width/height.
    public var maxScanoutDimension: Int = 8192
    /// SGEMM on OpenBLAS when it is loaded (false: always the SIMD kernel, whose resumable form stops every
    /// 16 rows: tests of stopping inside an SGEMM use it).
    public var sgemmOnBLAS = true

    public init(gmSize: UInt64 = 1 << 30, apertureSize: UInt64 = 256 << 20, refreshRate: Double? = 60,
                stepBudget: Int = 1 << 20, maxScanoutDimension: Int = 8192) {
        self.gmSize = gmSize
        self.apertureSize = apertureSize
        self.refreshRate = refreshRate
        self.stepBudget = stepBudget
        self.maxScanoutDimension = maxScanoutDimension
    }
}

/// The software "physical" GPU: system memory, graphics memory behind a global GTT, a register file
/// with interrupts, a render/compute engine (RCS), a blitter (BCS) and a display engine.
///
/// It knows nothing about KVM, guests or a mediator; everything is reached through registers, the GTT
/// and memory, as a hardware backend would be.
///
/// Threads: one worker per engine and (with a refresh rate) a vblank timer thread, all started here and
/// joined by `shutdown()` (also called by deinit). All public methods may be called from any thread.
public final class SoftGPU: @unchecked Sendable {
    public let config: GPUConfig
    public let systemMemory: SystemMemory
    public let gtt: GTT
    public let interrupts: InterruptController
    public let display: DisplayEngine
    public let engines: [Engine]
    let storage = StorageRegisters()
    private let shutDown = Atomic<Bool>(false)
    private let unclaimed = Atomic<UInt64>(0)

    public init(config: GPUConfig = GPUConfig()) {
        // OpenBLAS is loaded here, on the creating thread, before the engine threads (and their seccomp
        // filters) exist: loading opens files. A process without a GPU never maps it.
        _ = Kernels.blasLoaded
        self.config = config
        systemMemory = SystemMemory()
        gtt = GTT(gmSize: config.gmSize, apertureSize: config.apertureSize, systemMemory: systemMemory)
        interrupts = InterruptController()
        display = DisplayEngine(gtt: gtt, interrupts: interrupts, refreshRate: config.refreshRate,
                                maxDimension: config.maxScanoutDimension)
        let st = storage, g = gtt, irq = interrupts, disp = display
        engines = EngineID.allCases.map {
            Engine(id: $0, gtt: g, interrupts: irq, display: disp, storage: st, stepBudget: config.stepBudget,
                   sgemmOnBLAS: config.sgemmOnBLAS)
        }
    }

    deinit { shutdown() }

    /// Stops the engines (aborting work in progress) and the vblank timer, and joins their threads.
    public func shutdown() {
        guard !shutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        for e in engines { e.stop() }
        display.stop()
    }

    public func engine(_ id: EngineID) -> Engine { engines[id.rawValue] }

    // MARK: MMIO

    /// Reads the 32-bit register at `offset`. Unaligned, out-of-range or unassigned offsets read 0.
    public func readRegister(_ offset: UInt32) -> UInt32 {
        guard offset & 3 == 0, offset < Reg.mmioSize else { return 0 }
        switch offset {
        case Reg.gpuID: return Reg.gpuIDValue
        case Reg.gmSizeMiB: return UInt32(truncatingIfNeeded: config.gmSize >> 20)
        case Reg.apertureSizeMiB: return UInt32(truncatingIfNeeded: config.apertureSize >> 20)
        default: break
        }
        if let v = interrupts.read(offset) { return v }
        if DisplayEngine.handles(offset) { return display.read(offset) }
        if let v = storage.read(offset) { return v }
        for e in engines {
            let b = Reg.engineBase(e.id)
            if offset >= b && offset < b + 0x100 { return e.readRegister(offset - b) }
        }
        unclaimed.wrappingAdd(1, ordering: .relaxed)
        return 0
    }

    /// Writes the 32-bit register at `offset`. Read-only, unaligned, out-of-range or unassigned
    /// offsets ignore the write.
    public func writeRegister(_ offset: UInt32, _ value: UInt32) {
        guard offset & 3 == 0, offset < Reg.mmioSize else { return }
        if offset <= Reg.apertureSizeMiB { return }   // identification registers are read-only
        if interrupts.write(offset, value) { return }
        if DisplayEngine.handles(offset) { display.write(offset, value); return }
        if storage.write(offset, value) { return }
        for e in engines {
            let b = Reg.engineBase(e.id)
            if offset >= b && offset < b + 0x100 { e.writeRegister(offset - b, value); return }
        }
        unclaimed.wrappingAdd(1, ordering: .relaxed)
    }

    /// Accesses to offsets with no register (diagnostics).
    public var unclaimedRegisterAccesses: UInt64 { unclaimed.load(ordering: .relaxed) }

    // MARK: conveniences

    /// Installs the interrupt handler (see `InterruptController`).
    public func setInterruptHandler(_ h: (@Sendable (UInt32) -> Void)?) { interrupts.setHandler(h) }

    /// Writes an engine's TAIL (the doorbell); returns immediately.
    public func submit(_ e: EngineID, tail: UInt32) { engine(e).submit(tail: tail) }

    @discardableResult
    public func waitIdle(_ e: EngineID, timeout: Double? = nil) -> EngineWaitResult { engine(e).waitIdle(timeout: timeout) }

    /// Waits for every engine; returns the first non-idle result.
    @discardableResult
    public func waitAllIdle(timeout: Double? = nil) -> EngineWaitResult {
        for e in engines {
            let r = e.waitIdle(timeout: timeout)
            if r != .idle { return r }
        }
        return .idle
    }

    public func resetEngine(_ e: EngineID) { engine(e).reset() }

    public func tickVBlank() { display.tickVBlank() }

    public func scanout() -> Image { display.scanout() }

    // MARK: host memory

    /// Allocates zeroed host memory, registers it as system memory and maps it at `gm` through the GTT.
    public func mapHostMemory(gm: UInt64, bytes: UInt64, readOnly: Bool = false, name: String = "buffer") throws -> HostBuffer {
        guard gm % GTT.pageSize == 0 else { throw GMFault(.outOfRange, gm) }
        let pages = Int((bytes + GTT.pageSize - 1) / GTT.pageSize)
        guard gm < gtt.gmSize, UInt64(pages) * GTT.pageSize <= gtt.gmSize - gm else { throw GMFault(.outOfRange, gm) }
        let region = try systemMemory.allocate(bytes: bytes, name: name)
        do {
            try gtt.map(gm: gm, bus: region.base, pages: pages, readOnly: readOnly)
        } catch {
            systemMemory.free(busAddress: region.base)
            throw error
        }
        return HostBuffer(gpu: self, gm: gm, region: region, pages: pages)
    }
}

/// Host memory mapped into GM (see `SoftGPU.mapHostMemory`). `release()` (or deinit) unmaps the GTT
/// entries and frees the memory: do it only while no engine uses the buffer.
public final class HostBuffer: @unchecked Sendable {
    public let gm: UInt64
    public let busAddress: UInt64
    public let pointer: UnsafeMutableRawPointer
    public let length: Int
    private weak var gpu: SoftGPU?
    private let pages: Int
    private let released = Atomic<Bool>(false)

    init(gpu: SoftGPU, gm: UInt64, region: SystemMemory.Region, pages: Int) {
        self.gpu = gpu
        self.gm = gm
        busAddress = region.base
        pointer = region.pointer
        length = Int(region.length)
        self.pages = pages
    }

    deinit { release() }

    public func release() {
        guard !released.exchange(true, ordering: .acquiringAndReleasing), let g = gpu else { return }
        g.gtt.unmap(gm: gm, pages: pages)
        g.systemMemory.free(busAddress: busAddress)
    }

    public func floats(_ count: Int, at byteOffset: Int = 0) -> UnsafeMutablePointer<Float> {
        precondition(byteOffset >= 0 && byteOffset + count * 4 <= length)
        return (pointer + byteOffset).assumingMemoryBound(to: Float.self)
    }
}
