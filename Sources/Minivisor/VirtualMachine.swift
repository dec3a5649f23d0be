@_exported import KVM
@_exported import Machine
import Logging
import Synchronization

/// The library API: build a VM from an image and a configuration, run it, get the reason it ended.
///
///     var config = MachineConfiguration()
///     config.memoryBytes = 64 << 20
///     config.serialOutput = .none
///     let vm = try VirtualMachine(image: .file("Guests/build/hello.elf"), configuration: config)
///     let reason = vm.run()          // blocks; vCPUs run on their own OS threads
///     print(reason.exitStatus)
public final class VirtualMachine: Sendable {
    public let machine: Machine

    public init(image: BootImage, configuration: MachineConfiguration, logger: Logger = Logger(label: "minivisor")) throws {
        machine = try Machine(configuration: configuration, image: image, logger: logger)
    }

    /// Runs until the guest ends. Call once.
    public func run() -> ExitReason { machine.run() }

    /// Ends the VM from another thread.
    public func stop(_ reason: ExitReason = .powerOff) { machine.requestStop(reason) }

    /// Boots `image`, capturing everything the guest writes to the serial port.
    public static func runCapturingSerial(image: BootImage, configuration: MachineConfiguration = MachineConfiguration(),
                                          logger: Logger = Logger(label: "minivisor")) throws -> (reason: ExitReason, serial: String) {
        let buffer = SerialCapture()
        var config = configuration
        config.serialOutput = .callback { buffer.append($0) }
        let vm = try VirtualMachine(image: image, configuration: config, logger: logger)
        let reason = vm.run()
        return (reason, buffer.text)
    }
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
