import FuzzSupport
import Glibc
import KVM
import Logging
import Machine
import SoftGPU
import VGPU

// libFuzzer target: the vGPU's BAR0 (register file and GTT window), driven as a guest driver would through
// the machine's MMIO bus: reads and writes of 1, 2, 4 and 8 bytes at any offset, known registers, GTT
// entries, guest RAM contents (rings and batches), trapped TAIL and PV doorbells, and waits for the engines.
//
// One machine (KVM, never run) and one vGPU per process. To keep inputs reproducible the vGPU is put back
// to its reset state after every input, through BAR0 as a guest would: wait until both engines are idle,
// write the registers the input wrote back to their reset values, clear every GTT entry it wrote, reset
// both engines, and zero guest RAM and the GPU's scratch page. What a guest cannot reset (the vblank, flip
// and error counters, ISR, and GM-address registers that refuse 0) carries over; a crash file still replays
// on its own in a fresh process.
//
// Input: a sequence of operations, each an opcode byte (taken modulo the count) and its operands:
//   0 read       u8 size (1/2/4/8 by the low 2 bits), u32 offset (modulo the BAR0 size)
//   1 write      u8 size, u32 offset, u64 value
//   2 reg write  u8 register (index into `registers`), u32 value
//   3 reg read   u8 register
//   4 GTT write  u8 flags (bit 0 hidden slice, bit 1 a 4-byte half, bit 2 the high half, bit 3 raw value),
//                u16 page (modulo 256), u32 value: raw, or guest RAM page (low 10 bits) << 12 | flags (bits 16-19)
//   5 RAM write  u16 dword offset in the RAM window, u8 count (modulo 64), count dwords
//   6 TAIL       u8 engine, u16 tail: the trapped doorbell
//   7 PV bell    u8 engine, u16 tail: tail into the shared page, then the doorbell register
//   8 wait       until both engines are idle (bounded)
//   9 ring       u8 engine, u8 aperture page, u8 pages - 1 (modulo 4): START, HEAD = TAIL = 0, CTL

enum Op: UInt8, CaseIterable {
    case read = 0, write, regWrite, regRead, gttWrite, ramWrite, tail, pvDoorbell, wait, ring
}

enum Layout {
    static let ramBytes: UInt64 = 4 << 20
    static let ramWindow: UInt64 = 0x20_0000          // guest-physical base of the RAM-write window
    static let ramWindowDwords = 0x4000               // 64 KiB
    static let gttPages = 256                         // GTT entries reachable per slice
    static let busyTimeout: Duration = .seconds(60)
}

/// Every register offset an input can name with one byte: every element of the vGPU's register rows (the
/// statistics block's unassigned rest by its first offset only), and a few offsets nobody claims.
let registers: [UInt32] = {
    var r: Set<UInt32> = [0x1000, 0x7_fffc]
    for row in VGPURegisterFile.rows {
        for off in row.name == VGPURegisterFile.reservedStatistics ? [row.offset] : row.offsets { r.insert(off) }
    }
    precondition(r.count <= 256, "the fuzzer names registers with one byte")
    return r.sorted()
}()

func registerIndex(_ offset: UInt32) -> UInt8 { UInt8(registers.firstIndex(of: offset)!) }

/// The machine and the vGPU, made once per process.
final class Rig: @unchecked Sendable {
    let machine: Machine
    let host: GPUHost
    let vgpu: VGPU
    let bar0: UInt64   // where the PCI bus placed BAR0
    // What the current input touched (reset afterwards).
    var writtenRegisters = Set<UInt32>()
    var writtenGTT = Set<UInt64>()       // BAR0 offsets of 8-byte GTT entries
    var dirty = false                    // guest RAM may have changed

    init() {
        guard KVMSystem.isAvailable else {
            fuzzLog("FuzzVGPU: skipped, needs read-write /dev/kvm (the vGPU sits on a KVM machine)")
            exit(getenv("CI").map { String(cString: $0) } == "true" ? 1 : 0)
        }
        var quiet = Logger(label: "fuzz")
        quiet.logLevel = .critical
        do {
            var c = MachineConfiguration()
            c.memoryBytes = Layout.ramBytes
            c.serialOutput = .none
            machine = try Machine(configuration: c, image: .realModeBlob([0xfa, 0xf4], loadAddress: 0x7c00), logger: quiet)
            host = GPUHost()
            vgpu = try VGPU(context: machine, host: host, logger: quiet)
        } catch {
            fuzzFinding("cannot build the machine and vGPU: \(error)")
        }
        // Memory decode + bus master, through the PCI bus (which maps the BARs), as a guest enables it.
        machine.pciBus.configWrite(bus: 0, device: vgpu.pciDevice, function: 0, offset: 4, size: 2, value: 0x6)
        bar0 = UInt64(machine.pciBus.configRead(bus: 0, device: vgpu.pciDevice, function: 0, offset: 0x10, size: 4) & ~0xf)
    }

    // MARK: BAR0 through the MMIO bus

    func read(_ offset: UInt64, size: Int) -> UInt64 {
        var v: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &v) { machine.mmioBus.read(bar0 + offset, UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
        return v
    }

    func write(_ offset: UInt64, size: Int, _ value: UInt64) {
        if offset >= VGPURegs.gttWindow {
            writtenGTT.insert(offset & ~7)
            if size == 8 || offset % 8 + UInt64(size) > 8 { writtenGTT.insert((offset & ~7) + 8) }
        } else {
            writtenRegisters.insert(UInt32(offset & ~3))
        }
        var v = value
        _ = withUnsafeBytes(of: &v) { machine.mmioBus.write(bar0 + offset, UnsafeRawBufferPointer(rebasing: $0[0..<size])) }
    }

    func r32(_ r: UInt32) -> UInt32 { UInt32(truncatingIfNeeded: read(UInt64(r), size: 4)) }
    func w32(_ r: UInt32, _ v: UInt32) { write(UInt64(r), size: 4, UInt64(v)) }

    func gttOffset(hidden: Bool, page: Int) -> UInt64 {
        let gm = (hidden ? vgpu.slices.hidden.lowerBound : vgpu.slices.aperture.lowerBound) + UInt64(page) * 4096
        return VGPURegs.gttWindow + (gm >> 12) * 8
    }

    /// Waits (bounded) until neither engine is busy; a vGPU that stays busy is a finding.
    func waitIdle() {
        let deadline = ContinuousClock.now + Layout.busyTimeout
        for e in EngineID.allCases {
            while r32(Reg.status(e)) & Reg.statusBusy != 0 {
                guard ContinuousClock.now < deadline else { fuzzFinding("vGPU \(e) still busy \(Layout.busyTimeout) after the input") }
                usleep(50)
            }
        }
    }

    // MARK: one input

    func run(_ input: inout FuzzInput) {
        while !input.isAtEnd {
            let op = Op(rawValue: input.u8() % UInt8(Op.allCases.count))!
            switch op {
            case .read:
                let size = 1 << Int(input.u8() & 3)
                _ = read(UInt64(input.u32()) % VGPURegs.bar0Size, size: size)
            case .write:
                let size = 1 << Int(input.u8() & 3)
                let offset = UInt64(input.u32()) % VGPURegs.bar0Size
                write(offset, size: size, input.u64())
            case .regWrite:
                let r = registers[Int(input.u8()) % registers.count]
                w32(r, input.u32())
            case .regRead:
                _ = r32(registers[Int(input.u8()) % registers.count])
            case .gttWrite:
                let flags = input.u8()
                let page = Int(input.u16()) % Layout.gttPages
                let value = input.u32()
                let entry = flags & 8 != 0 ? UInt64(value) : (UInt64(value & 0x3ff) << 12) | UInt64((value >> 16) & 0xf)
                let at = gttOffset(hidden: flags & 1 != 0, page: page)
                if flags & 2 != 0 {
                    let high = flags & 4 != 0
                    write(at + (high ? 4 : 0), size: 4, high ? entry >> 32 : entry & 0xffff_ffff)
                } else {
                    write(at, size: 8, entry)
                }
                dirty = true
            case .ramWrite:
                let start = Int(input.u16()) % Layout.ramWindowDwords
                let count = Int(input.u8() % 64)
                for i in 0..<count {
                    let v = input.u32()
                    let dword = (start + i) % Layout.ramWindowDwords
                    try? machine.memory.write(v, at: Layout.ramWindow + UInt64(dword) * 4)
                }
                dirty = true
            case .tail:
                let e: EngineID = input.u8() & 1 == 0 ? .rcs : .bcs
                w32(Reg.ringTail(e), UInt32(input.u16()))
            case .pvDoorbell:
                let e: EngineID = input.u8() & 1 == 0 ? .rcs : .bcs
                let tail = UInt32(input.u16())
                let page = UInt64(r32(VGPURegs.pvSharedPage)) | UInt64(r32(VGPURegs.pvSharedPage + 4)) << 32
                if page != 0 { try? machine.memory.write(tail, at: page + 8 * UInt64(e.rawValue)) }
                w32(VGPURegs.pvDoorbell(e), 1)
                dirty = true
            case .wait:
                waitIdle()
            case .ring:
                let e: EngineID = input.u8() & 1 == 0 ? .rcs : .bcs
                let gm = vgpu.slices.aperture.lowerBound + UInt64(input.u8()) * 4096
                let pages = Int(input.u8() % 4) + 1
                w32(Reg.ringStart(e), UInt32(truncatingIfNeeded: gm))
                w32(Reg.ringHead(e), 0)
                w32(Reg.ringTail(e), 0)
                w32(Reg.ringCtl(e), Reg.ringCtl(pages: pages))
            }
        }
        reset()
    }

    /// Puts the vGPU back as the previous inputs found it (see the header).
    func reset() {
        waitIdle()
        for r in writtenRegisters.sorted() where r != Reg.ringTail(.rcs) && r != Reg.ringTail(.bcs) {
            w32(r, 0)
        }
        w32(Reg.imr, 0xffff_ffff)
        w32(Reg.iir, 0xffff_ffff)
        w32(Reg.ier, 0)
        w32(VGPURegs.errStatus, 1)
        for offset in writtenGTT where offset + 8 <= VGPURegs.bar0Size { write(offset, size: 8, 0) }
        for e in EngineID.allCases { w32(Reg.reset(e), 1) }
        if dirty {
            memset(machine.memory.hostBase, 0, Int(machine.memory.size))
            if let scratch = host.gpu.systemMemory.resolve(SystemMemory.scratchPageAddress, length: 4096) { memset(scratch, 0, 4096) }
        }
        writtenRegisters.removeAll(keepingCapacity: true)
        writtenGTT.removeAll(keepingCapacity: true)
        dirty = false
    }
}

nonisolated(unsafe) var rig: Rig? = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func vgpuFuzzTarget(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    rig!.run(&input)
    return 0
}

@_cdecl("LLVMFuzzerInitialize")
public func vgpuFuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    FuzzSeeds.writeIfRequested(vgpuSeeds)
    rig = Rig()
    return 0
}

// MARK: - Seeds

/// Builds operation sequences as a guest driver would issue them.
struct Script {
    var e = FuzzEncoder()
    mutating func op(_ o: Op) { e.u8(o.rawValue) }
    mutating func reg(_ r: UInt32, _ v: UInt32) { op(.regWrite); e.u8(registerIndex(r)); e.u32(v) }
    mutating func readReg(_ r: UInt32) { op(.regRead); e.u8(registerIndex(r)) }
    /// GTT entry of slice page `page` -> guest RAM page `ramPage` (valid).
    mutating func gtt(hidden: Bool = false, page: UInt16, ramPage: UInt32) {
        op(.gttWrite); e.u8(hidden ? 1 : 0); e.u16(page); e.u32(ramPage | (1 << 16))
    }
    /// Dwords into guest RAM at `gpa` (inside the RAM window), in chunks of at most 63.
    mutating func ram(_ gpa: UInt64, _ dwords: [UInt32]) {
        var at = Int((gpa - Layout.ramWindow) / 4)
        for chunk in stride(from: 0, to: dwords.count, by: 63) {
            let part = dwords[chunk..<min(chunk + 63, dwords.count)]
            op(.ramWrite); e.u16(UInt16(at)); e.u8(UInt8(part.count)); e.dwords(Array(part))
            at += part.count
        }
    }
    mutating func ring(_ engine: EngineID, page: UInt8, pages: Int = 1) {
        op(.ring); e.u8(UInt8(engine.rawValue)); e.u8(page); e.u8(UInt8(pages - 1))
    }
    mutating func tail(_ engine: EngineID, _ t: Int) { op(.tail); e.u8(UInt8(engine.rawValue)); e.u16(UInt16(t)) }
    mutating func wait() { op(.wait) }
    mutating func errorBlock() {
        for r in [VGPURegs.errStatus, VGPURegs.errReason, VGPURegs.errOpcode, VGPURegs.errCommandGM, Reg.iir, Reg.isr] { readReg(r) }
        for e in EngineID.allCases { readReg(Reg.status(e)); readReg(Reg.ringHead(e)); readReg(Reg.errorCode(e)) }
    }
}

func vgpuSeeds() -> [(name: String, bytes: [UInt8])] {
    // The slices as GPUHost's default partition gives the first vGPU (the rig's).
    let p = GPUHost.Partition()
    let ap = p.hostAperture, hid = GPUHost.defaultConfig.apertureSize + p.hostHidden
    let ringRAM: UInt64 = Layout.ramWindow            // aperture page 0 -> RAM page 0x200
    let batchRAM: UInt64 = Layout.ramWindow + 0x1000  // aperture page 1 -> RAM page 0x201
    var seeds: [(String, [UInt8])] = []

    func common(_ s: inout Script) {
        s.gtt(page: 0, ramPage: 0x200)
        s.gtt(page: 1, ramPage: 0x201)
        s.gtt(hidden: true, page: 0, ramPage: 0x202)
        s.reg(Reg.imr, 0)
        s.reg(Reg.ier, Interrupt.all | VGPURegs.rcsRejected | VGPURegs.bcsRejected)
    }

    // RCS: stores, a flush with notify, a batch with compute.
    var s = Script()
    common(&s)
    var batch = CommandBuilder()
    batch.saxpy(n: 16, a: 2, x: hid, y: hid + 0x100)
    batch.storeDataImm(gm: hid + 0x200, 42)
    batch.batchBufferEnd()
    s.ram(batchRAM, batch.dwords)
    var ring = CommandBuilder()
    ring.storeDataImm(gm: hid, 0xdead_beef)
    ring.batchBufferStart(gm: ap + 0x1000, length: UInt32(batch.byteCount))
    ring.flush(postSync: (hid + 0x10, 1), notify: true)
    ring.alignToQword()
    s.ram(ringRAM, ring.dwords)
    s.ring(.rcs, page: 0)
    s.tail(.rcs, ring.byteCount)
    s.wait()
    s.errorBlock()
    seeds.append(("vgpu-rcs", s.e.bytes))

    // BCS: a fill, then a rejected command, then an engine reset and a new ring.
    s = Script()
    common(&s)
    ring = CommandBuilder()
    ring.colorBlt(dst: BlitSurface(gm: hid, pitch: 64, width: 16, height: 16), x1: 0, y1: 0, x2: 16, y2: 16, color: 0xff)
    ring.raw([0xffff_ffff, 0])
    ring.alignToQword()
    s.ram(ringRAM, ring.dwords)
    s.ring(.bcs, page: 0)
    s.tail(.bcs, ring.byteCount)
    s.wait()
    s.errorBlock()
    s.reg(VGPURegs.errStatus, 1)
    s.reg(Reg.reset(.bcs), 1)
    s.ring(.bcs, page: 0)
    s.errorBlock()
    seeds.append(("vgpu-bcs-reject", s.e.bytes))

    // The PV path: shared page, doorbell register.
    s = Script()
    common(&s)
    ring = CommandBuilder()
    ring.storeDataImm(gm: hid + 0x20, 7)
    ring.userInterrupt()
    ring.alignToQword()
    s.ram(ringRAM, ring.dwords)
    s.reg(VGPURegs.pvSharedPage, UInt32(Layout.ramWindow + 0x3000))
    s.ring(.rcs, page: 0)
    s.op(.pvDoorbell); s.e.u8(0); s.e.u16(UInt16(ring.byteCount))
    s.wait()
    s.errorBlock()
    seeds.append(("vgpu-pv", s.e.bytes))

    // Display: a flip through the ring, plane registers, pipe on and off, cursor.
    s = Script()
    common(&s)
    ring = CommandBuilder()
    ring.displayFlip(plane: .primary, gm: hid, stride: 256)
    ring.displayFlip(plane: .cursor, gm: hid)
    ring.alignToQword()
    s.ram(ringRAM, ring.dwords)
    s.reg(Reg.priSize, (16 << 16) | 64)
    s.reg(Reg.priStride, 256)
    s.reg(Reg.priCtl, Reg.priCtl(enable: true))
    s.reg(Reg.priSurf, UInt32(hid))
    s.reg(Reg.curCtl, Reg.planeEnable)
    s.reg(Reg.curBase, UInt32(hid))
    s.reg(Reg.pipeConf, Reg.pipeConfEnable)
    s.ring(.rcs, page: 0)
    s.tail(.rcs, ring.byteCount)
    s.wait()
    for r in [Reg.flipCount, Reg.cursorFlipCount, Reg.vblankCount, Reg.priSurf] { s.readReg(r) }
    s.reg(Reg.pipeConf, 0)
    seeds.append(("vgpu-display", s.e.bytes))

    // Raw accesses of every size around the register blocks and the GTT window.
    s = Script()
    for (i, offset) in [UInt32(Reg.ringTail(.rcs)), Reg.isr, VGPURegs.pvMagic, UInt32(VGPURegs.gttWindow) + UInt32(ap >> 12) * 8].enumerated() {
        for size: UInt8 in 0...3 {
            s.op(.read); s.e.u8(size); s.e.u32(offset + UInt32(i))
            s.op(.write); s.e.u8(size); s.e.u32(offset); s.e.u64(0x1234_5678_9abc_def1)
        }
    }
    seeds.append(("vgpu-raw", s.e.bytes))
    return seeds
}
