import Glibc

/// A pthread mutex with one condition variable (CLOCK_MONOTONIC for timed waits).
///
/// `Synchronization.Mutex` has no condition variable, so state that threads must *wait on* (engine
/// scheduling state, the vblank timer's run flag) lives behind a `Monitor`; everything else uses
/// `Mutex`/`Atomic`.
final class Monitor: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    @inline(__always) func lock() { pthread_mutex_lock(mutex) }
    @inline(__always) func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits for a broadcast; the lock must be held.
    func wait() { pthread_cond_wait(cond, mutex) }

    /// Waits for a broadcast or until `deadline` (monotonic nanoseconds). Returns false on timeout.
    @discardableResult
    func wait(deadline: UInt64) -> Bool {
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        return pthread_cond_timedwait(cond, mutex, &ts) != ETIMEDOUT
    }

    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Monotonic clock in nanoseconds.
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Deadline `seconds` from now, saturating (nil = forever).
func deadline(after seconds: Double?) -> UInt64? {
    guard let s = seconds else { return nil }
    if s <= 0 { return monotonicNanos() }
    let ns = s * 1e9
    return ns >= Double(UInt64.max / 2) ? UInt64.max / 2 : monotonicNanos() &+ UInt64(ns)
}

/// Dedicated OS threads for engine workers and the vblank timer (never Swift concurrency's pool).
enum OSThread {
    final class Box {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ name: String) { self.body = body; self.name = name }
    }

    /// Creates a joinable thread running `body`.
    static func spawn(name: String, _ body: @escaping @Sendable () -> Void) -> pthread_t {
        let box = Unmanaged.passRetained(Box(body, name))
        var tid = pthread_t()
        let r = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<OSThread.Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box.toOpaque())
        precondition(r == 0, "SoftGPU: pthread_create failed (\(r))")
        return tid
    }

    static func join(_ t: pthread_t) { pthread_join(t, nil) }
}
