import Glibc
import Testing
@testable import SoftGPU

private let D = Rig.dataGM

@Suite struct DisplayTests {
    private func setupPrimary(_ rig: Rig, base: UInt64, stride: UInt32, w: Int, h: Int) {
        rig.gpu.writeRegister(Reg.priSize, UInt32(h) << 16 | UInt32(w))
        rig.gpu.writeRegister(Reg.priStride, stride)
        rig.gpu.writeRegister(Reg.priSurf, UInt32(base))
        rig.gpu.writeRegister(Reg.priCtl, Reg.priCtl(enable: true))
    }

    private func pattern(_ x: Int, _ y: Int) -> UInt32 { 0xFF00_0000 | UInt32(y) << 8 | UInt32(x) }

    @Test func scanoutComposesPrimaryAndCursor() throws {
        let rig = try Rig()
        setupPrimary(rig, base: D + 0x10000, stride: 128, w: 16, h: 8)
        for y in 0..<8 { for x in 0..<32 { rig.setU32(D + 0x10000 + UInt64(y * 128 + x * 4), pattern(x, y)) } }
        rig.setU32(D + 0x20000, 0xFF00_00FF)                 // cursor (0,0): opaque blue
        rig.setU32(D + 0x20004, 0x80FF_0000)                 // cursor (1,0): half red
        rig.setU32(D + 0x20000 + 63 * 256 + 63 * 4, 0xFFFF_FFFF)   // cursor (63,63): off screen
        rig.gpu.writeRegister(Reg.curBase, UInt32(D + 0x20000))
        rig.gpu.writeRegister(Reg.curPos, 2 << 16 | 3)
        rig.gpu.writeRegister(Reg.curCtl, Reg.planeEnable)
        let img = rig.gpu.scanout()
        #expect(img.width == 16 && img.height == 8)
        #expect(img.invalidPages == 0)
        for y in 0..<8 {
            for x in 0..<16 {
                let want: UInt32
                switch (x, y) {
                case (3, 2): want = 0x0000_00FF
                case (4, 2): want = 0x0080_0102                 // 0x80 red over (r 0, g 2, b 4)
                default: want = pattern(x, y) & 0x00FF_FFFF     // X byte cleared
                }
                #expect(img[x, y] == want, "pixel \(x),\(y)")
            }
        }
        // Cursor disabled: plain primary.
        rig.gpu.writeRegister(Reg.curCtl, 0)
        #expect(rig.gpu.scanout()[3, 2] == pattern(3, 2) & 0x00FF_FFFF)
    }

    @Test func cursorClipsAtEdges() throws {
        let rig = try Rig()
        setupPrimary(rig, base: D + 0x10000, stride: 64, w: 16, h: 8)
        rig.setU32(D + 0x20000 + 1 * 256 + 1 * 4, 0xFF00_FF00)   // cursor (1,1)
        rig.setU32(D + 0x20000, 0xFFFF_0000)                     // cursor (0,0): off screen at (-1,-1)
        rig.gpu.writeRegister(Reg.curBase, UInt32(D + 0x20000))
        rig.gpu.writeRegister(Reg.curPos, UInt32(UInt16(bitPattern: -1)) << 16 | UInt32(UInt16(bitPattern: -1)))
        rig.gpu.writeRegister(Reg.curCtl, Reg.planeEnable)
        var img = rig.gpu.scanout()
        #expect(img[0, 0] == 0x00FF00)
        #expect(img.pixels.filter { $0 != 0 }.count == 1)
        // Far right/bottom: only cursor (0,0) is visible, at (15,7).
        rig.gpu.writeRegister(Reg.curPos, 7 << 16 | 15)
        img = rig.gpu.scanout()
        #expect(img[15, 7] == 0xFF0000)
        #expect(img.pixels.filter { $0 != 0 }.count == 1)
        // Wholly off screen.
        rig.gpu.writeRegister(Reg.curPos, 100 << 16 | 100)
        #expect(rig.gpu.scanout().pixels.allSatisfy { $0 == 0 })
    }

    @Test func flipByCommandAndByRegister() throws {
        let rig = try Rig()
        let a = D + 0x100000, b = D + 0x200000
        rig.fill32(a, count: 16 * 4, 0x111111)
        rig.fill32(b, count: 32 * 4, 0x222222)
        setupPrimary(rig, base: a, stride: 64, w: 16, h: 4)
        rig.gpu.writeRegister(Reg.pipeConf, Reg.pipeConfEnable)   // no timer: vblanks only by hand
        let before = rig.gpu.readRegister(Reg.flipCount)
        #expect(rig.gpu.scanout().pixels.allSatisfy { $0 == 0x111111 })
        #expect(try rig.ring(.rcs, builder { $0.displayFlip(plane: .primary, gm: b, stride: 128) }) == .idle)
        #expect(rig.gpu.scanout().pixels == [UInt32](repeating: 0x222222, count: 64))
        rig.gpu.writeRegister(Reg.priSurf, UInt32(a))
        rig.gpu.writeRegister(Reg.priStride, 64)
        #expect(rig.gpu.scanout().pixels.allSatisfy { $0 == 0x111111 })
        // LOAD_REGISTER_IMM may flip too.
        #expect(try rig.ring(.bcs, builder { $0.loadRegisterImm([(Reg.priSurf, UInt32(b)), (Reg.priStride, 128)]) }) == .idle)
        #expect(rig.gpu.scanout()[5, 3] == 0x222222)
        #expect(rig.gpu.readRegister(Reg.flipCount) == before)   // armed until the vblank
        rig.gpu.tickVBlank()
        #expect(rig.gpu.readRegister(Reg.flipCount) == before + 1)   // flips since the previous vblank complete together
        #expect(rig.gpu.readRegister(Reg.vblankCount) == 1)
    }

    /// docs/vgpu.md and softgpu.md: while PIPE_CONF is off there are no vblanks, so a flip completes at once.
    @Test func flipWhileThePipeIsOffCompletesAtOnce() throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.ier, Interrupt.flipDone | Interrupt.cursorFlipDone)
        rig.gpu.writeRegister(Reg.priSurf, UInt32(D))
        #expect(rig.gpu.readRegister(Reg.flipCount) == 1)
        #expect(rig.gpu.interrupts.eventCount(Interrupt.flipDone) == 1)
        #expect(try rig.ring(.rcs, builder { $0.displayFlip(plane: .cursor, gm: D, stride: 0) }) == .idle)
        #expect(rig.gpu.readRegister(Reg.cursorFlipCount) == 1)
        // With the pipe on, a flip waits for the vblank; turning the pipe off completes it.
        rig.gpu.writeRegister(Reg.pipeConf, Reg.pipeConfEnable)
        rig.gpu.writeRegister(Reg.priSurf, UInt32(D))
        #expect(rig.gpu.readRegister(Reg.flipCount) == 1)
        rig.gpu.writeRegister(Reg.pipeConf, 0)
        #expect(rig.gpu.readRegister(Reg.flipCount) == 2)
        #expect(rig.gpu.readRegister(Reg.vblankCount) == 0)
    }

    @Test func invalidPagesReadBlackAndAreCounted() throws {
        let rig = try Rig()
        let base = D + Rig.dataBytes - 4096                 // last mapped page; rows 1 and 2 are unmapped
        rig.fill32(base, count: 1024, 0x00AB_CDEF)
        setupPrimary(rig, base: base, stride: 4096, w: 16, h: 3)
        let img = rig.gpu.scanout()
        #expect(img.invalidPages == 2)
        #expect((0..<16).allSatisfy { img[$0, 0] == 0xABCDEF })
        #expect((0..<16).allSatisfy { img[$0, 1] == 0 && img[$0, 2] == 0 })
        #expect(rig.gpu.readRegister(Reg.displayFaults) == 2)
        _ = rig.gpu.scanout()
        #expect(rig.gpu.readRegister(Reg.displayFaults) == 4)
        // A base beyond GM does not crash either.
        rig.gpu.writeRegister(Reg.priSurf, UInt32(Rig.gmSize - 4096))
        let img2 = rig.gpu.scanout()
        #expect(img2.invalidPages == 3)
    }

    @Test func disabledOrUnsupportedPrimaryIsBlack() throws {
        let rig = try Rig()
        rig.fill32(D, count: 64, 0x123456)
        setupPrimary(rig, base: D, stride: 64, w: 8, h: 4)
        #expect(rig.gpu.scanout()[1, 1] == 0x123456)
        rig.gpu.writeRegister(Reg.priCtl, Reg.priCtl(enable: true, format: 2))
        #expect(rig.gpu.scanout() == Image(width: 8, height: 4, pixels: [UInt32](repeating: 0, count: 32)))
        rig.gpu.writeRegister(Reg.priCtl, Reg.priCtl(enable: false))
        #expect(rig.gpu.scanout().pixels.allSatisfy { $0 == 0 })
        rig.gpu.writeRegister(Reg.priSize, 0)
        #expect(rig.gpu.scanout().pixels.isEmpty)
    }

    @Test func vblankTimerTicksWhilePipeEnabled() throws {
        let rig = try Rig(refreshRate: 1000)
        rig.gpu.writeRegister(Reg.pipeConf, Reg.pipeConfEnable)
        var n: UInt32 = 0
        for _ in 0..<1000 where n < 3 {
            usleep(10_000)
            n = rig.gpu.readRegister(Reg.vblankCount)
        }
        #expect(n >= 3)
        #expect(rig.gpu.interrupts.eventCount(Interrupt.vblank) >= 3)
        rig.gpu.writeRegister(Reg.pipeConf, 0)
        let stopped = rig.gpu.readRegister(Reg.vblankCount)
        usleep(30_000)
        #expect(rig.gpu.readRegister(Reg.vblankCount) <= stopped + 1)   // at most one tick already in flight
    }
}
