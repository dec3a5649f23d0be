import Glibc
import Synchronization

/// Why an engine stopped with an error. Raw values are what ERROR_CODE reads.
public enum EngineErrorCode: UInt32, Sendable, CaseIterable {
    case none = 0
    /// Header with a reserved client or an opcode not in the command table.
    case unknownCommand = 1
    /// The command exists but this engine does not accept it.
    case commandNotAllowedOnEngine = 2
    /// The length field holds a value the command does not allow.
    case invalidLength = 3
    /// A ring command extends past the ring TAIL.
    case commandPastTail = 4
    /// A batch command extends past the end of its batch.
    case commandPastBatchEnd = 5
    /// Execution reached the end of a batch without BATCH_BUFFER_END.
    case batchOverrun = 6
    /// BATCH_BUFFER_START inside a second-level batch (more than 2 levels).
    case batchNestingTooDeep = 7
    /// A second-level BATCH_BUFFER_START issued from the ring.
    case invalidBatchStart = 8
    /// BATCH_BUFFER_END in the ring.
    case batchEndOutsideBatch = 9
    /// More commands than `GPUConfig.stepBudget` for one ring-level command (e.g. an endless chain).
    case stepBudgetExceeded = 10
    /// An operand range (address + extent) lies outside graphics memory.
    case addressOutOfRange = 11
    /// An access met an invalid GTT entry.
    case gttInvalidEntry = 12
    /// A GTT entry points at a bus address that is not registered system memory.
    case busAddressUnmapped = 13
    /// An engine write to a page whose GTT entry is read-only.
    case writeToReadOnlyPage = 14
    /// An operand violates a constraint of the command (alignment, pitch, leading dimension, plane, ...).
    case invalidOperand = 15
    /// LOAD_REGISTER_IMM to a register that commands may not write.
    case registerNotWritable = 16
    /// START/HEAD/TAIL/CTL are inconsistent (misaligned, outside the ring or GM).
    case invalidRingState = 17
}

/// A recorded engine error.
public struct EngineError: Error, Equatable, Sendable, CustomStringConvertible {
    public let code: EngineErrorCode
    /// The GM address of the faulting access or operand (a register offset for `registerNotWritable`).
    public let faultAddress: UInt64
    /// The GM address of the command that failed (ring START + HEAD for ring commands).
    public let commandAddress: UInt64
    public let detail: String

    public var description: String {
        "\(code) at command 0x\(hex(commandAddress)), address 0x\(hex(faultAddress)): \(detail)"
    }
}

/// Outcome of waiting for an engine.
public enum EngineWaitResult: Sendable, Equatable {
    case idle
    case error(EngineError)
    case timedOut
    /// The work stopped at a command boundary because `Engine.suspend()` asked; `saveContext()` takes it.
    case suspended
}

/// One context's engine state (GVT-g's context image): what a scheduler saves when it switches the
/// engine from one client to another and restores when it switches back. `gprs` are the 16 64-bit GPRs
/// (32 dwords, GPR n = dwords 2n, 2n+1); `execution` is where suspended work stopped (nil: none), opaque.
public struct EngineContext: Sendable, Equatable {
    public var gprs: [UInt32]
    public internal(set) var execution: SuspendedExecution?

    public init(gprs: [UInt32] = Array(repeating: 0, count: Int(Reg.gprDwords))) {
        self.gprs = gprs
        execution = nil
    }
}

/// Where an engine's work stopped when it was suspended, to resume exactly there: the ring (START, CTL,
/// HEAD of the ring command in progress, TAIL), the batch stack under that command (each level's next
/// command, end and level: the return addresses of second-level calls included), the steps spent on it,
/// and the long command (SGEMM, SAXPY, a blit) in progress with its row-block progress.
public struct SuspendedExecution: Sendable, Equatable {
    var start: UInt32, ctl: UInt32, head: UInt32, tail: UInt32
    /// Bytes of the ring command in progress (a BATCH_BUFFER_START or a long command); 0 when the ring
    /// stopped between commands.
    var ringCommandBytes: UInt32
    var frames: [BatchFrame]
    var steps: Int
    var partial: PartialCommand?
    /// The GM address of the command it stopped at (ACTHD).
    public var commandAddress: UInt64
}

/// One level of the batch stack: the next command, the end of the batch, its level (1 or 2).
struct BatchFrame: Sendable, Equatable {
    var ip: UInt64
    var end: UInt64
    var level: Int
}

/// A long command stopped between row blocks: its dwords and how far it got.
struct PartialCommand: Sendable, Equatable {
    var command: [UInt32]
    var progress: KernelProgress
}

/// Suspension requested: unwinds execution, carrying what it takes to resume.
struct Suspended: Error {
    var frames: [BatchFrame] = []
    var partial: PartialCommand?
}

/// Internal fault before the command address is attached.
struct ExecFault: Error {
    let code: EngineErrorCode
    let address: UInt64
    let detail: String
    init(_ code: EngineErrorCode, _ address: UInt64, _ detail: String) {
        self.code = code
        self.address = address
        self.detail = detail
    }
    init(_ f: GMFault, _ what: String) {
        switch f.kind {
        case .outOfRange: code = .addressOutOfRange
        case .invalidEntry: code = .gttInvalidEntry
        case .unmappedBus: code = .busAddressUnmapped
        case .readOnly: code = .writeToReadOnlyPage
        }
        address = f.address
        detail = "\(what): \(f)"
    }
}

/// Reset in progress: unwinds execution without recording an error.
struct Aborted: Error {}

/// One engine (command streamer) with a ring buffer and a dedicated worker thread.
///
/// Threads and ownership:
/// - Ring registers (START, HEAD, TAIL, CTL), the error record, `busy` and the reset/stop requests are
///   guarded by `monitor`. Any thread may read/write registers (`readRegister`/`writeRegister`), submit,
///   wait or reset. START, CTL and HEAD should be programmed only while the engine is idle; TAIL may be
///   advanced at any time.
/// - The worker owns everything used during execution (the command buffer, the translation cache);
///   it takes `monitor` only between ring-level commands to publish HEAD and pick up a new TAIL.
/// - `abort`, `acthd` and `commandCount` are atomics readable from any thread.
/// - Resets are performed by the worker; `reset()` asks and waits (or, called on the worker thread
///   itself, e.g. from an interrupt handler, only asks).
/// - Context switches (a scheduler sharing the engine between clients): `suspend()` raises the `yield`
///   atomic, which the worker polls where it polls `abort` (between commands, between row blocks of long
///   commands); it then parks the work in `suspended` (under `monitor`) and goes idle without an
///   interrupt. `saveContext()` takes it with the GPRs, `restoreContext(_:)` puts a context back (the
///   worker resumes a suspended execution exactly where it stopped). Both must be called while the engine
///   is idle (after `waitIdle`), by the one thread that owns the engine's scheduling.
public final class Engine: @unchecked Sendable {
    public let id: EngineID
    let gtt: GTT
    let interrupts: InterruptController
    let display: DisplayEngine
    let storage: StorageRegisters
    let stepBudget: Int
    /// `GPUConfig.sgemmOnBLAS`.
    let sgemmOnBLAS: Bool

    let monitor = Monitor()
    // --- guarded by monitor ---
    private var start: UInt32 = 0
    private var head: UInt32 = 0
    private var tail: UInt32 = 0
    private var ctl: UInt32 = 0
    private var busy = false
    private var error: EngineError?
    private var stopping = false
    private var resetPending = false
    private var resetGeneration: UInt64 = 0
    private var tracerSlot: AccessTracer?
    private var worker: pthread_t?
    /// Work parked by a suspension, until `saveContext()` takes it.
    private var suspended: SuspendedExecution?
    /// Work `restoreContext` put back, for the worker to resume.
    private var resumeFrom: SuspendedExecution?

    // --- atomics ---
    let abort = Atomic<Bool>(false)
    /// A suspension is requested (a context switch): stop at the next command boundary.
    let yield = Atomic<Bool>(false)
    let acthd = Atomic<UInt64>(0)
    let commandCount = Atomic<UInt64>(0)

    // --- worker-only ---
    private var cmd: [UInt32] = []
    private var tracer: AccessTracer?
    private var currentCommand: UInt64 = 0

    init(id: EngineID, gtt: GTT, interrupts: InterruptController, display: DisplayEngine,
         storage: StorageRegisters, stepBudget: Int, sgemmOnBLAS: Bool = true) {
        self.sgemmOnBLAS = sgemmOnBLAS
        self.id = id
        self.gtt = gtt
        self.interrupts = interrupts
        self.display = display
        self.storage = storage
        self.stepBudget = max(1, stepBudget)
        cmd.reserveCapacity(1 + 2 * CommandTable.maxLRIPairs)
        let t = OSThread.spawn(name: "softgpu-\(id)".lowercased()) { [self] in run() }
        monitor.withLock { worker = t }
    }

    /// Stops and joins the worker (after the command in progress; a long command is aborted).
    func stop() {
        let t: pthread_t? = monitor.withLock {
            stopping = true
            abort.store(true, ordering: .relaxed)
            monitor.broadcast()
            defer { worker = nil }
            return worker
        }
        if let t { OSThread.join(t) }
    }

    // MARK: public state

    /// The recorded error, if the engine is in the error state.
    public var lastError: EngineError? { monitor.withLock { error } }
    /// Commands executed (ring and batch) since creation.
    public var commandsExecuted: UInt64 { commandCount.load(ordering: .relaxed) }
    /// True when there is nothing to do: not executing and (HEAD == TAIL, ring disabled, or error).
    public var isIdle: Bool { monitor.withLock { idleLocked } }

    private var ringEnabled: Bool { ctl & Reg.ringCtlEnable != 0 }
    private var ringSize: UInt32 { UInt32(Reg.ringPages(ctl: ctl)) * 4096 }
    private var hasWork: Bool { ringEnabled && error == nil && suspended == nil && (head != tail || resumeFrom != nil) }
    private var idleLocked: Bool { !busy && !resetPending && !hasWork }

    /// CPU time the engine's worker thread has used so far: the time the engine spent working (on a loaded
    /// host, unlike wall time, it does not grow while the thread waits for a CPU). Zero once stopped.
    public var workerCPUTime: Duration {
        guard let t = monitor.withLock({ worker }) else { return .zero }
        var clock = clockid_t()
        var ts = timespec()
        guard pthread_getcpuclockid(t, &clock) == 0, clock_gettime(clock, &ts) == 0 else { return .zero }
        return .seconds(ts.tv_sec) + .nanoseconds(ts.tv_nsec)
    }

    /// Enables access tracing (diagnostics); set while the engine is idle. nil turns it off.
    public func setTracer(_ t: AccessTracer?) { monitor.withLock { tracerSlot = t } }

    // MARK: registers

    func readRegister(_ rel: UInt32) -> UInt32 {
        monitor.withLock {
            switch rel {
            case Reg.ringTailOffset: return tail
            case Reg.ringHeadOffset: return head
            case Reg.ringStartOffset: return start
            case Reg.ringCtlOffset: return ctl
            case Reg.statusOffset:
                return (ringEnabled ? Reg.statusRingEnabled : 0) | (busy ? Reg.statusBusy : 0)
                    | (error != nil ? Reg.statusError : 0) | (idleLocked ? Reg.statusIdle : 0)
            case Reg.errorCodeOffset: return error?.code.rawValue ?? 0
            case Reg.faultAddressLoOffset: return UInt32(truncatingIfNeeded: error?.faultAddress ?? 0)
            case Reg.faultAddressHiOffset: return UInt32(truncatingIfNeeded: (error?.faultAddress ?? 0) >> 32)
            case Reg.errorIPLoOffset: return UInt32(truncatingIfNeeded: error?.commandAddress ?? 0)
            case Reg.errorIPHiOffset: return UInt32(truncatingIfNeeded: (error?.commandAddress ?? 0) >> 32)
            case Reg.commandCountOffset: return UInt32(truncatingIfNeeded: commandCount.load(ordering: .relaxed))
            case Reg.acthdOffset: return UInt32(truncatingIfNeeded: acthd.load(ordering: .relaxed))
            default: return 0
            }
        }
    }

    func writeRegister(_ rel: UInt32, _ value: UInt32) {
        if rel == Reg.resetOffset {
            if value & 1 != 0 { reset() }
            return
        }
        monitor.withLock {
            switch rel {
            case Reg.ringTailOffset: tail = value
            case Reg.ringHeadOffset: head = value
            case Reg.ringStartOffset: start = value
            case Reg.ringCtlOffset: ctl = value & (Reg.ringCtlEnable | (0x1FF << 12))
            default: return
            }
            monitor.broadcast()
        }
    }

    /// Programs the ring (engine should be idle): START, HEAD = TAIL = 0, CTL = size + enable.
    public func configureRing(start gm: UInt32, pages: Int) {
        monitor.withLock {
            start = gm
            head = 0
            tail = 0
            ctl = Reg.ringCtl(pages: pages)
            monitor.broadcast()
        }
    }

    /// Writes TAIL (the doorbell); returns immediately.
    public func submit(tail newTail: UInt32) {
        monitor.withLock {
            tail = newTail
            monitor.broadcast()
        }
    }

    /// Blocks until the engine is idle or in error (or `timeout` seconds pass).
    @discardableResult
    public func waitIdle(timeout: Double? = nil) -> EngineWaitResult {
        let dl = deadline(after: timeout)
        monitor.lock()
        defer { monitor.unlock() }
        while true {
            if let e = error, !busy, !resetPending { return .error(e) }
            if suspended != nil, !busy, !resetPending { return .suspended }
            if idleLocked || stopping { return .idle }
            if let dl {
                if !monitor.wait(deadline: dl) && monotonicNanos() >= dl {
                    if let e = error, !busy { return .error(e) }
                    return idleLocked ? .idle : .timedOut
                }
            } else {
                monitor.wait()
            }
        }
    }

    /// Resets the engine: aborts the command in progress, clears the error, HEAD = TAIL = START = CTL = 0
    /// (ring disabled) and the GPRs. Blocks until done, unless called on the engine's own worker thread
    /// (from an interrupt handler), where it only requests the reset.
    public func reset() {
        monitor.lock()
        let gen = resetGeneration
        resetPending = true
        abort.store(true, ordering: .relaxed)
        monitor.broadcast()
        let onWorker = worker.map { pthread_equal($0, pthread_self()) != 0 } ?? false
        if !onWorker {
            while resetGeneration == gen && !stopping { monitor.wait() }
        }
        monitor.unlock()
    }

    // MARK: context switches

    /// Asks the work in progress to stop at its next command boundary (between row blocks inside SGEMM,
    /// SAXPY and blits) and park there; `waitIdle` then returns `.suspended` (or `.idle`/`.error` if the
    /// work ended first). Returns at once.
    public func suspend() {
        monitor.withLock {
            guard busy || hasWork else { return }
            yield.store(true, ordering: .relaxed)
            monitor.broadcast()
        }
    }

    /// The engine's context: its GPRs and the parked work of a suspension (taken: the engine keeps no
    /// trace of it). The ring is left disabled (START, HEAD, TAIL, CTL 0). Call while the engine is idle.
    public func saveContext() -> EngineContext {
        var c = EngineContext(gprs: storage.gprs(engine: id))
        monitor.withLock {
            c.execution = suspended
            suspended = nil
            resumeFrom = nil
            yield.store(false, ordering: .relaxed)
            start = 0; head = 0; tail = 0; ctl = 0
        }
        return c
    }

    /// Loads a context saved by `saveContext()` (on this engine or another engine with the same id): the
    /// GPRs, and, if it holds suspended work, the ring as it was, the work resuming exactly where it
    /// stopped. Without suspended work the ring is left as it is (program it and submit as usual). Call
    /// while the engine is idle.
    public func restoreContext(_ c: EngineContext) {
        storage.setGPRs(engine: id, c.gprs)
        monitor.withLock {
            yield.store(false, ordering: .relaxed)
            suspended = nil
            if let x = c.execution {
                start = x.start; ctl = x.ctl; head = x.head; tail = x.tail
                error = nil
                resumeFrom = x
            }
            monitor.broadcast()
        }
    }

    // MARK: worker

    private enum RunEnd {
        case idle
        case stopped
        case failed(EngineError)
        case suspended(SuspendedExecution)
    }

    private func run() {
        monitor.lock()
        while true {
            if resetPending { performResetLocked(); continue }
            if stopping { break }
            if !hasWork { monitor.wait(); continue }
            busy = true
            tracer = tracerSlot
            let snapshot = (start: start, size: ringSize, head: head, tail: tail, ctl: ctl)
            let resume = resumeFrom
            resumeFrom = nil
            monitor.unlock()

            let end = executeRing(start: snapshot.start, size: snapshot.size, head: snapshot.head, tail: snapshot.tail,
                                  ctl: snapshot.ctl, resume: resume)

            // Publish the outcome, raise its interrupt, and only then report not-busy, so that a waiter
            // returning from waitIdle also sees the interrupt registers updated.
            monitor.lock()
            yield.store(false, ordering: .relaxed)   // a suspension asked too late finds the work ended
            var raise: UInt32 = 0
            switch end {
            case .idle:
                if !resetPending && !hasWork { raise = Interrupt.idle(id) }
            case .stopped:
                break
            case .failed(let e):
                if !resetPending { error = e; raise = Interrupt.error(id) }
            case .suspended(let x):
                // Parked without an interrupt: the scheduler takes it with saveContext().
                if !resetPending { suspended = x }
            }
            if raise != 0 {
                monitor.unlock()
                if raise == Interrupt.error(id) { interrupts.setLevel(raise, true) } else { interrupts.raise(raise) }
                monitor.lock()
            }
            busy = false
            monitor.broadcast()
        }
        monitor.unlock()
    }

    private func performResetLocked() {
        start = 0; head = 0; tail = 0; ctl = 0
        error = nil
        suspended = nil
        resumeFrom = nil
        yield.store(false, ordering: .relaxed)
        storage.reset(engine: id)
        acthd.store(0, ordering: .relaxed)
        abort.store(stopping, ordering: .relaxed)
        // A falling level never calls the interrupt handler, so this is safe under the monitor.
        interrupts.setLevel(Interrupt.error(id), false)
        resetPending = false
        resetGeneration &+= 1
        monitor.broadcast()
    }

    /// Executes ring commands from `head` until TAIL (re-reading TAIL after each ring-level command); with
    /// `resume`, first finishes the ring command a suspension stopped inside.
    private func executeRing(start: UInt32, size: UInt32, head h0: UInt32, tail t0: UInt32, ctl: UInt32,
                             resume: SuspendedExecution?) -> RunEnd {
        let base = UInt64(start)
        var head = h0
        var tail = t0
        func ringError(_ detail: String) -> RunEnd {
            .failed(EngineError(code: .invalidRingState, faultAddress: base, commandAddress: base + UInt64(head), detail: detail))
        }
        guard base % GTT.pageSize == 0 else { return ringError("START 0x\(hex(base)) is not page aligned") }
        guard base + UInt64(size) <= gtt.gmSize else { return ringError("ring [0x\(hex(base)), +0x\(hex(UInt64(size)))) is outside GM") }
        guard head < size, head % 4 == 0 else { return ringError("HEAD 0x\(hex(UInt64(head))) is misaligned or outside the ring") }
        func parked(_ bytes: UInt32, _ steps: Int, _ s: Suspended) -> RunEnd {
            .suspended(SuspendedExecution(start: start, ctl: ctl, head: head, tail: tail, ringCommandBytes: bytes,
                                          frames: s.frames, steps: steps, partial: s.partial, commandAddress: currentCommand))
        }
        var pending = resume.flatMap { $0.ringCommandBytes > 0 ? $0 : nil }

        while true {
            guard tail < size, tail % 8 == 0 else { return ringError("TAIL 0x\(hex(UInt64(tail))) is not qword aligned or outside the ring") }
            if head == tail && pending == nil { return .idle }
            if abort.load(ordering: .relaxed) { return .stopped }
            var acc = gtt.accessor(honorReadOnly: true, tracer: tracer)
            currentCommand = base + UInt64(head)
            if pending == nil && yield.load(ordering: .relaxed) { return parked(0, 0, Suspended()) }
            acthd.store(currentCommand, ordering: .relaxed)
            let advance: UInt32
            var steps = 1
            do {
                if let r = pending {
                    // Finish the ring command the suspension stopped inside, then go on from the next one.
                    pending = nil
                    steps = r.steps
                    try resumeRingCommand(&acc, r, steps: &steps)
                    advance = r.ringCommandBytes
                } else {
                    advance = try executeRingCommand(&acc, base: base, size: size, head: head, tail: tail, steps: &steps)
                }
            } catch let f as ExecFault {
                return .failed(EngineError(code: f.code, faultAddress: f.address, commandAddress: currentCommand, detail: f.detail))
            } catch let s as RingSuspended {
                return parked(s.bytes, steps, s.inner)
            } catch {
                return .stopped   // Aborted
            }
            head = (head + advance) % size
            let proceed: Bool = monitor.withLock {
                self.head = head
                tail = self.tail
                return ringEnabled && !resetPending && !stopping
            }
            if !proceed { return .stopped }
        }
    }

    /// A suspension inside the ring command of `bytes` bytes at HEAD.
    private struct RingSuspended: Error {
        var bytes: UInt32
        var inner: Suspended
    }

    /// Finishes the ring command a suspension stopped inside: the long command in progress (in the ring or
    /// at the top of the batch stack), then the rest of the batch stack.
    private func resumeRingCommand(_ acc: inout GMAccessor, _ r: SuspendedExecution, steps: inout Int) throws {
        do {
            if r.frames.isEmpty {
                if let p = r.partial {
                    try executeLong(p, &acc)
                    commandCount.wrappingAdd(1, ordering: .relaxed)
                }
            } else {
                try runBatch(&acc, stack: r.frames, partial: r.partial, steps: &steps)
            }
        } catch let s as Suspended {
            throw RingSuspended(bytes: r.ringCommandBytes, inner: s)
        }
    }

    /// Resumes a long command in `p` from its progress.
    private func executeLong(_ p: PartialCommand, _ acc: inout GMAccessor) throws {
        guard let info = CommandTable.decode(p.command[0]) else { return }
        cmd = p.command
        try execute(info, &acc, from: p.progress)
    }

    /// Fetches, checks and executes the ring command at `head`; returns its size in bytes.
    private func executeRingCommand(_ acc: inout GMAccessor, base: UInt64, size: UInt32, head: UInt32, tail: UInt32,
                                    steps: inout Int) throws -> UInt32 {
        func ringAddress(_ i: Int) -> UInt64 { base + UInt64((head + UInt32(i * 4)) % size) }
        let header = try fetch(&acc, ringAddress(0), traced: false)
        let (info, len) = try decode(header)
        let available = Int(((tail &+ size &- head) % size) / 4)
        guard len <= available else {
            throw ExecFault(.commandPastTail, ringAddress(0), "\(info.name) needs \(len) dwords, \(available) before TAIL")
        }
        cmd.removeAll(keepingCapacity: true)
        cmd.append(header)
        for i in 1..<len { cmd.append(try fetch(&acc, ringAddress(i), traced: false)) }
        do {
            switch info.kind {
            case .batchBufferEnd:
                throw ExecFault(.batchEndOutsideBatch, currentCommand, "BATCH_BUFFER_END in the ring")
            case .batchBufferStart:
                try checkOperands(info)
                if header & CommandHeader.batchSecondLevel != 0 {
                    throw ExecFault(.invalidBatchStart, currentCommand, "second-level batch started from the ring")
                }
                commandCount.wrappingAdd(1, ordering: .relaxed)
                let start = info.addresses[0].address(in: cmd)
                try runBatch(&acc, stack: [BatchFrame(ip: start, end: start + UInt64(cmd[3]), level: 1)], partial: nil, steps: &steps)
            default:
                try execute(info, &acc, from: .start)
                commandCount.wrappingAdd(1, ordering: .relaxed)
            }
        } catch let s as Suspended {
            throw RingSuspended(bytes: UInt32(len * 4), inner: s)
        }
        return UInt32(len * 4)
    }

    /// Runs a first-level batch (and what it chains to or calls) until its BATCH_BUFFER_END, from `stack`
    /// (a fresh batch, or the stack a suspension saved, with the long command `partial` at its top to
    /// finish first). A suspension throws `Suspended` with the stack and the command in progress.
    private func runBatch(_ acc: inout GMAccessor, stack initial: [BatchFrame], partial: PartialCommand?, steps: inout Int) throws {
        var stack = initial
        if let p = partial, var f = stack.last {
            currentCommand = f.ip
            do { try executeLong(p, &acc) } catch var s as Suspended { s.frames = stack; throw s }
            f.ip += UInt64(p.command.count * 4)
            stack[stack.count - 1] = f
        }
        while var f = stack.last {
            guard f.ip < f.end else {
                currentCommand = f.ip
                throw ExecFault(.batchOverrun, f.ip, "reached the end of a level-\(f.level) batch without BATCH_BUFFER_END")
            }
            currentCommand = f.ip
            if yield.load(ordering: .relaxed) && !abort.load(ordering: .relaxed) { throw Suspended(frames: stack) }
            steps += 1
            if steps > stepBudget { throw ExecFault(.stepBudgetExceeded, f.ip, "more than \(stepBudget) commands in one submission") }
            if abort.load(ordering: .relaxed) { throw Aborted() }
            acthd.store(f.ip, ordering: .relaxed)
            let header = try fetch(&acc, f.ip, traced: true)
            let (info, len) = try decode(header)
            let bytes = UInt64(len * 4)
            guard bytes <= f.end - f.ip else {
                throw ExecFault(.commandPastBatchEnd, f.ip, "\(info.name) needs \(len) dwords, \((f.end - f.ip) / 4) left in the batch")
            }
            cmd.removeAll(keepingCapacity: true)
            cmd.append(header)
            for i in 1..<len { cmd.append(try fetch(&acc, f.ip + UInt64(i * 4), traced: true)) }
            commandCount.wrappingAdd(1, ordering: .relaxed)
            switch info.kind {
            case .batchBufferEnd:
                stack.removeLast()
            case .batchBufferStart:
                try checkOperands(info)
                if f.level >= 2 {
                    throw ExecFault(.batchNestingTooDeep, f.ip, "BATCH_BUFFER_START in a second-level batch")
                }
                let target = info.addresses[0].address(in: cmd)
                let next = BatchFrame(ip: target, end: target + UInt64(cmd[3]), level: 1)
                if header & CommandHeader.batchSecondLevel != 0 {
                    f.ip += bytes
                    stack[stack.count - 1] = f
                    stack.append(BatchFrame(ip: next.ip, end: next.end, level: 2))
                } else {
                    stack[stack.count - 1] = BatchFrame(ip: next.ip, end: next.end, level: f.level)   // chain
                }
            default:
                do { try execute(info, &acc, from: .start) } catch var s as Suspended { s.frames = stack; throw s }
                f.ip += bytes
                stack[stack.count - 1] = f
            }
        }
    }

    @inline(__always)
    private func fetch(_ acc: inout GMAccessor, _ gm: UInt64, traced: Bool) throws(ExecFault) -> UInt32 {
        do {
            return try acc.read32(gm, record: traced ? .fetch : nil)
        } catch {
            throw ExecFault(error, "command fetch")
        }
    }

    private func decode(_ header: UInt32) throws(ExecFault) -> (CommandInfo, Int) {
        guard let info = CommandTable.decode(header) else {
            throw ExecFault(.unknownCommand, currentCommand, "unknown command header 0x\(String(header, radix: 16))")
        }
        guard info.engines.contains(id) else {
            throw ExecFault(.commandNotAllowedOnEngine, currentCommand, "\(info.name) is not accepted by \(id)")
        }
        guard let len = info.length.length(header) else {
            throw ExecFault(.invalidLength, currentCommand, "\(info.name) length field \(header & CommandHeader.lengthMask) (\(info.length.summary))")
        }
        return (info, len)
    }

    /// Register reads for operand rules (display registers only matter).
    private func registerValue(_ offset: UInt32) -> UInt32 {
        DisplayEngine.handles(offset) ? display.read(offset) : (storage.read(offset) ?? 0)
    }

    /// Table-driven checks: operand constraints, then every used address operand's alignment and range.
    private func checkOperands(_ info: CommandInfo) throws(ExecFault) {
        let c = cmd
        if let why = info.validate(c, registerValue) {
            throw ExecFault(.invalidOperand, currentCommand, "\(info.name): \(why)")
        }
        for op in info.addresses {
            let extent = op.extent(c, registerValue)
            guard extent > 0 else { continue }
            let a = op.address(in: c)
            guard a % op.alignment == 0 else {
                throw ExecFault(.invalidOperand, a, "\(info.name) \(op.name) address 0x\(hex(a)) is not \(op.alignment)-byte aligned")
            }
            guard a <= gtt.gmSize, extent <= gtt.gmSize - a else {
                throw ExecFault(.addressOutOfRange, a, "\(info.name) \(op.name) [0x\(hex(a)), +0x\(hex(extent))) is outside GM (0x\(hex(gtt.gmSize)))")
            }
        }
    }

    /// Polled by long commands between row blocks: a reset, stop or suspension is pending.
    private func shouldStop() -> Bool { abort.load(ordering: .relaxed) || yield.load(ordering: .relaxed) }

    /// A long command stopped at `progress`: an abort unwinds, a suspension parks the command.
    private func stopped(_ progress: KernelProgress?) throws {
        guard let progress else { return }
        if abort.load(ordering: .relaxed) { throw Aborted() }
        throw Suspended(partial: PartialCommand(command: cmd, progress: progress))
    }

    /// Executes a non-control-flow command in `cmd` (a long command from `from`, where it stopped before).
    private func execute(_ info: CommandInfo, _ acc: inout GMAccessor, from: KernelProgress) throws {
        try checkOperands(info)
        let c = cmd
        do {
            switch info.kind {
            case .noop:
                break
            case .userInterrupt:
                interrupts.raise(Interrupt.user(id))
            case .storeDataImm:
                let a = info.addresses[0].address(in: c)
                for i in 3..<c.count { try acc.write32(a + UInt64((i - 3) * 4), c[i]) }
            case .loadRegisterImm:
                for i in stride(from: 1, to: c.count, by: 2) where !RegisterMap.isCommandWritable(c[i]) {
                    throw ExecFault(.registerNotWritable, UInt64(c[i]), "LOAD_REGISTER_IMM to register 0x\(String(c[i], radix: 16))")
                }
                for i in stride(from: 1, to: c.count, by: 2) {
                    tracer?.registerWrites.append((c[i], c[i + 1]))
                    writeCommandRegister(c[i], c[i + 1])
                }
            case .flush:
                if c[0] & CommandHeader.flushPostSyncStore != 0 {
                    try acc.write32(info.addresses[0].address(in: c), c[3])
                }
                if c[0] & CommandHeader.flushNotify != 0 { interrupts.raise(Interrupt.user(id)) }
            case .displayFlip:
                let plane: DisplayEngine.Plane = (c[0] & CommandHeader.flipPlaneMask) == 0 ? .primary : .cursor
                display.flip(plane, base: info.addresses[0].address(in: c), stride: c[1])
            // Long commands poll the abort and yield flags between row blocks, so a reset, stop or
            // suspension lands inside them (a suspension keeps their progress to resume from).
            case .colorBlt:
                try stopped(try Blitter.colorBlt(c, &acc, from: from, shouldStop: shouldStop))
            case .srcCopyBlt:
                try stopped(try Blitter.srcCopyBlt(c, &acc, from: from, shouldStop: shouldStop))
            case .saxpy:
                try stopped(try Compute.saxpy(c, &acc, from: from, shouldStop: shouldStop))
            case .sgemm:
                try stopped(try Compute.sgemm(c, &acc, from: from, shouldStop: shouldStop, blas: sgemmOnBLAS))
            case .batchBufferStart, .batchBufferEnd:
                break   // handled by the callers
            }
        } catch let f as GMFault {
            throw ExecFault(f, info.name)
        }
    }

    /// LOAD_REGISTER_IMM target (already checked against the whitelist).
    private func writeCommandRegister(_ offset: UInt32, _ value: UInt32) {
        if DisplayEngine.handles(offset) { display.write(offset, value) } else { storage.write(offset, value) }
    }
}
