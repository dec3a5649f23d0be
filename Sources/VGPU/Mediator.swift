import Glibc
import Machine
import SoftGPU

/// The mediator thread: doorbells in, shadow submissions out (docs/vgpu.md section 4).
extension VGPU {
    /// Per-engine layout of the vGPU's host-owned shadow arena: the physical ring, then the batches.
    static let shadowRingBytes: UInt64 = 2 << 20

    func engineArena(_ e: EngineID) -> (gm: UInt64, pointer: UnsafeMutableRawPointer, bytes: UInt64) {
        let half = UInt64(arena.length) / 2
        let off = half * UInt64(e.rawValue)
        return (arena.gm + off, arena.pointer + Int(off), half)
    }

    func mediatorLoop() {
        var fds = [pollfd(fd: control.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: doorbells[0].fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: doorbells[1].fd, events: Int16(POLLIN), revents: 0)]
        var nextVBlank = ContinuousClock.now + vblankInterval
        while isRunning {
            let pipeOn = state.withLock { $0.regs[Reg.pipeConf] & Reg.pipeConfEnable != 0 }
            var timeout: Int32 = -1
            if pipeOn {
                let left = nextVBlank - ContinuousClock.now
                timeout = Int32(max(0, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            }
            _ = poll(&fds, 3, timeout)
            _ = control.consume()
            for e in EngineID.allCases where doorbells[e.rawValue].consume() != nil {
                fastDoorbell(e)
            }
            let now = ContinuousClock.now
            if pipeOn && now >= nextVBlank {
                vblank()
                while nextVBlank <= now { nextVBlank += vblankInterval }   // skip missed frames, no bursts
            } else if !pipeOn {
                nextVBlank = now + vblankInterval
            }
        }
    }

    /// PV doorbell: the new tail is in the shared page at 8 * engine.
    func fastDoorbell(_ e: EngineID) {
        let page = state.withLock { $0.sharedPage }
        guard page != 0, let tail: UInt32 = try? memory.read(at: page + 8 * UInt64(e.rawValue)) else {
            log.log(.debug, "doorbell without a shared page", "vgpu\(id): \(e) doorbell without a shared page")
            return
        }
        // A doorbell for a disabled ring is dropped: after a RESET (which disables the ring) a doorbell the
        // guest rang before it, handled late by this thread, must not bring the old TAIL back.
        let enabled = state.withLock { s -> Bool in
            guard s.engines[e.rawValue].ctl & Reg.ringCtlEnable != 0 else { return false }
            s.engines[e.rawValue].tail = tail
            return true
        }
        guard enabled else { return }
        doorbell(e, tail: tail)
    }

    /// A doorbell for `engine` with the guest's new `tail`: copies the ring from the last accepted tail and
    /// every batch it reaches, scans the copies, and queues them for the mediator thread (or records the
    /// rejection). Runs on the thread that rang: a vCPU thread for a trapped TAIL write, the mediator thread
    /// for a PV doorbell.
    func doorbell(_ e: EngineID, tail: UInt32) {
        let i = e.rawValue
        scanLocks[i].withLock {
            let job = state.withLock { s -> (start: UInt32, ctl: UInt32, head: UInt32, regs: VGPURegisterFile.Storage, generation: UInt64)? in
                let es = s.engines[i]
                guard es.error == 0, es.ctl & Reg.ringCtlEnable != 0, tail != es.scannedTail else { return nil }
                return (es.start, es.ctl, es.scannedTail, s.regs, es.generation)
            }
            guard let job else { return }
            activity.withLock { if $0.first == nil { $0.first = ContinuousClock.now } }
            let ringBytes = UInt32(Reg.ringPages(ctl: job.ctl)) * 4096
            let regs = job.regs
            // Batches must fit the arena after the shadow ring, with room for rounding each up to a page.
            var limits = ScanLimits()
            limits.maxTotalBatchBytes = Int(engineArena(e).bytes - VGPU.shadowRingBytes) - limits.maxBatches * 4096
            let scanner = CommandScanner(slices: slices, limits: limits, commandLoadAllowed: RegisterPolicy.commandLoadAllowed,
                                         registerRead: { regs[$0] })
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
            case .success(let submission):
                // A RESET while scanning: the scan is of a ring that no longer exists; drop it.
                let queued = state.withLock { s -> Bool in
                    guard s.engines[i].generation == job.generation else { return false }
                    s.engines[i].queue.append(Queued(submission: submission, start: job.start, ringBytes: ringBytes,
                                                     head: job.head, tail: tail))
                    s.engines[i].scannedTail = tail
                    return true
                }
                if queued { work[i].signal() }
            }
        }
    }

    /// An engine's executor thread: sleeps until work is queued, then runs it.
    func executorLoop(_ e: EngineID) {
        while isRunning {
            _ = work[e.rawValue].consume()   // blocks until signalled
            guard isRunning else { break }
            processPending(e)
        }
    }

    /// Shadow bytes a submission needs: (ring fragment, batches rounded up to pages).
    static func footprint(_ q: Queued) -> (ring: UInt64, batches: UInt64) {
        let ring = (UInt64(q.submission.buffers.first?.dwords.count ?? 0) * 4 + 7) & ~7   // padded, see `execute`
        let batches = q.submission.buffers.dropFirst().reduce(UInt64(0)) { $0 + ((UInt64($1.dwords.count * 4) + 4095) & ~4095) }
        return (ring, batches)
    }

    /// Runs the engine's queued submissions in order (the engine's executor thread). Every submission that
    /// is queued when the engine becomes free and fits the shadow arena runs in one pass of the physical
    /// ring, back to back, as GVT-g batches workloads; there is no engine handoff between them.
    func processPending(_ e: EngineID) {
        let i = e.rawValue
        let batchArea = engineArena(e).bytes - VGPU.shadowRingBytes
        while isRunning {
            // Under the run lock: `pause()` waits for it, so no pass starts once it has returned.
            let ran = runLocks[i].withLock { () -> Bool in
                guard !isPaused else { return false }
                let (group, generation) = state.withLock { s -> ([Queued], UInt64) in
                    let generation = s.engines[i].generation
                    guard !s.engines[i].queue.isEmpty, !s.engines[i].executing else { return ([], generation) }
                    s.engines[i].executing = true
                    var g: [Queued] = []
                    var ring: UInt64 = 0, batches: UInt64 = 0
                    while let q = s.engines[i].queue.first {
                        let f = VGPU.footprint(q)
                        if !g.isEmpty && (ring + f.ring >= VGPU.shadowRingBytes || batches + f.batches > batchArea) { break }
                        g.append(q)
                        s.engines[i].queue.removeFirst()
                        ring += f.ring
                        batches += f.batches
                    }
                    return (g, generation)
                }
                guard !group.isEmpty else { return false }
                execute(e, group, generation: generation)
                return true
            }
            guard ran else { return }
            activity.withLock { $0.last = ContinuousClock.now }
        }
    }

    /// Records a rejected submission in the error block and the engine's virtual state, and tells the guest
    /// (nothing, when a RESET came after the scan began: `generation` is then stale).
    func reject(_ e: EngineID, _ r: ScanRejection, generation: UInt64) {
        let newly = state.withLock { s -> UInt32? in
            let i = e.rawValue
            guard s.engines[i].generation == generation else { return nil }
            s.engines[i].error = VGPURegs.rejectedErrorBase + r.reason.rawValue
            s.engines[i].errorIP = r.commandGM
            s.engines[i].faultAddress = r.operand
            s.errStatus = 1
            s.errEngine = UInt32(i)
            s.errReason = r.reason.rawValue
            s.errOpcode = r.header
            s.errCommandGM = r.commandGM
            s.errOffset = UInt32(truncatingIfNeeded: r.commandGM &- r.bufferGM)
            s.errLevel = UInt32(r.level)
            s.errOperand = r.operand
            s.errCount &+= 1
            return VGPU.latch(VGPURegs.rejected(e) | Interrupt.error(e), in: &s)
        }
        guard let newly else { return }
        rejections.add(1, ordering: .relaxed)
        log.log(.warning, "rejected \(e) submission", "vgpu\(id): rejected \(e) submission: \(r)")
        if newly != 0 { signalInterrupt() }
    }

    /// Places the shadow buffers of `group` in the arena (ring fragments back to back in the physical
    /// ring, each padded with a NOOP to whole qwords: a guest HEAD may be any dword, the physical TAIL must
    /// be qword aligned; batches after it), runs them in one pass on the shared engine, and completes them
    /// (the padding NOOPs are not counted in COMMAND_COUNT). A RESET or
    /// shutdown (a new `generation`) before the pass starts cancels it, during it aborts it (RESET resets
    /// the physical engine), and either way the pass leaves no trace in the virtual state.
    func execute(_ e: EngineID, _ group: [Queued], generation: UInt64) {
        let (arenaGM, arenaPtr, arenaBytes) = engineArena(e)
        var buffers = group.map { $0.submission.buffers }
        var placement = buffers.map { [UInt64](repeating: 0, count: $0.count) }
        // A fragment of an odd number of dwords (HEAD 4 mod 8) gets a NOOP, so the next one and TAIL stay qword aligned.
        let padded = buffers.map { ($0.first?.dwords.count ?? 0) % 2 == 1 }
        for s in buffers.indices where padded[s] { buffers[s][0].dwords.append(CommandTable.info(.noop).header) }
        var ringPos: UInt64 = 0, next = VGPU.shadowRingBytes
        for s in buffers.indices {
            for b in buffers[s].indices {
                let bytes = UInt64(buffers[s][b].dwords.count * 4)
                if b == 0 { placement[s][b] = ringPos; ringPos += bytes }
                else { placement[s][b] = next; next += (bytes + 4095) & ~4095 }
            }
        }
        guard next <= arenaBytes, ringPos < VGPU.shadowRingBytes else {
            // Only a single submission can be this large (groups are cut to fit): refuse it.
            state.withLock { $0.engines[e.rawValue].executing = false }
            let q = group[0]
            reject(e, ScanRejection(reason: .tooManyBatches, engine: e, commandGM: UInt64(q.start) + UInt64(q.head), level: 0,
                                    header: 0, operand: next, detail: "shadow copies need \(next) bytes, the arena holds \(arenaBytes)",
                                    bufferGM: UInt64(q.start)),
                   generation: generation)
            return
        }
        for s in buffers.indices {
            for b in buffers[s].indices {
                for rel in buffers[s][b].relocations where rel.target < placement[s].count && rel.dword + 1 < buffers[s][b].dwords.count {
                    let gm = arenaGM + placement[s][rel.target]
                    buffers[s][b].dwords[rel.dword] = lo(gm)
                    buffers[s][b].dwords[rel.dword + 1] = hi(gm)
                }
                buffers[s][b].dwords.withUnsafeBytes { src in
                    (arenaPtr + Int(placement[s][b])).copyMemory(from: src.baseAddress!, byteCount: src.count)
                }
            }
        }
        submissions.add(UInt64(group.count), ordering: .relaxed)

        let gpu = host.gpu
        let engine = gpu.engine(e)
        var outcome = EngineWaitResult.idle
        var userEvents: UInt64 = 0
        var executed: UInt64 = 0
        let pass = passes[e.rawValue]
        let started = host.engineLocks[e.rawValue].withLock { () -> Bool in
            let t0 = ContinuousClock.now
            defer {
                let d = ContinuousClock.now - t0
                engineNanos.add(UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000), ordering: .relaxed)
            }
            let userBefore = gpu.interrupts.eventCount(Interrupt.user(e))
            let countBefore = engine.commandsExecuted
            // Start the pass and say so in one step, unless a RESET or shutdown came first: an abort then
            // either finds the pass on the engine or finds the generation changed.
            let started = pass.withLock { onEngine -> Bool in
                guard isRunning, state.withLock({ $0.engines[e.rawValue].generation }) == generation else { return false }
                engine.configureRing(start: UInt32(arenaGM), pages: Int(VGPU.shadowRingBytes / 4096))
                gpu.submit(e, tail: UInt32(ringPos))
                onEngine = true
                return true
            }
            guard started else { return false }
            outcome = engine.waitIdle(timeout: 60)
            pass.withLock { $0 = false }
            if case .idle = outcome {} else { engine.reset() }
            userEvents = gpu.interrupts.eventCount(Interrupt.user(e)) &- userBefore
            executed = engine.commandsExecuted &- countBefore
            return true
        }

        // Which submission a shadow GM address belongs to, and where the guest wrote that command.
        func locate(_ x: UInt64) -> (submission: Int, guest: UInt64)? {
            for s in buffers.indices {
                let q = group[s]
                let r0 = arenaGM + placement[s][0], r1 = r0 + UInt64(buffers[s][0].dwords.count * 4)
                if x >= r0 && x < r1 { return (s, UInt64(q.start) + (UInt64(q.head) + (x - r0)) % UInt64(q.ringBytes)) }
                for b in buffers[s].indices.dropFirst() {
                    let b0 = arenaGM + placement[s][b]
                    if x >= b0 && x < b0 + UInt64(buffers[s][b].dwords.count * 4) { return (s, buffers[s][b].sourceGM + (x - b0)) }
                }
            }
            return nil
        }

        var bits: UInt32 = 0
        var failed: (error: EngineError, command: UInt64, address: UInt64)? = nil
        let newly = state.withLock { s -> UInt32 in
            let i = e.rawValue
            s.engines[i].executing = false
            // Cancelled or aborted by a RESET or shutdown: the engine's state is already as after reset.
            guard started, s.engines[i].generation == generation else { return 0 }
            var completed = group.count
            switch outcome {
            case .idle:
                bits |= Interrupt.idle(e)
            case .error(let err):
                let where_ = locate(err.commandAddress)
                completed = where_?.submission ?? 0
                s.engines[i].error = err.code.rawValue
                // Operand addresses are the guest's own GM addresses; an address inside the shadows (a
                // command fetch) is reported where the guest wrote it.
                s.engines[i].faultAddress = locate(err.faultAddress)?.guest ?? err.faultAddress
                s.engines[i].errorIP = where_?.guest ?? err.commandAddress
                failed = (err, s.engines[i].errorIP, s.engines[i].faultAddress)
                s.engines[i].queue.removeAll()   // the engine stops: nothing after the failure runs
                bits |= Interrupt.error(e)
            case .timedOut:
                completed = 0
                s.engines[i].error = EngineErrorCode.stepBudgetExceeded.rawValue
                s.engines[i].queue.removeAll()
                bits |= Interrupt.error(e)
            }
            // The padding NOOPs of the completed submissions ran but are not the guest's commands.
            let pads = UInt64(padded.prefix(completed).filter { $0 }.count)
            s.engines[i].commandCount &+= UInt32(truncatingIfNeeded: executed >= pads ? executed - pads : 0)
            // HEAD: past every submission that completed; at the start of the one that failed.
            s.engines[i].head = completed == group.count ? group[group.count - 1].tail : group[completed].head
            if userEvents > 0 { bits |= Interrupt.user(e) }
            for q in group.prefix(completed) {
                for f in q.submission.flips {
                    if f.plane == 0 {
                        s.regs[Reg.priSurf] = UInt32(truncatingIfNeeded: f.surface)
                        s.regs[Reg.priStride] = f.stride
                        s.armedFlips |= Interrupt.flipDone
                    } else {
                        s.regs[Reg.curBase] = UInt32(truncatingIfNeeded: f.surface)
                        s.armedFlips |= Interrupt.cursorFlipDone
                    }
                }
            }
            return VGPU.latch(bits, in: &s)   // with the state it reports (see `latch`)
        }
        if let f = failed {
            let command = String(f.command, radix: 16), address = String(f.address, radix: 16)
            log.log(.warning, "\(e) engine error",
                    "vgpu\(id): \(e) engine error: \(f.error.code) at command 0x\(command), address 0x\(address): \(f.error.detail)")
        }
        if newly != 0 { signalInterrupt() }
    }

    /// One virtual vblank: counts it and completes the armed flips (several armed between two vblanks
    /// complete together, as on the GPU).
    func vblank() {
        let bits = state.withLock { s -> UInt32 in
            s.vblanks &+= 1
            if s.armedFlips & Interrupt.flipDone != 0 { s.flips &+= 1 }
            if s.armedFlips & Interrupt.cursorFlipDone != 0 { s.cursorFlips &+= 1 }
            defer { s.armedFlips = 0 }
            return Interrupt.vblank | s.armedFlips
        }
        raise(bits)
    }
}
