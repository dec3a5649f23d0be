import Glibc
import Logging
import Minivisor
import MinivisorCommands

/// `minivisor run`: checks the files, builds the VM, opens the outputs, runs the guest and exits with
/// its status (README "Exit status").
func runVM(_ request: RunRequest) -> Never {
    if let error = request.checkFiles() { fail(error.message, status: error.status) }
    TerminationSignals.start(seccomp: request.seccomp)
    let level = request.logLevel
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = level
        return h
    }
    var config = request.configuration()
    if request.serial == .stdio { config.serialInputFromStdin = isatty(0) != 0 }
    let vm: VirtualMachine
    do {
        vm = try VirtualMachine(image: request.bootImage, configuration: config,
                                vgpu: request.vgpu ? VGPUOptions(screenshotPath: request.screenshot) : nil)
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
    } catch {
        fail("cannot create the VM: \(error)", status: CLIStatus.hostError)
    }
    TerminationSignals.register(vm)
    // The VM is built: only now are output files created or truncated.
    do { try vm.openOutputs() } catch { fail("\(error)", status: CLIStatus.usage) }
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
    if level <= .info && emulated.total > 0 {
        writeStderr("minivisor: emulated \(emulated.total) instructions the host's KVM could not: \(emulated.summary)\n")
    }
    if let error = vm.screenshotError {
        fail("\(error); exit status \(CLIStatus.hostError) instead of \(reason.exitStatus) (\(reason))", status: CLIStatus.hostError)
    }
    Glibc.exit(reason.exitStatus)
}
