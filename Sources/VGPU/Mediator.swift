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
            let pipeOn = state.withLock { ($0.regs[Reg.pipeConf] ?? 0) & Reg.pipeConfEnable != 0 }
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
            for e in EngineID.allCases { processPending(e) }
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
            logger.debug("vgpu\(id): \(e) doorbell without a shared page")
            return
        }
        state.withLock { $0.engines[e.rawValue].tail = tail }
        doorbell(e, tail: tail)
    }

    /// A doorbell for `engine` with the guest's new `tail`: copies the ring from the last accepted tail and
    /// every batch it reaches, scans the copies, and queues them for the mediator thread (or records the
    /// rejection). Runs on the thread that rang: a vCPU thread for a trapped TAIL write, the mediator thread
    /// for a PV doorbell.
    func doorbell(_ e: EngineID, tail: UInt32) {
        let i = e.rawValue
        scanLocks[i].withLock {
            let job = state.withLock { s -> (start: UInt32, ctl: UInt32, head: UInt32, regs: [UInt32: UInt32])? in
                let es = s.engines[i]
                guard es.error == 0, es.ctl & Reg.ringCtlEnable != 0, tail != es.scannedTail else { return nil }
                return (es.start, es.ctl, es.scannedTail, s.regs)
            }
            guard let job else { return }
            activity.withLock { if $0.first == nil { $0.first = ContinuousClock.now } }
            let ringBytes = UInt32(Reg.ringPages(ctl: job.ctl)) * 4096
            let regs = job.regs
            // Batches must fit the arena after the shadow ring, with room for rounding each up to a page.
            var limits = ScanLimits()
            limits.maxTotalBatchBytes = Int(engineArena(e).bytes - VGPU.shadowRingBytes) - limits.maxBatches * 4096
            let scanner = CommandScanner(slices: slices, limits: limits, commandLoadAllowed: RegisterPolicy.commandLoadAllowed,
                                         registerRead: { regs[$0] ?? 0 })
            let gpu = host.gpu
            let result = scanner.scan(engine: e, ringStart: UInt64(job.start), ringBytes: ringBytes, head: job.head, tail: tail) { gm, count in
                guard count >= 0, count <= (16 << 20) / 4 else { return nil }
                var out = [UInt32](repeating: 0, count: count)
                do { try out.withUnsafeMutableBytes { try gpu.gtt.read(into: $0, at: gm) } } catch { return nil }
                return out
            }
            switch result {
            case .failure(let rejection):
                reject(e, rejection)
            case .success(let submission):
                state.withLock { s in
                    s.engines[i].queue.append(Queued(submission: submission, start: job.start, ringBytes: ringBytes,
                                                     head: job.head, tail: tail))
                    s.engines[i].scannedTail = tail
                }
                control.signal()
            }
        }
    }

    /// Runs the engine's queued submissions in order (mediator thread).
    func processPending(_ e: EngineID) {
        let i = e.rawValue
        while true {
            let next = state.withLock { s -> Queued? in
                guard !s.engines[i].queue.isEmpty, !s.engines[i].executing else { return nil }
                s.engines[i].executing = true
                return s.engines[i].queue.removeFirst()
            }
            guard let q = next else { return }
            execute(e, q.submission, ringStart: UInt64(q.start), ringBytes: q.ringBytes, head: q.head, tail: q.tail)
            activity.withLock { $0.last = ContinuousClock.now }
        }
    }

    /// Records a rejected submission in the error block and the engine's virtual state, and tells the guest.
    func reject(_ e: EngineID, _ r: ScanRejection) {
        rejections.add(1, ordering: .relaxed)
        logger.warning("vgpu\(id): rejected \(e) submission: \(r)")
        state.withLock { s in
            let i = e.rawValue
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
        }
        raise(VGPURegs.rejected(e) | Interrupt.error(e))
    }

    /// Places the shadow buffers in the arena, runs them on the shared engine, and completes the submission.
    func execute(_ e: EngineID, _ sub: ScannedSubmission, ringStart: UInt64, ringBytes: UInt32, head: UInt32, tail: UInt32) {
        let (arenaGM, arenaPtr, arenaBytes) = engineArena(e)
        var buffers = sub.buffers
        // Layout: buffer 0 (ring fragment) at the arena start; batches page-aligned after the ring area.
        var placement = [UInt64](repeating: 0, count: buffers.count)
        var next = VGPU.shadowRingBytes
        for b in 1..<max(buffers.count, 1) where b < buffers.count {
            placement[b] = next
            next += (UInt64(buffers[b].dwords.count * 4) + 4095) & ~4095
        }
        let ringFragmentBytes = UInt64(buffers.first?.dwords.count ?? 0) * 4
        guard next <= arenaBytes, ringFragmentBytes < VGPU.shadowRingBytes else {
            state.withLock { $0.engines[e.rawValue].executing = false }
            reject(e, ScanRejection(reason: .tooManyBatches, engine: e, commandGM: ringStart + UInt64(head), level: 0, header: 0, operand: next))
            return
        }
        for b in buffers.indices {
            for rel in buffers[b].relocations where rel.target < placement.count && rel.dword + 1 < buffers[b].dwords.count {
                let gm = arenaGM + placement[rel.target]
                buffers[b].dwords[rel.dword] = lo(gm)
                buffers[b].dwords[rel.dword + 1] = hi(gm)
            }
            buffers[b].dwords.withUnsafeBytes { src in
                (arenaPtr + Int(placement[b])).copyMemory(from: src.baseAddress!, byteCount: src.count)
            }
        }
        submissions.add(1, ordering: .relaxed)

        let gpu = host.gpu
        let engine = gpu.engine(e)
        var outcome = EngineWaitResult.idle
        var userEvents: UInt64 = 0
        var executed: UInt64 = 0
        host.engineLocks[e.rawValue].withLock {
            let userBefore = gpu.interrupts.eventCount(Interrupt.user(e))
            let countBefore = engine.commandsExecuted
            engine.configureRing(start: UInt32(arenaGM), pages: Int(VGPU.shadowRingBytes / 4096))
            gpu.submit(e, tail: UInt32(ringFragmentBytes))
            outcome = engine.waitIdle(timeout: 60)
            if case .idle = outcome {} else { engine.reset() }
            userEvents = gpu.interrupts.eventCount(Interrupt.user(e)) &- userBefore
            executed = engine.commandsExecuted &- countBefore
        }

        // Map a shadow GM address back to where the guest wrote the command.
        func guestAddress(_ x: UInt64) -> UInt64 {
            if x >= arenaGM && x < arenaGM + ringFragmentBytes {
                return ringStart + (UInt64(head) + (x - arenaGM)) % UInt64(ringBytes)
            }
            for b in 1..<max(buffers.count, 1) where b < buffers.count {
                let s = arenaGM + placement[b]
                if x >= s && x < s + UInt64(buffers[b].dwords.count * 4) { return buffers[b].sourceGM + (x - s) }
            }
            return x
        }

        var bits: UInt32 = 0
        state.withLock { s in
            let i = e.rawValue
            s.engines[i].executing = false
            s.engines[i].head = tail
            s.engines[i].commandCount &+= UInt32(truncatingIfNeeded: executed)
            switch outcome {
            case .idle:
                bits |= Interrupt.idle(e)
            case .error(let err):
                s.engines[i].error = err.code.rawValue
                s.engines[i].faultAddress = err.faultAddress
                s.engines[i].errorIP = guestAddress(err.commandAddress)
                s.engines[i].queue.removeAll()   // the engine stops: nothing after the failure runs
                bits |= Interrupt.error(e)
            case .timedOut:
                s.engines[i].error = EngineErrorCode.stepBudgetExceeded.rawValue
                s.engines[i].queue.removeAll()
                bits |= Interrupt.error(e)
            }
            if userEvents > 0 { bits |= Interrupt.user(e) }
            for f in sub.flips {
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
        if case .error(let err) = outcome {
            logger.warning("vgpu\(id): \(e) engine error: \(err)")
        }
        if bits != 0 { raise(bits) }
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
