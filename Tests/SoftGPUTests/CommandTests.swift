import Testing
@testable import SoftGPU

private let D = Rig.dataGM

@Suite struct CommandTests {
    @Test func noopAdvancesHead() throws {
        let rig = try Rig()
        let r = try rig.ring(.rcs, builder { $0.noop(count: 3); $0.storeDataImm(gm: D, 0x5151) })
        #expect(r == .idle)
        #expect(rig.u32(D) == 0x5151)
        let e = rig.gpu.engine(.rcs)
        #expect(e.commandsExecuted == 5)                       // 3 NOOP + SDI + 1 padding NOOP
        #expect(rig.gpu.readRegister(Reg.ringHead(.rcs)) == 32)
        #expect(rig.gpu.readRegister(Reg.ringTail(.rcs)) == 32)
        #expect(rig.gpu.readRegister(Reg.commandCount(.rcs)) == 5)
        let st = rig.gpu.readRegister(Reg.status(.rcs))
        #expect(st & Reg.statusIdle != 0 && st & Reg.statusError == 0 && st & Reg.statusRingEnabled != 0)
        #expect(rig.gpu.readRegister(Reg.acthd(.rcs)) == 28)    // GM address of the last ring command
    }

    @Test func storeDataImmOneAndTwoDwords() throws {
        let rig = try Rig()
        #expect(try rig.ring(.rcs, builder {
            $0.storeDataImm(gm: D + 0x100, 0xAABB_CCDD)
            $0.storeDataImm(gm: D + 0x204, qword: 0x1122_3344_5566_7788)
        }) == .idle)
        #expect(rig.u32(D + 0x100) == 0xAABB_CCDD)
        #expect(rig.u32(D + 0x204) == 0x5566_7788)
        #expect(rig.u32(D + 0x208) == 0x1122_3344)
        #expect(rig.u32(D + 0x20C) == 0)
        // Also on the blitter.
        #expect(try rig.ring(.bcs, builder { $0.storeDataImm(gm: D + 0x300, 9) }) == .idle)
        #expect(rig.u32(D + 0x300) == 9)
    }

    @Test func loadRegisterImmWritesRegisterFile() throws {
        let rig = try Rig()
        #expect(try rig.ring(.rcs, builder {
            $0.loadRegisterImm([(Reg.scratch(3), 0xAB), (Reg.gpr(.rcs, dword: 5), 0x1234), (Reg.priStride, 4096)])
        }) == .idle)
        #expect(rig.gpu.readRegister(Reg.scratch(3)) == 0xAB)
        #expect(rig.gpu.readRegister(Reg.gpr(.rcs, dword: 5)) == 0x1234)
        #expect(rig.gpu.readRegister(Reg.priStride) == 4096)
        #expect(rig.gpu.readRegister(Reg.scratch(4)) == 0)
    }

    @Test func userInterruptSetsIIR() throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.imr, 0)
        #expect(try rig.ring(.bcs, builder { $0.userInterrupt() }) == .idle)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.bcsUser != 0)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.rcsUser == 0)
        #expect(rig.gpu.interrupts.eventCount(Interrupt.bcsUser) == 1)
        #expect(try rig.ring(.rcs, builder { $0.userInterrupt(); $0.userInterrupt() }) == .idle)
        #expect(rig.gpu.interrupts.eventCount(Interrupt.rcsUser) == 2)
    }

    @Test func flushPostSyncAndNotify() throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.imr, 0)
        #expect(try rig.ring(.bcs, builder { $0.flush(postSync: (D + 0x40, 41), notify: true) }) == .idle)
        #expect(rig.u32(D + 0x40) == 41)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.bcsUser != 0)
        // Without post-sync the address operand is not used: an unmapped address does not fault.
        rig.gpu.writeRegister(Reg.iir, 0xFFFF_FFFF)
        #expect(try rig.ring(.rcs, builder { $0.raw([CommandTable.info(.flush).header(dwords: 4), UInt32(Rig.unmappedGM), 0, 5]) }) == .idle)
        #expect(rig.gpu.readRegister(Reg.iir) & (Interrupt.rcsUser | Interrupt.bcsUser) == 0)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.rcsIdle != 0)
    }

    @Test func displayFlipChangesBaseAndCompletesAtVBlank() throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.imr, 0)
        rig.gpu.writeRegister(Reg.priSize, (8 << 16) | 16)
        rig.gpu.writeRegister(Reg.pipeConf, Reg.pipeConfEnable)   // (pipe off, a flip completes at once)
        #expect(try rig.ring(.rcs, builder { $0.displayFlip(plane: .primary, gm: D + 0x10000, stride: 256) }) == .idle)
        #expect(rig.gpu.readRegister(Reg.priSurf) == UInt32(D + 0x10000))
        #expect(rig.gpu.readRegister(Reg.priStride) == 256)
        #expect(rig.gpu.readRegister(Reg.flipCount) == 0)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.flipDone == 0)
        rig.gpu.tickVBlank()
        #expect(rig.gpu.readRegister(Reg.flipCount) == 1)
        #expect(rig.gpu.readRegister(Reg.iir) & (Interrupt.flipDone | Interrupt.vblank) == Interrupt.flipDone | Interrupt.vblank)
        rig.gpu.tickVBlank()
        #expect(rig.gpu.readRegister(Reg.flipCount) == 1)    // one flip, one completion
        #expect(try rig.ring(.bcs, builder { $0.displayFlip(plane: .cursor, gm: D + 0x20000) }) == .idle)
        #expect(rig.gpu.readRegister(Reg.curBase) == UInt32(D + 0x20000))
        rig.gpu.tickVBlank()
        #expect(rig.gpu.readRegister(Reg.cursorFlipCount) == 1)
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.cursorFlipDone != 0)
    }

    @Test func batchBufferStartAndEnd() throws {
        let rig = try Rig()
        let len = rig.writeBatch(at: D + 0x1000, builder {
            $0.storeDataImm(gm: D + 0x10, 1)
            $0.storeDataImm(gm: D + 0x14, 2)
            $0.batchBufferEnd()
        })
        #expect(try rig.ring(.rcs, builder {
            $0.batchBufferStart(gm: D + 0x1000, length: len)
            $0.storeDataImm(gm: D + 0x18, 3)    // after the batch returns
        }) == .idle)
        #expect([rig.u32(D + 0x10), rig.u32(D + 0x14), rig.u32(D + 0x18)] == [1, 2, 3])
    }

    // MARK: blits

    private func surface(_ gm: UInt64, pitch: UInt32, w: UInt16, h: UInt16) -> BlitSurface {
        BlitSurface(gm: gm, pitch: pitch, width: w, height: h)
    }

    private func pixel(_ rig: Rig, _ s: BlitSurface, _ x: Int, _ y: Int) -> UInt32 {
        rig.u32(s.gm + UInt64(y) * UInt64(s.pitch) + UInt64(x) * 4)
    }

    @Test func colorBltFillsRectangle() throws {
        let rig = try Rig()
        let s = surface(D + 0x30000, pitch: 64, w: 16, h: 8)
        rig.fill32(s.gm, count: 16 * 8, 0x1111_1111)
        #expect(try rig.ring(.bcs, builder { $0.colorBlt(dst: s, x1: 2, y1: 1, x2: 5, y2: 3, color: 0x00FF_0000) }) == .idle)
        for y in 0..<8 {
            for x in 0..<16 {
                let inside = (2..<5).contains(x) && (1..<3).contains(y)
                #expect(pixel(rig, s, x, y) == (inside ? 0x00FF_0000 : 0x1111_1111), "pixel \(x),\(y)")
            }
        }
    }

    @Test func colorBltClipsToSurface() throws {
        let rig = try Rig()
        // pitch 80 bytes = 20 pixels, surface width 16: columns 16..19 are padding and must stay.
        let s = surface(D + 0x30000, pitch: 80, w: 16, h: 8)
        rig.fill32(s.gm, count: 20 * 9, 0x2222_2222)
        #expect(try rig.ring(.bcs, builder {
            $0.colorBlt(dst: s, x1: -3, y1: -2, x2: 100, y2: 4, color: 0xABCDEF)
            $0.colorBlt(dst: s, x1: 20, y1: 0, x2: 30, y2: 8, color: 0x99)     // wholly right of the surface
            $0.colorBlt(dst: s, x1: 5, y1: 5, x2: 5, y2: 7, color: 0x99)       // empty
            $0.colorBlt(dst: s, x1: 6, y1: 6, x2: 2, y2: 7, color: 0x99)       // inverted
        }) == .idle)
        for y in 0..<9 {
            for x in 0..<20 {
                let inside = x < 16 && y < 4
                #expect(rig.u32(s.gm + UInt64(y * 80 + x * 4)) == (inside ? 0xABCDEF : 0x2222_2222), "pixel \(x),\(y)")
            }
        }
        // A zero-height surface touches nothing, even with an unmapped base.
        let none = surface(Rig.unmappedGM, pitch: 64, w: 16, h: 0)
        #expect(try rig.ring(.bcs, builder { $0.colorBlt(dst: none, x1: 0, y1: 0, x2: 16, y2: 16, color: 1) }) == .idle)
    }

    @Test func srcCopyBltCopiesRectangle() throws {
        let rig = try Rig()
        let src = surface(D + 0x40000, pitch: 64, w: 16, h: 8)
        let dst = surface(D + 0x50000, pitch: 128, w: 32, h: 8)
        for y in 0..<8 { for x in 0..<16 { rig.setU32(src.gm + UInt64(y * 64 + x * 4), UInt32(y * 1000 + x)) } }
        rig.fill32(dst.gm, count: 32 * 8, 0xEEEE)
        #expect(try rig.ring(.bcs, builder { $0.srcCopyBlt(dst: dst, x1: 1, y1: 1, x2: 4, y2: 3, src: src, srcX: 5, srcY: 2) }) == .idle)
        for y in 0..<8 {
            for x in 0..<32 {
                let inside = (1..<4).contains(x) && (1..<3).contains(y)
                #expect(pixel(rig, dst, x, y) == (inside ? UInt32((y + 1) * 1000 + x + 4) : 0xEEEE), "pixel \(x),\(y)")
            }
        }
    }

    @Test func srcCopyBltClipsAgainstBothSurfaces() throws {
        let rig = try Rig()
        let src = surface(D + 0x40000, pitch: 64, w: 10, h: 6)    // pitch 16 pixels, width 10
        let dst = surface(D + 0x50000, pitch: 64, w: 12, h: 12)
        for y in 0..<6 { for x in 0..<16 { rig.setU32(src.gm + UInt64(y * 64 + x * 4), UInt32(0x10000 + y * 100 + x)) } }
        rig.fill32(dst.gm, count: 16 * 12, 0)
        // dst rect (-2,-1)..(12,12) from src origin (-4,0): dst x maps to src x - 2, y to src y + 1.
        #expect(try rig.ring(.bcs, builder { $0.srcCopyBlt(dst: dst, x1: -2, y1: -1, x2: 12, y2: 12, src: src, srcX: -4, srcY: 0) }) == .idle)
        for y in 0..<12 {
            for x in 0..<16 {
                let sx = x - 2, sy = y + 1
                let inside = x < 12 && y < 12 && sx >= 0 && sx < 10 && sy >= 0 && sy < 6
                let want: UInt32 = inside ? UInt32(0x10000 + sy * 100 + sx) : 0
                #expect(rig.u32(dst.gm + UInt64(y * 64 + x * 4)) == want, "pixel \(x),\(y)")
            }
        }
    }

    @Test func srcCopyBltOverlappingSameSurface() throws {
        let rig = try Rig()
        let s = surface(D + 0x40000, pitch: 64, w: 16, h: 16)
        var expected = [UInt32](repeating: 0, count: 16 * 16)
        for i in 0..<256 { expected[i] = UInt32(i + 1); rig.setU32(s.gm + UInt64(i * 4), UInt32(i + 1)) }
        // Move the 10x10 block at (0,0) to (2,3): overlapping, destination after source.
        let before = expected
        for y in 3..<13 { for x in 2..<12 { expected[y * 16 + x] = before[(y - 3) * 16 + (x - 2)] } }
        #expect(try rig.ring(.bcs, builder { $0.srcCopyBlt(dst: s, x1: 2, y1: 3, x2: 12, y2: 13, src: s, srcX: 0, srcY: 0) }) == .idle)
        #expect((0..<256).map { rig.u32(s.gm + UInt64($0 * 4)) } == expected)
        // And back (destination before source).
        let before2 = expected
        for y in 0..<10 { for x in 0..<10 { expected[y * 16 + x] = before2[(y + 3) * 16 + (x + 2)] } }
        #expect(try rig.ring(.bcs, builder { $0.srcCopyBlt(dst: s, x1: 0, y1: 0, x2: 10, y2: 10, src: s, srcX: 2, srcY: 3) }) == .idle)
        #expect((0..<256).map { rig.u32(s.gm + UInt64($0 * 4)) } == expected)
    }

    @Test func saxpyCommand() throws {
        let rig = try Rig()
        rig.setFloats(D, [1, 2, 3, 4, 5])
        rig.setFloats(D + 0x100, [10, 20, 30, 40, 50, 60])
        #expect(try rig.ring(.rcs, builder { $0.saxpy(n: 5, a: 2, x: D, y: D + 0x100) }) == .idle)
        #expect(rig.floats(D + 0x100, 6) == [12, 24, 36, 48, 60, 60])
    }

    @Test func sgemmCommand() throws {
        let rig = try Rig()
        // A 2x3, B 3x2, C 2x2 (ldc 3 so one padding column must stay).
        rig.setFloats(D, [1, 2, 3, 4, 5, 6])
        rig.setFloats(D + 0x100, [7, 8, 9, 10, 11, 12])
        rig.setFloats(D + 0x200, [1, 1, -7, 1, 1, -7])
        #expect(try rig.ring(.rcs, builder {
            $0.sgemm(m: 2, n: 2, k: 3, alpha: 1, beta: 2, a: D, lda: 3, b: D + 0x100, ldb: 2, c: D + 0x200, ldc: 3)
        }) == .idle)
        // A*B = [[58, 64], [139, 154]]; + 2*C.
        #expect(rig.floats(D + 0x200, 6) == [60, 66, -7, 141, 156, -7])
    }
}
