import KVM

/// A guest image minivisor cannot boot. Each description is one line naming the cause and the fix (paths
/// and other user text are `quoted`); the CLI exits with status 2 for all of them.
public enum ImageError: Error, Equatable, CustomStringConvertible, Sendable {
    case notFound(String)
    case unreadable(String, String)
    /// The path names something other than a regular file; `kind` says what ("a FIFO", "a directory").
    case notRegularFile(String, kind: String)
    case empty(String)
    case unknownFormat(String)
    case wrongClass(String, String)
    case wrongMachine(String, UInt16)
    case notExecutable(String, UInt16)
    case malformedELF(String, String)
    case noLoadableSegments(String)
    case segmentOutsideRAM(String, start: UInt64, end: UInt64, ramDescription: String)
    /// A segment lands on a boot structure that has a fixed address (the real-mode IVT, the ELF64 page tables...).
    case overlapsBootStructure(String, start: UInt64, end: UInt64, structure: String, structureStart: UInt64, structureEnd: UInt64)
    case entryOutsideImage(String, UInt64)
    /// A Linux bzImage whose setup header's boot protocol is older than `LinuxSetupHeader.minimumVersion`.
    case linuxProtocolTooOld(String, version: UInt16)
    /// A Linux bzImage minivisor can neither decompress on the host nor enter at its 64-bit entry point.
    case linuxNo64BitEntry(String, why: String)
    /// A Linux bzImage whose compressed payload does not decompress (`format`: XZ, gzip, zstd).
    case linuxBadPayload(String, format: String, why: String)
    /// A Linux kernel that needs guest RAM up to `needsEnd` (its decompressed size), beyond low RAM.
    case linuxKernelDoesNotFit(String, needsEnd: UInt64, ramDescription: String)
    /// The Linux command line (with what minivisor adds) is longer than the kernel's `cmdline_size`.
    case linuxCommandLineTooLong(Int, max: Int)
    case initrdUnreadable(String, String)
    /// The initrd does not fit between the kernel's end and min(low RAM end, initrd_addr_max).
    case initrdDoesNotFit(String, size: UInt64, largestFree: UInt64)
    /// --initrd given with an image that is not a Linux kernel.
    case initrdNeedsLinux(String)
    case multiboot(String, String)
    case moduleUnreadable(String, String)
    /// A module larger than the largest free block of guest RAM below 4 GiB left for it (checked before reading).
    case moduleDoesNotFit(String, size: UInt64, largestFree: UInt64)
    /// The multiboot information block, module list and strings do not fit in free RAM below 4 GiB.
    case multibootInfoDoesNotFit(bytes: UInt64, modules: Int, largestFree: UInt64)
    /// Guest RAM too small for the boot structures themselves (only with hand-made tiny memories).
    case noRoomForBootStructures(String, ramDescription: String)
    case commandLineTooLong(Int)
    /// Text handed to the guest as a C string contains a NUL byte; `what` names it.
    case nulInText(String)

    public var description: String {
        switch self {
        case .notFound(let p): return "guest image \(quoted(p)) does not exist: check the path"
        case let .unreadable(p, e): return "cannot read guest image \(quoted(p)): \(e): check its permissions"
        case let .notRegularFile(p, kind): return "cannot read guest image \(quoted(p)): it is \(kind), not a regular file: pass the image file itself"
        case .empty(let p): return "guest image \(quoted(p)) is empty: rebuild it (for the test guests: make -C Guests)"
        case .unknownFormat(let p):
            return "\(quoted(p)) is neither an ELF64 x86-64 executable nor a multiboot kernel: pass a guest built for minivisor (see docs/boot-protocol.md)"
        case let .wrongClass(p, c): return "\(quoted(p)) is a \(c) ELF without a multiboot header: build it as ELF64 (gcc -m64) or add a multiboot header"
        case let .wrongMachine(p, m): return "\(quoted(p)) is an ELF for machine type \(m), not x86-64 (62): build it for x86-64"
        case let .notExecutable(p, t):
            return "\(quoted(p)) is ELF type \(t), not an executable (ET_EXEC): link it with -static -no-pie at a fixed address"
        case let .malformedELF(p, why): return "\(quoted(p)) is a malformed ELF file (\(why)): rebuild the image"
        case .noLoadableSegments(let p): return "\(quoted(p)) has no PT_LOAD segments: link it with a normal linker script"
        case let .segmentOutsideRAM(p, s, e, ram):
            return "\(quoted(p)) loads at \(hex(s))-\(hex(e)), outside guest RAM (\(ram)): give more memory with --memory or link the image lower"
        case let .overlapsBootStructure(p, s, e, what, ws, we):
            return "\(quoted(p)) loads at \(hex(s))-\(hex(e)), over the \(what) minivisor keeps at \(hex(ws))-\(hex(we)): link the image elsewhere, e.g. at 0x100000 or above"
        case let .entryOutsideImage(p, e): return "\(quoted(p)) has entry point \(hex(e)) outside its loaded segments: fix the image's entry symbol"
        case let .linuxProtocolTooOld(p, v):
            return "\(quoted(p)) is a Linux kernel with boot protocol \(LinuxSetupHeader.versionText(v)), older than the 2.06 minivisor needs: boot a kernel from Linux 2.6.22 or later"
        case let .linuxNo64BitEntry(p, why):
            return "\(quoted(p)) is a Linux bzImage minivisor cannot start: \(why): build the kernel for x86-64 with an XZ, gzip or zstd payload, or boot its vmlinux"
        case let .linuxBadPayload(p, format, why):
            return "\(quoted(p)) is a Linux bzImage whose \(format) payload does not decompress (\(why)): check the file is complete, or boot its vmlinux"
        case let .linuxKernelDoesNotFit(p, end, ram):
            return "Linux kernel \(quoted(p)) needs guest RAM up to \(hex(end)), more than there is below the 3 GiB hole (\(ram)): give more memory with --memory"
        case let .linuxCommandLineTooLong(n, max):
            return "kernel command line is \(n) bytes (with what minivisor adds), more than the \(max) this kernel accepts: shorten --append"
        case let .initrdUnreadable(p, e): return "cannot read initrd \(quoted(p)): \(e): check the --initrd path"
        case let .initrdDoesNotFit(p, size, free):
            return "initrd \(quoted(p)) is \(size) bytes, more than the \(free) bytes of guest RAM free for it above the kernel: give more memory with --memory"
        case .initrdNeedsLinux(let p): return "--initrd is for Linux kernels, and \(quoted(p)) is not one: drop --initrd or pass a bzImage or vmlinux"
        case let .multiboot(p, why): return "\(quoted(p)): bad multiboot kernel: \(why)"
        case let .moduleUnreadable(p, e): return "cannot read module \(quoted(p)): \(e): check the --module path"
        case let .moduleDoesNotFit(p, size, free):
            return "module \(quoted(p)) is \(size) bytes, more than the \(free) bytes of free guest RAM below 4 GiB left for it: give more memory with --memory"
        case let .multibootInfoDoesNotFit(bytes, modules, free):
            return "the multiboot information for \(modules) module(s) needs \(bytes) bytes and does not fit in free guest RAM below 4 GiB (largest free block \(free) bytes): give more memory with --memory or pass fewer or shorter module strings"
        case let .noRoomForBootStructures(what, ram):
            return "guest RAM (\(ram)) has no room for the \(what): give more memory with --memory"
        case .commandLineTooLong(let n): return "command line is \(n) bytes, more than the \(BootLayout.cmdlineMaxBytes) minivisor supports: shorten --cmdline"
        case .nulInText(let what): return "\(what) contains a NUL byte, which would cut it short for the guest: remove it"
        }
    }

    private func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
}
