import FoundationEssentials
import Glibc
import Minivisor

// `minivisor run --config FILE`: a JSON file describing several VMs (docs/config.md). Read with the
// toolchain's JSON parser (FoundationEssentials), then checked field by field here, so every bad field
// gets one line naming the file, the field and the fix (status 2).

/// One VM of a configuration file, checked.
public struct VMDescription: Equatable, Sendable {
    public var name: String
    /// nil: the built-in demo guest.
    public var image: String?
    public var cmdline: String = ""
    public var modules: [String] = []
    public var memoryBytes: UInt64 = 256 << 20
    public var cpus: Int = 1
    /// nil: no vGPU.
    public var vgpu: VGPUType?
    /// `.stdio` means standard output, each line prefixed with "NAME | ".
    public var serial: SerialChoice = .stdio
    public var screenshot: String?
    public var timeoutSeconds: Double?
    public var pit: MachineConfiguration.PITMode = .auto
}

/// A checked configuration file.
public struct ConfigFile: Equatable, Sendable {
    public static let maximumBytes = 1 << 20
    public static let maximumVMs = 64
    public var vms: [VMDescription]
    /// "gpu": {"scheduler": ...}; nil when the file does not say.
    public var scheduler: SchedulerKind? = nil
    /// "trace": where the GPU scheduler's timeline goes (as --trace).
    public var trace: String? = nil
    /// "hang_limit_ms": the GPU watchdog's limit (as --hang-limit).
    public var hangLimitMilliseconds: Int? = nil

    /// Reads and checks `path`: a regular file of at most 1 MiB, opened without blocking.
    public static func load(path: String) -> Result<ConfigFile, CLIError> {
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            let e = errno
            return .failure(CLIError("cannot open configuration file \(quoted(path)): \(errnoDescription(e)): give the path of a JSON file (docs/config.md)"))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            return .failure(CLIError("configuration file \(quoted(path)) is not a regular file: give the path of a JSON file (docs/config.md)"))
        }
        guard st.st_size <= maximumBytes else {
            return .failure(CLIError("configuration file \(quoted(path)) is \(st.st_size) bytes, more than the limit of \(maximumBytes): describe the VMs in less"))
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            done += n
        }
        bytes.removeSubrange(done...)
        return parse(bytes, file: path)
    }

    /// Checks the JSON text of a configuration file; `file` names it in messages.
    public static func parse(_ bytes: [UInt8], file: String) -> Result<ConfigFile, CLIError> {
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch {
            return .failure(CLIError("configuration file \(quoted(file)) is not valid JSON (\(jsonErrorText(error))): fix it; docs/config.md shows the format"))
        }
        do throws(CLIError) {
            return .success(try ConfigChecker(file: file).check(value))
        } catch {
            return .failure(error)
        }
    }
}

/// A JSON value, as decoded (object keys in a dictionary: the checker sorts them for stable messages).
enum JSONValue: Decodable, Equatable {
    case null, bool(Bool), number(Double), string(String)
    case array([JSONValue]), object([String: JSONValue])

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    init(from decoder: any Decoder) throws {
        if let c = try? decoder.container(keyedBy: Key.self) {
            var o: [String: JSONValue] = [:]
            for k in c.allKeys { o[k.stringValue] = try c.decode(JSONValue.self, forKey: k) }
            self = .object(o)
        } else if var c = try? decoder.unkeyedContainer() {
            var a: [JSONValue] = []
            while !c.isAtEnd { a.append(try c.decode(JSONValue.self)) }
            self = .array(a)
        } else {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { self = .null }
            else if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let n = try? c.decode(Double.self) { self = .number(n) }
            else { self = .string(try c.decode(String.self)) }
        }
    }

    var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .number: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }
}

/// The parser's own words for where the JSON went wrong, as one line.
private func jsonErrorText(_ error: any Error) -> String {
    var text = "\(error)"
    if case DecodingError.dataCorrupted(let c) = error {
        text = c.debugDescription
        if let u = c.underlyingError { text += ": \(u)" }
    }
    return oneLine(text)
}

private struct ConfigChecker {
    let file: String

    func fail(_ field: String, _ message: String) -> CLIError {
        CLIError("configuration file \(quoted(file)): \(field) \(message)")
    }

    func check(_ root: JSONValue) throws(CLIError) -> ConfigFile {
        guard case .object(let top) = root else {
            throw CLIError("configuration file \(quoted(file)) holds \(root.kind), not an object: write {\"vms\": [{\"name\": \"a\", \"image\": \"guest.elf\"}]} (docs/config.md)")
        }
        for k in top.keys.sorted() where !["vms", "gpu", "trace", "hang_limit_ms"].contains(k) {
            throw fail(quoted(k), "is not a field of the file: use \"vms\", \"gpu\", \"trace\" or \"hang_limit_ms\" (docs/config.md)")
        }
        var scheduler: SchedulerKind? = nil
        if let g = top["gpu"] {
            guard case .object(let gpu) = g else { throw fail("gpu", "is \(g.kind), not an object: write \"gpu\": {\"scheduler\": \"weighted\"}") }
            for k in gpu.keys.sorted() where k != "scheduler" {
                throw fail("gpu.\(k)", "is not a field of gpu: the one field is \"scheduler\" (docs/config.md)")
            }
            if let s = gpu["scheduler"] {
                guard case .string(let name) = s else { throw fail("gpu.scheduler", "is \(s.kind), not a string: use \(SchedulerKind.names)") }
                guard let k = SchedulerKind(rawValue: name) else {
                    throw fail("gpu.scheduler", "\(quoted(name)) is not a scheduler: use \(SchedulerKind.names)")
                }
                scheduler = k
            }
        }
        var trace: String? = nil
        if let v = top["trace"] {
            let t = try string(v, "trace", example: "\"trace\": \"gpu.json\"")
            guard !t.isEmpty else { throw fail("trace", "is empty: give a JSON file name, e.g. \"trace\": \"gpu.json\"") }
            trace = t
        }
        let hangLimit = try top["hang_limit_ms"].map { v throws(CLIError) in
            try integer(v, "hang_limit_ms", range: 10...600_000, example: "\"hang_limit_ms\": 500")
        }
        guard let vmsValue = top["vms"] else {
            throw CLIError("configuration file \(quoted(file)) has no \"vms\": list the VMs, e.g. {\"vms\": [{\"name\": \"a\", \"image\": \"guest.elf\"}]}")
        }
        guard case .array(let list) = vmsValue else { throw fail("vms", "is \(vmsValue.kind), not an array: list the VMs in [ ]") }
        guard !list.isEmpty else { throw fail("vms", "is empty: describe at least one VM") }
        guard list.count <= ConfigFile.maximumVMs else {
            throw fail("vms", "lists \(list.count) VMs, more than \(ConfigFile.maximumVMs): run the rest in another process")
        }
        var vms: [VMDescription] = []
        var names: [String: Int] = [:]
        for (i, v) in list.enumerated() {
            let vm = try checkVM(v, at: "vms[\(i)]")
            if let j = names[vm.name] {
                throw fail("vms[\(i)].name", "\(quoted(vm.name)) is also the name of vms[\(j)]: give each VM its own name")
            }
            names[vm.name] = i
            vms.append(vm)
        }
        return ConfigFile(vms: vms, scheduler: scheduler, trace: trace, hangLimitMilliseconds: hangLimit)
    }

    static let fields = ["name", "image", "cmdline", "modules", "memory", "cpus", "vgpu", "serial", "screenshot", "timeout", "pit"]

    func checkVM(_ value: JSONValue, at path: String) throws(CLIError) -> VMDescription {
        guard case .object(let o) = value else {
            throw fail(path, "is \(value.kind), not an object: describe the VM as {\"name\": \"a\", \"image\": \"guest.elf\"}")
        }
        for k in o.keys.sorted() where !Self.fields.contains(k) {
            throw fail("\(path).\(k)", "is not a field of a VM: use \(Self.fields.joined(separator: ", ")) (docs/config.md)")
        }
        guard let nameValue = o["name"] else { throw fail(path, "has no \"name\": give the VM a name, e.g. \"name\": \"vm1\"") }
        let name = try string(nameValue, "\(path).name", example: "\"name\": \"vm1\"")
        guard (1...32).contains(name.utf8.count),
              name.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x61 && $0 <= 0x7a) || $0 == 0x2d || $0 == 0x5f || $0 == 0x2e }) else {
            throw fail("\(path).name", "\(quoted(name)) is not a usable name: use 1 to 32 letters, digits, '.', '-' or '_'")
        }
        var vm = VMDescription(name: name)
        if let v = o["image"] {
            let image = try string(v, "\(path).image", example: "\"image\": \"Guests/build/hello.elf\"")
            guard !image.isEmpty else { throw fail("\(path).image", "is empty: give an image file, or leave the field out for the built-in demo") }
            vm.image = image
        }
        if let v = o["cmdline"] { vm.cmdline = try string(v, "\(path).cmdline", example: "\"cmdline\": \"quiet\"") }
        if let v = o["modules"] {
            guard case .array(let a) = v else { throw fail("\(path).modules", "is \(v.kind), not an array: give [\"PATH ARGS\", ...]") }
            for (j, m) in a.enumerated() {
                let text = try string(m, "\(path).modules[\(j)]", example: "\"modules\": [\"initrd.img\"]")
                guard !BootModule(argument: text).path.isEmpty else { throw fail("\(path).modules[\(j)]", "names no file: give \"PATH [ARGS]\"") }
                vm.modules.append(text)
            }
        }
        if let v = o["memory"] {
            let field = "\(path).memory"
            let text: String
            switch v {
            case .string(let s): text = s
            case .number(let n) where n >= 0 && n < 1.8e19 && n == n.rounded(): text = String(UInt64(n))
            default: throw fail(field, "is \(v.kind), not a size: give e.g. \"memory\": \"64M\"")
            }
            vm.memoryBytes = try checkMemory(text, label: "configuration file \(quoted(file)): \(field)", example: "\"memory\": \"64M\"")
        }
        if let v = o["cpus"] {
            vm.cpus = try integer(v, "\(path).cpus", range: 1...255, example: "\"cpus\": 2")
        }
        if let v = o["vgpu"], v != .null {
            let t = try string(v, "\(path).vgpu", example: "\"vgpu\": \"small\"")
            guard let type = VGPUType.named(t) else { throw fail("\(path).vgpu", "\(quoted(t)) is not a vGPU type: use \(VGPUType.names), or leave the field out for no vGPU") }
            vm.vgpu = type
        }
        if let v = o["serial"] {
            let s = try string(v, "\(path).serial", example: "\"serial\": \"file:vm1.log\"")
            switch s {
            case "stdout": vm.serial = .stdio
            case "none": vm.serial = .none
            default:
                guard s.hasPrefix("file:"), s.count > 5 else {
                    throw fail("\(path).serial", "\(quoted(s)) is not understood: use \"stdout\" (lines prefixed with the VM's name), \"none\" or \"file:PATH\"")
                }
                vm.serial = .file(String(s.dropFirst(5)))
            }
        }
        if let v = o["screenshot"] {
            let s = try string(v, "\(path).screenshot", example: "\"screenshot\": \"vm1.png\"")
            guard !s.isEmpty else { throw fail("\(path).screenshot", "is empty: give a PNG file name, e.g. \"screenshot\": \"vm1.png\"") }
            guard vm.vgpu != nil else { throw fail("\(path).screenshot", "needs a display: add \"vgpu\": \"\(VGPUType.default.name)\" to the VM") }
            vm.screenshot = s
        }
        if let v = o["timeout"] {
            guard case .number(let n) = v else { throw fail("\(path).timeout", "is \(v.kind), not a number of seconds: give e.g. \"timeout\": 10") }
            vm.timeoutSeconds = try checkTimeout("\(n)", label: "configuration file \(quoted(file)): \(path).timeout", example: "\"timeout\": 10")
        }
        if let v = o["pit"] {
            let s = try string(v, "\(path).pit", example: "\"pit\": \"auto\"")
            guard let mode = MachineConfiguration.PITMode(rawValue: s) else { throw fail("\(path).pit", "\(quoted(s)) is not understood: use auto, on or off") }
            vm.pit = mode
        }
        return vm
    }

    func string(_ v: JSONValue, _ field: String, example: String) throws(CLIError) -> String {
        guard case .string(let s) = v else { throw fail(field, "is \(v.kind), not a string: give e.g. \(example)") }
        return s
    }

    func integer(_ v: JSONValue, _ field: String, range: ClosedRange<Int>, example: String) throws(CLIError) -> Int {
        let give = "give a whole number from \(range.lowerBound) to \(range.upperBound), e.g. \(example)"
        guard case .number(let n) = v, n == n.rounded(), n.isFinite else { throw fail(field, "is \(v.kind == "a number" ? "not a whole number" : v.kind): \(give)") }
        guard n >= Double(range.lowerBound), n <= Double(range.upperBound) else { throw fail(field, "\(n) is out of range: \(give)") }
        return Int(n)
    }
}

extension RunRequest {
    /// The group `--config` asks for: each VM of `file` with this command line's process-wide settings
    /// (--timeout for VMs without their own, --log-level, --no-seccomp, the KVM device).
    public func members(of file: ConfigFile) -> [VMGroup.Member] {
        file.vms.map { d in
            var c = MachineConfiguration()
            c.memoryBytes = d.memoryBytes
            c.cpuCount = d.cpus
            c.cmdline = d.cmdline
            c.pit = d.pit
            c.kvmDevicePath = kvmDevicePath
            c.modules = d.modules.map(BootModule.init(argument:))
            let seconds = d.timeoutSeconds ?? timeoutSeconds
            c.timeout = seconds.map { .milliseconds(Int64(($0 * 1000).rounded())) }
            c.seccomp = seccomp ? .vmThreadsAndMonitor : .off
            switch d.serial {
            case .stdio: c.serialOutput = .stdoutLines(prefix: "\(d.name) | ")
            case .none: c.serialOutput = .none
            case .file(let p): c.serialOutput = .file(p)
            }
            return VMGroup.Member(name: d.name, image: d.image.map { .file($0) } ?? .builtinDemo, configuration: c,
                                  vgpu: d.vgpu.map { VGPUOptions(screenshotPath: d.screenshot, type: $0) })
        }
    }
}
