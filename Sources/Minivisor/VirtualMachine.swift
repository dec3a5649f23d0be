@_exported import KVM
@_exported import Machine
@_exported import SoftGPU
@_exported import VGPU
import Logging
import Synchronization

/// Options for the mediated vGPU.
public struct VGPUOptions: Sendable {
    /// The physical GPU to take a vGPU from; nil uses `GPUHost.shared` (one per process).
    public var host: GPUHost?
    /// Where the screenshot port (0xf5) and the end of the VM write the scanout as PNG; nil = nowhere.
    /// Checked when the VM is built (`OutputFiles.check`), written only when a screenshot is taken.
    public var screenshotPath: String?
    /// Virtual vblank rate.
    public var refreshRate: Double = 60
    /// The vGPU's type: its graphics-memory slices and scheduling weight.
    public var type: VGPUType = .default
    public init(host: GPUHost? = nil, screenshotPath: String? = nil, type: VGPUType = .default) {
        self.host = host
        self.screenshotPath = screenshotPath
        self.type = type
    }
}

extension GPUHost {
    /// The process's default physical GPU, created on first use.
    public static let shared = GPUHost()
}

/// The library API: build a VM from an image and a configuration, run it, get the reason it ended.
///
///     var config = MachineConfiguration()
///     config.memoryBytes = 64 << 20
///     config.serialOutput = .none
///     let vm = try VirtualMachine(image: .file("Guests/build/hello.elf"), configuration: config)
///     let reason = vm.run()          // blocks; vCPUs run on their own OS threads
///     print(reason.exitStatus)
///
/// Files: `init` checks every output (serial file, screenshot) against the inputs (image, modules, KVM
/// device) and each other before anything is opened, and throws `OutputError` for an output that is an
/// input, a directory, in a missing or unwritable directory, or of a kind it cannot be. Outputs are
/// created or truncated only once the VM is built: by `openOutputs()` (or `run()`), and screenshots when
/// they are taken.
///
/// Threads and ownership: `run()` blocks the calling thread (the monitor); `stop(_:)` may be called from
/// any thread. Screenshot failures are recorded in `State` behind one Mutex.
public final class VirtualMachine: Sendable {
    public let machine: Machine
    /// The vGPU, when the VM has one.
    public let vgpu: VGPU?
    let screenshotPath: String?
    let logger: Logger
    /// Screenshot failures: the guest asks for screenshots (port 0xf5), so these lines are rate-limited.
    let screenshotLog: RateLimitedLog
    /// What outputs must never be.
    let inputs: [InputFile]

    private struct State {
        var screenshotError: PNGWriter.WriteError?
    }
    private let state = Mutex(State())

    public init(image: BootImage, configuration: MachineConfiguration, vgpu options: VGPUOptions? = nil,
                logger: Logger = Logger(label: "minivisor")) throws {
        let inputs = configuration.inputFiles(image: image)
        var outputs = configuration.outputFiles
        if let p = options?.screenshotPath { outputs.append(OutputFile(.screenshot, p)) }
        try OutputFiles.check(outputs: outputs, inputs: inputs)
        self.inputs = inputs
        machine = try Machine(configuration: configuration, image: image, logger: logger)
        self.logger = logger
        let screenshotLog = RateLimitedLog(logger: logger, source: "screenshot")
        self.screenshotLog = screenshotLog
        screenshotPath = options?.screenshotPath
        if let o = options {
            let v = try VGPU(context: machine, host: o.host ?? GPUHost.shared, type: o.type, refreshRate: o.refreshRate, logger: logger)
            vgpu = v
            let path = o.screenshotPath
            try machine.pioBus.register(ScreenshotPort { [weak v] in
                guard let v, let path else { return }
                do { try PNGWriter.write(v.scanout(), to: path, refusing: inputs) } catch {
                    screenshotLog.log(.warning, "write failure", "\(error)")
                }
            }, base: ScreenshotPort.port, size: 1, name: "screenshot")
        } else {
            vgpu = nil
        }
    }

    deinit { vgpu?.shutdown() }

    /// Creates or truncates the output files (the serial file) now, without blocking: a FIFO without a
    /// reader is refused. `run()` does this itself if it was not done; call it first to tell such a
    /// failure (`OutputError`, a configuration error) from the guest's own ending.
    public func openOutputs() throws(OutputError) {
        try machine.serial.openOutput(refusing: inputs)
    }

    /// Runs until the guest ends. Call once. With a vGPU and a screenshot path, the final scanout is saved
    /// (when the display is on; a failure is in `screenshotError`) and the vGPU is released.
    public func run() -> ExitReason {
        do { try openOutputs() } catch { return .hostError("\(error)") }
        return finish(machine.run())
    }

    private func finish(_ reason: ExitReason) -> ExitReason {
        machine.serial.flushOutput()
        if let v = vgpu {
            if let path = screenshotPath {
                let image = v.scanout()
                if image.width > 0 {
                    do { try PNGWriter.write(image, to: path, refusing: inputs) } catch {
                        state.withLock { $0.screenshotError = error }
                    }
                }
            }
            v.shutdown()
        }
        screenshotLog.flush()
        return reason
    }

    /// Why the screenshot at the end of `run()` could not be written; nil when it was written or not taken.
    public var screenshotError: PNGWriter.WriteError? { state.withLock { $0.screenshotError } }

    /// Ends the VM from another thread.
    public func stop(_ reason: ExitReason = .powerOff) { machine.requestStop(reason) }

    // MARK: lifecycle: run in the background, pause, inspect, change, resume

    /// Starts the vCPUs (stopped at the entry state when `paused`) and returns; `wait()` then blocks
    /// until the guest ends. `run()` is `start()` + `wait()`.
    public func start(paused: Bool = false) throws {
        try openOutputs()
        try machine.start(paused: paused)
    }

    /// Blocks until the guest ends (after `start()`); does what `run()` does at the end.
    public func wait() -> ExitReason { finish(machine.wait()) }

    /// created, running, paused or stopped.
    public var runState: RunState { machine.runState }

    /// Stops every vCPU at an instruction boundary; returns when all have stopped.
    public func pause() throws { try machine.pause() }

    /// Continues every vCPU exactly where it stopped.
    public func resume() throws { try machine.resume() }

    /// The full state of vCPU `index` (registers, special registers, FPU, MSRs, LAPIC, events, MP state)
    /// while paused.
    public func vcpuState(_ index: Int) throws -> VCPUState { try machine.vcpuState(index) }

    /// Writes the state of vCPU `index` while paused; it continues from there on `resume()`.
    public func setVCPUState(_ index: Int, _ state: VCPUState) throws { try machine.setVCPUState(index, state) }

    /// Boots `image`, capturing everything the guest writes to the serial port.
    public static func runCapturingSerial(image: BootImage, configuration: MachineConfiguration = MachineConfiguration(),
                                          vgpu: VGPUOptions? = nil,
                                          logger: Logger = Logger(label: "minivisor")) throws -> (reason: ExitReason, serial: String) {
        let buffer = SerialCapture()
        var config = configuration
        config.serialOutput = .callback { buffer.append($0) }
        let vm = try VirtualMachine(image: image, configuration: config, vgpu: vgpu, logger: logger)
        let reason = vm.run()
        return (reason, buffer.text)
    }
}

/// True for the first caller only. Any thread.
final class OnceFlag: Sendable {
    private let done = Atomic<Bool>(false)
    func first() -> Bool { !done.exchange(true, ordering: .relaxed) }
}

/// Thread-safe accumulation of serial bytes.
public final class SerialCapture: Sendable {
    private let bytes = Mutex<[UInt8]>([])
    public init() {}
    public func append(_ b: UInt8) { bytes.withLock { $0.append(b) } }
    /// The captured output with "\r\n" folded to "\n".
    public var text: String {
        String(decoding: bytes.withLock { $0 }.filter { $0 != 13 }, as: UTF8.self)
    }
}
