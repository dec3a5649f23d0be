import Testing
@testable import SoftGPU

private let D = Rig.dataGM

@Suite struct BatchTests {
    @Test func secondLevelBatchReturnsToCaller() throws {
        let rig = try Rig()
        let l2 = rig.writeBatch(at: D + 0x2000, builder { $0.storeDataImm(gm: D + 4, 2); $0.batchBufferEnd() })
        let l1 = rig.writeBatch(at: D + 0x1000, builder {
            $0.storeDataImm(gm: D, 1)
            $0.batchBufferStart(gm: D + 0x2000, length: l2, secondLevel: true)
            $0.storeDataImm(gm: D + 8, 3)          // runs after the second level returns
            $0.batchBufferEnd()
        })
        #expect(try rig.ring(.rcs, builder { $0.batchBufferStart(gm: D + 0x1000, length: l1); $0.storeDataImm(gm: D + 12, 4) }) == .idle)
        #expect([rig.u32(D), rig.u32(D + 4), rig.u32(D + 8), rig.u32(D + 12)] == [1, 2, 3, 4])
    }

    @Test func chainedBatchesReturnToRing() throws {
        let rig = try Rig()
        // Batch A chains to B (no return to A); B's end returns to the ring.
        let b = rig.writeBatch(at: D + 0x2000, builder { $0.storeDataImm(gm: D + 4, 2); $0.batchBufferEnd() })
        let a = rig.writeBatch(at: D + 0x1000, builder {
            $0.storeDataImm(gm: D, 1)
            $0.batchBufferStart(gm: D + 0x2000, length: b)
            $0.storeDataImm(gm: D + 8, 99)         // never runs
            $0.batchBufferEnd()
        })
        #expect(try rig.ring(.rcs, builder { $0.batchBufferStart(gm: D + 0x1000, length: a); $0.storeDataImm(gm: D + 12, 4) }) == .idle)
        #expect([rig.u32(D), rig.u32(D + 4), rig.u32(D + 8), rig.u32(D + 12)] == [1, 2, 0, 4])
    }

    @Test func chainInsideSecondLevelIsTooDeep() throws {
        let rig = try Rig()
        let l3 = rig.writeBatch(at: D + 0x3000, builder { $0.batchBufferEnd() })
        let l2 = rig.writeBatch(at: D + 0x2000, builder { $0.batchBufferStart(gm: D + 0x3000, length: l3); $0.batchBufferEnd() })
        let l1 = rig.writeBatch(at: D + 0x1000, builder { $0.batchBufferStart(gm: D + 0x2000, length: l2, secondLevel: true); $0.batchBufferEnd() })
        let err = try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D + 0x1000, length: l1) })
        #expect(err?.code == .batchNestingTooDeep)
        #expect(err?.commandAddress == D + 0x2000)
        #expect(rig.gpu.readRegister(Reg.errorIPLo(.rcs)) == 0)     // recovered (reset) by expectError
        // Same for a second-level start inside a second-level batch.
        let l2b = rig.writeBatch(at: D + 0x2000, builder { $0.batchBufferStart(gm: D + 0x3000, length: l3, secondLevel: true); $0.batchBufferEnd() })
        _ = l2b
        #expect(try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D + 0x1000, length: l1) })?.code == .batchNestingTooDeep)
    }

    @Test func secondLevelFromRingAndEndInRing() throws {
        let rig = try Rig()
        let l = rig.writeBatch(at: D + 0x1000, builder { $0.batchBufferEnd() })
        #expect(try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D + 0x1000, length: l, secondLevel: true) })?.code == .invalidBatchStart)
        #expect(try rig.expectError(.bcs, ring: builder { $0.batchBufferEnd() })?.code == .batchEndOutsideBatch)
    }

    @Test func endlessChainHitsStepBudget() throws {
        let rig = try Rig(stepBudget: 1000)
        let l = rig.writeBatch(at: D + 0x1000, builder { $0.noop(); $0.batchBufferStart(gm: D + 0x1000, length: 20) })
        #expect(l == 20)
        let err = try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D + 0x1000, length: l) })
        #expect(err?.code == .stepBudgetExceeded)
        // Budget is per ring command: 1000 commands in one batch are fine, 1001 are not.
        let ok = rig.writeBatch(at: D + 0x4000, builder { $0.noop(count: 998); $0.batchBufferEnd() })
        #expect(try rig.ring(.rcs, builder { $0.batchBufferStart(gm: D + 0x4000, length: ok) }) == .idle)
        let tooMany = rig.writeBatch(at: D + 0x4000, builder { $0.noop(count: 999); $0.batchBufferEnd() })
        #expect(try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D + 0x4000, length: tooMany) })?.code == .stepBudgetExceeded)
    }

    @Test func resetAbortsAnEndlessChain() throws {
        let rig = try Rig(stepBudget: Int.max)
        let l = rig.writeBatch(at: D + 0x1000, builder { $0.noop(); $0.batchBufferStart(gm: D + 0x1000, length: 20) })
        try rig.rcs.submitRing(builder { $0.batchBufferStart(gm: D + 0x1000, length: l) })
        // The engine spins; a bounded wait times out, a reset stops it.
        #expect(rig.gpu.waitIdle(.rcs, timeout: 0.05) == .timedOut)
        rig.gpu.resetEngine(.rcs)
        #expect(rig.gpu.waitIdle(.rcs, timeout: 30) == .idle)
        #expect(rig.gpu.engine(.rcs).lastError == nil)
        #expect(rig.gpu.readRegister(Reg.ringCtl(.rcs)) == 0)
        rig.rcs.recover()
        #expect(try rig.ring(.rcs, builder { $0.storeDataImm(gm: D, 7) }) == .idle)
        #expect(rig.u32(D) == 7)
    }

    @Test func batchOverrunAndCommandPastBatchEnd() throws {
        let rig = try Rig()
        // No BATCH_BUFFER_END within the declared length.
        let l = rig.writeBatch(at: D + 0x1000, builder { $0.noop(count: 4) })
        let e1 = try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D + 0x1000, length: l) })
        #expect(e1?.code == .batchOverrun)
        #expect(e1?.faultAddress == D + 0x1000 + 16)
        // A 4-dword STORE_DATA_IMM in a 12-byte batch.
        rig.writeBatch(at: D + 0x1000, builder { $0.storeDataImm(gm: D, 1); $0.batchBufferEnd() })
        let e2 = try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D + 0x1000, length: 12) })
        #expect(e2?.code == .commandPastBatchEnd)
        #expect(rig.u32(D) == 0)
    }

    @Test func invalidBatchLengths() throws {
        let rig = try Rig()
        for len: UInt32 in [0, 6, UInt32(CommandTable.maxBatchBytes) + 4] {
            #expect(try rig.expectError(.rcs, ring: builder { $0.batchBufferStart(gm: D, length: len) })?.code == .invalidOperand)
        }
    }
}

@Suite struct ErrorTests {
    @Test func unknownCommandRecordsErrorRegisters() throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.imr, 0)
        rig.gpu.writeRegister(Reg.ier, Interrupt.rcsError)
        let log = IRQLog()
        rig.gpu.setInterruptHandler { log.record($0) }
        try rig.rcs.submitRing(builder { $0.noop(count: 2); $0.raw([0x1F80_0000]); $0.noop() })   // MI opcode 0x3F
        let r = rig.gpu.waitIdle(.rcs, timeout: 30)
        guard case .error(let err) = r else { Issue.record("no error: \(r)"); return }
        #expect(err.code == .unknownCommand)
        #expect(err.commandAddress == 8)
        #expect(rig.gpu.readRegister(Reg.errorCode(.rcs)) == EngineErrorCode.unknownCommand.rawValue)
        #expect(rig.gpu.readRegister(Reg.errorIPLo(.rcs)) == 8)
        #expect(rig.gpu.readRegister(Reg.ringHead(.rcs)) == 8)      // HEAD stays at the failing command
        #expect(rig.gpu.readRegister(Reg.status(.rcs)) & Reg.statusError != 0)
        #expect(rig.gpu.readRegister(Reg.isr) & Interrupt.rcsError != 0)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.rcsError != 0)
        #expect(log.all == [Interrupt.rcsError])
        // Further submissions do not run until reset.
        try rig.rcs.submitRing(builder { $0.storeDataImm(gm: D, 5) })
        #expect(rig.gpu.waitIdle(.rcs, timeout: 30) == .error(err))
        #expect(rig.u32(D) == 0)
        // Reset through the register: error cleared, ISR level dropped, IIR keeps the latched bit.
        rig.gpu.writeRegister(Reg.reset(.rcs), 1)
        #expect(rig.gpu.readRegister(Reg.errorCode(.rcs)) == 0)
        #expect(rig.gpu.readRegister(Reg.isr) & Interrupt.rcsError == 0)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.rcsError != 0)
        rig.rcs.recover()
        #expect(try rig.ring(.rcs, builder { $0.storeDataImm(gm: D, 6) }) == .idle)
        #expect(rig.u32(D) == 6)
        // Reserved client.
        #expect(try rig.expectError(.rcs, ring: builder { $0.raw([0x2000_0000]); $0.noop() })?.code == .unknownCommand)
    }

    @Test func commandOnWrongEngine() throws {
        let rig = try Rig()
        let s = BlitSurface(gm: D, pitch: 64, width: 16, height: 16)
        #expect(try rig.expectError(.rcs, ring: builder { $0.colorBlt(dst: s, x1: 0, y1: 0, x2: 1, y2: 1, color: 1) })?.code == .commandNotAllowedOnEngine)
        #expect(try rig.expectError(.bcs, ring: builder { $0.saxpy(n: 1, a: 1, x: D, y: D + 4) })?.code == .commandNotAllowedOnEngine)
        #expect(rig.u32(D) == 0)
    }

    @Test func invalidLengthField() throws {
        let rig = try Rig()
        let sdi = CommandTable.info(.storeDataImm).header
        #expect(try rig.expectError(.rcs, ring: builder { $0.raw([sdi | 4, UInt32(D), 0, 1, 2, 3]) })?.code == .invalidLength)   // 6 dwords
        let lri = CommandTable.info(.loadRegisterImm).header
        #expect(try rig.expectError(.rcs, ring: builder { $0.raw([lri | 2, Reg.scratch(0), 1, 0]) })?.code == .invalidLength)   // even
        #expect(try rig.expectError(.rcs, ring: builder { $0.raw([lri | 0xFF]); $0.noop(count: 255) })?.code == .invalidLength) // > 63 pairs
    }

    @Test func commandPastRingTail() throws {
        let rig = try Rig()
        // A 4-dword STORE_DATA_IMM whose TAIL ends after 2 dwords.
        try rig.rcs.submitRing(builder { $0.raw([CommandTable.info(.storeDataImm).header(dwords: 4), UInt32(D)]) })
        let r = rig.gpu.waitIdle(.rcs, timeout: 30)
        #expect(r != .idle)
        if case .error(let e) = r { #expect(e.code == .commandPastTail) }
        rig.rcs.recover()
    }

    @Test func addressOutOfRange() throws {
        let rig = try Rig()
        let err = try rig.expectError(.rcs, ring: builder { $0.storeDataImm(gm: Rig.gmSize - 4, qword: 1) })
        #expect(err?.code == .addressOutOfRange)
        #expect(err?.faultAddress == Rig.gmSize - 4)
        #expect(try rig.expectError(.rcs, ring: builder { $0.saxpy(n: 0x4000_0000, a: 1, x: D, y: D) })?.code == .addressOutOfRange)
        #expect(try rig.expectError(.rcs, ring: builder { $0.storeDataImm(gm: 1 << 40, 1) })?.code == .addressOutOfRange)
        // Huge SGEMM extents saturate instead of overflowing.
        #expect(try rig.expectError(.rcs, ring: builder {
            $0.sgemm(m: .max, n: .max, k: .max, alpha: 1, beta: 1, a: D, lda: .max, b: D, ldb: .max, c: D, ldc: .max)
        })?.code == .addressOutOfRange)
    }

    @Test func gttInvalidEntryOnWriteAndFetch() throws {
        let rig = try Rig()
        let err = try rig.expectError(.rcs, ring: builder { $0.storeDataImm(gm: Rig.unmappedGM + 0x10, 1) })
        #expect(err?.code == .gttInvalidEntry)
        #expect(err?.faultAddress == Rig.unmappedGM + 0x10)
        #expect(rig.gpu.readRegister(Reg.faultAddressLo(.rcs)) == 0)    // recovered
        // Batch fetch from an unmapped page.
        let e2 = try rig.expectError(.bcs, ring: builder { $0.batchBufferStart(gm: Rig.unmappedGM, length: 64) })
        #expect(e2?.code == .gttInvalidEntry)
        #expect(e2?.faultAddress == Rig.unmappedGM)
        // A blit that crosses from mapped into unmapped memory faults at the first unmapped page.
        let s = BlitSurface(gm: D + Rig.dataBytes - 4096, pitch: 4096, width: 1024, height: 2)
        let e3 = try rig.expectError(.bcs, ring: builder { $0.colorBlt(dst: s, x1: 0, y1: 0, x2: 1024, y2: 2, color: 7) })
        #expect(e3?.code == .gttInvalidEntry)
        #expect(e3?.faultAddress == D + Rig.dataBytes)
        #expect(rig.u32(D + Rig.dataBytes - 4096) == 7)    // the first row was written
    }

    @Test func unmappedBusAndReadOnlyPages() throws {
        let rig = try Rig()
        let page = Int(Rig.unmappedGM / 4096)
        rig.gpu.gtt.setEntry(page, GTTEntry.make(bus: 0x5555_0000))
        let e1 = try rig.expectError(.rcs, ring: builder { $0.storeDataImm(gm: Rig.unmappedGM, 1) })
        #expect(e1?.code == .busAddressUnmapped)
        // Read-only: engine writes fault, reads work.
        rig.gpu.gtt.setEntry(page, GTTEntry.make(bus: rig.data.busAddress, readOnly: true))
        rig.setU32(D, 0x3F80_0000)   // 1.0f
        let e2 = try rig.expectError(.rcs, ring: builder { $0.storeDataImm(gm: Rig.unmappedGM + 8, 1) })
        #expect(e2?.code == .writeToReadOnlyPage)
        #expect(e2?.faultAddress == Rig.unmappedGM + 8)
        rig.setFloats(D + 0x100, [2])
        #expect(try rig.ring(.rcs, builder { $0.saxpy(n: 1, a: 3, x: Rig.unmappedGM, y: D + 0x100) }) == .idle)
        #expect(rig.floats(D + 0x100, 1) == [5])
        #expect(try rig.expectError(.rcs, ring: builder { $0.saxpy(n: 1, a: 3, x: D + 0x100, y: Rig.unmappedGM) })?.code == .writeToReadOnlyPage)
    }

    @Test func invalidOperands() throws {
        let rig = try Rig()
        #expect(try rig.expectError(.rcs, ring: builder { $0.storeDataImm(gm: D + 2, 1) })?.code == .invalidOperand)      // misaligned
        let badPitch = BlitSurface(gm: D, pitch: 60, width: 16, height: 4)
        #expect(try rig.expectError(.bcs, ring: builder { $0.colorBlt(dst: badPitch, x1: 0, y1: 0, x2: 1, y2: 1, color: 1) })?.code == .invalidOperand)
        let oddPitch = BlitSurface(gm: D, pitch: 66, width: 16, height: 4)
        #expect(try rig.expectError(.bcs, ring: builder { $0.srcCopyBlt(dst: oddPitch, x1: 0, y1: 0, x2: 1, y2: 1, src: oddPitch, srcX: 0, srcY: 0) })?.code == .invalidOperand)
        #expect(try rig.expectError(.rcs, ring: builder {
            $0.sgemm(m: 2, n: 2, k: 3, alpha: 1, beta: 0, a: D, lda: 2, b: D, ldb: 2, c: D, ldc: 2)
        })?.code == .invalidOperand)   // lda < K
        rig.gpu.writeRegister(Reg.priSize, (4 << 16) | 100)
        #expect(try rig.expectError(.rcs, ring: builder { $0.displayFlip(plane: .primary, gm: D, stride: 256) })?.code == .invalidOperand)  // < 400
        #expect(try rig.expectError(.rcs, ring: builder { $0.displayFlip(plane: .primary, gm: D + 64, stride: 512) })?.code == .invalidOperand) // not page aligned
        #expect(try rig.expectError(.rcs, ring: builder {
            $0.raw([CommandTable.info(.displayFlip).header(dwords: 4) | (2 << 20), 0, UInt32(D), 0])
        })?.code == .invalidOperand)   // plane 2
    }

    @Test func registerNotWritableByCommands() throws {
        let rig = try Rig()
        for reg in [Reg.ringTail(.rcs), Reg.imr, Reg.gpuID, Reg.pipeConf, 0x1F_FFFC, Reg.mmioSize, Reg.scratch(0) + 2] {
            let err = try rig.expectError(.rcs, ring: builder { $0.loadRegisterImm([(Reg.scratch(0), 1), (reg, 0x42)]) })
            #expect(err?.code == .registerNotWritable)
            #expect(err?.faultAddress == UInt64(reg))
        }
        #expect(rig.gpu.readRegister(Reg.scratch(0)) == 0)   // all-or-nothing
        #expect(rig.gpu.readRegister(Reg.imr) == 0xFFFF_FFFF)
    }

    @Test func invalidRingState() throws {
        let rig = try Rig()
        let e = rig.gpu.engine(.rcs)
        // TAIL not qword aligned.
        e.submit(tail: 4)
        guard case .error(let err) = e.waitIdle(timeout: 30) else { Issue.record("no error"); return }
        #expect(err.code == .invalidRingState)
        e.reset()
        // START not page aligned.
        e.configureRing(start: 0x100, pages: 1)
        e.submit(tail: 8)
        guard case .error(let err2) = e.waitIdle(timeout: 30) else { Issue.record("no error"); return }
        #expect(err2.code == .invalidRingState)
        e.reset()
        // Ring beyond GM.
        e.configureRing(start: UInt32(Rig.gmSize - 4096), pages: 2)
        e.submit(tail: 8)
        guard case .error(let err3) = e.waitIdle(timeout: 30) else { Issue.record("no error"); return }
        #expect(err3.code == .invalidRingState)
        e.reset()
        // TAIL outside the ring.
        e.configureRing(start: 0, pages: 1)
        e.submit(tail: 8192)
        guard case .error(let err4) = e.waitIdle(timeout: 30) else { Issue.record("no error"); return }
        #expect(err4.code == .invalidRingState)
        // A disabled ring does nothing.
        rig.rcs.recover()
        rig.gpu.writeRegister(Reg.ringCtl(.rcs), Reg.ringCtl(pages: 2, enable: false))
        rig.host(D).storeBytes(of: 0, as: UInt32.self)
        try rig.rcs.submitRing(builder { $0.storeDataImm(gm: D, 1) })
        #expect(rig.gpu.waitIdle(.rcs, timeout: 30) == .idle)
        #expect(rig.u32(D) == 0)
        rig.gpu.writeRegister(Reg.ringCtl(.rcs), Reg.ringCtl(pages: 2, enable: true))
        #expect(rig.gpu.waitIdle(.rcs, timeout: 30) == .idle)
        #expect(rig.u32(D) == 1)
    }
}
