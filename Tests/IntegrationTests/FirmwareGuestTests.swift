import Machine
import Minivisor
import Testing

/// Guests that read the machine from its firmware interfaces (Guests/acpi.c, Guests/fwcfg.c): the ACPI
/// tables in guest memory, power-off and reset through the registers the FADT names, and QEMU's fw_cfg.
/// Needs /dev/kvm.
@Suite("ACPI and fw_cfg guests (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct FirmwareGuestTests {
    /// The guest finds the RSDP, checks every table, counts the CPUs in the MADT (which must match the MP
    /// table), brings each online, and powers off through PM1a_CNT with the DSDT's \_S5 sleep type.
    @Test(arguments: [1, 2, 4, 8])
    func madtCPUsComeOnlineAndPM1PowersOff(cpus: Int) throws {
        let (reason, out, machine) = try Support.boot(.file(try Support.guest("acpi")), cpus: cpus)
        #expect(reason == .powerOff, "\(out)")
        #expect(out.contains("acpi: RSDP at 0xe0000 revision 2"), "\(out)")
        #expect(out.contains("acpi: MADT lists \(cpus) cpus, IOAPIC \(cpus) at 0xfec00000"), "\(out)")
        #expect(out.contains("acpi: the MADT matches the MP table"))
        #expect(out.contains("acpi: all \(cpus) cpus online"))
        #expect(out.contains("acpi: S5 SLP_TYP 0, PM1a control block 0x604, SCI 9"))
        #expect(out.contains("acpi ok: powering off through PM1a_CNT") && !out.contains("FAIL"))
        #expect(machine.rsdpAddress == BootLayout.acpiRSDP)
    }

    /// The FADT's reset register (port 0xcf9, value 6) and the i8042 pulse both end the VM as a reset.
    @Test(arguments: ["reset", "kbd"])
    func resetIsReported(mode: String) throws {
        let (reason, out, _) = try Support.boot(.file(try Support.guest("acpi")), cpus: 2, cmdline: "mode=\(mode)")
        #expect(reason == .reboot, "\(out)")
        #expect(reason.exitStatus == 4)
        #expect(!out.contains("FAIL"), "\(out)")
        if mode == "reset" { #expect(out.contains("acpi: writing 0x6 to reset register port 0xcf9"), "\(out)") }
    }

    /// The same through the command line, with its seccomp filters: power-off is status 0, reset 4.
    @Test func cliStatusesForPowerOffAndReset() throws {
        let image = try Support.guest("acpi")
        let (off, offOut) = Support.run(Support.minivisor, ["run", image, "--cpus", "2", "--timeout", "120"])
        #expect(off == 0, "\(offOut)")
        let (reset, resetOut) = Support.run(Support.minivisor, ["run", image, "--cmdline", "mode=reset", "--timeout", "120"])
        #expect(reset == 4, "\(resetOut)")
        #expect(resetOut.contains("guest requested a reset"), "\(resetOut)")
    }

    /// The tables in guest memory are the ones built from the machine's finished inventory, with a PCI
    /// device's INTx route in the DSDT's _PRT (the vGPU here, added after boot, before start).
    @Test func tablesDescribeTheFinishedInventory() throws {
        let capture = SerialCapture()
        var c = MachineConfiguration()
        c.memoryBytes = 128 << 20
        c.cpuCount = 2
        c.timeout = .seconds(120)
        c.serialOutput = .callback { capture.append($0) }
        let vm = try VirtualMachine(image: .file(try Support.guest("acpi")), configuration: c, vgpu: VGPUOptions(host: GPUHost()))
        let reason = vm.run()
        #expect(reason == .powerOff, "\(capture.text)")
        let machine = vm.machine
        let inventory = machine.acpiInventory
        #expect(!inventory.pciInterrupts.isEmpty)
        let expected = ACPITables(inventory: inventory, at: try #require(machine.rsdpAddress))
        #expect(try machine.memory.readBytes(at: expected.base, count: expected.bytes.count) == expected.bytes)
        let dsdt = try #require(expected.table("DSDT"))
        let route = inventory.pciInterrupts[0]
        let address: [UInt8] = [0x0c, 0xff, 0xff, UInt8(route.device), 0]   // DWord (device << 16 | 0xffff)
        #expect(dsdt.indices.contains { dsdt[$0...].starts(with: address) })
    }

    /// fw_cfg as the guest reads it: signature, ID, CPU count, RAM size and the etc/e820 file.
    @Test(arguments: [(1, UInt64(64 << 20)), (3, UInt64(5) << 30)])
    func fwCfgShowsTheMachine(cpus: Int, memory: UInt64) throws {
        let (reason, out, machine) = try Support.boot(.file(try Support.guest("fwcfg")), memory: memory, cpus: cpus)
        #expect(reason == .powerOff, "\(out)")
        #expect(out.contains("fw_cfg: signature QEMU id 0x1 cpus \(cpus) max_cpus \(cpus) ram 0x\(String(memory, radix: 16))"), "\(out)")
        let map = E820Entry.map(machine.memory)
        #expect(out.contains("fw_cfg: file etc/e820 size \(20 * map.count) select 0x20"), "\(out)")
        for e in map {
            #expect(out.contains("fw_cfg: e820 0x\(String(e.address, radix: 16)) 0x\(String(e.length, radix: 16)) \(e.type)\n"), "\(out)")
        }
        #expect(out.contains("fw_cfg ok"))
    }
}
