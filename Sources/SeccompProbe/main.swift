// Testing only (IntegrationTests/SeccompTests): proves that a system call outside a thread's seccomp
// allow list ends the process with one clear line and status 16, not silently.
//
//     SeccompProbe [--no-seccomp] [--from vcpu|monitor]
//
// Boots a tiny real-mode guest that writes to port 0x99 and then debug-exits with 0x21 (status 67).
// The port's handler, on the vCPU thread, calls socket(2), which no filter allows; with `--from monitor`
// the handler does nothing and the main thread calls socket(2) after `run()` instead. The process is
// configured like the CLI: vCPU, device and main threads filtered, or none with --no-seccomp.
import Glibc
import Minivisor

/// Makes a system call no minivisor filter allows, and says so when it returns.
func forbiddenCall(from thread: String) {
    let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
    if fd >= 0 { close(fd) }
    let line = "probe: socket(2) on the \(thread) thread returned \(fd >= 0 ? "a descriptor" : "an error")\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
}

final class ForbiddenCallPort: BusDevice {
    let active: Bool
    init(active: Bool) { self.active = active }
    func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(UInt64.max) }
    func write(offset: UInt64, data: UnsafeRawBufferPointer) { if active { forbiddenCall(from: "vcpu") } }
}

let args = CommandLine.arguments.dropFirst()
let noSeccomp = args.contains("--no-seccomp")
let fromMonitor = args.firstIndex(of: "--from").map { args.index(after: $0) }.flatMap { $0 < args.endIndex ? args[$0] : nil } == "monitor"

var config = MachineConfiguration()
config.memoryBytes = 16 << 20
config.serialOutput = .none
config.timeout = .seconds(60)
config.seccomp = noSeccomp ? .off : .vmThreadsAndMonitor
// mov al, 0x21; out 0x99, al; out 0xf4, al; jmp $
let code: [UInt8] = [0xb0, 0x21, 0xe6, 0x99, 0xe6, 0xf4, 0xeb, 0xfe]
do {
    let vm = try VirtualMachine(image: .realModeBlob(code, loadAddress: 0x7c00), configuration: config)
    try vm.machine.pioBus.register(ForbiddenCallPort(active: !fromMonitor), base: 0x99, size: 1, name: "forbidden-call")
    let reason = vm.run()
    if fromMonitor { forbiddenCall(from: "monitor") }
    exit(reason.exitStatus)
} catch {
    let line = "probe: \(error)\n"
    _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    exit(14)
}
