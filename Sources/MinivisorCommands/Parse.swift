import ArgumentParser
import Glibc
import Logging
import Minivisor

/// Exit statuses the CLI itself uses (the VM's own are in `ExitReason.exitStatus`).
public enum CLIStatus {
    /// Bad arguments, image, output file or configuration.
    public static let usage: Int32 = ExitReason.configurationErrorStatus
    /// An unexpected host error, or a final screenshot that could not be written.
    public static let hostError: Int32 = 14
}

/// Why the command line was refused: one line (no "minivisor: " prefix) naming the cause and the fix,
/// and the exit status (2).
public struct CLIError: Error, Equatable, CustomStringConvertible, Sendable {
    public let message: String
    public let status: Int32
    public init(_ message: String, status: Int32 = CLIStatus.usage) {
        self.message = message
        self.status = status
    }
    public var description: String { message }
}

/// Where `run` sends COM1.
public enum SerialChoice: Equatable, Sendable {
    case stdio, none
    case file(String)
}

/// The guest's display (`--display`, `--vgpu`).
public enum DisplayChoice: String, Equatable, Sendable {
    case none, vgpu, bochs
}

/// Where `--vnc` listens.
public struct VNCAddress: Equatable, Sendable {
    public var host: String
    public var port: Int
    public init(host: String = "127.0.0.1", port: Int) { self.host = host; self.port = port }
}

/// A checked `minivisor run` command line.
public struct RunRequest: Equatable, Sendable {
    public var image: String?
    public var memoryBytes: UInt64
    public var cpus: Int
    public var cmdline: String
    public var serial: SerialChoice
    /// "PATH [ARGS]" as given.
    public var modules: [String]
    /// --initrd PATH (Linux kernels only).
    public var initrd: String? = nil
    public var timeoutSeconds: Double?
    public var display: DisplayChoice
    /// Whether the display is the vGPU (`--vgpu` or `--display vgpu`).
    public var vgpu: Bool { display == .vgpu }
    /// --vgpu-type (the default type without it).
    public var vgpuType: VGPUType = .default
    public var screenshot: String?
    /// --vnc: serve the display there.
    public var vnc: VNCAddress? = nil
    public var pit: MachineConfiguration.PITMode
    public var logLevel: Logger.Level
    /// The KVM device (MINIVISOR_KVM_DEVICE, else /dev/kvm).
    public var kvmDevicePath: String
    /// Per-thread seccomp filters (off with --no-seccomp).
    public var seccomp: Bool = true
    /// --gdb PORT: the gdb stub's TCP port on 127.0.0.1 (0: any free port).
    public var gdbPort: Int? = nil
    /// --gdb-wait: stop before the first guest instruction until gdb continues.
    public var gdbWait: Bool = false
    /// --config FILE: run the VMs the file describes instead of one (`ConfigFile`).
    public var configFile: String? = nil
    /// --gpu-scheduler (nil: not given; the configuration file's, else the default).
    public var gpuScheduler: SchedulerKind? = nil
    /// --trace PATH: where the GPU scheduler's timeline goes.
    public var tracePath: String? = nil
    /// --hang-limit MS: the GPU watchdog's limit in milliseconds (nil: the default, 500).
    public var hangLimitMilliseconds: Int? = nil

    /// The timeout as a Duration (whole milliseconds; the range check keeps it far from overflow).
    public var timeout: Duration? {
        timeoutSeconds.map { .milliseconds(Int64(($0 * 1000).rounded())) }
    }

    /// The machine configuration this command line asks for (serial input from stdin when it is a terminal
    /// is the caller's business: see `serialInputFromStdin`).
    public func configuration() -> MachineConfiguration {
        var c = MachineConfiguration()
        c.memoryBytes = memoryBytes
        c.cpuCount = cpus
        c.cmdline = cmdline
        c.pit = pit
        c.kvmDevicePath = kvmDevicePath
        c.modules = modules.map(BootModule.init(argument:))
        c.initrd = initrd
        c.timeout = timeout
        c.seccomp = seccomp ? .vmThreadsAndMonitor : .off
        switch serial {
        case .stdio: c.serialOutput = .stdout
        case .none: c.serialOutput = .none
        case .file(let path): c.serialOutput = .file(path)
        }
        return c
    }

    public var bootImage: BootImage { image.map { .file($0) } ?? .builtinDemo }

    /// Checks the files before anything is opened: each output can be written and is not an input or the
    /// other output, and a KVM device named by MINIVISOR_KVM_DEVICE exists and is a character device (not
    /// a FIFO or a regular file). Opens nothing.
    public func checkFiles() -> CLIError? {
        let config = configuration()
        var outputs = config.outputFiles
        if let s = screenshot { outputs.append(OutputFile(.screenshot, s)) }
        if let t = tracePath { outputs.append(OutputFile(.trace, t)) }
        do { try OutputFiles.check(outputs: outputs, inputs: config.inputFiles(image: bootImage)) } catch {
            return CLIError(error.description)
        }
        var st = stat()
        if stat(kvmDevicePath, &st) == 0, (st.st_mode & S_IFMT) != S_IFCHR {
            return CLIError("MINIVISOR_KVM_DEVICE \(quoted(kvmDevicePath)) is not a character device: unset it or point it at /dev/kvm")
        }
        if kvmDevicePath != "/dev/kvm" && stat(kvmDevicePath, &st) != 0 && errno == ENOENT {
            return CLIError("MINIVISOR_KVM_DEVICE \(quoted(kvmDevicePath)) does not exist: unset it or point it at /dev/kvm")
        }
        return nil
    }
}

/// A checked `minivisor bench` command line.
public struct BenchRequest: Equatable, Sendable {
    public var iterations: UInt32
    public var rounds: Int
    public var image: String?
    public var guests: String
    public var startupRuns: Int
    /// Time budget per exit workload, and the ratio's wanted 95% half-width (0.02 = -+2%).
    public var exitSeconds: Double = 15
    public var exitTarget: Double = 0.02
    /// The GPU scheduler benchmarks' window per run in seconds (0 skips them).
    public var schedulerSeconds: Double = 2
}

/// What the command line asks for.
public enum ParsedCommand: Equatable, Sendable {
    case run(RunRequest)
    case bench(BenchRequest)
    /// --help and the like: print the text on stdout and exit 0.
    case help(String)
}

/// Parses and checks a command line (the arguments after the program name) without running anything
/// and without touching files: every flag's syntax and range, for `run` and `bench`. Never exits the
/// process and never traps, whatever `argv` holds. `environment` supplies MINIVISOR_KVM_DEVICE.
public func parseArguments(_ argv: [String], environment: [String: String] = [:]) -> Result<ParsedCommand, CLIError> {
    let command: ParsableCommand
    do {
        command = try MinivisorCommand.parseAsRoot(argv)
    } catch {
        if MinivisorCommand.exitCode(for: error) == .success {
            return .success(.help(MinivisorCommand.fullMessage(for: error)))
        }
        return .failure(CLIError("\(oneLine(MinivisorCommand.message(for: error))) (see 'minivisor run --help')"))
    }
    do {
        switch command {
        case let r as Run: return .success(.run(try r.request(environment: environment)))
        case let b as Bench: return .success(.bench(try b.request()))
        default:
            // `help SUBCOMMAND` and --help: the parser's help command only throws the help request.
            var help = command
            do { try help.run() } catch {
                if MinivisorCommand.exitCode(for: error) == .success {
                    return .success(.help(MinivisorCommand.fullMessage(for: error)))
                }
            }
            return .success(.help(MinivisorCommand.helpMessage()))
        }
    } catch {
        return .failure(error)
    }
}

/// Command-line arguments (the raw bytes after the program name) and MINIVISOR_KVM_DEVICE must be UTF-8:
/// a Swift string cannot hold other bytes, and a path decoded with replacement characters names another
/// file (an output would be created under a name nobody gave). Call before `parseArguments`.
public func checkEncoding(arguments: [[UInt8]], kvmDevice: [UInt8]?) -> CLIError? {
    let fix = "give file names in UTF-8 (rename the file, or link to it under a UTF-8 name)"
    for (i, a) in arguments.enumerated() where String(validating: a, as: UTF8.self) == nil {
        return CLIError("argument \(i + 1), \(escapedBytes(a)), is not UTF-8: \(fix)")
    }
    if let k = kvmDevice, String(validating: k, as: UTF8.self) == nil {
        return CLIError("MINIVISOR_KVM_DEVICE \(escapedBytes(k)) is not UTF-8: \(fix)")
    }
    return nil
}

/// Bytes for a one-line message: printable ASCII as is, everything else as \xNN, in quotes.
func escapedBytes(_ bytes: [UInt8]) -> String {
    var out = "'"
    for b in bytes {
        if b >= 0x20 && b < 0x7f && b != 0x27 && b != 0x5c { out.unicodeScalars.append(Unicode.Scalar(b)) } else {
            out += "\\x" + (b < 0x10 ? "0" : "") + String(b, radix: 16)
        }
    }
    return out + "'"
}

/// The first part of an argument parser message, as one line: its usage and help lines dropped, line
/// breaks and other control characters inside quoted user text escaped.
func oneLine(_ message: String) -> String {
    var text = Substring(message)
    for marker in ["\nUsage:", "\nHelp:", "\n  See '"] {
        if let r = text.firstRange(of: marker) { text = text[..<r.lowerBound] }
    }
    while let last = text.last, last.isWhitespace { text.removeLast() }
    var out = ""
    for scalar in text.unicodeScalars {
        if scalar.value < 0x20 || scalar.value == 0x7f || (0x80..<0xa0).contains(scalar.value)
            || scalar.value == 0x2028 || scalar.value == 0x2029 {   // Unicode's line and paragraph separators
            out += scalar == "\n" ? "\\n" : scalar == "\t" ? "\\t" : "\\u{" + String(scalar.value, radix: 16) + "}"
        } else {
            out.unicodeScalars.append(scalar)
        }
    }
    if out.hasPrefix("Error: ") { out.removeFirst("Error: ".count) }
    return out
}

extension Run {
    func request(environment: [String: String]) throws(CLIError) -> RunRequest {
        let memoryBytes = try checkMemory(memory)
        let cpus = try wholeNumber(self.cpus, flag: "--cpus", range: 1...255, example: "2")
        let serialChoice: SerialChoice
        switch serial {
        case "stdio": serialChoice = .stdio
        case "none": serialChoice = .none
        default:
            guard serial.hasPrefix("file:") else {
                throw CLIError("--serial \(quoted(serial)) is not understood: use stdio, none or file:PATH")
            }
            let path = String(serial.dropFirst(5))
            guard !path.isEmpty else { throw CLIError("--serial file: needs a path: use file:PATH, e.g. file:serial.log") }
            serialChoice = .file(path)
        }
        for m in modules where BootModule(argument: m).path.isEmpty {
            throw CLIError("--module \(quoted(m)) names no file: give \"PATH [ARGS]\"")
        }
        if image != nil && kernel != nil {
            throw CLIError("both an IMAGE and --kernel name the guest: give one of them")
        }
        let image = self.image ?? kernel
        if let image, image.isEmpty { throw CLIError("the guest image path is empty: give an image file or omit it for the built-in demo") }
        guard let chosen = DisplayChoice(rawValue: display) else {
            throw CLIError("--display \(quoted(display)) is not understood: use none, vgpu or bochs")
        }
        if vgpu && chosen != .none && chosen != .vgpu {
            throw CLIError("--vgpu and --display \(display) ask for two displays: give one of them")
        }
        let displayChoice: DisplayChoice = vgpu ? .vgpu : chosen
        if screenshot != nil && displayChoice == .none { throw CLIError("--screenshot needs a display: add --display bochs or --vgpu") }
        if vnc != nil && displayChoice == .none { throw CLIError("--vnc needs a display to serve: add --display bochs or --vgpu") }
        let vncAddress = try vnc.map { v throws(CLIError) in try checkVNC(v) }
        if let initrd, initrd.isEmpty { throw CLIError("--initrd needs a path: give the initramfs file, e.g. --initrd initramfs.cpio") }
        if initrd != nil && image == nil { throw CLIError("--initrd needs a Linux kernel: add --kernel PATH") }
        if append != nil && !cmdline.isEmpty { throw CLIError("--append and --cmdline both give the command line: use one of them") }
        let commandLine = append ?? cmdline
        if let s = screenshot, s.isEmpty { throw CLIError("--screenshot needs a path: give a PNG file name, e.g. --screenshot out.png") }
        guard let pitMode = MachineConfiguration.PITMode(rawValue: pit) else {
            throw CLIError("--pit \(quoted(pit)) is not understood: use auto, on or off")
        }
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw CLIError("--log-level \(quoted(logLevel)) is not a level: use trace, debug, info, notice, warning, error or critical")
        }
        let seconds = try timeout.map { t throws(CLIError) in try checkTimeout(t) }
        let gdbPort = try gdb.map { p throws(CLIError) in try wholeNumber(p, flag: "--gdb", range: 0...65535, example: "1234") }
        if gdbWait && gdbPort == nil { throw CLIError("--gdb-wait needs a port to wait on: add --gdb PORT") }
        var type = VGPUType.default
        if let t = vgpuType {
            guard displayChoice == .vgpu else { throw CLIError("--vgpu-type needs a vGPU: add --vgpu") }
            guard let known = VGPUType.named(t) else {
                throw CLIError("--vgpu-type \(quoted(t)) is not a vGPU type: use \(VGPUType.names)")
            }
            type = known
        }
        var scheduler: SchedulerKind? = nil
        if let g = gpuScheduler {
            guard let k = SchedulerKind(rawValue: g) else {
                throw CLIError("--gpu-scheduler \(quoted(g)) is not a scheduler: use \(SchedulerKind.names)")
            }
            guard displayChoice == .vgpu || config != nil else { throw CLIError("--gpu-scheduler needs a vGPU: add --vgpu (or run VMs with --config)") }
            scheduler = k
        }
        if let t = trace {
            guard !t.isEmpty else { throw CLIError("--trace needs a path: give a JSON file name, e.g. --trace gpu.json") }
            guard displayChoice == .vgpu || config != nil else { throw CLIError("--trace records the GPU's scheduling: add --vgpu (or run VMs with --config)") }
        }
        let hangLimitMs = try hangLimit.map { h throws(CLIError) in try wholeNumber(h, flag: "--hang-limit", range: 10...600_000, example: "500") }
        if let c = config {
            guard !c.isEmpty else { throw CLIError("--config needs a path: give a JSON file, e.g. --config vms.json") }
            let alone = [("an IMAGE", image != nil), ("--vgpu", vgpu), ("--screenshot", screenshot != nil),
                         ("--module", !modules.isEmpty), ("--gdb", gdbPort != nil), ("--cmdline", !cmdline.isEmpty),
                         ("--serial", serial != "stdio"), ("--memory", memory != "256M"), ("--cpus", self.cpus != "1"),
                         ("--pit", pit != "auto"), ("--display", display != "none"), ("--vnc", vnc != nil)]
            if let (what, _) = alone.first(where: { $0.1 }) {
                throw CLIError("--config describes every VM: give \(what) per VM in the file, not on the command line")
            }
        }
        let kvm = environment["MINIVISOR_KVM_DEVICE"] ?? "/dev/kvm"
        guard !kvm.isEmpty else { throw CLIError("MINIVISOR_KVM_DEVICE is empty: unset it or point it at /dev/kvm") }
        return RunRequest(image: image, memoryBytes: memoryBytes, cpus: cpus, cmdline: commandLine, serial: serialChoice,
                          modules: modules, initrd: initrd, timeoutSeconds: seconds, display: displayChoice, vgpuType: type, screenshot: screenshot, vnc: vncAddress,
                          pit: pitMode, logLevel: level, kvmDevicePath: kvm, seccomp: !noSeccomp, gdbPort: gdbPort, gdbWait: gdbWait,
                          configFile: config, gpuScheduler: scheduler, tracePath: trace, hangLimitMilliseconds: hangLimitMs)
    }
}

extension Bench {
    func request() throws(CLIError) -> BenchRequest {
        BenchRequest(iterations: UInt32(try wholeNumber(iterations, flag: "--iterations", range: 1...10_000_000, example: "20000")),
                     rounds: try wholeNumber(rounds, flag: "--rounds", range: 1...1000, example: "7"),
                     image: image, guests: guests,
                     startupRuns: try wholeNumber(startupRuns, flag: "--startup-runs", range: 1...1000, example: "11"),
                     exitSeconds: Double(try wholeNumber(exitSeconds, flag: "--exit-seconds", range: 1...3600, example: "15")),
                     exitTarget: Double(try wholeNumber(exitTarget, flag: "--exit-target", range: 1...50, example: "2")) / 100,
                     schedulerSeconds: Double(try wholeNumber(schedSeconds, flag: "--sched-seconds", range: 0...60, example: "2")))
    }
}

/// `--vnc PORT` or `--vnc HOST:PORT` (HOST an IPv4 address or localhost).
func checkVNC(_ text: String) throws(CLIError) -> VNCAddress {
    var host = "127.0.0.1", portText = Substring(text)
    if let colon = text.lastIndex(of: ":") {
        host = String(text[..<colon])
        portText = text[text.index(after: colon)...]
        var addr = in_addr()
        guard host == "localhost" || inet_pton(AF_INET, host, &addr) == 1 else {
            throw CLIError("--vnc \(quoted(text)): \(quoted(host)) is not an IPv4 address: give PORT or HOST:PORT, e.g. --vnc 5900 or --vnc 0.0.0.0:5900")
        }
    }
    let port = try wholeNumber(String(portText), flag: "--vnc", range: 0...65535, example: "5900")
    return VNCAddress(host: host, port: port)
}

/// The longest --timeout: 365 days.
let maximumTimeoutSeconds = 31_536_000.0

func checkTimeout(_ text: String, label: String = "--timeout", example: String = "--timeout 10") throws(CLIError) -> Double {
    let range = "give seconds from 0.001 to \(Int(maximumTimeoutSeconds)) (365 days), e.g. \(example)"
    guard let t = Double(text) else { throw CLIError("\(label) \(quoted(text)) is not a number: \(range)") }
    guard t.isFinite, t >= 0.001, t <= maximumTimeoutSeconds else {
        throw CLIError("\(label) \(quoted(text)) is out of range: \(range)")
    }
    return t
}

/// A decimal integer in `range`; out-of-range and overflowing values get the range in the message.
func wholeNumber(_ text: String, flag: String, range: ClosedRange<Int>, example: String) throws(CLIError) -> Int {
    let give = "give a whole number from \(range.lowerBound) to \(range.upperBound), e.g. \(flag) \(example)"
    let digits = text.hasPrefix("-") || text.hasPrefix("+") ? text.dropFirst() : Substring(text)
    guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
        throw CLIError("\(flag) \(quoted(text)) is not a whole number: \(give)")
    }
    guard let n = Int(text), range.contains(n) else { throw CLIError("\(flag) \(quoted(text)) is out of range: \(give)") }
    return n
}

/// Sizes such as 256M, 1G, 512K, 64MiB or a plain byte count. `.overflow` when the value does not fit
/// in 64 bits.
enum SizeParse: Equatable { case bytes(UInt64), overflow, invalid }

func parseSize(_ text: String) -> SizeParse {
    var s = Substring(text.uppercased())
    for suffix in ["IB", "B"] where s.hasSuffix(suffix) && s.count > suffix.count { s.removeLast(suffix.count); break }
    var shift: UInt64 = 0
    if let last = s.last, let k = ["K": 10, "M": 20, "G": 30, "T": 40][String(last)] { shift = UInt64(k); s.removeLast() }
    guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return .invalid }
    guard let n = UInt64(s) else { return .overflow }
    let (v, o) = n.multipliedReportingOverflow(by: 1 << shift)
    return o ? .overflow : .bytes(v)
}

/// "24105M": a byte count for messages, in MiB rounded down.
func sizeText(_ bytes: UInt64) -> String { "\(bytes >> 20)M" }

/// `label` names the value in messages ("--memory", or a configuration file's field), `example` shows a
/// good one.
func checkMemory(_ text: String, label: String = "--memory", example: String = "--memory 256M") throws(CLIError) -> UInt64 {
    let maxBytes = min(hostPhysicalMemory(), MemoryLayout.maximumRAM) & ~(MemoryLayout.pageSize - 1)
    let range = "give 4M to \(sizeText(maxBytes)) (this host's physical memory), e.g. \(example)"
    switch parseSize(text) {
    case .invalid:
        throw CLIError("\(label) \(quoted(text)) is not a size: use a number with an optional K, M, G or T suffix; \(range)")
    case .overflow:
        throw CLIError("\(label) \(quoted(text)) is more than this host's physical memory: \(range)")
    case .bytes(let b):
        guard b >= MemoryLayout.minimumRAM else { throw CLIError("\(label) \(quoted(text)) is too small: \(range)") }
        guard b <= maxBytes else { throw CLIError("\(label) \(quoted(text)) is more than this host's physical memory: \(range)") }
        guard b % MemoryLayout.pageSize == 0 else {
            throw CLIError("\(label) \(quoted(text)) is not a multiple of 4K: \(range)")
        }
        return b
    }
}
