import Machine
import SoftGPU
import Synchronization

/// The physical GPU shared by every vGPU in this process, and its graphics-memory partition (GVT-g's
/// static partitioning): the host keeps the first `hostAperture` bytes of the aperture and, at the start
/// of the hidden range, one shadow arena per possible vGPU (shadow rings and batches live there). Each
/// vGPU gets one slice of the aperture and one of the hidden range, sized by its `VGPUType`, placed
/// first-fit in what is free. Each physical engine has one `EngineDispatcher`, the scheduler that runs the
/// vGPUs' checked work on it.
///
/// Its `GPUWatchdog` resets a vGPU whose one submission holds an engine longer than `hangLimit`.
///
/// Threads and ownership: `allocate`/`release` may run on any thread (VMs are built and torn down on
/// their callers' threads); the partition's bookkeeping and the bus-window counter are each behind a
/// Mutex; `gpu`, the dispatchers and the watchdog are safe from any thread (the watchdog has its own
/// thread, `gpuN-watchdog`); `deinit` stops the watchdog, the dispatchers, then the GPU.
public final class GPUHost: @unchecked Sendable {
    public struct Partition: Sendable {
        /// Aperture the host keeps (never given to a vGPU).
        public var hostAperture: UInt64 = 32 << 20
        /// The host-owned shadow arena of each vGPU (its two engines' shadow rings and batches).
        public var shadowArenaBytes: UInt64 = 16 << 20
        /// The most vGPUs at once (ids 1...maxVGPUs): the hidden reserve holds this many arenas.
        public var maxVGPUs: Int = 32
        /// Hidden GM the host keeps: the shadow arenas.
        public var hostHidden: UInt64 { UInt64(maxVGPUs) * shadowArenaBytes }
        public init() {}
    }

    /// The software GPU a `GPUHost()` builds: 4 GiB of graphics memory with a 256 MiB aperture (BAR2
    /// stays in the 32-bit PCI window), room for 18 `medium` vGPUs.
    public static let defaultConfig = GPUConfig(gmSize: 4 << 30, apertureSize: 256 << 20)

    public let gpu: SoftGPU
    public let partition: Partition
    /// This host's number in the process (0, 1, ...), in its dispatcher threads' names (`gpuN-rcs`).
    public let number: Int
    private static let hosts = Atomic<Int>(0)
    /// One scheduler per physical engine (index: `EngineID.rawValue`), with the host's scheduling policy.
    public let dispatchers: [EngineDispatcher]
    public func dispatcher(_ e: EngineID) -> EngineDispatcher { dispatchers[e.rawValue] }
    /// Resets a vGPU whose one submission holds an engine longer than its limit (`hangLimit`).
    public let watchdog: GPUWatchdog
    /// How long one submission may hold an engine before the watchdog resets its vGPU (nil: no limit).
    public var hangLimit: Duration? {
        get { watchdog.limit }
        set { watchdog.limit = newValue }
    }

    private struct Allocation {
        var ids: [Bool]
        var aperture = AddressRanges()
        var hidden = AddressRanges()
        var owners: [Int: (aperture: UInt64, hidden: UInt64)] = [:]
    }
    private let allocation: Mutex<Allocation>
    private let nextBusBase = Mutex<UInt64>(1 << 40)

    private let schedulerKind: Mutex<SchedulerKind>
    /// The scheduling policy of every engine's dispatcher (`--gpu-scheduler`; `WeightedPolicy` by default).
    public var scheduler: SchedulerKind { schedulerKind.withLock { $0 } }

    /// Gives every engine's dispatcher a fresh policy of `kind` (from the next pass on).
    public func setScheduler(_ kind: SchedulerKind) {
        schedulerKind.withLock { $0 = kind }
        for d in dispatchers { d.setPolicy(kind.makePolicy()) }
    }

    public init(config: GPUConfig = GPUHost.defaultConfig, partition: Partition = Partition(),
                scheduler: SchedulerKind = .default, hangLimit: Duration? = GPUWatchdog.defaultLimit) {
        schedulerKind = Mutex(scheduler)
        var c = config
        c.refreshRate = nil   // vblanks are virtual, per vGPU
        // The software GPU's engine workers inherit the device placement (ThreadPlacement).
        gpu = ThreadPlacement.asDeviceThread { SoftGPU(config: c) }
        let number = GPUHost.hosts.add(1, ordering: .relaxed).oldValue
        self.number = number
        do {
            dispatchers = try EngineID.allCases.map { try EngineDispatcher(engine: $0, threadName: "gpu\(number)-\($0)".lowercased(),
                                                                 policy: scheduler.makePolicy()) }
            watchdog = try GPUWatchdog(threadName: "gpu\(number)-watchdog", limit: hangLimit)
        } catch {
            fatalError("GPUHost: cannot create the engine dispatchers' and watchdog's eventfds: \(error) (raise the open-file limit)")
        }
        var p = partition
        // A GPU too small for the reserve keeps what fits (a test's small GPU): arenas first.
        let hiddenBytes = c.gmSize - c.apertureSize
        p.maxVGPUs = max(0, min(p.maxVGPUs, Int(hiddenBytes / max(p.shadowArenaBytes, 1)) - 1))
        p.hostAperture = min(p.hostAperture, c.apertureSize)
        self.partition = p
        allocation = Mutex(Allocation(ids: Array(repeating: false, count: p.maxVGPUs)))
    }

    deinit {
        watchdog.stop()
        for d in dispatchers { d.stop() }
        gpu.shutdown()
    }

    /// The aperture and hidden GM vGPU slices are placed in.
    public var apertureArea: Range<UInt64> { partition.hostAperture..<gpu.config.apertureSize }
    public var hiddenArea: Range<UInt64> {
        let start = gpu.config.apertureSize + partition.hostHidden
        return min(start, gpu.config.gmSize)..<gpu.config.gmSize
    }

    /// How many vGPUs of `type` fit on an otherwise empty GPU.
    public func capacity(of type: VGPUType = .default) -> Int {
        let byAperture = type.apertureBytes == 0 ? Int.max : Int(UInt64(apertureArea.count) / type.apertureBytes)
        let byHidden = type.hiddenBytes == 0 ? Int.max : Int(UInt64(hiddenArea.count) / type.hiddenBytes)
        return min(byAperture, byHidden, partition.maxVGPUs)
    }

    /// How many vGPUs of the default type fit on an otherwise empty GPU.
    public var capacity: Int { capacity(of: .default) }

    /// vGPUs in use now.
    public var inUse: Int { allocation.withLock { $0.ids.filter { $0 }.count } }

    public enum AllocationError: Error, CustomStringConvertible, Equatable {
        /// Every id is taken.
        case tooMany(max: Int)
        /// The graphics memory has no free range for a slice: which one, how big, the largest free.
        case noRoom(type: String, slice: String, wanted: UInt64, largestFree: UInt64)

        public var description: String {
            switch self {
            case .tooMany(let n):
                return "the GPU has room for \(n) vGPUs and all are in use: stop a VM first"
            case let .noRoom(type, slice, wanted, free):
                return "the GPU's graphics memory is exhausted: a \(type) vGPU needs a \(wanted >> 20) MiB \(slice) slice " +
                       "and the largest free one is \(free >> 20) MiB: use a smaller vGPU type (\(VGPUType.names)) or stop a VM first"
            }
        }
    }

    /// Reserves a vGPU id (1-based) and slices of `type`'s sizes.
    func allocate(type: VGPUType = .default) throws(AllocationError) -> (id: Int, slices: GMSlices) {
        let apArea = apertureArea, hidArea = hiddenArea
        let result = allocation.withLock { a -> Result<(Int, GMSlices), AllocationError> in
            guard let i = a.ids.firstIndex(of: false) else { return .failure(.tooMany(max: a.ids.count)) }
            let align: UInt64 = 1 << 20
            guard let ap = a.aperture.place(size: type.apertureBytes, align: align, from: 0, in: [apArea]) else {
                return .failure(.noRoom(type: type.name, slice: "aperture", wanted: type.apertureBytes,
                                        largestFree: a.aperture.largestFree(align: align, from: 0, in: [apArea])))
            }
            guard let hid = a.hidden.place(size: type.hiddenBytes, align: align, from: 0, in: [hidArea]) else {
                return .failure(.noRoom(type: type.name, slice: "hidden", wanted: type.hiddenBytes,
                                        largestFree: a.hidden.largestFree(align: align, from: 0, in: [hidArea])))
            }
            a.ids[i] = true
            a.aperture.claim(ap, ap + type.apertureBytes, "vgpu\(i + 1)")
            a.hidden.claim(hid, hid + type.hiddenBytes, "vgpu\(i + 1)")
            a.owners[i + 1] = (ap, hid)
            return .success((i + 1, GMSlices(aperture: ap..<(ap + type.apertureBytes), hidden: hid..<(hid + type.hiddenBytes))))
        }
        return try result.get()
    }

    func release(id: Int) {
        allocation.withLock { a in
            guard id >= 1 && id <= a.ids.count, let o = a.owners.removeValue(forKey: id) else { return }
            a.ids[id - 1] = false
            a.aperture.release(start: o.aperture)
            a.hidden.release(start: o.hidden)
        }
    }

    /// A fresh bus-address window for one VM's guest RAM (VMs never share bus addresses).
    func busWindow(bytes: UInt64) -> UInt64 {
        nextBusBase.withLock { b in
            let base = b
            b += (bytes + (1 << 30) - 1) / (1 << 30) * (1 << 30) + (1 << 30)
            return base
        }
    }

    /// Host-owned GM for the shadow buffers of vGPU `id` (1-based): its arena in the host's hidden reserve.
    func shadowArena(id: Int) -> (gm: UInt64, bytes: UInt64) {
        (gpu.config.apertureSize + UInt64(id - 1) * partition.shadowArenaBytes, partition.shadowArenaBytes)
    }
}
