import Glibc
import Minivisor
import MinivisorCommands
import Testing

/// `--config FILE`: the JSON is checked field by field; every bad field gets one line naming the file, the
/// field and the fix, with status 2. Nothing here runs a VM.
@Suite("Configuration files")
struct ConfigFileTests {
    func parse(_ text: String) -> Result<ConfigFile, CLIError> {
        ConfigFile.parse(Array(text.utf8), file: "vms.json")
    }

    func refusal(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> String {
        switch parse(text) {
        case .failure(let e):
            #expect(e.status == 2, sourceLocation: sourceLocation)
            #expect(!e.message.contains("\n"), "two lines: \(e.message)", sourceLocation: sourceLocation)
            #expect(e.message.contains("vms.json"), "the file is not named: \(e.message)", sourceLocation: sourceLocation)
            return e.message
        case .success(let c):
            Issue.record("accepted: \(c)", sourceLocation: sourceLocation)
            return ""
        }
    }

    @Test func everyFieldIsRead() throws {
        let text = """
        {"vms": [
          {"name": "a", "image": "a.elf", "memory": "64M", "cpus": 2, "vgpu": "small", "serial": "file:a.log",
           "screenshot": "a.png", "timeout": 2.5, "cmdline": "x y", "modules": ["m1 arg", "m2"], "pit": "off"},
          {"name": "b-2.x_", "memory": 33554432, "vgpu": null, "serial": "none"},
          {"name": "c"}
        ]}
        """
        let f = try parse(text).get()
        #expect(f.vms.count == 3)
        let a = f.vms[0]
        #expect(a.name == "a" && a.image == "a.elf" && a.memoryBytes == 64 << 20 && a.cpus == 2)
        #expect(a.vgpu == .small && a.serial == .file("a.log") && a.screenshot == "a.png")
        #expect(a.timeoutSeconds == 2.5 && a.cmdline == "x y" && a.modules == ["m1 arg", "m2"] && a.pit == .off)
        let b = f.vms[1]
        #expect(b.image == nil && b.memoryBytes == 32 << 20 && b.vgpu == nil && b.serial == SerialChoice.none)
        let c = f.vms[2]
        #expect(c.memoryBytes == 256 << 20 && c.cpus == 1 && c.serial == .stdio && c.vgpu == nil)

        // The members the CLI builds: per-VM settings, the command line's for the rest, prefixed stdout.
        guard case .success(.run(let r)) = parseArguments(["run", "--config", "vms.json", "--timeout", "9", "--no-seccomp"]) else {
            Issue.record("--config did not parse")
            return
        }
        let m = r.members(of: f)
        #expect(m.map(\.name) == ["a", "b-2.x_", "c"])
        #expect(m[0].configuration.timeout == .milliseconds(2500))
        #expect(m[1].configuration.timeout == .seconds(9))
        #expect(m[0].vgpu?.type == .small && m[0].vgpu?.screenshotPath == "a.png" && m[1].vgpu == nil)
        #expect(m[0].configuration.seccomp == .off)
        if case .stdoutLines(let prefix) = m[2].configuration.serialOutput { #expect(prefix == "c | ") } else {
            Issue.record("VM c's serial is not prefixed standard output")
        }
    }

    @Test func badFilesGetOneLineNamingTheFieldAndTheFix() {
        let cases: [(String, [String])] = [
            ("{", ["not valid JSON"]),
            ("[]", ["an array, not an object"]),
            ("{}", ["has no \"vms\""]),
            ("{\"vms\": [], \"x\": 1}", ["'x'", "not a field of the file"]),
            ("{\"vms\": {}}", ["vms is an object, not an array"]),
            ("{\"vms\": []}", ["vms is empty"]),
            ("{\"vms\": [1]}", ["vms[0] is a number, not an object"]),
            ("{\"vms\": [{}]}", ["vms[0] has no \"name\""]),
            ("{\"vms\": [{\"name\": \"\"}]}", ["vms[0].name", "not a usable name"]),
            ("{\"vms\": [{\"name\": \"a b\"}]}", ["vms[0].name", "not a usable name"]),
            ("{\"vms\": [{\"name\": 5}]}", ["vms[0].name is a number, not a string"]),
            ("{\"vms\": [{\"name\": \"a\"}, {\"name\": \"a\"}]}", ["vms[1].name", "also the name of vms[0]"]),
            ("{\"vms\": [{\"name\": \"a\", \"memroy\": \"64M\"}]}", ["vms[0].memroy is not a field of a VM", "memory"]),
            ("{\"vms\": [{\"name\": \"a\", \"memory\": \"12X\"}]}", ["vms[0].memory '12X' is not a size", "\"memory\": \"64M\""]),
            ("{\"vms\": [{\"name\": \"a\", \"memory\": \"1M\"}]}", ["vms[0].memory '1M' is too small"]),
            ("{\"vms\": [{\"name\": \"a\", \"memory\": \"99999999T\"}]}", ["vms[0].memory", "more than this host's physical memory"]),
            ("{\"vms\": [{\"name\": \"a\", \"memory\": -5}]}", ["vms[0].memory is a number, not a size"]),
            ("{\"vms\": [{\"name\": \"a\", \"memory\": true}]}", ["vms[0].memory is a boolean"]),
            ("{\"vms\": [{\"name\": \"a\", \"cpus\": 0}]}", ["vms[0].cpus", "out of range", "1 to 255"]),
            ("{\"vms\": [{\"name\": \"a\", \"cpus\": 1.5}]}", ["vms[0].cpus is not a whole number"]),
            ("{\"vms\": [{\"name\": \"a\", \"cpus\": 1e300}]}", ["vms[0].cpus", "out of range"]),
            ("{\"vms\": [{\"name\": \"a\", \"cpus\": \"2\"}]}", ["vms[0].cpus is a string"]),
            ("{\"vms\": [{\"name\": \"a\", \"vgpu\": \"huge\"}]}", ["vms[0].vgpu 'huge' is not a vGPU type", "small, medium or large"]),
            ("{\"vms\": [{\"name\": \"a\", \"serial\": \"tty\"}]}", ["vms[0].serial 'tty' is not understood", "file:PATH"]),
            ("{\"vms\": [{\"name\": \"a\", \"serial\": \"file:\"}]}", ["vms[0].serial 'file:' is not understood"]),
            ("{\"vms\": [{\"name\": \"a\", \"screenshot\": \"a.png\"}]}", ["vms[0].screenshot needs a display", "\"vgpu\""]),
            ("{\"vms\": [{\"name\": \"a\", \"timeout\": 0}]}", ["vms[0].timeout", "out of range"]),
            ("{\"vms\": [{\"name\": \"a\", \"timeout\": \"10\"}]}", ["vms[0].timeout is a string"]),
            ("{\"vms\": [{\"name\": \"a\", \"image\": \"\"}]}", ["vms[0].image is empty"]),
            ("{\"vms\": [{\"name\": \"a\", \"modules\": \"x\"}]}", ["vms[0].modules is a string, not an array"]),
            ("{\"vms\": [{\"name\": \"a\", \"modules\": [\"\"]}]}", ["vms[0].modules[0] names no file"]),
            ("{\"vms\": [{\"name\": \"a\", \"pit\": \"maybe\"}]}", ["vms[0].pit 'maybe' is not understood"]),
        ]
        for (text, needles) in cases {
            let message = refusal(text)
            for n in needles { #expect(message.contains(n), "\(text): \(message) lacks \(n)") }
        }
        let many = "{\"vms\": [" + (0...ConfigFile.maximumVMs).map { "{\"name\": \"v\($0)\"}" }.joined(separator: ",") + "]}"
        #expect(refusal(many).contains("more than \(ConfigFile.maximumVMs)"))
    }

    @Test func traceAndHangLimitAreTopLevelFields() throws {
        let c = try parse(#"{"trace": "gpu.json", "hang_limit_ms": 100, "vms": [{"name": "a"}]}"#).get()
        #expect(c.trace == "gpu.json" && c.hangLimitMilliseconds == 100)
        #expect(refusal(#"{"hang_limit_ms": 5, "vms": [{"name": "a"}]}"#).contains("hang_limit_ms"))
        #expect(refusal(#"{"hang_limit_ms": "fast", "vms": [{"name": "a"}]}"#).contains("hang_limit_ms"))
        #expect(refusal(#"{"trace": "", "vms": [{"name": "a"}]}"#).contains("trace"))
        #expect(refusal(#"{"trace": 3, "vms": [{"name": "a"}]}"#).contains("trace"))
        #expect(refusal(#"{"traces": "x", "vms": [{"name": "a"}]}"#).contains("\"vms\", \"gpu\", \"trace\" or \"hang_limit_ms\""))
        let run = try #require(try? parseArguments(["run", "--vgpu", "--trace", "t.json", "--hang-limit", "100", "g.elf"]).get())
        guard case .run(let r) = run else { Issue.record("not a run"); return }
        #expect(r.tracePath == "t.json" && r.hangLimitMilliseconds == 100)
        #expect(throws: CLIError.self) { try parseArguments(["run", "--hang-limit", "0", "--vgpu", "g.elf"]).get() }
        #expect(throws: CLIError.self) { try parseArguments(["run", "--trace", "t.json", "g.elf"]).get() }
    }

    @Test func arbitraryBytesNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        let seed = Array("{\"vms\": [{\"name\": \"a\", \"memory\": \"64M\", \"cpus\": 2, \"vgpu\": \"small\"}]}".utf8)
        for _ in 0..<3000 {
            var b = seed
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if case .failure(let e) = ConfigFile.parse(b, file: "f") { #expect(!e.message.contains("\n")) }
        }
    }

    @Test func filesThatAreNotRegularOrTooBigAreRefusedWithoutBlocking() {
        let dir = "/tmp/minivisor-cfg-\(getpid())"
        mkdir(dir, 0o700)
        defer { _ = unlink(dir + "/fifo"); _ = unlink(dir + "/big.json"); rmdir(dir) }
        mkfifo(dir + "/fifo", 0o600)   // no writer: a blocking open would hang here
        guard case .failure(let f) = ConfigFile.load(path: dir + "/fifo") else { Issue.record("FIFO accepted"); return }
        #expect(f.message.contains("not a regular file"))
        guard case .failure(let d) = ConfigFile.load(path: dir) else { Issue.record("directory accepted"); return }
        #expect(d.message.contains("not a regular file"))
        guard case .failure(let m) = ConfigFile.load(path: dir + "/missing.json") else { Issue.record("missing file accepted"); return }
        #expect(m.message.contains("cannot open") && m.message.contains("No such file"))
        let fd = open(dir + "/big.json", O_CREAT | O_WRONLY, 0o600)
        ftruncate(fd, off_t(ConfigFile.maximumBytes + 1))   // sparse: nothing is read to find out
        close(fd)
        guard case .failure(let b) = ConfigFile.load(path: dir + "/big.json") else { Issue.record("huge file accepted"); return }
        #expect(b.message.contains("more than the limit"))
    }

    @Test func configExcludesPerVMFlags() {
        for extra in [["hello.elf"], ["--vgpu"], ["--memory", "64M"], ["--cpus", "2"], ["--serial", "none"], ["--gdb", "1234"]] {
            guard case .failure(let e) = parseArguments(["run", "--config", "vms.json"] + extra) else {
                Issue.record("--config with \(extra) accepted")
                continue
            }
            #expect(e.message.contains("per VM in the file"), "\(e.message)")
        }
        guard case .failure(let t) = parseArguments(["run", "--vgpu-type", "small"]) else { Issue.record("--vgpu-type without --vgpu accepted"); return }
        #expect(t.message.contains("add --vgpu"))
        guard case .failure(let u) = parseArguments(["run", "--vgpu", "--vgpu-type", "xl"]) else { Issue.record("unknown type accepted"); return }
        #expect(u.message.contains("small, medium or large"))
        guard case .success(.run(let r)) = parseArguments(["run", "--vgpu", "--vgpu-type", "large"]) else { Issue.record("--vgpu-type large refused"); return }
        #expect(r.vgpuType == .large)
    }

    /// `--gpu-scheduler` and the file's "gpu": {"scheduler": ...}: the three policies, one-line refusals.
    @Test func theGPUSchedulerOnTheCommandLineAndInTheFile() throws {
        for k in SchedulerKind.allCases {
            guard case .success(.run(let r)) = parseArguments(["run", "--vgpu", "--gpu-scheduler", k.rawValue]) else {
                Issue.record("--gpu-scheduler \(k) refused"); continue
            }
            #expect(r.gpuScheduler == k)
        }
        guard case .success(.run(let none)) = parseArguments(["run", "--vgpu"]) else { Issue.record("--vgpu refused"); return }
        #expect(none.gpuScheduler == nil)
        #expect(SchedulerKind.default == .weighted)
        guard case .failure(let bad) = parseArguments(["run", "--vgpu", "--gpu-scheduler", "bvt"]) else { Issue.record("bvt accepted"); return }
        #expect(bad.message == "--gpu-scheduler 'bvt' is not a scheduler: use weighted, fifo or credit")
        #expect(bad.status == 2)
        guard case .failure(let alone) = parseArguments(["run", "--gpu-scheduler", "fifo"]) else { Issue.record("without a vGPU accepted"); return }
        #expect(alone.message.contains("add --vgpu"))
        guard case .success(.run(let c)) = parseArguments(["run", "--config", "vms.json", "--gpu-scheduler", "credit"]) else {
            Issue.record("--config with --gpu-scheduler refused"); return
        }
        #expect(c.gpuScheduler == .credit)

        let vm = #"[{"name": "a", "vgpu": "small"}]"#
        #expect(try parse(#"{"vms": \#(vm), "gpu": {"scheduler": "fifo"}}"#).get().scheduler == .fifo)
        #expect(try parse(#"{"vms": \#(vm), "gpu": {}}"#).get().scheduler == nil)
        #expect(try parse(#"{"vms": \#(vm)}"#).get().scheduler == nil)
        #expect(refusal(#"{"vms": \#(vm), "gpu": {"scheduler": "lottery"}}"#).contains("gpu.scheduler 'lottery' is not a scheduler: use weighted, fifo or credit"))
        #expect(refusal(#"{"vms": \#(vm), "gpu": {"scheduler": 3}}"#).contains("gpu.scheduler is a number, not a string"))
        #expect(refusal(#"{"vms": \#(vm), "gpu": "fifo"}"#).contains("gpu is a string, not an object"))
        #expect(refusal(#"{"vms": \#(vm), "gpu": {"policy": "fifo"}}"#).contains("gpu.policy is not a field of gpu"))
    }
}
