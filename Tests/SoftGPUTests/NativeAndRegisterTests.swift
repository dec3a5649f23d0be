import Testing
@testable import SoftGPU

private let D = Rig.dataGM

@Suite struct NativeQueueTests {
    @Test func manySubmissionsWrapTheRingAndSignalFences() throws {
        let rig = try Rig()
        rig.gpu.writeRegister(Reg.imr, 0)
        // 2-page ring, 32 bytes of ring per submission: 600 submissions wrap it several times.
        var last: UInt32 = 0
        for i in 0..<600 {
            last = try rig.rcs.submit(builder { $0.storeDataImm(gm: D + UInt64(i * 4), UInt32(i + 1)) }, notify: i == 599)
        }
        try rig.rcs.wait(for: last, timeout: 30)
        #expect(last == 600)
        #expect(rig.rcs.completed == 600)
        #expect((0..<600).allSatisfy { rig.u32(D + UInt64($0 * 4)) == UInt32($0 + 1) })
        #expect(rig.gpu.readRegister(Reg.iir) & Interrupt.rcsUser != 0)
        #expect(rig.gpu.interrupts.eventCount(Interrupt.rcsUser) == 1)
    }

    @Test func bothEnginesRunConcurrently() throws {
        let rig = try Rig()
        let s = BlitSurface(gm: D + 0x100000, pitch: 1024, width: 256, height: 64)
        rig.setFloats(D, [Float](repeating: 1, count: 4096))
        rig.setFloats(D + 0x10000, [Float](repeating: 2, count: 4096))
        let a = try rig.bcs.submit(builder { $0.colorBlt(dst: s, x1: 0, y1: 0, x2: 256, y2: 64, color: 0xFFFFFF) })
        let b = try rig.rcs.submit(builder { $0.saxpy(n: 4096, a: 3, x: D, y: D + 0x10000) })
        try rig.bcs.wait(for: a, timeout: 30)
        try rig.rcs.wait(for: b, timeout: 30)
        #expect(rig.floats(D + 0x10000, 4096).allSatisfy { $0 == 5 })
        #expect(rig.u32(s.gm + 63 * 1024 + 255 * 4) == 0xFFFFFF)
    }

    @Test func existingBatchAndErrorsSurface() throws {
        let rig = try Rig()
        let len = rig.writeBatch(at: D + 0x1000, builder { $0.storeDataImm(gm: D, 77); $0.batchBufferEnd() })
        let seq = try rig.rcs.submitBatch(gm: D + 0x1000, length: len)
        try rig.rcs.wait(for: seq, timeout: 30)
        #expect(rig.u32(D) == 77)
        _ = try rig.rcs.submit(builder { $0.storeDataImm(gm: Rig.unmappedGM, 1) })
        #expect(throws: NativeQueueError.self) { try rig.rcs.wait(timeout: 30) }
        rig.rcs.recover()
        try rig.rcs.run(builder { $0.storeDataImm(gm: D, 78) }, timeout: 30)
        #expect(rig.u32(D) == 78)
    }

    @Test func hostBufferReleaseUnmaps() throws {
        let rig = try Rig()
        let buf = try rig.gpu.mapHostMemory(gm: Rig.unmappedGM, bytes: 8192)
        #expect(rig.gpu.gtt.hostPointer(forPage: Int(Rig.unmappedGM / 4096) + 1) == buf.pointer + 4096)
        buf.release()
        #expect(rig.gpu.gtt.entry(Int(Rig.unmappedGM / 4096)) == 0)
        #expect(rig.gpu.systemMemory.resolve(buf.busAddress) == nil)
        #expect(throws: GMFault.self) { _ = try rig.gpu.mapHostMemory(gm: Rig.gmSize - 4096, bytes: 8192) }
    }
}

@Suite struct RegisterFileTests {
    @Test func identificationAndUnassignedOffsets() throws {
        let rig = try Rig()
        #expect(rig.gpu.readRegister(Reg.gpuID) == Reg.gpuIDValue)
        #expect(rig.gpu.readRegister(Reg.gmSizeMiB) == 64)
        #expect(rig.gpu.readRegister(Reg.apertureSizeMiB) == 16)
        rig.gpu.writeRegister(Reg.gpuID, 1)
        #expect(rig.gpu.readRegister(Reg.gpuID) == Reg.gpuIDValue)
        #expect(rig.gpu.readRegister(0x1_0000) == 0)
        rig.gpu.writeRegister(0x1_0000, 5)
        #expect(rig.gpu.readRegister(0x1_0000) == 0)
        #expect(rig.gpu.unclaimedRegisterAccesses == 3)
        #expect(rig.gpu.readRegister(Reg.mmioSize) == 0)
        #expect(rig.gpu.readRegister(Reg.scratch(0) + 1) == 0)
    }

    @Test func storageRegistersAndMapAgree() throws {
        let rig = try Rig()
        for info in RegisterMap.all where info.commandWritable {
            // Every command-writable register is storage the CPU can read back.
            let v = info.offset ^ 0x5A5A_0000
            rig.gpu.writeRegister(info.offset, v)
            let back = rig.gpu.readRegister(info.offset)
            switch info.offset {
            case Reg.curCtl, Reg.priCtl: #expect(back == v & (info.offset == Reg.curCtl ? Reg.planeEnable : Reg.planeEnable | 0xF << 26))
            case Reg.curBase, Reg.priSurf: #expect(back == v & ~0xFFF)
            default: #expect(back == v, "\(info.name)")
            }
        }
        #expect(Set(RegisterMap.all.map(\.offset)).count == RegisterMap.all.count)
        #expect(RegisterMap.info(Reg.iir)?.access == .writeOneToClear)
        #expect(!RegisterMap.isCommandWritable(Reg.ringTail(.bcs)))
        #expect(RegisterMap.isCommandWritable(Reg.gpr(.bcs, dword: 31)))
        #expect(!RegisterMap.isCommandWritable(Reg.gpr(.bcs, dword: 32)))
    }

    @Test func ringRegistersViaMMIO() throws {
        let rig = try Rig()
        let e = EngineID.bcs
        rig.gpu.engine(e).reset()
        // Ring at the data buffer, programmed through registers only.
        rig.gpu.writeRegister(Reg.ringStart(e), UInt32(D + 0x80000))
        rig.gpu.writeRegister(Reg.ringHead(e), 0)
        rig.gpu.writeRegister(Reg.ringTail(e), 0)
        rig.gpu.writeRegister(Reg.ringCtl(e), Reg.ringCtl(pages: 1))
        #expect(rig.gpu.readRegister(Reg.ringCtl(e)) == 1)
        let cmds = builder { $0.storeDataImm(gm: D, 0xAB); $0.storeDataImm(gm: D + 4, 0xCD) }
        rig.writeBatch(at: D + 0x80000, cmds)
        rig.gpu.writeRegister(Reg.ringTail(e), UInt32(cmds.byteCount))
        #expect(rig.gpu.waitIdle(e, timeout: 30) == .idle)
        #expect(rig.u32(D) == 0xAB && rig.u32(D + 4) == 0xCD)
        #expect(rig.gpu.readRegister(Reg.ringHead(e)) == 32)
        // Wrap: a command that straddles the end of a 1-page ring.
        rig.gpu.writeRegister(Reg.reset(e), 1)
        rig.gpu.writeRegister(Reg.ringStart(e), UInt32(D + 0x80000))
        rig.gpu.writeRegister(Reg.ringHead(e), 4088)
        rig.gpu.writeRegister(Reg.ringTail(e), 4088)
        rig.gpu.writeRegister(Reg.ringCtl(e), Reg.ringCtl(pages: 1))
        let w = builder { $0.storeDataImm(gm: D + 8, 0xEF); $0.noop(count: 4) }
        for (i, d) in w.dwords.enumerated() { rig.setU32(D + 0x80000 + UInt64((4088 + i * 4) % 4096), d) }
        rig.gpu.writeRegister(Reg.ringTail(e), UInt32((4088 + w.byteCount) % 4096))
        #expect(rig.gpu.waitIdle(e, timeout: 30) == .idle)
        #expect(rig.u32(D + 8) == 0xEF)
        #expect(rig.gpu.readRegister(Reg.ringHead(e)) == 24)
    }
}
