import CKVM
import Synchronization

/// Where device threads run: by default wherever the kernel puts them; with `deviceCPU` set (the
/// benchmark does, so that its ratios do not depend on where the scheduler happened to wake a thread),
/// every device thread that starts afterwards (a vGPU's mediator thread, a GPU's engine dispatchers, the
/// software GPU's engine workers) is pinned to that CPU as it starts, before it enters its seccomp filter
/// (which does not allow sched_setaffinity). Threads already running keep their placement.
///
/// Threads and ownership: the setting is one process-wide atomic, set from any thread; each device
/// thread reads it once as it starts. Pinning changes only the calling thread.
public enum ThreadPlacement {
    private static let device = Atomic<Int>(-1)

    /// The CPU device threads started from now on are pinned to; nil: not pinned (the default).
    public static var deviceCPU: Int? {
        get { let c = device.load(ordering: .relaxed); return c >= 0 ? c : nil }
        set { device.store(newValue.map { max(0, $0) } ?? -1, ordering: .relaxed) }
    }

    /// Pins the calling thread to `deviceCPU`, if set (a device thread calls this first). Returns the CPU.
    @discardableResult
    public static func placeDeviceThread() -> Int? {
        guard let cpu = deviceCPU, ckvm_pin_thread(Int32(cpu)) == 0 else { return nil }
        return cpu
    }

    /// Runs `body` with the calling thread placed like a device thread, so that threads `body` creates
    /// inherit the device placement (the software GPU's engine workers); then restores the thread's CPUs.
    public static func asDeviceThread<R>(_ body: () throws -> R) rethrows -> R {
        guard deviceCPU != nil else { return try body() }
        let saved = allowedCPUs
        placeDeviceThread()
        defer { _ = setAllowedCPUs(saved) }
        return try body()
    }

    /// The CPUs the calling thread may run on.
    public static var allowedCPUs: [Int] {
        var buf = [Int32](repeating: 0, count: 1024)
        let n = ckvm_thread_cpus(&buf, Int32(buf.count))
        return n > 0 ? buf.prefix(Int(n)).map(Int.init) : []
    }

    /// Lets the calling thread run on `cpus` (false when the kernel refused).
    @discardableResult
    public static func setAllowedCPUs(_ cpus: [Int]) -> Bool {
        guard !cpus.isEmpty else { return false }
        let c = cpus.map { Int32($0) }
        return ckvm_set_thread_cpus(c, Int32(c.count)) == 0
    }

    /// Pins the calling thread to `cpu` (false when the kernel refused).
    @discardableResult
    public static func pin(to cpu: Int) -> Bool { ckvm_pin_thread(Int32(cpu)) == 0 }

    /// The CPU the calling thread runs on now (nil if unknown).
    public static var currentCPU: Int? { let c = ckvm_current_cpu(); return c >= 0 ? Int(c) : nil }
}
