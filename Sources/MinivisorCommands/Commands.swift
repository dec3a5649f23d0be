import ArgumentParser

// The command-line grammar (swift-argument-parser). Numeric flags are taken as text and range-checked
// by `parseArguments`, so every bad value gets minivisor's own one-line message; nothing here runs.

struct MinivisorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "minivisor",
        abstract: "A KVM mini hypervisor: boots small test guests with serial on stdout.",
        discussion: """
        Exit status of 'run': the guest's debug-exit status (port 0xf4, value V gives (V << 1) | 1), 0 for a \
        clean power-off, 2 for bad arguments, images, output files or configuration, 4 for a guest reset, 6 for \
        a triple fault, 8 for a KVM internal error (e.g. an instruction the host cannot emulate), 10 for a VM \
        entry failure, 12 for --timeout, 14 for an unexpected host error or a final --screenshot that could \
        not be written, 16 when a seccomp filter refused a system call (one line on stderr names the thread \
        and the call; rerun with --no-seccomp and report a bug), 18 when SIGINT, SIGTERM or SIGHUP stopped the VM (a second \
        one ends the process at once), 20 when a guest kernel panicked (pvpanic port 0x505). Serial output that cannot be written (a closed pipe, a full disk) is reported once on \
        stderr and dropped; the exit status stays the guest's.
        """,
        subcommands: [Run.self, Bench.self],
        defaultSubcommand: Run.self)
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a guest image (or the built-in demo guest) and exit with the guest's status.",
        discussion: """
        IMAGE is an ELF64 x86-64 executable (entered in 64-bit long mode, RDI = boot information), a \
        multiboot v1 kernel (entered like 'qemu -kernel') or a Linux kernel (bzImage or vmlinux, 64-bit boot \
        protocol, with --initrd and --append); the format is decided by the file's content, so --kernel PATH \
        and a positional IMAGE are the same. See docs/boot-protocol.md. Without IMAGE the built-in demo guest \
        runs. Serial port COM1 (0x3f8) goes to stdout by default. \
        Output files (--serial file:, --screenshot) are checked before anything is opened: an output that is \
        the same file as the image, a module or the other output is refused (status 2). They are created or \
        truncated only once the VM is built. MINIVISOR_KVM_DEVICE names another KVM device (a character device).
        """)

    @Argument(help: "Guest image: ELF64 executable, multiboot kernel or Linux kernel. Omit it to boot the built-in demo guest.")
    var image: String?

    @Option(help: "The guest image (QEMU's and kvmtool's word): a Linux bzImage or vmlinux, or any image IMAGE may be.")
    var kernel: String?

    @Option(help: "Initial RAM disk (initramfs) for a Linux kernel, placed high in RAM, page-aligned, below the kernel's initrd_addr_max.")
    var initrd: String?

    @Option(help: "Kernel command line (the same as --cmdline). On hosts whose KVM emulates guest ring 0 minivisor adds parameters to a Linux command line (see README).")
    var append: String?

    @Option(parsing: .unconditional,
            help: "Guest RAM, e.g. 64M, 256M, 2G (K, M, G, T suffixes; a plain number is bytes): from 4M to this host's physical memory, a multiple of 4K.")
    var memory: String = "256M"

    @Option(parsing: .unconditional, help: "Number of vCPUs, 1 to 255; vCPU 0 boots, the others wait for INIT/SIPI.")
    var cpus: String = "1"

    @Option(help: "Command line handed to the guest through its boot protocol.")
    var cmdline: String = ""

    @Option(help: "Where COM1 output goes: stdio, file:PATH (a regular file, a FIFO with a reader or a character device) or none. With stdio, input comes from stdin (a terminal, a pipe or a file); a terminal is in raw mode while the guest runs (Ctrl-C goes to the guest; Ctrl-A x quits with status 18, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h lists the keys).")
    var serial: String = "stdio"

    @Option(name: .customLong("module"), help: "Multiboot module: a file, optionally followed by arguments (\"PATH ARGS\"). Repeatable.")
    var modules: [String] = []

    @Option(parsing: .unconditional,
            help: "End the guest after this many seconds (0.001 to 31536000, fractions allowed) with exit status 12.")
    var timeout: String?

    @Flag(help: "Give the guest a mediated vGPU (PCI 4d56:0001, see docs/vgpu.md); the same as --display vgpu.")
    var vgpu = false

    @Option(name: .customLong("vgpu-type"), help: "With --vgpu: the vGPU type, small, medium (default) or large: its graphics-memory slices and scheduling weight (docs/vgpu.md section 2).")
    var vgpuType: String?

    @Option(name: .customLong("gpu-scheduler"), help: "With vGPUs: how the GPU's engines are shared: weighted (default: time slices by vGPU-type weight, preemptive, work-conserving), fifo (first come, first served, no preemption) or credit (GPUvm's credit scheduler, no preemption); docs/vgpu.md section 4.")
    var gpuScheduler: String?

    @Option(help: "Run the VMs a JSON file describes, in this process, sharing one GPU (docs/config.md); no IMAGE then. Flags given with it (--timeout, --log-level, --no-seccomp) apply to every VM.")
    var config: String?

    @Option(help: "With --vgpu or --config: write the GPU scheduler's timeline (Chrome trace event JSON, opens in Perfetto; docs/tracing.md) to PATH, a regular file, when the VMs end.")
    var trace: String?

    @Option(name: .customLong("hang-limit"), parsing: .unconditional,
            help: "GPU watchdog: a vGPU whose one submission holds an engine longer than this many milliseconds (10 to 600000; default 500) is reset (docs/vgpu.md section 4).")
    var hangLimit: String?

    @Option(help: "The guest's display: none, vgpu (the mediated vGPU, as --vgpu) or bochs (a bochs-display PCI 1234:1111 that Linux's bochs DRM driver drives, see docs/bochs-display.md).")
    var display: String = "none"

    @Option(help: "With a display: write it as PNG to PATH (a regular file) when the guest writes to port 0xf5 and when the VM ends.")
    var screenshot: String?

    @Option(help: "With a display: serve it live over VNC on 127.0.0.1:PORT (or HOST:PORT, an IPv4 address; no authentication), keys typed into the guest's i8042. PORT 0 takes the first free one from 5900; the port is printed on stderr.")
    var vnc: String?

    @Option(help: "In-kernel i8254 PIT: auto (multiboot kernels get one, minivisor ELF64 guests use the LAPIC timer), on or off.")
    var pit: String = "auto"

    @Flag(name: .customLong("no-seccomp"), help: "Run without the per-thread seccomp filters (vCPU, device and main threads), for debugging.")
    var noSeccomp = false

    @Option(parsing: .unconditional, help: "Listen for gdb on 127.0.0.1:PORT (GDB remote protocol; 'target remote :PORT'), see docs/debugging.md.")
    var gdb: String?

    @Flag(name: .customLong("gdb-wait"), help: "With --gdb: stop before the first guest instruction until gdb continues it (like QEMU's -s -S).")
    var gdbWait = false

    @Option(help: "Log level on stderr: trace, debug, info, notice, warning, error, critical. Unclaimed port/MMIO accesses are logged at debug.")
    var logLevel: String = "warning"
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure exit costs against a minimal C KVM loop in the same run, and start-to-exit time.",
        discussion: """
        Each exit workload (trapped port write, trapped MMIO write, ioeventfd doorbell) runs the same guest \
        bytes under minivisor and under a minimal C KVM loop, interleaved, with both sides pinned to one CPU; \
        each round gives a per-iteration CPU cost (t(2N) - t(N)) / N per side and their ratio, and rounds run \
        until the median ratio's 95% interval is within --exit-target percent or --exit-seconds pass. vGPU \
        workloads run through the mediator and natively, interleaved; each pair gives a ratio. Every ratio is \
        printed as the median with its 95% interval and IQR. Start-to-exit spawns 'minivisor run IMAGE \
        --serial none' and times the whole process. Targets: exit handling within 1.15x of the C loop; \
        start-to-exit under 20 ms.
        """)

    @Option(parsing: .unconditional, help: "Iterations N per measurement, 1 to 10000000 (each round also runs 2N).")
    var iterations: String = "20000"

    @Option(parsing: .unconditional, help: "Interleaved rounds per workload, 1 to 1000: the least for each exit workload; SGEMM and fills run twice this plus one pairs.")
    var rounds: String = "7"

    @Option(parsing: .unconditional, help: "Seconds at most per exit workload, 1 to 3600 (rounds stop earlier once the ratio is as sure as --exit-target).")
    var exitSeconds: String = "15"

    @Option(parsing: .unconditional, help: "Stop an exit workload's rounds when its ratio's 95% interval is within this many percent of the median, 1 to 50.")
    var exitTarget: String = "2"

    @Option(parsing: .unconditional, help: "Seconds of measurement window per GPU scheduler run, 0 to 60 (0 skips them; 12 runs of about this plus 1.5 s).")
    var schedSeconds: String = "2"

    @Option(help: "Guest image for the start-to-exit measurement (default: Guests/build/hello.elf, else the built-in demo).")
    var image: String?

    @Option(help: "Where the built guests are (vgpu_bench.elf for the vGPU benchmarks).")
    var guests: String = "Guests/build"

    @Option(parsing: .unconditional, help: "Start-to-exit repetitions, 1 to 1000 (the median is reported).")
    var startupRuns: String = "11"
}
