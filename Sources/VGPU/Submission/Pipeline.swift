import Glibc
import Machine
import SoftGPU

/// The submission pipeline (docs/vgpu.md section 4): a doorbell is scanned and shadowed on the thread that
/// rang it (`doorbell`), the checked submission is queued with a dispatcher ticket, and the engine's
/// `EngineDispatcher` runs it (`runPass`: take a group, place it with `ShadowPlacement`, run it on the
/// shared engine, complete it into the virtual state).
extension VGPU {
    /// A scanned submission waiting for the engine.
    struct Queued {
        let submission: ScannedSubmission
        let start: UInt32, ringBytes: UInt32, head: UInt32, tail: UInt32
        /// Arrival order on the engine's dispatcher (FIFO across vGPUs).
        let ticket: UInt64
        /// This vGPU's number for the submission on its engine (1, 2, ...; traces and hang reports).
        let number: UInt64
        var footprint: ShadowFootprint { ShadowFootprint(submission) }
    }

    /// The vGPU's shadow arena on engine `e`: its half of the vGPU's host-owned window.
    func arena(_ e: EngineID) -> ShadowArena {
        let half = UInt64(arenaBuffer.length) / 2
        return ShadowArena(gm: arenaBuffer.gm + half * UInt64(e.rawValue), bytes: half)
    }

    func arenaPointer(_ e: EngineID) -> UnsafeMutableRawPointer {
        arenaBuffer.pointer + Int(UInt64(arenaBuffer.length) / 2 * UInt64(e.rawValue))
    }

    /// PV doorbell: the new tail is in the shared page at 8 * engine.
    func fastDoorbell(_ e: EngineID) {
        let page = state.withLock { $0.regs[pair: VGPURegs.pvSharedPage] }
        guard page != 0, let tail: UInt32 = try? memory.read(at: page + 8 * UInt64(e.rawValue)) else {
            log.log(.debug, "doorbell without a shared page", "vgpu\(id): \(e) doorbell without a shared page")
            return
        }
        // A doorbell for a disabled ring is dropped: after a RESET (which disables the ring) a doorbell the
        // guest rang before it, handled late by this thread, must not bring the old TAIL back.
        let enabled = state.withLock { s -> Bool in
            guard s.regs[Reg.ringCtl(e)] & Reg.ringCtlEnable != 0 else { return false }
            s.regs[Reg.ringTail(e)] = tail
            return true
        }
        guard enabled else { return }
        doorbell(e, tail: tail)
    }

    /// A doorbell for `engine` with the guest's new `tail`: copies the ring from the last accepted tail and
    /// every batch it reaches, scans the copies, and queues them for the engine's dispatcher (or records the
    /// rejection). Runs on the thread that rang: a vCPU thread for a trapped TAIL write, the mediator thread
    /// for a PV doorbell.
    func doorbell(_ e: EngineID, tail: UInt32) {
        let i = e.rawValue
        let queued = scanLocks[i].withLock { () -> Bool in
            let job = state.withLock { s -> (start: UInt32, ctl: UInt32, head: UInt32, regs: VGPURegisterFile.Storage,
                                              display: DisplayPipe, generation: UInt64)? in
                let ctl = s.regs[Reg.ringCtl(e)]
                guard s.regs[Reg.errorCode(e)] == 0, ctl & Reg.ringCtlEnable != 0, tail != s.engines[i].scannedTail else { return nil }
                return (s.regs[Reg.ringStart(e)], ctl, s.engines[i].scannedTail, s.regs, s.display, s.engines[i].generation)
            }
            guard let job else { return false }
            activity.withLock { if $0.first == nil { $0.first = ContinuousClock.now } }
            let ringBytes = UInt32(Reg.ringPages(ctl: job.ctl)) * 4096
            let regs = job.regs, display = job.display
            // Batches must fit the arena after the shadow ring, with room for rounding each up to a page.
            var limits = ScanLimits()
            limits.maxTotalBatchBytes = Int(arena(e).batchBytes) - limits.maxBatches * 4096
            let scanner = CommandScanner(slices: slices, limits: limits, commandLoadAllowed: RegisterPolicy.commandLoadAllowed,
                                         registerRead: { DisplayPipe.handles($0) ? display.read($0) : regs[$0] })
            // The copies are read through the guest's own GTT entries: a page whose entry is invalid or was
            // rejected (not guest RAM) is unreadable, so such a ring or batch is refused (reason 12), never
            // run from a scratch page.
            let shadow = gtt
            let result = scanner.scan(engine: e, ringStart: UInt64(job.start), ringBytes: ringBytes, head: job.head, tail: tail) { gm, count in
                guard count >= 0, count <= (16 << 20) / 4 else { return nil }
                return shadow.readDwords(gm: gm, count: count)
            }
            switch result {
            case .failure(let rejection):
                reject(e, rejection, generation: job.generation)
                return false
            case .success(let submission):
                let ticket = host.dispatcher(e).ticket()
                // A RESET while scanning: the scan is of a ring that no longer exists; drop it.
                return state.withLock { s -> Bool in
                    guard s.engines[i].generation == job.generation else { return false }
                    s.submitted[i] &+= 1
                    s.engines[i].queue.append(Queued(submission: submission, start: job.start, ringBytes: ringBytes,
                                                     head: job.head, tail: tail, ticket: ticket, number: s.submitted[i]))
                    s.engines[i].scannedTail = tail
                    return true
                }
            }
        }
        if queued { host.dispatcher(e).notify() }
    }

    /// Records a rejected submission in the error block and the engine's virtual state, and tells the guest
    /// (nothing, when a RESET came after the scan began: `generation` is then stale).
    func reject(_ e: EngineID, _ r: ScanRejection, generation: UInt64) {
        let newly = state.withLock { s -> UInt32? in
            let i = e.rawValue
            guard s.engines[i].generation == generation else { return nil }
            s.regs[Reg.errorCode(e)] = VGPURegs.rejectedErrorBase + r.reason.rawValue
            s.regs[lo: Reg.errorIPLo(e), hi: Reg.errorIPHi(e)] = r.commandGM
            s.regs[lo: Reg.faultAddressLo(e), hi: Reg.faultAddressHi(e)] = r.operand
            s.regs[VGPURegs.errStatus] |= VGPURegs.errStatusRejected
            s.regs[VGPURegs.errEngine] = UInt32(i)
            s.regs[VGPURegs.errReason] = r.reason.rawValue
            s.regs[VGPURegs.errOpcode] = r.header
            s.regs[pair: VGPURegs.errCommandGM] = r.commandGM
            s.regs[VGPURegs.errOffset] = UInt32(truncatingIfNeeded: r.commandGM &- r.bufferGM)
            s.regs[VGPURegs.errLevel] = UInt32(r.level)
            s.regs[pair: VGPURegs.errOperand] = r.operand
            s.regs[VGPURegs.errCount] &+= 1
            return s.interrupts.latch(VGPURegs.rejected(e) | Interrupt.error(e))
        }
        guard let newly else { return }
        rejections.add(1, ordering: .relaxed)
        trace?.instant("rejected", vgpu: id, engine: e, args: [("reason", "\(r.reason.rawValue)"), ("detail", r.detail)])
        log.log(.warning, "rejected \(e) submission", "vgpu\(id): rejected \(e) submission: \(r)")
        if newly != 0 { signalInterrupt() }
    }

    // MARK: the dispatcher's side (DispatchClient)

    public var dispatchID: Int { id }
    public var schedulingWeight: Int { type.weight }

    /// A pass placed in the arena: what running, suspending, resuming and completing it needs.
    struct Pass {
        let group: [Queued]
        let placement: ShadowPlacement
        /// The shadow buffers as placed (relocations applied), to map engine addresses back to the guest's.
        let buffers: [[ShadowBuffer]]
        let generation: UInt64
        /// Where the engine stopped when the pass was preempted (nil: not started yet).
        var execution: EngineContext?
        /// Counted over the pass's slices so far.
        var userEvents: UInt64 = 0
        var executed: UInt64 = 0
        /// The watchdog's view when the pass was preempted (the physical HEAD, the submission it was in, and
        /// the engine time its ring-level command had held so far), carried into the next turn so a command
        /// that keeps being preempted still adds up to a hang.
        var watch: (head: UInt64, current: Int, held: Duration)? = nil
    }

    /// This vGPU's checked work on `engine` (a preempted pass first), unless it is paused, shut down or
    /// already running there.
    public func readyWork(on engine: EngineID) -> QueueView? {
        guard !isPaused, isRunning else { return nil }
        return state.withLock { s in
            let es = s.engines[engine.rawValue]
            guard !es.executing else { return nil }
            if let p = es.suspended {
                return QueueView(client: id, queued: es.queue.count + p.group.count, oldestTicket: p.group[0].ticket, weight: type.weight)
            }
            guard let first = es.queue.first else { return nil }
            return QueueView(client: id, queued: es.queue.count, oldestTicket: first.ticket, weight: type.weight)
        }
    }

    /// Runs a pass to its end (tests).
    func runPass(on e: EngineID) -> Int { runPass(on: e, slice: .unlimited).submissions }

    /// One pass on `engine` (the dispatcher thread): the pass this vGPU had preempted, resumed where it
    /// stopped; or every queued submission that fits the shadow arena, run in one pass of the physical ring,
    /// back to back, as GVT-g batches workloads. It holds the engine for `slice` (then, if another vGPU
    /// waits, it is suspended at a command boundary and kept, shadows and engine context, for this vGPU's
    /// next pass). Held under the run lock, which `pause()` and `shutdown()` wait for, so no pass starts
    /// once they have returned.
    public func runPass(on e: EngineID, slice: PassSlice) -> PassResult {
        let i = e.rawValue
        let result = runLocks[i].withLock { () -> PassResult in
            guard !isPaused, isRunning else { return PassResult(submissions: 0) }
            let arena = arena(e)
            enum Work { case none, resume(Pass), fresh([Queued], UInt64) }
            let work = state.withLock { s -> Work in
                let generation = s.engines[i].generation
                guard !s.engines[i].executing else { return .none }
                if let p = s.engines[i].suspended {
                    s.engines[i].suspended = nil
                    s.engines[i].executing = true
                    return .resume(p)
                }
                let n = ShadowPlacement.group(s.engines[i].queue.map(\.footprint), arena: arena)
                guard n > 0 else { return .none }
                s.engines[i].executing = true
                defer { s.engines[i].queue.removeFirst(n) }
                return .fresh(Array(s.engines[i].queue.prefix(n)), generation)
            }
            switch work {
            case .none:
                return PassResult(submissions: 0)
            case .resume(let p):
                return run(e, p, slice: slice)
            case .fresh(let group, let generation):
                guard let p = prepare(e, group, generation: generation) else { return PassResult(submissions: 0) }
                return run(e, p, slice: slice)
            }
        }
        if result.submissions > 0 {
            completedCount.add(UInt64(result.submissions), ordering: .relaxed)
            activity.withLock { $0.last = ContinuousClock.now }
        }
        return result
    }

    /// Places the shadow buffers of `group` in the arena (`ShadowPlacement`) and copies them there; nil
    /// when the group cannot be placed (then its submission is refused).
    func prepare(_ e: EngineID, _ group: [Queued], generation: UInt64) -> Pass? {
        let arena = arena(e), arenaPtr = arenaPointer(e)
        let placement: ShadowPlacement
        switch ShadowPlacement.place(group.map(\.footprint), arena: arena) {
        case .failure(let refusal):
            // Only a single submission can be this large (groups are cut to fit): refuse it.
            state.withLock { $0.engines[e.rawValue].executing = false }
            let q = group[0]
            reject(e, ScanRejection(reason: .tooManyBatches, engine: e, commandGM: UInt64(q.start) + UInt64(q.head), level: 0,
                                    header: 0, operand: refusal.needed, detail: refusal.description, bufferGM: UInt64(q.start)),
                   generation: generation)
            return nil
        case .success(let p):
            placement = p
        }
        var buffers = group.map { $0.submission.buffers }
        for s in buffers.indices where placement.padded[s] { buffers[s][0].dwords.append(CommandTable.info(.noop).header) }
        for s in buffers.indices {
            for b in buffers[s].indices {
                for rel in buffers[s][b].relocations where rel.target < buffers[s].count && rel.dword + 1 < buffers[s][b].dwords.count {
                    let gm = arena.gm + placement.offsets[s][rel.target]
                    buffers[s][b].dwords[rel.dword] = lo(gm)
                    buffers[s][b].dwords[rel.dword + 1] = hi(gm)
                }
                buffers[s][b].dwords.withUnsafeBytes { src in
                    (arenaPtr + Int(placement.offsets[s][b])).copyMemory(from: src.baseAddress!, byteCount: src.count)
                }
            }
        }
        submissions.add(UInt64(group.count), ordering: .relaxed)
        return Pass(group: group, placement: placement, buffers: buffers, generation: generation)
    }

    /// Waits for the pass on `engine` within `slice`: when the slice has run out and another vGPU waits,
    /// suspends it (at the next command boundary) and returns `.suspended`; a pass still running after 60 s
    /// is `.timedOut`.
    private func wait(_ engine: Engine, slice: PassSlice) -> EngineWaitResult {
        let clock = ContinuousClock()
        let hardDeadline = clock.now + .seconds(60)
        var sliceEnd = slice.length.map { clock.now + $0 }
        while true {
            let until = min(hardDeadline, sliceEnd ?? hardDeadline)
            let r = engine.waitIdle(timeout: max(0, (until - clock.now).nanoseconds / 1e9))
            guard r == .timedOut else { return r }
            if clock.now >= hardDeadline { return .timedOut }
            if let end = sliceEnd, clock.now >= end, let length = slice.length {
                if slice.shouldYield() {
                    engine.suspend()
                    let r = engine.waitIdle(timeout: max(0, (hardDeadline - clock.now).nanoseconds / 1e9))
                    return r
                }
                sliceEnd = clock.now + length
            }
        }
    }

    /// Runs (or resumes) `pass` on the shared engine with this vGPU's engine context (its GPRs, and where a
    /// preemption stopped it), for at most `slice` while others wait, and completes it, or keeps it for the
    /// next pass when it was preempted (the engine context saved). A RESET or shutdown (a new
    /// `generation`) before the pass starts cancels it, during it aborts it (RESET resets the physical
    /// engine), and either way the pass leaves no trace in the virtual state.
    func run(_ e: EngineID, _ p: Pass, slice: PassSlice) -> PassResult {
        var pass = p
        let arena = arena(e)
        let gpu = host.gpu
        let engine = gpu.engine(e)
        var outcome = EngineWaitResult.idle
        var saved: EngineContext? = nil
        let passFlag = passes[e.rawValue]
        let t0 = ContinuousClock.now
        let userBefore = gpu.interrupts.eventCount(Interrupt.user(e))
        let countBefore = engine.commandsExecuted
        // Start the pass and say so in one step, unless a RESET or shutdown came first: an abort then
        // either finds the pass on the engine or finds the generation changed.
        let started = passFlag.withLock { onEngine -> Bool in
            guard isRunning, let gprs = state.withLock({ s -> [UInt32]? in
                guard s.engines[e.rawValue].generation == pass.generation else { return nil }
                return (0..<Reg.gprDwords).map { s.regs[Reg.gpr(e, dword: $0)] }
            }) else { return false }
            // Switch the engine to this vGPU's context: its GPRs, and the suspended execution if any.
            var context = pass.execution ?? EngineContext()
            context.gprs = gprs
            engine.restoreContext(context)
            let cpu = engine.workerCPUTime
            let generation = pass.generation, placement = pass.placement, group = pass.group, watch = pass.watch
            state.withLock { s in
                var r = RunningPass(
                    generation: generation, ringStarts: placement.offsets.map { $0[0] }, numbers: group.map(\.number),
                    guestRings: group.map { ($0.start, $0.ringBytes, $0.head) }, current: 0, cpuAtCurrent: cpu)
                if let w = watch { r.head = w.head; r.current = w.current; r.cpuAtCurrent = cpu - w.held }
                s.engines[e.rawValue].running = r
            }
            if pass.execution == nil {
                engine.configureRing(start: UInt32(arena.gm), pages: Int(arena.ringBytes / 4096))
                gpu.submit(e, tail: UInt32(pass.placement.ringTail))
            }
            onEngine = true
            return true
        }
        var t1 = t0
        if started {
            host.watchdog.notify()
            outcome = wait(engine, slice: slice)
            t1 = ContinuousClock.now
            switch outcome {
            case .idle, .suspended, .error: saved = engine.saveContext()
            case .timedOut: break
            }
            let cpu = engine.workerCPUTime
            passFlag.withLock { onEngine in
                onEngine = false
                let r = state.withLock { s -> RunningPass? in
                    defer { s.engines[e.rawValue].running = nil }
                    return s.engines[e.rawValue].running
                }
                pass.watch = r.map { (head: $0.head, current: $0.current, held: max(.zero, cpu - $0.cpuAtCurrent)) }
            }
            switch outcome {
            case .idle, .suspended: break
            case .error, .timedOut: engine.reset()
            }
            pass.userEvents &+= gpu.interrupts.eventCount(Interrupt.user(e)) &- userBefore
            pass.executed &+= engine.commandsExecuted &- countBefore
            let d = ContinuousClock.now - t0
            engineNanos.add(UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000), ordering: .relaxed)
        }
        if outcome == .suspended, started, let saved {
            trace?.turn(engine: e, vgpu: id, submission: pass.group[0].number, start: t0, end: t1, reason: .sliceExpired,
                        args: [("submissions", "\(pass.group.count)")])
            return suspend(e, pass, context: saved)
        }
        return complete(e, pass, started: started, outcome: outcome, context: saved, start: t0, end: t1)
    }

    /// Keeps a preempted pass (its shadows stay in the arena, its engine context is saved) for this vGPU's
    /// next pass; its GPRs become the MMIO view, and its user interrupts so far are delivered.
    private func suspend(_ e: EngineID, _ p: Pass, context: EngineContext) -> PassResult {
        var pass = p
        let i = e.rawValue
        let newly = state.withLock { s -> UInt32 in
            s.engines[i].executing = false
            guard s.engines[i].generation == pass.generation else { return 0 }
            for d in 0..<Reg.gprDwords { s.regs[Reg.gpr(e, dword: d)] = context.gprs[Int(d)] }
            var bits: UInt32 = 0
            if pass.userEvents > 0 { bits |= Interrupt.user(e) }
            pass.userEvents = 0
            pass.execution = context
            s.engines[i].suspended = pass
            return s.interrupts.latch(bits)
        }
        if newly != 0 { signalInterrupt() }
        return PassResult(submissions: 0, preempted: true)
    }

    /// Completes a pass that ended (or failed, or never started) into the virtual state (the padding NOOPs
    /// are not counted in COMMAND_COUNT).
    private func complete(_ e: EngineID, _ pass: Pass, started: Bool, outcome: EngineWaitResult, context: EngineContext?,
                          start t0: ContinuousClock.Instant, end t1: ContinuousClock.Instant) -> PassResult {
        let arena = arena(e)
        let group = pass.group, buffers = pass.buffers, placement = pass.placement, generation = pass.generation
        let userEvents = pass.userEvents, executed = pass.executed

        // Which submission a shadow GM address belongs to, and where the guest wrote that command.
        func locate(_ x: UInt64) -> (submission: Int, guest: UInt64)? {
            for s in buffers.indices {
                let q = group[s]
                let r0 = arena.gm + placement.offsets[s][0], r1 = r0 + UInt64(buffers[s][0].dwords.count * 4)
                if x >= r0 && x < r1 { return (s, UInt64(q.start) + (UInt64(q.head) + (x - r0)) % UInt64(q.ringBytes)) }
                for b in buffers[s].indices.dropFirst() {
                    let b0 = arena.gm + placement.offsets[s][b]
                    if x >= b0 && x < b0 + UInt64(buffers[s][b].dwords.count * 4) { return (s, buffers[s][b].sourceGM + (x - b0)) }
                }
            }
            return nil
        }

        var bits: UInt32 = 0
        var failed: (error: EngineError, command: UInt64, address: UInt64)? = nil
        var completedCount = 0
        var reason = GPUTrace.SwitchReason.completed
        let newly = state.withLock { s -> UInt32 in
            let i = e.rawValue
            s.engines[i].executing = false
            // Cancelled or aborted by a RESET, a hang or shutdown: the engine's state is already as after reset.
            guard started, s.engines[i].generation == generation else {
                reason = s.hangAborted[i] == generation ? .hang : .aborted
                return 0
            }
            switch outcome {
            case .idle, .suspended: break
            default: reason = .fault
            }
            // The engine context's GPRs are the vGPU's GPRs (the MMIO view) until its next pass.
            if let context { for d in 0..<Reg.gprDwords { s.regs[Reg.gpr(e, dword: d)] = context.gprs[Int(d)] } }
            var completed = group.count
            switch outcome {
            case .idle, .suspended:
                bits |= Interrupt.idle(e)
            case .error(let err):
                let where_ = locate(err.commandAddress)
                completed = where_?.submission ?? 0
                s.regs[Reg.errorCode(e)] = err.code.rawValue
                // Operand addresses are the guest's own GM addresses; an address inside the shadows (a
                // command fetch) is reported where the guest wrote it.
                let fault = locate(err.faultAddress)?.guest ?? err.faultAddress
                let ip = where_?.guest ?? err.commandAddress
                s.regs[lo: Reg.faultAddressLo(e), hi: Reg.faultAddressHi(e)] = fault
                s.regs[lo: Reg.errorIPLo(e), hi: Reg.errorIPHi(e)] = ip
                failed = (err, ip, fault)
                s.engines[i].queue.removeAll()   // the engine stops: nothing after the failure runs
                bits |= Interrupt.error(e)
            case .timedOut:
                completed = 0
                s.regs[Reg.errorCode(e)] = EngineErrorCode.stepBudgetExceeded.rawValue
                s.engines[i].queue.removeAll()
                bits |= Interrupt.error(e)
            }
            completedCount = completed
            // The padding NOOPs of the completed submissions ran but are not the guest's commands.
            let pads = UInt64(placement.padded.prefix(completed).filter { $0 }.count)
            s.regs[Reg.commandCount(e)] &+= UInt32(truncatingIfNeeded: executed >= pads ? executed - pads : 0)
            // HEAD: past every submission that completed; at the start of the one that failed.
            s.regs[Reg.ringHead(e)] = completed == group.count ? group[group.count - 1].tail : group[completed].head
            if userEvents > 0 { bits |= Interrupt.user(e) }
            for q in group.prefix(completed) {
                for f in q.submission.flips {
                    bits |= s.display.flip(f.plane == 0 ? .primary : .cursor, surface: f.surface, stride: f.stride)
                }
            }
            return s.interrupts.latch(bits)   // with the state it reports (see `VirtualInterrupts`)
        }
        if started, let trace {
            trace.turn(engine: e, vgpu: id, submission: group[0].number, start: t0, end: t1, reason: reason,
                       args: [("submissions", "\(group.count)")])
        }
        if let f = failed {
            let command = String(f.command, radix: 16), address = String(f.address, radix: 16)
            log.log(.warning, "\(e) engine error",
                    "vgpu\(id): \(e) engine error: \(f.error.code) at command 0x\(command), address 0x\(address): \(f.error.detail)")
        }
        if newly != 0 { signalInterrupt() }
        return PassResult(submissions: completedCount)
    }
}
