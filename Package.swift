// swift-tools-version:6.0
import PackageDescription

// Layers, lowest first. A target only depends on targets above it in this list.
//   CKVM, CLibelf, CSeccomp, CBLAS, Firmware (C)  ->  KVM  ->  Machine  ->  Minivisor  ->  MinivisorCommands  ->  MinivisorCLI
//   SoftGPU (the software "physical" GPU) knows nothing of KVM, guests or the mediator.
//   VGPU (the mediator: vGPU PCI device, GTT shadow, command scanner) sits on Machine + SoftGPU.
// CKVMBaseline + MinivisorBench hold the benchmark (a minimal C KVM loop as the baseline).
let package = Package(
    name: "minivisor",
    products: [
        .library(name: "Minivisor", targets: ["Minivisor"]),
        .executable(name: "minivisor", targets: ["MinivisorCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        // C shims: ioctl numbers and kvm_run accessors that do not import into Swift.
        .target(name: "CKVM"),
        .systemLibrary(name: "CLibelf", pkgConfig: "libelf",
                       providers: [.apt(["libelf-dev"])]),
        // The decompressors for Linux bzImage payloads (XZ, gzip, zstd), linked directly (liblzma, zlib, libzstd).
        .systemLibrary(name: "CCompression",
                       providers: [.apt(["liblzma-dev", "zlib1g-dev", "libzstd-dev"])]),
        .systemLibrary(name: "CLibpng", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CLibvncserver", pkgConfig: "libvncserver",
                       providers: [.apt(["libvncserver-dev"])]),
        // libseccomp via pkg-config, and the per-thread filter loader with its SIGSYS reporter.
        .systemLibrary(name: "CLibseccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),
        .target(name: "CSeccomp", dependencies: ["CLibseccomp"]),
        // Boot code placed into guests (AP trampoline, built-in demo guest), assembled by the build.
        .target(name: "Firmware", path: "Firmware"),
        // x86 decoding through Zydis (Debian's libzydis-dev has no pkg-config file) and guest-memory atomics,
        // for the instruction emulator.
        .target(name: "CX86", linkerSettings: [.linkedLibrary("Zydis")]),

        // Typed KVM layer: system, VM, vCPU, exits.
        .target(name: "KVM", dependencies: [
            "CKVM",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // The machine: guest memory, buses, legacy devices, PCI, boot protocols, vCPU threads.
        .target(name: "Machine", dependencies: [
            "KVM", "CKVM", "CLibelf", "CCompression", "CSeccomp", "Firmware", "CX86",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // OpenBLAS (Debian's libopenblas0, loaded at run time) for SoftGPU's SGEMM.
        .target(name: "CBLAS"),
        // The software "physical" GPU: GM + GTT, engines, command set, display. No KVM knowledge.
        .target(name: "SoftGPU", dependencies: ["CBLAS"]),
        // The mediator: the vGPU PCI device the guest sees, in front of the shared SoftGPU.
        .target(name: "VGPU", dependencies: [
            "Machine", "KVM", "SoftGPU", "CLibpng",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // A VNC server (libvncserver) for a display source and a key sink; knows nothing of VMs.
        .target(name: "VNC", dependencies: ["CLibvncserver"]),
        // Library API for programs and integration tests.
        .target(name: "Minivisor", dependencies: [
            "Machine", "VGPU", "SoftGPU", "VNC",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Benchmarks: minivisor next to a minimal C KVM loop, in one run.
        .target(name: "CKVMBaseline"),
        .target(name: "MinivisorBench", dependencies: ["Minivisor", "Machine", "KVM", "CKVMBaseline", "SoftGPU", "VGPU"]),
        // The command line: grammar, parsing and every check that needs no VM (also for fuzzing).
        .target(name: "MinivisorCommands", dependencies: [
            "Minivisor",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Testing only: makes a forbidden system call on a vCPU (or the main) thread (IntegrationTests).
        .executableTarget(name: "SeccompProbe", dependencies: ["Minivisor"]),
        // The command-line tool: a thin entry point over MinivisorCommands.
        .executableTarget(name: "MinivisorCLI", dependencies: [
            "Minivisor", "MinivisorBench", "MinivisorCommands",
            .product(name: "Logging", package: "swift-log"),
        ]),

        // Helpers shared by the test targets (a capturing log handler, a thread hammer).
        .target(name: "TestSupport", dependencies: ["Machine", .product(name: "Logging", package: "swift-log")],
                path: "Tests/TestSupport"),
        .testTarget(name: "MachineTests", dependencies: ["Machine", "KVM", "TestSupport", "VNC", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "SoftGPUTests", dependencies: ["SoftGPU", "TestSupport"]),
        // Testing only: runs instruction bytes natively on the host CPU, the reference for the emulator's tests.
        .target(name: "CNativeExec", path: "Tests/NativeExec"),
        .testTarget(name: "EmulationTests", dependencies: ["Machine", "KVM", "CKVM", "CX86", "CNativeExec"]),
        .testTarget(name: "VGPUTests", dependencies: ["VGPU", "SoftGPU", "Machine", "KVM", "CLibpng", "TestSupport",
                                                 .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "MinivisorCommandsTests", dependencies: ["MinivisorCommands", "Minivisor"]),
        .testTarget(name: "IntegrationTests", dependencies: ["Minivisor", "Machine", "MinivisorBench", "MinivisorCLI", "SeccompProbe", "CLibpng"]),
    ]
)

// libFuzzer targets (Fuzz/, `make fuzz`): in the manifest only when MINIVISOR_FUZZ is set, so that `swift build`
// and `swift test` never build them. The Makefile builds them with -sanitize=fuzzer,address in .build-fuzz.
if Context.environment["MINIVISOR_FUZZ"] != nil {
    let asLibrary: [SwiftSetting] = [.unsafeFlags(["-parse-as-library"])]   // libFuzzer provides main()
    package.targets += [
        .target(name: "FuzzSupport", path: "Fuzz/FuzzSupport"),
        .executableTarget(name: "FuzzImageLoader", dependencies: ["FuzzSupport", "Machine"],
                          path: "Fuzz/FuzzImageLoader", swiftSettings: asLibrary),
        .executableTarget(name: "FuzzCommandScanner", dependencies: ["FuzzSupport", "VGPU", "SoftGPU"],
                          path: "Fuzz/FuzzCommandScanner", swiftSettings: asLibrary),
        .executableTarget(name: "FuzzVGPU", dependencies: ["FuzzSupport", "VGPU", "SoftGPU", "Machine", "KVM"],
                          path: "Fuzz/FuzzVGPU", swiftSettings: asLibrary),
        .executableTarget(name: "FuzzCLIParser", dependencies: ["FuzzSupport", "MinivisorCommands", "Minivisor", "Machine"],
                          path: "Fuzz/FuzzCLIParser", swiftSettings: asLibrary),
    ]
}
