import Logging
import Synchronization

/// Several VMs in one process, their vGPUs sharing one physical GPU: what `minivisor run --config` runs.
///
///     let group = try VMGroup([
///         .init(name: "a", image: .file("Guests/build/vgpu_fill.elf"), vgpu: VGPUOptions(type: .small)),
///         .init(name: "b", image: .file("Guests/build/hello.elf")),
///     ])
///     for r in group.run() { print(r.name, r.reason.exitStatus) }
///
/// Every output of every VM (serial files, screenshots) is checked against every input of every VM and
/// against the other outputs before any VM is built, so two VMs can never write one file. A VM that cannot
/// be built (an image error, no room on the GPU) fails the whole group with `VMGroup.GroupError`, naming
/// the VM; the VMs built before it are torn down.
///
/// With `tracePath`, the vGPUs record into one `GPUTrace` (their tracks named after the VMs), written
/// there when every VM has ended (docs/tracing.md).
///
/// Threads and ownership: `run()` (or `start()` then `wait()`) blocks the calling thread, which waits for
/// the VMs one after another (each VM's vCPUs and devices run on their own threads meanwhile); `stop(_:)`
/// may be called from any thread. The group's only mutable state is the trace's write error (one Mutex).
public final class VMGroup: Sendable {
    /// One VM of the group.
    public struct Member: Sendable {
        public var name: String
        public var image: BootImage
        public var configuration: MachineConfiguration
        /// nil: no vGPU. Its `host` is replaced by the group's GPU.
        public var vgpu: VGPUOptions?
        public init(name: String, image: BootImage, configuration: MachineConfiguration = MachineConfiguration(),
                    vgpu: VGPUOptions? = nil) {
            self.name = name
            self.image = image
            self.configuration = configuration
            self.vgpu = vgpu
        }
    }

    /// How one VM ended.
    public struct Outcome: Sendable {
        public let name: String
        public let reason: ExitReason
        /// Set when the final screenshot could not be written (the CLI then reports status 14 for it).
        public let screenshotError: PNGWriter.WriteError?
        /// The VM's exit status: its reason's, or 14 (host error) when its screenshot failed.
        public var exitStatus: Int32 { screenshotError == nil ? reason.exitStatus : 14 }
    }

    /// Why the group could not be built or started.
    public enum GroupError: Error, CustomStringConvertible {
        case unnamed(index: Int)
        case duplicateName(String)
        /// VM `name` could not be built or started: `underlying` says why (an `ImageError`, a
        /// `GPUHost.AllocationError`, ...).
        case vm(name: String, underlying: any Error)

        public var description: String {
            switch self {
            case .unnamed(let i): return "VM \(i + 1) has no name: give every VM a name"
            case .duplicateName(let n): return "two VMs are called \(quoted(n)): give each VM its own name"
            case let .vm(name, underlying): return "VM \(quoted(name)): \(underlying)"
            }
        }
    }

    public let names: [String]
    /// Every VM's inputs (outputs must never be one of them).
    let allInputs: [InputFile]
    public let vms: [VirtualMachine]
    /// The GPU the members' vGPUs share.
    public let gpu: GPUHost
    /// The scheduling events of every member's vGPU (with `tracePath`).
    public let trace: GPUTrace?
    let tracePath: String?
    private let traceFailure = Mutex<OutputError?>(nil)

    /// Builds every VM (nothing runs yet). Names must be unique and non-empty. With `tracePath`, the GPU's
    /// timeline is written there (Chrome trace event JSON) once every VM has ended.
    public init(_ members: [Member], gpu: GPUHost = .shared, tracePath: String? = nil,
                logger: Logger = Logger(label: "minivisor")) throws {
        var seen = Set<String>()
        for (i, m) in members.enumerated() {
            guard !m.name.isEmpty else { throw GroupError.unnamed(index: i) }
            guard seen.insert(m.name).inserted else { throw GroupError.duplicateName(m.name) }
        }
        // Outputs of all the VMs against the inputs of all the VMs and against each other.
        var inputs: [InputFile] = []
        var outputs: [OutputFile] = []
        for m in members {
            inputs += m.configuration.inputFiles(image: m.image)
            outputs += m.configuration.outputFiles
            if let p = m.vgpu?.screenshotPath { outputs.append(OutputFile(.screenshot, p)) }
        }
        if let p = tracePath { outputs.append(OutputFile(.trace, p)) }
        try OutputFiles.check(outputs: outputs, inputs: inputs)
        self.gpu = gpu
        self.tracePath = tracePath
        let trace = tracePath.map { _ in GPUTrace() }
        self.trace = trace
        allInputs = inputs
        names = members.map(\.name)
        var built: [VirtualMachine] = []
        for m in members {
            var options = m.vgpu
            options?.host = gpu
            options?.trace = trace
            options?.tracePath = nil   // the group writes the one trace
            do {
                let vm = try VirtualMachine(image: m.image, configuration: m.configuration, vgpu: options, logger: logger)
                if let trace, let v = vm.vgpu { trace.nameVGPU(v.id, m.name) }
                built.append(vm)
            } catch {
                for vm in built { vm.vgpu?.shutdown() }
                throw GroupError.vm(name: m.name, underlying: error)
            }
        }
        vms = built
    }

    /// Opens every VM's outputs, then starts them all. On a failure the VMs already started are stopped.
    public func start() throws {
        for vm in vms { try vm.openOutputs() }
        for (i, vm) in vms.enumerated() {
            do { try vm.start() } catch {
                for started in vms[..<i] { started.stop(.hostError("another VM of the group could not start")) }
                for started in vms[..<i] { _ = started.wait() }
                throw GroupError.vm(name: names[i], underlying: error)
            }
        }
    }

    /// Blocks until every VM has ended; the outcomes in the members' order. Then writes the trace.
    public func wait() -> [Outcome] {
        let outcomes = zip(names, vms).map { name, vm in
            let reason = vm.wait()
            return Outcome(name: name, reason: reason, screenshotError: vm.screenshotError)
        }
        if let trace, let path = tracePath {
            do { try trace.write(to: path, refusing: allInputs) } catch { traceFailure.withLock { $0 = error } }
        }
        return outcomes
    }

    /// Why the trace could not be written when the VMs ended; nil when it was (or none was asked for).
    public var traceError: OutputError? { traceFailure.withLock { $0 } }

    /// `start()` then `wait()`; a VM that cannot start ends the group with every VM's outcome a host error.
    public func run() -> [Outcome] {
        do { try start() } catch {
            return names.map { Outcome(name: $0, reason: .hostError("\(error)"), screenshotError: nil) }
        }
        return wait()
    }

    /// Ends every VM (from any thread).
    public func stop(_ reason: ExitReason = .powerOff) {
        for vm in vms { vm.stop(reason) }
    }
}
