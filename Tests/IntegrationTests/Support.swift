import CLibpng
import Glibc
import Minivisor
import Synchronization
import Testing

/// Paths and helpers shared by the integration tests.
enum Support {
    /// The repository root, from this file's location.
    static let root: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)   // Tests/IntegrationTests/Support.swift
        return parts.joined(separator: "/")
    }()

    /// True when /dev/kvm can be opened. CI machines have it: there a missing /dev/kvm is a failure
    /// (see `KVMRequirementTests`), not a skip.
    static let kvmAvailable = KVMSystem.isAvailable

    /// Decodes a PNG into (width, height, RGB bytes); nil when it cannot be read.
    static func readPNG(_ path: String) -> (Int, Int, [UInt8])? {
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        guard png_image_begin_read_from_file(&png, path) != 0 else { return nil }
        png.format = UInt32(PNG_FORMAT_RGB)
        var buf = [UInt8](repeating: 0, count: Int(png.width * png.height * 3))
        guard png_image_finish_read(&png, nil, &buf, 0, nil) != 0 else { return nil }
        return (Int(png.width), Int(png.height), buf)
    }

    static let guestsBuilt = Mutex<Result<Void, GuestBuildError>?>(nil)

    struct GuestBuildError: Error, CustomStringConvertible { let description: String }

    /// Builds Guests/ with make (once per test process) and returns the path of build/NAME.elf.
    static func guest(_ name: String) throws -> String {
        let result = guestsBuilt.withLock { state -> Result<Void, GuestBuildError> in
            if let r = state { return r }
            let (status, output) = run("/usr/bin/make", ["-s", "-C", root + "/Guests"])
            let r: Result<Void, GuestBuildError> = status == 0 ? .success(()) : .failure(GuestBuildError(description: "make -C Guests failed (\(status)): \(output)"))
            state = r
            return r
        }
        try result.get()
        return root + "/Guests/build/\(name).elf"
    }

    /// The minivisor executable next to the test bundle.
    static var minivisor: String {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        var dir = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
        while let last = dir.last, last != "/" { dir.removeLast() }
        return dir + "minivisor"
    }

    /// Starts a program with stdout and stderr on one pipe and stdin on /dev/null, `environment` added to
    /// this process's. Returns its pid and the pipe's read end (the caller reads and closes it), or the
    /// posix_spawn error.
    static func spawnWithOutput(_ path: String, _ args: [String], environment: [String: String] = [:]) -> Result<(pid: pid_t, output: Int32), SpawnError> {
        var fds: [Int32] = [0, 0]
        pipe(&fds)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let argv = ([path] + args).map { strdup($0) } + [nil]
        let envp = Support.environment(adding: environment).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) }; envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, envp)
        posix_spawn_file_actions_destroy(&actions)
        close(fds[1])
        guard rc == 0 else { close(fds[0]); return .failure(SpawnError(code: rc)) }
        return .success((pid, fds[0]))
    }

    struct SpawnError: Error, CustomStringConvertible {
        let code: Int32
        var description: String { "posix_spawn failed: \(code)" }
    }

    /// Waits for `pid`; its exit status, or 128 + the signal that killed it.
    static func exitStatus(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// Runs a program, returning its exit status and combined stdout+stderr.
    static func run(_ path: String, _ args: [String], environment: [String: String] = [:]) -> (Int32, String) {
        let spawned: (pid: pid_t, output: Int32)
        switch spawnWithOutput(path, args, environment: environment) {
        case .success(let s): spawned = s
        case .failure(let e): return (-1, "\(e)")
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(spawned.output, $0.baseAddress, 4096) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        close(spawned.output)
        return (exitStatus(spawned.pid), String(decoding: out.filter { $0 != 13 }, as: UTF8.self))
    }

    /// Boots through the library API and captures the serial output.
    static func boot(_ image: BootImage, memory: UInt64 = 64 << 20, cpus: Int = 1, cmdline: String = "",
                     modules: [BootModule] = [], timeout: Duration = .seconds(120)) throws -> (ExitReason, String, Machine) {
        let capture = SerialCapture()
        var c = MachineConfiguration()
        c.memoryBytes = memory
        c.cpuCount = cpus
        c.cmdline = cmdline
        c.modules = modules
        c.timeout = timeout
        c.serialOutput = .callback { capture.append($0) }
        let vm = try VirtualMachine(image: image, configuration: c)
        let reason = vm.run()
        return (reason, capture.text, vm.machine)
    }

    static func writeFile(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        bytes.withUnsafeBytes { _ = write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    static func tempPath(_ name: String) -> String { "/tmp/minivisor-it-\(getpid())-\(name)" }

    /// A multiboot image (a.out kludge) whose 32-bit code is `code`, loaded at 1 MiB.
    static func multibootBlob(_ code: [UInt8]) -> [UInt8] { MultibootHeader.aoutImage(code: code).bytes }
}

extension Support {
    /// Starts `/bin/sh -c command` without waiting; returns its pid (for `waitFor`).
    static func spawnShell(_ command: String) -> pid_t {
        let parts: [String] = ["/bin/sh", "-c", command]
        let argv = parts.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/bin/sh", &actions, nil, argv, environ)
        posix_spawn_file_actions_destroy(&actions)
        return rc == 0 ? pid : -1
    }

    /// The exit status of `pid` (128 + signal when killed).
    static func waitFor(_ pid: pid_t) -> Int32 {
        guard pid > 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }
}

extension Support {
    /// This process's environment with `extra` put first ("NAME=value" strings for posix_spawn).
    static func environment(adding extra: [String: String]) -> [String] {
        var env = extra.map { "\($0.key)=\($0.value)" }
        var e = environ
        while let p = e.pointee { env.append(String(cString: p)); e += 1 }
        return env
    }

    /// A file's contents as text ("" when it cannot be read).
    static func readFile(_ path: String) -> String { String(decoding: readBytes(path), as: UTF8.self) }

    /// A file's bytes ([] when it cannot be read).
    static func readBytes(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }
}
