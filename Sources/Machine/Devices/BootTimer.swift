import Glibc

/// The boot-timer port (0xf6, like Firecracker's boot timer): a one-byte write records the time from
/// this process's start to the write and reports it ("minivisor: boot timer: ..." on stderr from the
/// CLI). The test init writes it once it runs (Guests/linux/init). Other widths and offsets are ignored;
/// reads return all ones.
///
/// The process start is the kernel's record of it (/proc/self/stat starttime, in clock ticks since boot:
/// 10 ms resolution), read once when the device is made; the write's time is CLOCK_BOOTTIME on the same
/// scale, so the figure includes everything the process did before the guest ran.
///
/// Threads and ownership: written from vCPU threads; immutable after init apart from the reporter it calls.
public final class BootTimer: BusDevice {
    public static let port: UInt64 = 0xf6
    let processStartNanoseconds: UInt64?
    let report: @Sendable (String) -> Void

    public init(report: @escaping @Sendable (String) -> Void) {
        processStartNanoseconds = Self.processStart()
        self.report = report
    }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(UInt64.max) }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count == 1 else { return }
        let value = "0x" + String(data[0], radix: 16)
        guard let start = processStartNanoseconds else {
            report("boot timer: the guest wrote \(value) to port 0xf6 (process start time unknown: /proc/self/stat unreadable)")
            return
        }
        let now = Self.bootTimeNanoseconds()
        let ms = Double(now > start ? now - start : 0) / 1e6
        report("boot timer: \(Self.format(ms)) ms from process start to the guest's write of \(value) to port 0xf6")
    }

    static func format(_ ms: Double) -> String {
        let tenths = Int((ms * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    static func bootTimeNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_BOOTTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// This process's start in CLOCK_BOOTTIME nanoseconds (field 22 of /proc/self/stat), or nil.
    static func processStart() -> UInt64? {
        let fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 1024)
        let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
        guard n > 0 else { return nil }
        let text = String(decoding: buf[0..<n], as: UTF8.self)
        // The command name (field 2) is in parentheses and may hold spaces: count fields after the last ')'.
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state), so field 22 is fields[19].
        guard fields.count > 19, let ticks = UInt64(fields[19]) else { return nil }
        let hz = UInt64(max(sysconf(Int32(_SC_CLK_TCK)), 1))
        return ticks * (1_000_000_000 / hz)
    }
}

/// QEMU's pvpanic device on I/O port 0x505: reads say which events it takes (bit 0 PANICKED, bit 1
/// CRASH_LOADED); a write with bit 0 set (the guest kernel panicked) ends the VM with
/// `ExitReason.guestPanic` (status 20). Linux's pvpanic driver finds the port through the ACPI device
/// QEMU0001 in the DSDT; without it a panicking kernel reboots (`panic=N`, status 4) or hangs.
///
/// Threads and ownership: written from vCPU threads; holds only a weak reference to the machine.
public final class PVPanic: BusDevice {
    public static let port: UInt64 = 0x505
    public static let panicked: UInt8 = 1, crashLoaded: UInt8 = 2
    private weak let control: (any MachineControl)?
    public init(control: any MachineControl) { self.control = control }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.storeLittleEndian(offset == 0 ? UInt64(Self.panicked | Self.crashLoaded) : UInt64.max)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset == 0, data.count >= 1, data[0] & Self.panicked != 0 else { return }
        control?.requestStop(.guestPanic)
    }
}
