import Machine
import SoftGPU
import Synchronization

/// Recovery (docs/vgpu.md section 4, "Hangs" and "Device reset"): the watchdog's view of this vGPU's
/// passes and its reset of a hung vGPU, and the device-level reset the guest asks for with PV_DEVICE_RESET.
/// See `VGPU`'s "Threads and ownership".
extension VGPU {
    // MARK: the watchdog's side (WatchdogClient)

    /// The submission of this vGPU's pass on engine `e` and the engine time its current ring-level command
    /// (a command in the ring, or a batch with everything it chains to and calls) has had, found from the
    /// physical engine's HEAD, which moves between ring-level commands: the engine thread's CPU time since
    /// HEAD was first seen where it is (so neither a loaded host nor a late look makes it look longer than it
    /// is). `since` is `now` minus that time.
    public func runningSubmission(on e: EngineID, now: ContinuousClock.Instant) -> RunningSubmission? {
        let i = e.rawValue
        guard isRunning, state.withLock({ $0.engines[i].running != nil }) else { return nil }
        let head = UInt64(host.gpu.readRegister(Reg.ringHead(e)))
        let cpu = host.gpu.engine(e).workerCPUTime
        return state.withLock { s -> RunningSubmission? in
            guard var r = s.engines[i].running else { return nil }
            if head != r.head, let k = r.ringStarts.lastIndex(where: { $0 <= head }) {
                r.head = head
                r.current = k
                r.cpuAtCurrent = cpu
                s.engines[i].running = r
            }
            let held = max(.zero, cpu - r.cpuAtCurrent)
            return RunningSubmission(submission: r.numbers[r.current], since: now - held, pass: r.generation)
        }
    }

    /// The watchdog found a ring-level command of `submission` holding engine `e` past `limit`: resets this vGPU (both engines'
    /// work and rings, as RESET of each), then says so in the error block (ERR_STATUS bit 1, ERR_REASON 13)
    /// and with the engine's hang interrupt. Nothing happens when that submission is no longer on the engine.
    public func hung(on e: EngineID, _ submission: RunningSubmission, limit: Duration, exceededAt: ContinuousClock.Instant) {
        let i = e.rawValue
        let detected = ContinuousClock.now
        let found = state.withLock { s -> (command: UInt64, offset: UInt32)? in
            guard let p = s.engines[i].running, p.generation == submission.pass,
                  p.numbers[p.current] == submission.submission else { return nil }
            s.hangAborted[i] = p.generation
            // Where the guest wrote the ring-level command that hung (its ring wraps; the shadow does not).
            let g = p.guestRings[p.current]
            let offset = UInt32((UInt64(g.head) + (p.head - p.ringStarts[p.current])) % UInt64(max(g.bytes, 1)))
            return (UInt64(g.start) + UInt64(offset), offset)
        }
        guard isRunning, let found else { return }
        for x in EngineID.allCases { abortEngineWork(x) }
        let done = ContinuousClock.now
        let held = detected - submission.since
        let heldMicros = UInt64(max(0, held.components.seconds)) * 1_000_000 + UInt64(max(0, held.components.attoseconds) / 1_000_000_000_000)
        let newly = state.withLock { s -> UInt32 in
            s.regs[VGPURegs.errStatus] |= VGPURegs.errStatusHang
            s.regs[VGPURegs.errEngine] = UInt32(i)
            s.regs[VGPURegs.errReason] = VGPURegs.hangReason
            s.regs[VGPURegs.errOpcode] = 0
            s.regs[pair: VGPURegs.errCommandGM] = found.command
            s.regs[VGPURegs.errOffset] = found.offset
            s.regs[VGPURegs.errLevel] = 0
            s.regs[pair: VGPURegs.errOperand] = heldMicros
            s.regs[VGPURegs.errHangCount] &+= 1
            return s.interrupts.latch(VGPURegs.hang(e))
        }
        hangResets.add(1, ordering: .relaxed)
        let report = HangReport(engine: e, submission: submission.submission, started: submission.since,
                                limitExceeded: exceededAt, detected: detected, resetDone: done)
        hangLog.withLock { l in
            l.append(report)
            if l.count > 64 { l.removeFirst(l.count - 64) }
        }
        trace?.instant("hang", vgpu: id, engine: e, at: detected,
                       args: [("submission", "\(submission.submission)"), ("held ms", Self.ms(held)), ("limit ms", Self.ms(limit)),
                              ("reset ms after the limit", Self.ms(report.timeToReset))])
        let line = "vgpu\(id): \(e) hang: submission \(submission.submission) held the engine for \(Self.ms(held)) ms "
            + "(limit \(Self.ms(limit)) ms); vGPU reset \(Self.ms(report.timeToReset)) ms after the limit"
        log.log(.warning, "\(e) hang", "\(line)")
        if newly != 0 { signalInterrupt() }
    }

    // MARK: device-level reset

    /// PV_DEVICE_RESET: both engines as after RESET (their work aborted, queued work dropped, rings
    /// disabled), the interrupt registers as after creation (IMR all masked, IER, IIR, ISR 0) and the error
    /// block cleared (ERR_COUNT and ERR_HANG_COUNT keep counting). The GTT, the slices, the display, the
    /// scratch registers and the PV shared page stay. Returns when the GPU has stopped the vGPU's work.
    func resetDevice() {
        trace?.instant("device reset", vgpu: id)
        for e in EngineID.allCases { abortEngineWork(e) }
        state.withLock { s in
            s.interrupts = VirtualInterrupts()
            for r in [VGPURegs.errStatus, VGPURegs.errEngine, VGPURegs.errReason, VGPURegs.errOpcode, VGPURegs.errCommandGM,
                      VGPURegs.errCommandGM + 4, VGPURegs.errLevel, VGPURegs.errOperand, VGPURegs.errOperand + 4, VGPURegs.errOffset] {
                s.regs[r] = 0
            }
        }
        deviceResets.add(1, ordering: .relaxed)
        updateINTx()
    }

    /// Milliseconds with two decimals, for log lines and traces.
    static func ms(_ d: Duration) -> String {
        let v = Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
        return String(Double(Int((v * 100).rounded())) / 100)
    }
}
