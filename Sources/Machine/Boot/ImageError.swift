/// A guest image minivisor cannot boot. Each description is one line naming the cause and the fix;
/// the CLI exits with status 2 for all of them.
public enum ImageError: Error, Equatable, CustomStringConvertible, Sendable {
    case notFound(String)
    case unreadable(String, String)
    case empty(String)
    case unknownFormat(String)
    case wrongClass(String, String)
    case wrongMachine(String, UInt16)
    case notExecutable(String, UInt16)
    case malformedELF(String, String)
    case noLoadableSegments(String)
    case segmentOutsideRAM(String, start: UInt64, end: UInt64, ramDescription: String)
    case segmentBelowMinimum(String, start: UInt64)
    case entryOutsideImage(String, UInt64)
    case bzImageUnsupported(String)
    case multiboot(String, String)
    case moduleUnreadable(String, String)
    case modulesDoNotFit(String)
    case commandLineTooLong(Int)

    public var description: String {
        switch self {
        case .notFound(let p): return "guest image \(p) does not exist: check the path"
        case let .unreadable(p, e): return "cannot read guest image \(p): \(e): check its permissions"
        case .empty(let p): return "guest image \(p) is empty: rebuild it (for the test guests: make -C Guests)"
        case .unknownFormat(let p):
            return "\(p) is neither an ELF64 x86-64 executable nor a multiboot kernel: pass a guest built for minivisor (see docs/boot-protocol.md)"
        case let .wrongClass(p, c): return "\(p) is a \(c) ELF without a multiboot header: build it as ELF64 (gcc -m64) or add a multiboot header"
        case let .wrongMachine(p, m): return "\(p) is an ELF for machine type \(m), not x86-64 (62): build it for x86-64"
        case let .notExecutable(p, t):
            return "\(p) is ELF type \(t), not an executable (ET_EXEC): link it with -static -no-pie at a fixed address"
        case let .malformedELF(p, why): return "\(p) is a malformed ELF file (\(why)): rebuild the image"
        case .noLoadableSegments(let p): return "\(p) has no PT_LOAD segments: link it with a normal linker script"
        case let .segmentOutsideRAM(p, s, e, ram):
            return "\(p) loads at 0x\(String(s, radix: 16))-0x\(String(e, radix: 16)), outside guest RAM (\(ram)): give more memory with --memory or link the image lower"
        case let .segmentBelowMinimum(p, s):
            return "\(p) loads at 0x\(String(s, radix: 16)), below 1 MiB where minivisor keeps the boot structures: link the image at 0x100000 or above"
        case let .entryOutsideImage(p, e): return "\(p) has entry point 0x\(String(e, radix: 16)) outside its loaded segments: fix the image's entry symbol"
        case .bzImageUnsupported(let p): return "\(p) is a Linux bzImage, which minivisor cannot boot yet: boot the uncompressed vmlinux ELF or a multiboot kernel"
        case let .multiboot(p, why): return "\(p): bad multiboot kernel: \(why)"
        case let .moduleUnreadable(p, e): return "cannot read module \(p): \(e): check the --module path"
        case .modulesDoNotFit(let p): return "module \(p) does not fit in guest RAM below 4 GiB: give more memory with --memory"
        case .commandLineTooLong(let n): return "command line is \(n) bytes, more than the 4095 minivisor supports: shorten --cmdline"
        }
    }
}
