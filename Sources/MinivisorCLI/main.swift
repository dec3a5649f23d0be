import ArgumentParser
import Glibc
import Logging
import Minivisor
import MinivisorBench

/// Exit statuses the CLI itself uses (the VM's own are in `ExitReason.exitStatus`).
enum CLIStatus {
    static let usage: Int32 = ExitReason.configurationErrorStatus   // 2: bad arguments, image, configuration
    static let hostError: Int32 = 14
}

struct MinivisorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "minivisor",
        abstract: "A KVM mini hypervisor: boots small test guests with serial on stdout.",
        discussion: """
        Exit status of 'run': the guest's debug-exit status (port 0xf4, value V gives (V << 1) | 1), 0 for a
        clean power-off, 2 for bad arguments, images or configuration, 4 for a guest reset, 6 for a triple
        fault, 8 for a KVM internal error (e.g. an instruction the host cannot emulate), 10 for a VM entry
        failure, 12 for --timeout, 14 for an unexpected host error, 16 when a seccomp filter refused a system
        call (one line on stderr names the thread and the call; rerun with --no-seccomp and report a bug).
        """,
        subcommands: [Run.self, Bench.self],
        defaultSubcommand: Run.self)
}

/// Writes to standard error without going through C's shared FILE state.
func writeStderr(_ text: String) {
    var t = text
    t.withUTF8 { b in _ = Glibc.write(2, b.baseAddress, b.count) }
}

func fail(_ message: String, status: Int32) -> Never {
    writeStderr("minivisor: \(message)\n")
    Glibc.exit(status)
}

/// Parses sizes such as 256M, 1G, 512K, 64MiB or a plain byte count.
func parseSize(_ text: String) -> UInt64? {
    var s = text.trimmingCharacters(in: " ").uppercased()
    for suffix in ["IB", "B"] where s.hasSuffix(suffix) && s.count > suffix.count { s.removeLast(suffix.count); break }
    var shift: UInt64 = 0
    if let last = s.last, let k = ["K": 10, "M": 20, "G": 30, "T": 40][String(last)] { shift = UInt64(k); s.removeLast() }
    guard !s.isEmpty, s.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(s) else { return nil }
    let (v, o) = n.multipliedReportingOverflow(by: 1 << shift)
    return o ? nil : v
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a guest image (or the built-in demo guest) and exit with the guest's status.",
        discussion: """
        IMAGE is an ELF64 x86-64 executable (entered in 64-bit long mode, RDI = boot information) or a
        multiboot v1 kernel (entered like 'qemu -kernel'); see docs/boot-protocol.md. Without IMAGE the
        built-in demo guest runs. Serial port COM1 (0x3f8) goes to stdout by default.
        """)

    @Argument(help: "Guest image: ELF64 executable or multiboot kernel. Omit it to boot the built-in demo guest.")
    var image: String?

    @Option(help: "Guest RAM, e.g. 64M, 256M, 2G (K, M, G, T suffixes; a plain number is bytes). At least 4M.")
    var memory: String = "256M"

    @Option(help: "Number of vCPUs; vCPU 0 boots, the others wait for INIT/SIPI.")
    var cpus: Int = 1

    @Option(help: "Command line handed to the guest through its boot protocol.")
    var cmdline: String = ""

    @Option(help: "Where COM1 output goes: stdio, file:PATH or none. Input comes from stdin when it is a terminal.")
    var serial: String = "stdio"

    @Option(name: .customLong("module"), help: "Multiboot module: a file, optionally followed by arguments (\"PATH ARGS\"). Repeatable.")
    var modules: [String] = []

    @Option(help: "End the guest after this many seconds with exit status 12.")
    var timeout: Double?

    @Flag(help: "Give the guest a mediated vGPU (PCI 4d56:0001, see docs/vgpu.md).")
    var vgpu = false

    @Option(help: "With --vgpu: write the display as PNG to PATH when the guest writes to port 0xf5 and when the VM ends.")
    var screenshot: String?

    @Option(help: "In-kernel i8254 PIT: auto (multiboot kernels get one, minivisor ELF64 guests use the LAPIC timer), on or off.")
    var pit: String = "auto"

    @Flag(name: .customLong("no-seccomp"), help: "Run without the per-thread seccomp filters (vCPU, device and main threads), for debugging.")
    var noSeccomp = false

    @Option(help: "Listen for gdb on 127.0.0.1:PORT (GDB remote protocol; 'target remote :PORT'), see docs/debugging.md.")
    var gdb: Int?

    @Flag(name: .customLong("gdb-wait"), help: "With --gdb: stop before the first guest instruction until gdb continues it (like QEMU's -s -S).")
    var gdbWait = false

    @Option(help: "Log level on stderr: trace, debug, info, notice, warning, error, critical. Unclaimed port/MMIO accesses are logged at debug.")
    var logLevel: String = "warning"

    func validate() throws {
        guard let bytes = parseSize(memory) else {
            throw ValidationError("--memory '\(memory)' is not a size: use a number with an optional K, M, G or T suffix, e.g. 256M")
        }
        _ = bytes
        guard cpus >= 1 && cpus <= 255 else { throw ValidationError("--cpus \(cpus) is out of range: give 1 to 255") }
        guard serial == "stdio" || serial == "none" || (serial.hasPrefix("file:") && serial.count > 5) else {
            throw ValidationError("--serial '\(serial)' is not understood: use stdio, none or file:PATH")
        }
        if screenshot != nil && !vgpu {
            throw ValidationError("--screenshot needs a display: add --vgpu")
        }
        guard MachineConfiguration.PITMode(rawValue: pit) != nil else {
            throw ValidationError("--pit '\(pit)' is not understood: use auto, on or off")
        }
        if let p = gdb, !(0...65535).contains(p) { throw ValidationError("--gdb \(p) is not a TCP port: give 1 to 65535") }
        if gdbWait && gdb == nil { throw ValidationError("--gdb-wait needs a port to wait on: add --gdb PORT") }
        if let t = timeout, !(t > 0 && t.isFinite) { throw ValidationError("--timeout must be a positive number of seconds") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not a level: use trace, debug, info, notice, warning, error or critical")
        }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var config = MachineConfiguration()
        config.memoryBytes = parseSize(memory) ?? 0
        config.cpuCount = cpus
        config.cmdline = cmdline
        config.pit = MachineConfiguration.PITMode(rawValue: pit) ?? .auto
        config.seccomp = noSeccomp ? .off : .vmThreadsAndMonitor
        if let dev = getenv("MINIVISOR_KVM_DEVICE") { config.kvmDevicePath = String(cString: dev) }
        config.modules = modules.map(BootModule.init(argument:))
        config.timeout = timeout.map { .milliseconds(Int64($0 * 1000)) }
        switch serial {
        case "stdio":
            config.serialOutput = .stdout
            config.serialInputFromStdin = isatty(0) != 0
        case "none": config.serialOutput = .none
        default: config.serialOutput = .file(String(serial.dropFirst(5)))
        }
        let bootImage: BootImage = image.map { .file($0) } ?? .builtinDemo
        let vm: VirtualMachine
        do {
            vm = try VirtualMachine(image: bootImage, configuration: config,
                                    vgpu: vgpu ? VGPUOptions(screenshotPath: screenshot) : nil)
        } catch let e as KVMUnavailable {
            fail("\(e)", status: CLIStatus.usage)
        } catch let e as ImageError {
            fail("\(e)", status: CLIStatus.usage)
        } catch let e as ConfigurationError {
            fail("\(e)", status: CLIStatus.usage)
        } catch let e as Serial16550.SerialError {
            fail("\(e)", status: CLIStatus.usage)
        } catch let e as GPUHost.AllocationError {
            fail("\(e)", status: CLIStatus.usage)
        } catch {
            fail("cannot create the VM: \(error)", status: CLIStatus.hostError)
        }
        let reason: ExitReason
        if let port = gdb {
            let stub: GDBStub
            do { stub = try GDBStub(machine: vm.machine, port: port) } catch { fail("\(error)", status: CLIStatus.usage) }
            writeStderr("minivisor: gdb stub listening on 127.0.0.1:\(stub.port)\(gdbWait ? ", guest stopped before its first instruction" : "")\n")
            stub.start()
            do { try vm.start(paused: gdbWait) } catch { fail("cannot start the VM: \(error)", status: CLIStatus.hostError) }
            reason = vm.wait()
            stub.finish()
        } else {
            reason = vm.run()
        }
        switch reason {
        case .powerOff, .debugExit: break
        case .timeout: writeStderr("minivisor: guest did not finish within \(timeout ?? 0) s (--timeout)\n")
        default:
            writeStderr("minivisor: \(reason)\n")
            if let dump = reason.registerDump { writeStderr(dump + "\n") }
        }
        Glibc.exit(reason.exitStatus)
    }
}

// Parse errors (unknown flags, bad values) exit with status 2 and one line; --help exits 0.
do {
    var command = try MinivisorCommand.parseAsRoot()
    try command.run()
} catch {
    if MinivisorCommand.exitCode(for: error) == .success {
        MinivisorCommand.exit(withError: error)
    }
    let message = MinivisorCommand.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
    fail("\(message) (see 'minivisor run --help')", status: CLIStatus.usage)
}
