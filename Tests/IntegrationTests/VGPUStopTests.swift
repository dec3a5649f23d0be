import Dispatch
import Glibc
import Minivisor
import Synchronization
import Testing

/// Serial output with the time a marker line was completed.
final class TimedSerial: Sendable {
    let marker: String
    private let state = Mutex<(bytes: [UInt8], seen: ContinuousClock.Instant?)>(([], nil))
    let onMarker: (@Sendable () -> Void)?

    init(marker: String, onMarker: (@Sendable () -> Void)? = nil) {
        self.marker = marker
        self.onMarker = onMarker
    }

    func append(_ b: UInt8) {
        let now = ContinuousClock.now
        let first = state.withLock { s -> Bool in
            s.bytes.append(b)
            guard b == 10, s.seen == nil, String(decoding: s.bytes, as: UTF8.self).contains(marker) else { return false }
            s.seen = now
            return true
        }
        if first { onMarker?() }
    }

    var seen: ContinuousClock.Instant? { state.withLock { $0.seen } }
    var text: String { String(decoding: state.withLock { $0.bytes }.filter { $0 != 13 }, as: UTF8.self) }
}

func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 }

/// Long GPU work must not keep a VM (or the process) alive: power-off, --timeout and ending the VM from the
/// host abort the vGPU's work at the next command boundary. The guest (Guests/vgpu_stop.c) queues 64 SGEMMs
/// of 1024^3 (about a minute of work for a debug build of the software GPU) and waits until they compute.
@Suite("vGPU work is stoppable (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct VGPUStopTests {
    func config(_ serial: TimedSerial, mode: String, timeout: Duration = .seconds(120)) -> MachineConfiguration {
        var c = MachineConfiguration()
        c.memoryBytes = 128 << 20
        c.timeout = timeout
        c.cmdline = "mode=\(mode)"
        c.serialOutput = .callback { serial.append($0) }
        return c
    }

    @Test func powerOffWithQueuedSGEMMsEndsTheVMPromptly() throws {
        let serial = TimedSerial(marker: "vgpu stop: powering off")
        let vm = try VirtualMachine(image: .file(try Support.guest("vgpu_stop")), configuration: config(serial, mode: "poweroff"),
                                    vgpu: VGPUOptions(host: GPUHost()))
        let reason = vm.run()
        let end = ContinuousClock.now
        #expect(reason == .powerOff, "\(serial.text)")
        guard let off = serial.seen else {
            Issue.record("the guest never powered off with work queued: \(serial.text)")
            return
        }
        let d = end - off
        print("vgpu_stop: guest power-off to run() returning with 64 SGEMMs 1024^3 queued: \(ms(d)) ms")
        #expect(ms(d) < 2000, "run() returned \(ms(d)) ms after the power-off")
        #expect(vm.vgpu!.host.gpu.engine(.rcs).isIdle)
    }

    @Test func endingTheVMFromTheHostAbortsItsGPUWork() throws {
        // Teardown from another thread (what --timeout does, through the same stop path).
        let box = Mutex<VirtualMachine?>(nil)
        let stoppedAt = Mutex<ContinuousClock.Instant?>(nil)
        let serial = TimedSerial(marker: "vgpu stop: spinning") {
            stoppedAt.withLock { $0 = ContinuousClock.now }
            box.withLock { $0 }?.stop(.timeout)
        }
        let vm = try VirtualMachine(image: .file(try Support.guest("vgpu_stop")), configuration: config(serial, mode: "spin"),
                                    vgpu: VGPUOptions(host: GPUHost()))
        box.withLock { $0 = vm }
        let reason = vm.run()
        let end = ContinuousClock.now
        box.withLock { $0 = nil }
        #expect(reason == .timeout, "\(serial.text)")
        guard let t = stoppedAt.withLock({ $0 }) else {
            Issue.record("the guest never queued its work: \(serial.text)")
            return
        }
        print("vgpu_stop: stop() to run() returning with 64 SGEMMs 1024^3 queued: \(ms(end - t)) ms")
        #expect(ms(end - t) < 2000)
    }

    @Test func timeoutWithQueuedSGEMMsEndsTheVMPromptly() throws {
        let serial = TimedSerial(marker: "vgpu stop: spinning")
        let timeout = Duration.seconds(8)
        let vm = try VirtualMachine(image: .file(try Support.guest("vgpu_stop")),
                                    configuration: config(serial, mode: "spin", timeout: timeout),
                                    vgpu: VGPUOptions(host: GPUHost()))
        let start = ContinuousClock.now
        let reason = vm.run()
        let late = ContinuousClock.now - (start + timeout)
        #expect(reason == .timeout)
        #expect(serial.seen != nil, "the guest did not queue its work within the timeout: \(serial.text)")
        print("vgpu_stop: --timeout 8 s with 64 SGEMMs 1024^3 queued: run() returned \(ms(late)) ms after the deadline")
        #expect(ms(late) < 2000)
    }

    @Test func resetOfTheBusyEngineAndTheDocumentedRecovery() throws {
        let serial = TimedSerial(marker: "vgpu stop reset ok")
        let vm = try VirtualMachine(image: .file(try Support.guest("vgpu_stop")), configuration: config(serial, mode: "reset"),
                                    vgpu: VGPUOptions(host: GPUHost()))
        let reason = vm.run()
        #expect(reason == .powerOff, "\(serial.text)")
        #expect(serial.seen != nil, "\(serial.text)")
        for line in serial.text.split(separator: "\n") where line.contains("RESET write returned") { print("vgpu_stop: \(line)") }
    }

    /// Runs the CLI, returning its status, output, and the times the marker line arrived and the process ended.
    func runCLI(_ args: [String], marker: String) -> (Int32, String, ContinuousClock.Instant?, ContinuousClock.Instant) {
        let spawned: (pid: pid_t, output: Int32)
        switch Support.spawnWithOutput(Support.minivisor, args) {
        case .success(let s): spawned = s
        case .failure(let e): return (-1, "\(e)", nil, .now)
        }
        var out: [UInt8] = []
        var seen: ContinuousClock.Instant? = nil
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(spawned.output, $0.baseAddress, 4096) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            out += buf[0..<n]
            if seen == nil && String(decoding: out, as: UTF8.self).contains(marker) { seen = .now }
        }
        close(spawned.output)
        let code = Support.exitStatus(spawned.pid)
        let end = ContinuousClock.now
        return (code, String(decoding: out.filter { $0 != 13 }, as: UTF8.self), seen, end)
    }

    @Test func theCLIExitsPromptlyAfterPowerOffAndTimeout() throws {
        let image = try Support.guest("vgpu_stop")
        let (status, out, seen, end) = runCLI(["run", "--vgpu", "--memory", "128M", "--cmdline", "mode=poweroff", image],
                                              marker: "vgpu stop: powering off with GPU work queued")
        #expect(status == 0, "\(out)")
        if let seen {
            print("minivisor run --vgpu vgpu_stop.elf: guest power-off to process exit: \(ms(end - seen)) ms")
            #expect(ms(end - seen) < 2000)
        } else {
            Issue.record("no power-off marker: \(out)")
        }
        let start = ContinuousClock.now
        let (tstatus, tout, tseen, tend) = runCLI(["run", "--vgpu", "--memory", "128M", "--timeout", "8", "--cmdline", "mode=spin", image],
                                                  marker: "vgpu stop: spinning with GPU work queued")
        #expect(tstatus == 12, "\(tout)")
        #expect(tseen != nil, "the guest did not queue its work within the timeout: \(tout)")
        let overshoot = ms(tend - start) - 8000
        print("minivisor run --vgpu --timeout 8 vgpu_stop.elf: process exit \(overshoot) ms after spawn + 8 s (start-up included)")
        #expect(overshoot < 2000)
    }
}
