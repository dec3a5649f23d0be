import Testing
import Synchronization
@testable import Machine

final class StopRecorder: MachineControl {
    let reasons = Mutex<[ExitReason]>([])
    func requestStop(_ reason: ExitReason) { reasons.withLock { $0.append(reason) } }
}

@Suite("Legacy devices (no KVM)")
struct DeviceTests {
    func reg(_ d: BusDevice, _ off: UInt64) -> UInt8 {
        var v: UInt8 = 0
        withUnsafeMutableBytes(of: &v) { d.read(offset: off, data: $0) }
        return v
    }
    func set(_ d: BusDevice, _ off: UInt64, _ value: UInt64, size: Int = 1) {
        var v = value
        withUnsafeBytes(of: &v) { d.write(offset: off, data: UnsafeRawBufferPointer(rebasing: $0.prefix(size))) }
    }

    @Test func serialTransmitsAndReportsIdleLineStatus() throws {
        let out = Mutex<[UInt8]>([])
        let irq = Mutex<[Bool]>([])
        let uart = try Serial16550(output: .callback { b in out.withLock { $0.append(b) } }) { l in irq.withLock { $0.append(l) } }
        #expect(reg(uart, 5) == 0x60)
        for b in "hi".utf8 { set(uart, 0, UInt64(b)) }
        #expect(out.withLock { $0 } == Array("hi".utf8))
        #expect(reg(uart, 2) & 0x0f == 0x01)                 // no interrupt pending
        set(uart, 3, 0x80)                                    // DLAB
        set(uart, 0, 0x01); set(uart, 1, 0x00)
        #expect(reg(uart, 0) == 0x01)
        set(uart, 3, 0x03)
        #expect(out.withLock { $0.count } == 2)              // divisor writes are not output
        // THRE interrupt: enable it with OUT2 set -> line goes high; reading IIR acknowledges it.
        set(uart, 4, 0x08)
        set(uart, 1, 0x02)
        #expect(irq.withLock { $0.last } == true)
        #expect(reg(uart, 2) & 0x0f == 0x02)
        #expect(irq.withLock { $0.last } == false)
    }

    @Test func serialReceivesIntoFIFO() throws {
        let uart = try Serial16550(output: .none) { _ in }
        uart.receive(Array("ab".utf8))
        #expect(reg(uart, 5) == 0x61)
        #expect(reg(uart, 0) == UInt8(ascii: "a"))
        #expect(reg(uart, 0) == UInt8(ascii: "b"))
        #expect(reg(uart, 5) == 0x60)
        uart.receive([UInt8](repeating: 1, count: 40))
        #expect(uart.receiveSpace == 0)
        #expect(reg(uart, 8) == 0xff)                         // beyond the 8 registers
    }

    @Test func debugExitPowerOffAndReset() {
        let rec = StopRecorder()
        set(DebugExit(control: rec), 0, 0x2a)
        set(DebugExit(control: rec), 0, 0x0102, size: 2)
        set(PMDevice(control: rec), 4, 0x0000, size: 2)       // SLP_EN clear: nothing
        set(PMDevice(control: rec), 4, 0x2000, size: 2)       // SLP_TYP 0 (S5) | SLP_EN
        set(I8042(control: rec), 4, 0x01)
        set(I8042(control: rec), 4, 0xfe)
        #expect(rec.reasons.withLock { $0 } == [.debugExit(0x2a), .debugExit(0x102), .powerOff, .reboot])
    }

    /// PM1 control: only SLP_EN with the DSDT's S5 sleep type powers off, in a 16-bit write or as the
    /// high byte alone; the registers read back (SCI_EN always set, PM1_STS 0, PM1_EN stored).
    @Test func pm1ControlBlockPowersOffOnlyForS5() {
        let rec = StopRecorder()
        let pm = PMDevice(control: rec)
        set(pm, 4, 0x2000 | 3 << 10, size: 2)                 // SLP_EN with SLP_TYP 3: no such state offered
        set(pm, 4, 0x0400, size: 2)                           // SLP_TYP 1 without SLP_EN
        #expect(rec.reasons.withLock { $0 }.isEmpty)
        var cnt: UInt16 = 0
        withUnsafeMutableBytes(of: &cnt) { pm.read(offset: 4, data: $0) }
        #expect(cnt == 0x0401)                                // SCI_EN | the SLP_TYP written, never SLP_EN
        set(pm, 2, 0x0120, size: 2)                           // PM1_EN
        #expect(reg(pm, 2) == 0x20 && reg(pm, 3) == 0x01 && reg(pm, 0) == 0 && reg(pm, 1) == 0)
        set(pm, 5, UInt64(PMDevice.s5SleepType << 2) | 0x20)  // high byte alone: SLP_TYP(S5) | SLP_EN
        #expect(rec.reasons.withLock { $0 } == [.powerOff])
    }

    /// 0xcf9 behind the PCI bus: a byte with RST_CPU resets; the 32-bit address register at 0xcf8 and
    /// byte writes without RST_CPU do not.
    @Test func resetControlThroughThePCIPorts() {
        let rec = StopRecorder()
        let pci = PCIBus()
        pci.attachResetControl(ResetControl(control: rec))
        set(pci, 0, 0x8000_0000, size: 4)                     // config address: not a reset
        set(pci, 1, 0x02)                                     // SYS_RST only
        #expect(rec.reasons.withLock { $0 }.isEmpty)
        #expect(reg(pci, 1) == 0x02)
        set(pci, 1, UInt64(ResetControl.resetValue))
        #expect(rec.reasons.withLock { $0 } == [.reboot])
    }

    @Test func exitStatuses() {
        #expect(ExitReason.debugExit(0).exitStatus == 1)
        #expect(ExitReason.debugExit(7).exitStatus == 15)
        #expect(ExitReason.powerOff.exitStatus == 0)
        let ours: [ExitReason] = [.reboot, .tripleFault(cpu: 0, registers: ""), .internalError(cpu: 0, detail: "", registers: ""),
                                  .entryFailure(cpu: 0, reason: 0, registers: ""), .timeout, .hostError(""), .signal(2), .guestPanic]
        let statuses = ours.map(\.exitStatus)
        #expect(Set(statuses).count == statuses.count)
        #expect(statuses.allSatisfy { $0 % 2 == 0 && $0 != 0 && $0 != 2 })
    }

    @Test func pvpanicEndsTheVMOnlyOnAPanic() {
        let rec = StopRecorder()
        let p = PVPanic(control: rec)
        #expect(reg(p, 0) == 3, "reads say PANICKED and CRASH_LOADED are supported")
        set(p, 0, 0x02)   // crash loaded (kdump): the guest goes on
        #expect(rec.reasons.withLock { $0 }.isEmpty)
        set(p, 0, 0x01)
        #expect(rec.reasons.withLock { $0 } == [.guestPanic])
        #expect(ExitReason.guestPanic.exitStatus == 20)
    }

    @Test func bootTimerReportsOneByteWritesSinceProcessStart() {
        let lines = Mutex<[String]>([])
        let t = BootTimer { line in lines.withLock { $0.append(line) } }
        #expect(t.processStartNanoseconds != nil)
        set(t, 0, 0x7b, size: 2)   // not a one-byte write: ignored
        set(t, 0, 0x7b)
        let got = lines.withLock { $0 }
        #expect(got.count == 1)
        #expect(got.first?.hasPrefix("boot timer: ") == true && got.first?.hasSuffix(" ms from process start to the guest's write of 0x7b to port 0xf6") == true)
        // The figure is the time since this process started: positive, and no more than the process has lived.
        let ms = Double(got.first?.split(separator: " ")[2] ?? "") ?? -1
        let lived = Double(BootTimer.bootTimeNanoseconds() - (t.processStartNanoseconds ?? 0)) / 1e6
        #expect(ms > 0 && ms <= lived + 10)
    }
}
