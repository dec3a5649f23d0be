import Testing
@testable import SoftGPU

@Suite struct InterruptTests {
    @Test func resetValues() throws {
        let rig = try Rig()
        #expect(rig.gpu.readRegister(Reg.imr) == 0xFFFF_FFFF)
        #expect(rig.gpu.readRegister(Reg.ier) == 0)
        #expect(rig.gpu.readRegister(Reg.iir) == 0)
        #expect(rig.gpu.readRegister(Reg.isr) == 0)
    }

    @Test func maskedEventsReachISRButNotIIR() throws {
        let rig = try Rig()
        let log = IRQLog()
        rig.gpu.setInterruptHandler { log.record($0) }
        rig.gpu.writeRegister(Reg.ier, Interrupt.all)
        rig.gpu.tickVBlank()                                   // IMR all ones: masked
        #expect(rig.gpu.readRegister(Reg.isr) == Interrupt.vblank)
        #expect(rig.gpu.readRegister(Reg.iir) == 0)
        #expect(log.all.isEmpty)
        // Unmasking later does not latch the old event (edge semantics).
        rig.gpu.writeRegister(Reg.imr, ~Interrupt.vblank)
        #expect(rig.gpu.readRegister(Reg.iir) == 0)
        rig.gpu.tickVBlank()
        #expect(rig.gpu.readRegister(Reg.iir) == Interrupt.vblank)
        #expect(log.all == [Interrupt.vblank])
    }

    @Test func enableControlsDeliveryNotLatching() throws {
        let rig = try Rig()
        let log = IRQLog()
        rig.gpu.setInterruptHandler { log.record($0) }
        rig.gpu.writeRegister(Reg.imr, 0)
        rig.gpu.writeRegister(Reg.ier, Interrupt.bcsUser)
        #expect(try rig.ring(.rcs, builder { $0.userInterrupt() }) == .idle)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.rcsUser != 0)   // latched although not enabled
        #expect(!log.all.contains(Interrupt.rcsUser))
        #expect(!rig.gpu.interrupts.pending)
        // Enabling a pending bit asserts the line and calls the handler.
        rig.gpu.writeRegister(Reg.ier, Interrupt.bcsUser | Interrupt.rcsUser)
        #expect(log.all.last == Interrupt.rcsUser)
        #expect(rig.gpu.interrupts.pending)
        #expect(try rig.ring(.bcs, builder { $0.userInterrupt() }) == .idle)
        #expect(log.all.last == Interrupt.bcsUser)
    }

    @Test func iirIsWriteOneToClear() throws {
        let rig = try Rig()
        let log = IRQLog()
        rig.gpu.setInterruptHandler { log.record($0) }
        rig.gpu.writeRegister(Reg.imr, 0)
        rig.gpu.writeRegister(Reg.ier, Interrupt.vblank | Interrupt.flipDone)
        rig.gpu.writeRegister(Reg.pipeConf, Reg.pipeConfEnable)   // vblanks by hand only (no timer)
        rig.gpu.writeRegister(Reg.priSurf, 0x1000)             // arms a flip
        rig.gpu.tickVBlank()
        #expect(rig.gpu.readRegister(Reg.iir) == Interrupt.vblank | Interrupt.flipDone)
        #expect(log.all == [Interrupt.vblank | Interrupt.flipDone])
        rig.gpu.writeRegister(Reg.iir, 0)                      // writing 0 does nothing
        #expect(rig.gpu.readRegister(Reg.iir) == Interrupt.vblank | Interrupt.flipDone)
        rig.gpu.writeRegister(Reg.iir, Interrupt.vblank)
        #expect(rig.gpu.readRegister(Reg.iir) == Interrupt.flipDone)
        #expect(rig.gpu.readRegister(Reg.isr) == Interrupt.flipDone)   // pulse latch cleared with IIR
        // A second vblank while flipDone is still set: only the newly set bit is reported.
        rig.gpu.tickVBlank()
        #expect(log.all == [Interrupt.vblank | Interrupt.flipDone, Interrupt.vblank])
        // A bit that stays set does not fire again.
        rig.gpu.tickVBlank()
        #expect(log.all.count == 2)
        rig.gpu.writeRegister(Reg.iir, 0xFFFF_FFFF)
        #expect(rig.gpu.readRegister(Reg.iir) == 0)
        #expect(rig.gpu.readRegister(Reg.isr) == 0)
        rig.gpu.writeRegister(Reg.isr, 0xFFFF_FFFF)            // read-only
        #expect(rig.gpu.readRegister(Reg.isr) == 0)
    }

    @Test func idleInterruptAfterWork() throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.imr, ~(Interrupt.rcsIdle | Interrupt.bcsIdle))
        #expect(try rig.ring(.rcs, builder { $0.noop() }) == .idle)
        #expect(rig.gpu.readRegister(Reg.iir) == Interrupt.rcsIdle)
        #expect(rig.gpu.interrupts.eventCount(Interrupt.rcsIdle) == 1)
    }

    @Test func handlerMayAccessRegistersAndReset() throws {
        let rig = try Rig()
        let gpu = rig.gpu
        let log = IRQLog()
        gpu.writeRegister(Reg.imr, 0)
        gpu.writeRegister(Reg.ier, Interrupt.rcsError)
        gpu.setInterruptHandler { [unowned gpu] bits in
            // Runs on the RCS worker: read status, acknowledge, request a reset.
            log.record(gpu.readRegister(Reg.errorCode(.rcs)))
            gpu.writeRegister(Reg.iir, bits)
            gpu.engine(.rcs).reset()
        }
        try rig.rcs.submitRing(builder { $0.raw([0x1F80_0000]); $0.noop() })
        // The reset requested from the handler clears the error; the engine ends idle.
        var r = gpu.waitIdle(.rcs, timeout: 30)
        if case .error = r { r = gpu.waitIdle(.rcs, timeout: 30) }
        #expect(log.all == [EngineErrorCode.unknownCommand.rawValue])
        #expect(gpu.engine(.rcs).lastError == nil)
        #expect(gpu.readRegister(Reg.iir) & Interrupt.rcsError == 0)
    }
}
