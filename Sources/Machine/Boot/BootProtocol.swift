/// A way to boot an image: recognise its format, place it and the boot structures its protocol defines
/// in guest memory, and say how the boot processor enters it (`BootPlan`).
///
/// Booting is separate from building the machine: `Machine.init(configuration:)` creates memory, the
/// irqchip, the vCPUs and the devices; `Machine.boot(_:)` runs one protocol over that memory and sets the
/// boot processor's entry state. The ELF64 (minivisor) and multiboot v1 loaders are the first two
/// implementations; a Linux boot protocol or a snapshot restore would be more, without touching device
/// construction. Protocols are tried in the order of `ImageLoader.protocols`.
public protocol BootProtocol: Sendable {
    /// Whether `image` is in this protocol's format. Throws when it is, but its header is malformed.
    func recognises(_ image: ImageSource) throws(ImageError) -> Bool
    /// Loads `image` into `target`'s memory with the boot structures the protocol defines.
    func load(_ image: ImageSource, into target: ImageLoader.Context) throws(ImageError) -> BootPlan
}

/// minivisor's own protocol: an ELF64 x86-64 executable entered in 64-bit long mode (docs/boot-protocol.md).
public struct ELF64BootProtocol: BootProtocol {
    public init() {}

    public func recognises(_ image: ImageSource) throws(ImageError) -> Bool {
        ELFParser.isELF(image.bytes) && image.bytes.count > 18 && image.bytes[4] == 2 /* ELFCLASS64 */
    }

    public func load(_ image: ImageSource, into target: ImageLoader.Context) throws(ImageError) -> BootPlan {
        let elf = try ELFParser.parse(image.bytes, name: image.name)
        guard elf.machine == 62 else { throw .wrongMachine(image.name, elf.machine) }
        guard elf.type == 2 else { throw .notExecutable(image.name, elf.type) }
        guard target.modules.isEmpty else {
            throw .multiboot(image.name, "--module is only passed to multiboot kernels; this is an ELF64 guest, drop --module")
        }
        return try target.loadELF64(elf, image)
    }
}

/// Multiboot v1 (as `qemu -kernel`): an ELF32 i386 image or the a.out kludge, entered in 32-bit
/// protected mode with the multiboot information block.
public struct MultibootBootProtocol: BootProtocol {
    public init() {}

    public func recognises(_ image: ImageSource) throws(ImageError) -> Bool {
        try MultibootHeader.find(in: image.bytes, name: image.name) != nil
    }

    public func load(_ image: ImageSource, into target: ImageLoader.Context) throws(ImageError) -> BootPlan {
        let bytes = image.bytes, name = image.name
        guard let mb = try MultibootHeader.find(in: bytes, name: name) else { throw .unknownFormat(name) }
        if mb.usesAOutKludge {
            let (segments, entry) = try mb.aoutLayout(fileSize: bytes.count, name: name)
            return try target.loadMultiboot(segments: segments, entry: entry, image)
        }
        guard ELFParser.isELF(bytes) else {
            throw .multiboot(name, "image is not ELF and its header lacks the a.out kludge (flag bit 16); set the address fields")
        }
        let elf = try ELFParser.parse(bytes, name: name)
        guard !elf.is64Bit, elf.machine == 3 else {
            throw .multiboot(name, "a multiboot ELF must be ELF32 i386 (or use the a.out kludge); build it with -m32")
        }
        return try target.loadMultiboot(segments: elf.segments, entry: elf.entry, image)
    }
}
