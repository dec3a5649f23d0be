@_exported import KVM
@_exported import Machine
@_exported import SoftGPU
@_exported import VGPU
@_exported import VNC
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
    /// Where the vGPU records its scheduling events (turns, rejections, resets, hangs); nil: nowhere unless
    /// `tracePath` is set. `VMGroup` gives its VMs one trace.
    public var trace: GPUTrace?
    /// Where `VirtualMachine` writes the trace (docs/tracing.md) when the VM ends (a new `GPUTrace` when
    /// `trace` is nil); checked like the other outputs when the VM is built.
    public var tracePath: String?
    public init(host: GPUHost? = nil, screenshotPath: String? = nil, type: VGPUType = .default) {
        self.host = host
        self.screenshotPath = screenshotPath
        self.type = type
    }
}

/// Options for the bochs-display (`BochsDisplay`, docs/bochs-display.md).
public struct BochsOptions: Sendable {
    /// Where the screenshot port (0xf5) and the end of the VM write the visible mode as PNG; nil = nowhere.
    public var screenshotPath: String?
    /// BAR0's size: a power of two from 4 MiB to 256 MiB.
    public var framebufferBytes: UInt64 = BochsDisplay.defaultFramebufferBytes
    public init(screenshotPath: String? = nil) { self.screenshotPath = screenshotPath }
}

/// Options for serving the VM's display over VNC.
public struct VNCOptions: Sendable {
    /// An IPv4 address to listen on (loopback by default: there is no authentication).
    public var host: String
    /// 0: the first free port from 5900.
    public var port: Int
    public init(host: String = "127.0.0.1", port: Int) { self.host = host; self.port = port }
}

/// A display set-up the library refuses.
public enum DisplayConfigurationError: Error, Equatable, CustomStringConvertible, Sendable {
    case twoDisplays
    case vncWithoutDisplay
    public var description: String {
        switch self {
        case .twoDisplays: return "a VM has one display: give either the vGPU or the bochs display"
        case .vncWithoutDisplay: return "VNC needs a display to serve: add the bochs display or the vGPU"
        }
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
/// any thread. Screenshot failures are recorded in `State` behind one Mutex. With `vnc`, the VNC server's
/// own thread (see `VNCServer`) serves the display from `run()`/`start()` until the VM ends; it reads the
/// display through `display` and types into the machine's i8042 (`Machine.keyboard`).
public final class VirtualMachine: Sendable {
    public let machine: Machine
    /// The vGPU, when the VM has one.
    public let vgpu: VGPU?
    /// The bochs-display, when the VM has one.
    public let bochs: BochsDisplay?
    /// The VNC server, when the display is served (its `port` is the one it listens on).
    public let vnc: VNCServer?
    /// The picture of the VM's display (the bochs display's or the vGPU's), for screenshots and VNC.
    let display: (@Sendable () -> Image)?
    let screenshotPath: String?
    /// Where the vGPU's trace is written when the VM ends.
    let tracePath: String?
    let logger: Logger
    /// Screenshot failures: the guest asks for screenshots (port 0xf5), so these lines are rate-limited.
    let screenshotLog: RateLimitedLog
    /// What outputs must never be.
    let inputs: [InputFile]

    private struct State {
        var screenshotError: PNGWriter.WriteError?
        var traceError: OutputError?
    }
    private let state = Mutex(State())

    /// Builds the VM with at most one display (`vgpu` or `bochs`) and, with `vnc`, a VNC server for it
    /// (listening from here on; serving from `run()`/`start()`). Throws `DisplayConfigurationError`,
    /// `VNCError`, and what the machine and devices throw.
    public init(image: BootImage, configuration: MachineConfiguration, vgpu options: VGPUOptions? = nil,
                bochs bochsOptions: BochsOptions? = nil, vnc vncOptions: VNCOptions? = nil,
                logger: Logger = Logger(label: "minivisor")) throws {
        if options != nil && bochsOptions != nil { throw DisplayConfigurationError.twoDisplays }
        if vncOptions != nil && options == nil && bochsOptions == nil { throw DisplayConfigurationError.vncWithoutDisplay }
        let inputs = configuration.inputFiles(image: image)
        var outputs = configuration.outputFiles
        if let p = options?.screenshotPath ?? bochsOptions?.screenshotPath { outputs.append(OutputFile(.screenshot, p)) }
        if let p = options?.tracePath { outputs.append(OutputFile(.trace, p)) }
        try OutputFiles.check(outputs: outputs, inputs: inputs)
        self.inputs = inputs
        machine = try Machine(configuration: configuration, image: image, logger: logger)
        self.logger = logger
        let screenshotLog = RateLimitedLog(logger: logger, source: "screenshot")
        self.screenshotLog = screenshotLog
        screenshotPath = options?.screenshotPath ?? bochsOptions?.screenshotPath
        tracePath = options?.tracePath
        let trace = options?.trace ?? (options?.tracePath != nil ? GPUTrace() : nil)
        if let o = options {
            let v = try VGPU(context: machine, host: o.host ?? GPUHost.shared, type: o.type, refreshRate: o.refreshRate,
                             trace: trace, logger: logger)
            vgpu = v
            bochs = nil
            display = { [weak v] in v?.scanout() ?? Image(width: 0, height: 0, pixels: []) }
        } else if let o = bochsOptions {
            let b = try BochsDisplay(context: machine, framebufferBytes: o.framebufferBytes, logger: logger)
            vgpu = nil
            bochs = b
            display = { [weak b] in
                guard let f = b?.scanout() else { return Image(width: 0, height: 0, pixels: []) }
                return Image(width: f.width, height: f.height, pixels: f.pixels)
            }
        } else {
            vgpu = nil
            bochs = nil
            display = nil
        }
        if let display {
            let path = screenshotPath, inputs = self.inputs
            try machine.pioBus.register(ScreenshotPort {
                guard let path else { return }
                let image = display()
                do { try PNGWriter.write(image, to: path, refusing: inputs) } catch {
                    screenshotLog.log(.warning, "write failure", "\(error)")
                }
            }, base: ScreenshotPort.port, size: 1, name: "screenshot")
        }
        if let o = vncOptions, let display {
            let keyboard = machine.keyboard
            vnc = try VNCServer(host: o.host, port: o.port, frame: {
                let i = display()
                return VNCFrame(width: i.width, height: i.height, pixels: i.pixels)
            }, key: { [weak keyboard] keysym, down in
                keyboard?.keyboardInput(KeyboardMap.set1(keysym: keysym, down: down))
            })
        } else {
            vnc = nil
        }
    }

    deinit {
        vnc?.stop()
        vgpu?.shutdown()
    }

    /// Starts serving the display over VNC (the VNC thread, under the machine's VNC seccomp filter).
    private func startVNC() throws {
        let machine = self.machine
        try vnc?.start { [weak machine] in machine?.enterSeccomp(.vnc, thread: "vnc") ?? false }
    }

    /// Creates or truncates the output files (the serial file) now, without blocking: a FIFO without a
    /// reader is refused. `run()` does this itself if it was not done; call it first to tell such a
    /// failure (`OutputError`, a configuration error) from the guest's own ending.
    public func openOutputs() throws(OutputError) {
        try machine.serial.openOutput(refusing: inputs)
    }

    /// Runs until the guest ends. Call once. With a display and a screenshot path, the final picture is
    /// saved (when the display is on; a failure is in `screenshotError`), the VNC server stops and the
    /// vGPU is released.
    public func run() -> ExitReason {
        do { try openOutputs(); try startVNC() } catch { return .hostError("\(error)") }
        return finish(machine.run())
    }

    private func finish(_ reason: ExitReason) -> ExitReason {
        machine.serial.flushOutput()
        vnc?.stop()
        if let display, let path = screenshotPath {
            let image = display()
            if image.width > 0 {
                do { try PNGWriter.write(image, to: path, refusing: inputs) } catch {
                    state.withLock { $0.screenshotError = error }
                }
            }
        }
        vgpu?.shutdown()
        if let path = tracePath, let trace = vgpu?.trace {
            do { try trace.write(to: path, refusing: inputs) } catch { state.withLock { $0.traceError = error } }
        }
        screenshotLog.flush()
        return reason
    }

    /// Why the trace (`VGPUOptions.tracePath`) could not be written at the end; nil when it was.
    public var traceError: OutputError? { state.withLock { $0.traceError } }

    /// Why the screenshot at the end of `run()` could not be written; nil when it was written or not taken.
    public var screenshotError: PNGWriter.WriteError? { state.withLock { $0.screenshotError } }

    /// Ends the VM from another thread.
    public func stop(_ reason: ExitReason = .powerOff) { machine.requestStop(reason) }

    // MARK: lifecycle: run in the background, pause, inspect, change, resume

    /// Starts the vCPUs (stopped at the entry state when `paused`) and returns; `wait()` then blocks
    /// until the guest ends. `run()` is `start()` + `wait()`.
    public func start(paused: Bool = false) throws {
        try openOutputs()
        try startVNC()
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
