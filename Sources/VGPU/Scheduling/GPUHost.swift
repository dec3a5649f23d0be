import Machine
import SoftGPU
import Synchronization

/// The physical GPU shared by every vGPU in this process, and its graphics-memory partition (GVT-g's
/// static partitioning): the host keeps the first `hostAperture` bytes of the aperture and the first
/// `hostHidden` bytes of the hidden range (shadow rings and batches live there); each vGPU gets one
/// contiguous slice of each after that. Each physical engine has one `EngineDispatcher`, the scheduler that
/// runs the vGPUs' checked work on it.
///
/// Threads and ownership: the partition's slot table and the bus-window counter are each behind a Mutex;
/// `gpu` and the dispatchers are safe from any thread; `deinit` stops the dispatchers, then the GPU.
public final class GPUHost: @unchecked Sendable {
    public struct Partition: Sendable {
        public var hostAperture: UInt64 = 32 << 20
        public var hostHidden: UInt64 = 128 << 20
        public var vgpuAperture: UInt64 = 64 << 20
        public var vgpuHidden: UInt64 = 256 << 20
        public init() {}
    }

    public let gpu: SoftGPU
    public let partition: Partition
    /// This host's number in the process (0, 1, ...), in its dispatcher threads' names (`gpuN-rcs`).
    public let number: Int
    private static let hosts = Atomic<Int>(0)
    /// One scheduler per physical engine (index: `EngineID.rawValue`), FIFO unless told otherwise.
    public let dispatchers: [EngineDispatcher]
    public func dispatcher(_ e: EngineID) -> EngineDispatcher { dispatchers[e.rawValue] }
    private let slots = Mutex<[Bool]>([])
    private let nextBusBase = Mutex<UInt64>(1 << 40)

    public init(config: GPUConfig = GPUConfig(), partition: Partition = Partition()) {
        var c = config
        c.refreshRate = nil   // vblanks are virtual, per vGPU
        gpu = SoftGPU(config: c)
        self.partition = partition
        let number = GPUHost.hosts.add(1, ordering: .relaxed).oldValue
        self.number = number
        do {
            dispatchers = try EngineID.allCases.map { try EngineDispatcher(engine: $0, threadName: "gpu\(number)-\($0)".lowercased()) }
        } catch {
            fatalError("GPUHost: cannot create the engine dispatchers' eventfds: \(error) (raise the open-file limit)")
        }
        let count = Int(min((c.apertureSize - partition.hostAperture) / partition.vgpuAperture,
                            (c.gmSize - c.apertureSize - partition.hostHidden) / partition.vgpuHidden, 7))
        slots.withLock { $0 = Array(repeating: false, count: max(count, 0)) }
    }

    deinit {
        for d in dispatchers { d.stop() }
        gpu.shutdown()
    }

    /// How many vGPUs fit.
    public var capacity: Int { slots.withLock { $0.count } }

    public enum AllocationError: Error, CustomStringConvertible {
        case full(Int)
        public var description: String {
            switch self {
            case .full(let n): return "the GPU has room for \(n) vGPUs and all are in use: stop a VM first"
            }
        }
    }

    /// Reserves a vGPU id (1-based) and its slices.
    func allocate() throws -> (id: Int, slices: GMSlices) {
        let index: Int? = slots.withLock { s in
            guard let i = s.firstIndex(of: false) else { return nil }
            s[i] = true
            return i
        }
        guard let i = index else { throw AllocationError.full(capacity) }
        let ap = partition.hostAperture + UInt64(i) * partition.vgpuAperture
        let hid = gpu.config.apertureSize + partition.hostHidden + UInt64(i) * partition.vgpuHidden
        return (i + 1, GMSlices(aperture: ap..<(ap + partition.vgpuAperture), hidden: hid..<(hid + partition.vgpuHidden)))
    }

    func release(id: Int) { slots.withLock { if id >= 1 && id <= $0.count { $0[id - 1] = false } } }

    /// A fresh bus-address window for one VM's guest RAM (VMs never share bus addresses).
    func busWindow(bytes: UInt64) -> UInt64 {
        nextBusBase.withLock { b in
            let base = b
            b += (bytes + (1 << 30) - 1) / (1 << 30) * (1 << 30) + (1 << 30)
            return base
        }
    }

    /// Host-owned GM for the shadow buffers of vGPU `id`: a window in the host's hidden reserve.
    func shadowArena(id: Int) -> (gm: UInt64, bytes: UInt64) {
        let per = partition.hostHidden / 8
        return (gpu.config.apertureSize + UInt64(id) * per, per)
    }
}
