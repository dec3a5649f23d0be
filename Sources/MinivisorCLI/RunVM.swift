import Glibc
import Logging
import Minivisor
import MinivisorCommands

/// `minivisor run`: checks the files, builds the VM, opens the outputs, runs the guest and exits with
/// its status (README "Exit status").
func runVM(_ request: RunRequest) -> Never {
    if request.configFile != nil { runGroup(request) }
    if let error = request.checkFiles() { fail(error.message, status: error.status) }
    TerminationSignals.start(seccomp: request.seccomp)
    bootstrapLogging(request.logLevel)
    if let k = request.gpuScheduler { GPUHost.shared.setScheduler(k) }
    if let ms = request.hangLimitMilliseconds { GPUHost.shared.hangLimit = .milliseconds(ms) }
    var vgpuOptions = VGPUOptions(screenshotPath: request.screenshot, type: request.vgpuType)
    vgpuOptions.tracePath = request.tracePath
    var config = request.configuration()
    // COM1 input: a terminal, or a pipe or file on stdin (not /dev/null or another device). A terminal
    // (in the foreground) is put in raw mode just before the guest starts, with the Ctrl-A escapes.
    let attachTerminal = request.serial == .stdio && ConsoleTerminal.canAttach
    if request.serial == .stdio {
        var st = stat()
        let kind = fstat(0, &st) == 0 ? st.st_mode & S_IFMT : 0
        config.serialInputFromStdin = isatty(0) != 0 || kind == S_IFIFO || kind == S_IFREG
        config.serialConsoleEscapes = attachTerminal
    }
    let vm: VirtualMachine
    do {
        vm = try VirtualMachine(image: request.bootImage, configuration: config,
                                vgpu: request.display == .vgpu ? vgpuOptions : nil,
                                bochs: request.display == .bochs ? BochsOptions(screenshotPath: request.screenshot) : nil,
                                vnc: request.vnc.map { VNCOptions(host: $0.host, port: $0.port) })
    } catch let e as KVMUnavailable {
        fail("\(e)", status: CLIStatus.usage)
    } catch let e as ImageError {
        fail("\(e)", status: CLIStatus.usage)
    } catch let e as ConfigurationError {
        fail("\(e)", status: CLIStatus.usage)
    } catch let e as OutputError {
        fail("\(e)", status: CLIStatus.usage)
    } catch let e as GPUHost.AllocationError {
        fail("\(e)", status: CLIStatus.usage)
    } catch let e as VNCError {
        fail("\(e)", status: CLIStatus.usage)
    } catch let e as DisplayConfigurationError {
        fail("\(e)", status: CLIStatus.usage)
    } catch {
        fail("cannot create the VM: \(error)", status: CLIStatus.hostError)
    }
    TerminationSignals.register(vm)
    for line in vm.machine.bootPlan?.log ?? [] { writeStderr("minivisor: \(line)\n") }
    if let v = vm.vgpu, let trace = v.trace { trace.nameVGPU(v.id, request.image.map { String($0.split(separator: "/").last ?? "") } ?? "demo") }
    if let server = vm.vnc { writeStderr("minivisor: VNC server listening on \(server.host):\(server.port)\n") }
    // The VM is built: only now are output files created or truncated.
    do { try vm.openOutputs() } catch { fail("\(error)", status: CLIStatus.usage) }
    // From here every exit path restores the terminal (ConsoleTerminal).
    if attachTerminal { ConsoleTerminal.attach() }
    let reason: ExitReason
    if let port = request.gdbPort {
        let stub: GDBStub
        do { stub = try GDBStub(machine: vm.machine, port: port) } catch { fail("\(error)", status: CLIStatus.usage) }
        writeStderr("minivisor: gdb stub listening on 127.0.0.1:\(stub.port)\(request.gdbWait ? ", guest stopped before its first instruction" : "")\n")
        stub.start()
        do { try vm.start(paused: request.gdbWait) } catch { fail("cannot start the VM: \(error)", status: CLIStatus.hostError) }
        reason = vm.wait()
        stub.finish()
    } else {
        reason = vm.run()
    }
    switch reason {
    case .powerOff, .debugExit: break
    case .timeout: writeStderr("minivisor: guest did not finish within \(request.timeoutSeconds ?? 0) s (--timeout)\n")
    default:
        writeStderr("minivisor: \(reason)\n")
        if let dump = reason.registerDump { writeStderr(dump + "\n") }
    }
    // --log-level info or lower: what minivisor's instruction emulator did for the host's KVM.
    let emulated = vm.machine.emulatedInstructions
    if request.logLevel <= .info && emulated.total > 0 {
        writeStderr("minivisor: emulated \(emulated.total) instructions the host's KVM could not: \(emulated.summary)\n")
    }
    if let error = vm.screenshotError {
        fail("\(error); exit status \(CLIStatus.hostError) instead of \(reason.exitStatus) (\(reason))", status: CLIStatus.hostError)
    }
    if let error = vm.traceError {
        fail("\(error); exit status \(CLIStatus.hostError) instead of \(reason.exitStatus) (\(reason))", status: CLIStatus.hostError)
    }
    Glibc.exit(reason.exitStatus)
}

/// `minivisor run --config FILE`: builds every VM the file describes (one GPU for their vGPUs), runs them
/// at once, prints one line per VM on stderr when all have ended, and exits with the status of the first
/// VM (in file order) whose status is not 0, or 0 (docs/config.md).
func runGroup(_ request: RunRequest) -> Never {
    let file: ConfigFile
    switch ConfigFile.load(path: request.configFile!) {
    case .failure(let e): fail(e.message, status: e.status)
    case .success(let f): file = f
    }
    if request.tracePath != nil && file.trace != nil {
        fail("--trace and the file's \"trace\" both name a trace: give one of them", status: CLIStatus.usage)
    }
    if request.hangLimitMilliseconds != nil && file.hangLimitMilliseconds != nil {
        fail("--hang-limit and the file's \"hang_limit_ms\" both set the limit: give one of them", status: CLIStatus.usage)
    }
    if let ms = request.hangLimitMilliseconds ?? file.hangLimitMilliseconds { GPUHost.shared.hangLimit = .milliseconds(ms) }
    if kvmDeviceProblem(request) { fail("MINIVISOR_KVM_DEVICE \(quoted(request.kvmDevicePath)) is not a character device: unset it or point it at /dev/kvm", status: CLIStatus.usage) }
    TerminationSignals.start(seccomp: request.seccomp)
    bootstrapLogging(request.logLevel)
    // --gpu-scheduler wins over the file's "gpu": {"scheduler": ...}.
    GPUHost.shared.setScheduler(request.gpuScheduler ?? file.scheduler ?? .default)
    let group: VMGroup
    do {
        group = try VMGroup(request.members(of: file), tracePath: request.tracePath ?? file.trace)
    } catch let e as VMGroup.GroupError {
        if case .vm(_, let underlying) = e, !isConfigurationError(underlying) {
            fail("cannot create the VMs: \(e)", status: CLIStatus.hostError)
        }
        fail("\(e)", status: CLIStatus.usage)
    } catch {
        fail("\(error)", status: CLIStatus.usage)   // OutputError: an output that is an input or another output
    }
    TerminationSignals.register(group.vms)
    let outcomes: [VMGroup.Outcome]
    do {
        try group.start()
        outcomes = group.wait()
    } catch {
        fail("\(error)", status: isConfigurationError(error) ? CLIStatus.usage : CLIStatus.hostError)
    }
    var status: Int32 = 0
    for o in outcomes {
        var line = "minivisor: VM \(o.name): exit status \(o.exitStatus) (\(o.reason))"
        if let e = o.screenshotError { line += "; \(e)" }
        writeStderr(line + "\n")
        if status == 0 { status = o.exitStatus }
    }
    if let e = group.traceError {
        writeStderr("minivisor: \(e); exit status \(CLIStatus.hostError)\n")
        status = CLIStatus.hostError
    }
    Glibc.exit(status)
}

/// Errors that are the user's to fix (status 2), as opposed to host failures (14).
private func isConfigurationError(_ e: any Error) -> Bool {
    if let g = e as? VMGroup.GroupError, case .vm(_, let u) = g { return isConfigurationError(u) }
    return e is KVMUnavailable || e is ImageError || e is ConfigurationError || e is OutputError
        || e is GPUHost.AllocationError || e is VMGroup.GroupError
}

private func kvmDeviceProblem(_ r: RunRequest) -> Bool {
    var st = stat()
    return stat(r.kvmDevicePath, &st) == 0 && (st.st_mode & S_IFMT) != S_IFCHR
}

/// Log lines go to stderr at `level` and above.
private func bootstrapLogging(_ level: Logger.Level) {
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = level
        return h
    }
}
