/// A vGPU type, as GVT-g's: the size of the aperture slice and of the hidden slice a vGPU of this type
/// owns, and its scheduling weight (its share of each engine, relative to the other vGPUs' weights).
/// The table is the one description of the types: the CLI's `--vgpu-type`, the configuration file, the
/// allocator and docs/vgpu.md (checked by a test) all use it.
public struct VGPUType: Sendable, Hashable, CustomStringConvertible {
    public let name: String
    public let apertureBytes: UInt64
    public let hiddenBytes: UInt64
    public let weight: Int

    public init(name: String, apertureBytes: UInt64, hiddenBytes: UInt64, weight: Int) {
        self.name = name
        self.apertureBytes = apertureBytes
        self.hiddenBytes = hiddenBytes
        self.weight = weight
    }

    /// 8 MiB of aperture (a 1280x1024 framebuffer at 32 bpp fits), 64 MiB hidden; 28 fit on the GPU.
    public static let small = VGPUType(name: "small", apertureBytes: 8 << 20, hiddenBytes: 64 << 20, weight: 1)
    /// 12 MiB of aperture (1920x1080 at 32 bpp), 128 MiB hidden; 18 fit.
    public static let medium = VGPUType(name: "medium", apertureBytes: 12 << 20, hiddenBytes: 128 << 20, weight: 2)
    /// 64 MiB of aperture, 256 MiB hidden; 3 fit.
    public static let large = VGPUType(name: "large", apertureBytes: 64 << 20, hiddenBytes: 256 << 20, weight: 4)

    public static let all: [VGPUType] = [.small, .medium, .large]
    /// What `--vgpu` gives without `--vgpu-type`.
    public static let `default` = VGPUType.medium

    public static func named(_ name: String) -> VGPUType? { all.first { $0.name == name } }

    /// "small, medium or large", for messages.
    public static var names: String {
        let n = all.map(\.name)
        return n.dropLast().joined(separator: ", ") + " or " + n.last!
    }

    public var description: String {
        "\(name) (aperture \(apertureBytes >> 20) MiB, hidden \(hiddenBytes >> 20) MiB, weight \(weight))"
    }
}
