import Glibc
import Minivisor
import Testing

/// Boots the small kernel and initramfs from Guests/linux (`make linux-test` builds them and passes their
/// paths in MINIVISOR_LINUX_KERNEL and MINIVISOR_LINUX_INITRD). Without them the test is skipped with the
/// reason printed. On a host whose KVM emulates guest ring 0 (kvm-pvm) a ring-3 `syscall` does not leave
/// CPL 3 (see Guests/README.md), so init's first system call faults and the kernel panics: there the test
/// checks the kernel reaches init and that its panic, reported through pvpanic, ends the VM with status 20.
@Suite("Linux boot (Guests/linux kernel and initramfs)")
struct LinuxBootIntegrationTests {
    static let kernel = getenv("MINIVISOR_LINUX_KERNEL").map { String(cString: $0) }
    static let initrd = getenv("MINIVISOR_LINUX_INITRD").map { String(cString: $0) }
    static var artifacts: Bool {
        guard let k = kernel, let i = initrd else { return false }
        return access(k, R_OK) == 0 && access(i, R_OK) == 0
    }

    @Test(.enabled(if: Support.kvmAvailable && artifacts)) func bootsToTheInitMarker() throws {
        let host = HostProfile.detect()
        let started = clock_gettime_ns()
        // With a bochs-display: Linux's own bochs DRM driver must probe it and fbcon draw the console there
        // (tty0), while /dev/console stays the serial port (the last console= wins).
        let shot = Support.tempPath("linux-bochs.png")
        defer { unlink(shot) }
        let (status, output) = Support.run(Support.minivisor, [
            "run", "--kernel", Self.kernel!, "--initrd", Self.initrd!, "--cpus", "2", "--memory", "256M",
            "--display", "bochs", "--screenshot", shot,
            "--timeout", "1800", "--append", "console=tty0 console=ttyS0 panic=-1 mv.run=uname,-r",
        ])
        let seconds = Double(clock_gettime_ns() - started) / 1e9
        print("Linux boot: \(Double(Int(seconds * 10)) / 10) s, status \(status), host \(host.softwareKVM ? "kvm-pvm (ring 0 emulated)" : "hardware KVM")")
        #expect(output.contains("minivisor: Linux: bzImage"), "\(output.suffix(2000))")
        #expect(output.contains("Run /init as init process"), "\(output.suffix(2000))")
        #expect(output.contains("[drm] Found bochs VGA, ID 0xb0c5."), "the bochs DRM driver did not find the device")
        #expect(output.contains("[drm] Initialized bochs-drm"), "the bochs DRM driver did not initialise")
        #expect(output.contains("fbcon: bochs-drmdrmfb (fb0) is primary device"), "fbcon is not on the bochs display")
        // The console as the guest drew it: 1024x768 (the EDID's preferred mode), text on black. Light
        // pixels are glyphs; a console of many lines has a good share of them, an empty screen none.
        if let (w, h, rgb) = Support.readPNG(shot) {
            #expect(w == 1024 && h == 768, "\(w)x\(h)")
            var light = 0
            for p in stride(from: 0, to: rgb.count, by: 3) where rgb[p] > 128 && rgb[p + 1] > 128 && rgb[p + 2] > 128 { light += 1 }
            #expect(light > 10_000, "only \(light) light pixels: no console text on the bochs display")
        } else {
            Issue.record("no screenshot of the bochs display at \(shot)")
        }
        if host.softwareKVM {
            #expect(output.contains("added to the command line: noxsave clearcpuid="))
            // init's first syscall faults on this host and the kernel panics: its pvpanic driver (found
            // through the DSDT's QEMU0001 device) reports that, and the VM ends with status 20.
            if output.contains("MINIVISOR-INIT-OK") { #expect(status == 0) } else {
                #expect(status == 20, "\(output.suffix(2000))")
                #expect(output.contains("the guest kernel panicked (pvpanic port 0x505)"), "\(output.suffix(2000))")
            }
        } else {
            #expect(output.contains("MINIVISOR-INIT-OK"), "\(output.suffix(2000))")
            #expect(output.contains("MINIVISOR-RUN-STATUS 0"))
            #expect(output.contains("minivisor: boot timer: "))
            #expect(status == 0, "\(output.suffix(2000))")
        }
    }

    @Test func skipReason() {
        if !Self.artifacts {
            print("skipped: Linux boot test: MINIVISOR_LINUX_KERNEL / MINIVISOR_LINUX_INITRD not set or unreadable: run 'make linux-test'")
        } else if !Support.kvmAvailable {
            print("skipped: Linux boot test: /dev/kvm is not available")
        }
    }

    func clock_gettime_ns() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
