/// Everything needed to build a machine, independent of the image.
public struct MachineConfiguration: Sendable {
    /// Guest RAM in bytes (a multiple of 4 KiB, at least 4 MiB, at most the host's physical memory).
    public var memoryBytes: UInt64 = 256 << 20
    /// Number of vCPUs (1-255). vCPU 0 boots; the rest wait for INIT/SIPI.
    public var cpuCount: Int = 1
    /// Kernel command line passed through the boot protocol.
    public var cmdline: String = ""
    /// Where the UART's output goes.
    public var serialOutput: SerialOutput = .stdout
    /// Feed this process's standard input to the UART (for interactive use).
    public var serialInputFromStdin: Bool = false
    /// With `serialInputFromStdin`: take the console escapes (`ConsoleEscape`: Ctrl-A x stops the VM with
    /// `ExitReason.consoleQuit`) out of the input. For a terminal on stdin, as the CLI sets it.
    public var serialConsoleEscapes: Bool = false
    /// Multiboot modules.
    public var modules: [BootModule] = []
    /// Where the boot timer's line goes (a write to port 0xf6, `BootTimer`); stderr by default.
    public var bootTimerReport: @Sendable (String) -> Void = { line in
        let text = Array("minivisor: \(line)\n".utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    }
    /// The initrd (initramfs) for a Linux kernel.
    public var initrd: String? = nil
    /// End the VM with `ExitReason.timeout` after this long.
    public var timeout: Duration? = nil
    /// How often the monitor looks at the vCPUs' KVM statistics to find every vCPU halted with interrupts
    /// off (a power-off). Looking costs no exits; the vCPUs are asked (one kick each) only when all of them
    /// are blocked in the kernel and quiet (see `Machine`).
    public var haltPollInterval: Duration = .milliseconds(50)
    /// Whether the guest gets the in-kernel i8254 PIT (ports 0x40-0x43, IRQ 0).
    public enum PITMode: String, Sendable, CaseIterable { case auto, on, off }
    /// `auto` gives multiboot kernels a PIT (they expect a PC) and leaves it out for minivisor-protocol
    /// ELF64 guests, which use the LAPIC timer: tearing a PIT down costs ~16 ms on kvm-pvm hosts.
    public var pit: PITMode = .auto
    /// Which threads run under seccomp allow lists (`SeccompFilter`): by default vCPU and device threads,
    /// never the caller's; the CLI adds its main thread (`.vmThreadsAndMonitor`) unless `--no-seccomp`.
    public var seccomp: SeccompPolicy = .vmThreads
    /// The KVM device to open.
    public var kvmDevicePath: String = "/dev/kvm"
    /// Host capabilities; detected by default.
    public var host: HostProfile = .detect()

    public init() {}

    /// The files a VM with this configuration reads: the image (when it is a file), the modules, the
    /// KVM device. Outputs must be none of them (`OutputFiles`).
    public func inputFiles(image: BootImage) -> [InputFile] {
        var inputs: [InputFile] = []
        if case .file(let path) = image { inputs.append(InputFile(.image, path)) }
        inputs += modules.map { InputFile(.module, $0.path) }
        if let initrd { inputs.append(InputFile(.initrd, initrd)) }
        inputs.append(InputFile(.kvmDevice, kvmDevicePath))
        return inputs
    }

    /// The files a VM with this configuration writes (the serial output file, if any).
    public var outputFiles: [OutputFile] {
        if case .file(let path) = serialOutput { return [OutputFile(.serial, path)] }
        return []
    }
}

/// A configuration the machine refuses. One line, cause and fix; the CLI exits with status 2.
public enum ConfigurationError: Error, Equatable, CustomStringConvertible, Sendable {
    case memoryTooSmall(UInt64)
    case memoryTooLarge(UInt64, host: UInt64)
    case memoryNotPageAligned(UInt64)
    case badCPUCount(Int, max: Int)
    case fileSizeLimit(UInt64, limit: UInt64)

    public var description: String {
        switch self {
        case .memoryTooSmall(let b):
            return "--memory \(b) bytes is too small: give at least 4M"
        case let .memoryTooLarge(b, host):
            return "--memory \(b >> 20)M is more than this host's \(host >> 20)M of physical memory: give less with --memory"
        case .memoryNotPageAligned(let b):
            return "--memory \(b) is not a multiple of 4 KiB: use a size such as 256M or 1G"
        case let .badCPUCount(n, max):
            return "--cpus \(n) is out of range: give 1 to \(max)"
        case let .fileSizeLimit(b, limit):
            return "--memory \(b >> 20)M is more than this process's file-size limit (RLIMIT_FSIZE, \(limit) bytes; guest RAM is a memory file): raise it with 'ulimit -f unlimited' or give less --memory"
        }
    }

    static func validate(_ c: MachineConfiguration, maxVCPUs: Int) throws(ConfigurationError) {
        guard c.memoryBytes >= MemoryLayout.minimumRAM else { throw .memoryTooSmall(c.memoryBytes) }
        guard c.memoryBytes % MemoryLayout.pageSize == 0 else { throw .memoryNotPageAligned(c.memoryBytes) }
        let hostBytes = hostPhysicalMemory()
        guard c.memoryBytes <= min(hostBytes, MemoryLayout.maximumRAM) else { throw .memoryTooLarge(c.memoryBytes, host: hostBytes) }
        guard c.cpuCount >= 1, c.cpuCount <= maxVCPUs else { throw .badCPUCount(c.cpuCount, max: maxVCPUs) }
        var limit = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max,
           c.memoryBytes > UInt64(limit.rlim_cur) {
            throw .fileSizeLimit(c.memoryBytes, limit: UInt64(limit.rlim_cur))
        }
    }
}

import Glibc

/// This host's physical memory in bytes (the upper bound of `MachineConfiguration.memoryBytes`).
public func hostPhysicalMemory() -> UInt64 {
    UInt64(max(sysconf(Int32(_SC_PHYS_PAGES)), 0)) * UInt64(max(sysconf(Int32(_SC_PAGESIZE)), 0))
}
