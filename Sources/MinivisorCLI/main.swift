import Glibc
import MinivisorCommands

// The `minivisor` executable: a thin entry point. The command line is parsed and checked by
// MinivisorCommands (`parseArguments`); RunVM.swift and Bench.swift do the work.

// First, before anything opens a file: descriptors 0, 1 and 2 must be open, or /dev/kvm, the VM and the
// guest-RAM memfd would take their numbers and serial output and log lines would land in them.
ensureStandardDescriptors()
// A closed pipe or a file-size limit must not kill minivisor: writes fail with EPIPE/EFBIG instead, are
// reported once, and the guest's status survives.
signal(SIGPIPE, SIG_IGN)
signal(SIGXFSZ, SIG_IGN)

func bytes(_ p: UnsafePointer<CChar>) -> [UInt8] { Array(UnsafeRawBufferPointer(start: p, count: strlen(p))) }
let kvmDevice = getenv("MINIVISOR_KVM_DEVICE").map { bytes($0) }
let rawArguments = (1..<Int(CommandLine.argc)).compactMap { CommandLine.unsafeArgv[$0].map { bytes($0) } }
if let error = checkEncoding(arguments: rawArguments, kvmDevice: kvmDevice) { fail(error.message, status: error.status) }

var environment: [String: String] = [:]
if let dev = kvmDevice { environment["MINIVISOR_KVM_DEVICE"] = String(decoding: dev, as: UTF8.self) }

switch parseArguments(Array(CommandLine.arguments.dropFirst()), environment: environment) {
case .failure(let error):
    fail(error.message, status: error.status)
case .success(.help(let text)):
    writeAll(1, text.hasSuffix("\n") ? text : text + "\n")
    Glibc.exit(0)
case .success(.run(let request)):
    runVM(request)
case .success(.bench(let request)):
    runBench(request)
}
