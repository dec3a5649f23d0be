import FuzzSupport
import Glibc
import Machine
import Minivisor
import MinivisorCommands

// libFuzzer target: the command-line parser (Sources/MinivisorCommands, `parseArguments`) on arbitrary
// argument vectors, and the pure parts of an accepted `run` request (`configuration()`, `bootImage`,
// `timeout`); `checkFiles` is left out (it looks at the file system).
//
// Input:
//   byte 0     flags: bit 0 the last argument is MINIVISOR_KVM_DEVICE instead (taken out of argv)
//   rest       the arguments after the program name, separated by NUL bytes; any bytes, invalid UTF-8
//              included, decoded as the executable's CommandLine.arguments decodes them (repaired)
//
// Oracles: no trap; a refusal is one line (no line breaks or other control characters), not empty, without
// the "minivisor: " prefix the executable adds, with status 2 (README "Exit status"); help is some text;
// an accepted run or bench request holds values inside the documented ranges, and its machine
// configuration says what the request says.

struct CLICase {
    var kvmDevice: String? = nil
    var arguments: [[UInt8]] = []

    init(_ args: [String], kvmDevice: String? = nil) {
        arguments = args.map { Array($0.utf8) }
        self.kvmDevice = kvmDevice.map { $0 }
        if let d = kvmDevice { arguments.append(Array(d.utf8)) }
    }

    init(_ input: inout FuzzInput) {
        let flags = input.u8()
        let rest = input.rest()
        var args: [[UInt8]] = []
        var current: [UInt8] = []
        for b in rest {
            if b == 0 { args.append(current); current = [] } else { current.append(b) }
        }
        if !rest.isEmpty { args.append(current) }
        if flags & 1 != 0, let last = args.popLast() { kvmDevice = String(decoding: last, as: UTF8.self) }
        arguments = args
    }

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = [kvmDevice != nil ? 1 : 0]
        for (i, a) in arguments.enumerated() {
            if i > 0 { bytes.append(0) }
            bytes += a
        }
        return bytes
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func cliFuzzTarget(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    runCLICase(CLICase(&input))
    return 0
}

/// A line break or another control character that would garble the one line on stderr.
func breaksTheLine(_ s: Unicode.Scalar) -> Bool {
    s.value < 0x20 || s.value == 0x7f || (0x80..<0xa0).contains(s.value) || s.value == 0x2028 || s.value == 0x2029
}

func runCLICase(_ c: CLICase) {
    let argv = c.arguments.map { String(decoding: $0, as: UTF8.self) }
    var environment: [String: String] = [:]
    if let d = c.kvmDevice { environment["MINIVISOR_KVM_DEVICE"] = d }
    let result = parseArguments(argv, environment: environment)
    let shown = argv.map { quoted($0) }.joined(separator: " ")
    switch result {
    case .failure(let error):
        if fuzzVerbose { fuzzLog("refused (\(error.status)): \(error.message)") }
        guard error.status == CLIStatus.usage else {
            fuzzFinding("status \(error.status) instead of \(CLIStatus.usage) for \(shown): \(quoted(error.message))")
        }
        guard !error.message.isEmpty, !error.message.unicodeScalars.contains(where: breaksTheLine) else {
            fuzzFinding("the message for \(shown) is not one line: \(quoted(error.message))")
        }
        guard !error.message.hasPrefix("minivisor: "), !error.message.hasPrefix("Error: ") else {
            fuzzFinding("the message for \(shown) carries a prefix: \(quoted(error.message))")
        }
    case .success(.help(let text)):
        if fuzzVerbose { fuzzLog("help: \(text.count) characters") }
        guard !text.isEmpty else { fuzzFinding("empty help text for \(shown)") }
    case .success(.bench(let b)):
        if fuzzVerbose { fuzzLog("bench: \(b)") }
        guard (1...10_000_000).contains(b.iterations), (1...1000).contains(b.rounds), (1...1000).contains(b.startupRuns) else {
            fuzzFinding("bench request out of range for \(shown): \(b)")
        }
    case .success(.run(let r)):
        if fuzzVerbose { fuzzLog("run: \(r)") }
        check(r, shown: shown, kvmDevice: c.kvmDevice)
    }
}

func check(_ r: RunRequest, shown: String, kvmDevice: String?) {
    func require(_ ok: Bool, _ what: String) { if !ok { fuzzFinding("run request for \(shown): \(what); request: \(r)") } }
    require((1...255).contains(r.cpus), "--cpus \(r.cpus) out of 1...255")
    require(r.memoryBytes >= 4 << 20 && r.memoryBytes % 4096 == 0, "--memory \(r.memoryBytes) is below 4M or not a multiple of 4K")
    if let t = r.timeoutSeconds { require(t.isFinite && t >= 0.001 && t <= 31_536_000, "--timeout \(t) out of range") }
    if let p = r.gdbPort { require((0...65535).contains(p), "--gdb \(p) out of range") }
    require(!r.gdbWait || r.gdbPort != nil, "--gdb-wait without --gdb")
    require(r.screenshot == nil || (r.display != .none && !r.screenshot!.isEmpty), "--screenshot without a display or with an empty path")
    require(r.image.map { !$0.isEmpty } ?? true, "empty image path")
    require(r.kvmDevicePath == (kvmDevice ?? "/dev/kvm") && !r.kvmDevicePath.isEmpty, "KVM device \(quoted(r.kvmDevicePath))")
    if case .file(let p) = r.serial { require(!p.isEmpty, "--serial file: with an empty path") }

    let config = r.configuration()
    require(config.memoryBytes == r.memoryBytes && config.cpuCount == r.cpus && config.cmdline == r.cmdline,
            "configuration() memory/cpus/cmdline differ")
    require(config.pit == r.pit && config.kvmDevicePath == r.kvmDevicePath, "configuration() pit/KVM device differ")
    require(config.modules.count == r.modules.count && config.modules.allSatisfy { !$0.path.isEmpty }, "configuration() modules")
    require((config.timeout == nil) == (r.timeoutSeconds == nil), "configuration() timeout")
    if let d = r.timeout { require(d > .zero, "a timeout of \(d)") }
    switch (r.serial, config.serialOutput) {
    case (.stdio, .stdout), (.none, .none): break
    case (.file(let a), .file(let b)): require(a == b, "serial file \(quoted(a)) became \(quoted(b))")
    default: require(false, "serial \(r.serial) became \(config.serialOutput)")
    }
    switch (r.image, r.bootImage) {
    case (nil, .builtinDemo): break
    case (let path?, .file(let p)): require(path == p, "image \(quoted(path)) became \(quoted(p))")
    default: require(false, "image \(String(describing: r.image)) became \(r.bootImage)")
    }
}

// MARK: - Seeds

@_cdecl("LLVMFuzzerInitialize")
public func cliFuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    FuzzSeeds.writeIfRequested { cliSeeds().enumerated().map { ("cli-seed-\($0.offset)", $0.element.encoded()) } }
    return 0
}

/// Realistic command lines: every flag of run and bench, both spellings of options, the default
/// subcommand, help, refusals, and bytes that are not UTF-8.
func cliSeeds() -> [CLICase] {
    var seeds: [CLICase] = [
        CLICase(["run", "Guests/build/hello.elf"]),
        CLICase(["Guests/build/hello.elf", "--timeout", "5"]),
        CLICase(["run", "kernel.elf", "--memory", "512M", "--cpus", "4", "--cmdline", "console=ttyS0 quiet",
                 "--serial", "file:serial.log", "--module", "initrd.img root=/dev/ram0", "--module", "second.bin",
                 "--timeout", "2.5", "--vgpu", "--screenshot", "out.png", "--pit", "on", "--no-seccomp",
                 "--gdb", "1234", "--gdb-wait", "--log-level", "debug"]),
        CLICase(["run", "--memory=64MiB", "--cpus=2", "--serial=none", "--pit=off", "--log-level=trace", "--timeout=0.001"]),
        CLICase(["run", "--memory", "1G", "--serial", "stdio", "--pit", "auto", "--gdb", "0", "--", "-image-with-dash.elf"]),
        CLICase(["run", "--vgpu", "--screenshot", "shot.png", "Guests/build/vgpu_demo.elf"], kvmDevice: "/dev/kvm"),
        CLICase(["run", "guest.elf"], kvmDevice: "/tmp/other-kvm"),
        CLICase(["bench"]),
        CLICase(["bench", "--iterations", "20000", "--rounds", "7", "--image", "Guests/build/hello.elf",
                 "--guests", "Guests/build", "--startup-runs", "11"]),
        CLICase(["bench", "--iterations=1", "--rounds=1000", "--startup-runs=1000"]),
        CLICase(["--help"]), CLICase(["run", "--help"]), CLICase(["bench", "-h"]), CLICase(["help", "run"]), CLICase([]),
        // Refusals.
        CLICase(["run", "--cpus", "0"]), CLICase(["run", "--cpus", "99999999999999999999999"]),
        CLICase(["run", "--memory", "3M"]), CLICase(["run", "--memory", "18446744073709551615T"]),
        CLICase(["run", "--memory", "4097"]), CLICase(["run", "--serial", "file:"]), CLICase(["run", "--serial", "tcp:1"]),
        CLICase(["run", "--timeout", "nan"]), CLICase(["run", "--timeout", "-1"]), CLICase(["run", "--timeout", "1e300"]),
        CLICase(["run", "--gdb-wait"]), CLICase(["run", "--gdb", "65536"]), CLICase(["run", "--screenshot", "x.png"]),
        CLICase(["run", "--pit", "maybe"]), CLICase(["run", "--log-level", "loud"]), CLICase(["run", "--module", " args"]),
        CLICase(["run", ""]), CLICase(["run", "a.elf", "b.elf"]), CLICase(["run", "--bogus"]), CLICase(["bench", "--rounds", "+"]),
        CLICase(["run", "--cmdline"]), CLICase(["run", "--log-level", "line\nbreak"]), CLICase(["run", "guest.elf"], kvmDevice: ""),
    ]
    // Bytes that are not UTF-8, and control characters, in an image path and a flag value.
    var raw = CLICase(["run", "--serial", "file:x", "--cpus", "2"])
    raw.arguments.insert([0x69, 0xff, 0xfe, 0xc3, 0x28, 0x1b, 0x5b, 0x32, 0x4a, 0x0a], at: 1)
    raw.arguments[3] += [0x80, 0xe2, 0x80, 0xa8]
    seeds.append(raw)
    return seeds
}
