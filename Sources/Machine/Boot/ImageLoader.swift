import Firmware
import Glibc

/// What to boot.
public enum BootImage: Sendable {
    /// An ELF64 x86-64 executable or a multiboot kernel, read from a file.
    case file(String)
    /// The same, already in memory; `name` appears in error messages.
    case bytes([UInt8], name: String)
    /// The built-in demo guest (Firmware/demo_guest.S), booted with the ELF64 protocol.
    case builtinDemo
    /// Raw real-mode code placed at `loadAddress` (< 1 MiB, 16-byte aligned) and entered at CS:IP =
    /// (loadAddress >> 4):0. Used by the benchmarks to run the same guest code as the C baseline.
    case realModeBlob([UInt8], loadAddress: UInt64)
}

/// A multiboot module: a file and the string the kernel sees for it.
public struct BootModule: Sendable, Equatable {
    public let path: String
    public let string: String
    /// Parses "PATH" or "PATH ARGS" (the string is the whole text, as GRUB and QEMU pass it).
    public init(argument: String) {
        string = argument
        path = String(argument.split(separator: " ", maxSplits: 1).first ?? Substring(argument))
    }
}

/// How the boot processor starts.
public enum BootEntry: Sendable, Equatable {
    /// 64-bit long mode, paging on (identity map), RDI = boot info, RSI = magic.
    case long64(rip: UInt64)
    /// 32-bit protected mode, paging off, EAX = multiboot magic, EBX = info.
    case multiboot(eip: UInt32)
    /// Real mode at segment:0.
    case real16(segment: UInt16)
}

/// The result of loading an image: how to enter it and what kind it was.
public struct BootPlan: Sendable, Equatable {
    public enum Kind: String, Sendable { case elf64 = "ELF64", multiboot = "multiboot", demo = "built-in demo", realMode = "real-mode blob" }
    public let kind: Kind
    public let entry: BootEntry
    /// Whether secondary CPUs can be started through the firmware trampoline.
    public let hasAPTrampoline: Bool
}

/// Loads images into guest memory and writes the boot structures their protocol needs.
public enum ImageLoader {
    public static func readFile(_ path: String) throws(ImageError) -> [UInt8] {
        var st = stat()
        guard stat(path, &st) == 0 else {
            if errno == ENOENT || errno == ENOTDIR { throw .notFound(path) }
            throw .unreadable(path, String(cString: strerror(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw .unreadable(path, "not a regular file") }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .unreadable(path, String(cString: strerror(errno))) }
        defer { close(fd) }
        var out = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < out.count {
            let n = out.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw .unreadable(path, n == 0 ? "file shrank while reading" : String(cString: strerror(errno))) }
            done += n
        }
        return out
    }

    /// Loads `image`, writes its boot structures for `cpuCount` CPUs, and returns how to enter it.
    public static func load(_ image: BootImage, into memory: GuestMemory, cpuCount: Int, cmdline: String,
                            modules: [BootModule] = []) throws(ImageError) -> BootPlan {
        guard cmdline.utf8.count <= BootLayout.cmdlineMaxBytes else { throw .commandLineTooLong(cmdline.utf8.count) }
        do {
            try BootStructures.writeGDT(memory)
            try memory.write(bytes: BootStructures.mpTable(cpuCount: cpuCount), at: BootLayout.mpTable)
        } catch { throw .segmentOutsideRAM("boot structures", start: 0, end: BootLayout.ebdaEnd, ramDescription: describe(memory)) }

        switch image {
        case .builtinDemo:
            var len: UInt = 0
            let p = mv_firmware_demo_guest(&len)!
            let bytes = Array(UnsafeBufferPointer(start: p, count: Int(len)))
            try place(bytes, at: BootLayout.imageMinimum, name: "built-in demo guest", memory: memory)
            try writeLongModeStructures(memory, cpuCount: cpuCount, cmdline: cmdline)
            return BootPlan(kind: .demo, entry: .long64(rip: BootLayout.imageMinimum), hasAPTrampoline: true)

        case let .realModeBlob(bytes, loadAddress):
            precondition(loadAddress < 0x100000 && loadAddress % 16 == 0, "real-mode blob must sit below 1 MiB, 16-byte aligned")
            try place(bytes, at: loadAddress, name: "real-mode blob", memory: memory)
            return BootPlan(kind: .realMode, entry: .real16(segment: UInt16(loadAddress >> 4)), hasAPTrampoline: false)

        case .file(let path):
            let bytes = try readFile(path)
            return try loadBytes(bytes, name: path, memory: memory, cpuCount: cpuCount, cmdline: cmdline, modules: modules)

        case let .bytes(bytes, name):
            return try loadBytes(bytes, name: name, memory: memory, cpuCount: cpuCount, cmdline: cmdline, modules: modules)
        }
    }

    static func loadBytes(_ bytes: [UInt8], name: String, memory: GuestMemory, cpuCount: Int, cmdline: String,
                          modules: [BootModule]) throws(ImageError) -> BootPlan {
        guard !bytes.isEmpty else { throw .empty(name) }
        if ELFParser.isELF(bytes), bytes.count > 18, bytes[4] == 2 /* ELFCLASS64 */ {
            let elf = try ELFParser.parse(bytes, name: name)
            guard elf.machine == 62 else { throw .wrongMachine(name, elf.machine) }
            guard elf.type == 2 else { throw .notExecutable(name, elf.type) }
            guard modules.isEmpty else {
                throw .multiboot(name, "--module is only passed to multiboot kernels; this is an ELF64 guest, drop --module")
            }
            try placeSegments(elf.segments, entry: elf.entry, bytes: bytes, name: name, memory: memory)
            try writeLongModeStructures(memory, cpuCount: cpuCount, cmdline: cmdline)
            return BootPlan(kind: .elf64, entry: .long64(rip: elf.entry), hasAPTrampoline: true)
        }
        if let mb = try MultibootHeader.find(in: bytes, name: name) {
            var segments: [LoadSegment]
            var entry: UInt64
            if mb.usesAOutKludge {
                (segments, entry) = try mb.aoutLayout(fileSize: bytes.count, name: name)
            } else {
                guard ELFParser.isELF(bytes) else {
                    throw .multiboot(name, "image is not ELF and its header lacks the a.out kludge (flag bit 16); set the address fields")
                }
                let elf = try ELFParser.parse(bytes, name: name)
                guard !elf.is64Bit, elf.machine == 3 else {
                    throw .multiboot(name, "a multiboot ELF must be ELF32 i386 (or use the a.out kludge); build it with -m32")
                }
                segments = elf.segments
                entry = elf.entry
            }
            try placeSegments(segments, entry: entry, bytes: bytes, name: name, memory: memory)
            var end = segments.map { $0.physicalAddress + $0.memorySize }.max() ?? BootLayout.imageMinimum
            var loaded: [MultibootInfoWriter.Module] = []
            for m in modules {
                let data: [UInt8]
                do { data = try readFile(m.path) } catch { throw .moduleUnreadable(m.path, "\(error)") }
                end = (end + 0xfff) & ~0xfff
                guard end + UInt64(data.count) <= min(memory.regions[0].end, MemoryLayout.fourGiB) else { throw .modulesDoNotFit(m.path) }
                do { try memory.write(bytes: data, at: end) } catch { throw .modulesDoNotFit(m.path) }
                loaded.append(.init(start: end, end: end + UInt64(data.count), string: m.string))
                end += UInt64(data.count)
            }
            do { try MultibootInfoWriter.write(memory: memory, cmdline: cmdline, modules: loaded) }
            catch { throw .segmentOutsideRAM("multiboot information", start: 0, end: 0x6000, ramDescription: describe(memory)) }
            return BootPlan(kind: .multiboot, entry: .multiboot(eip: UInt32(truncatingIfNeeded: entry)), hasAPTrampoline: false)
        }
        if bytes.count > 0x206, bytes[0x202] == 0x48, bytes[0x203] == 0x64, bytes[0x204] == 0x72, bytes[0x205] == 0x53 {
            throw .bzImageUnsupported(name)   // "HdrS": leave room for the Linux boot protocol
        }
        if ELFParser.isELF(bytes) {
            let cls = bytes.count > 4 && bytes[4] == 1 ? "32-bit" : "non-64-bit"
            throw .wrongClass(name, cls)
        }
        throw .unknownFormat(name)
    }

    static func placeSegments(_ segments: [LoadSegment], entry: UInt64, bytes: [UInt8], name: String,
                              memory: GuestMemory) throws(ImageError) {
        guard !segments.isEmpty else { throw .noLoadableSegments(name) }
        for s in segments {
            guard s.physicalAddress >= BootLayout.imageMinimum else { throw .segmentBelowMinimum(name, start: s.physicalAddress) }
            guard memory.contains(s.physicalAddress, length: s.memorySize) else {
                throw .segmentOutsideRAM(name, start: s.physicalAddress, end: s.physicalAddress + s.memorySize, ramDescription: describe(memory))
            }
        }
        guard segments.contains(where: { entry >= $0.physicalAddress && entry < $0.physicalAddress + $0.memorySize }) else {
            throw .entryOutsideImage(name, entry)
        }
        for s in segments {
            do {
                let dst = try memory.pointer(s.physicalAddress, length: s.memorySize)
                bytes.withUnsafeBytes { src in
                    dst.copyMemory(from: src.baseAddress! + Int(s.fileOffset), byteCount: Int(s.fileSize))
                }
                memset(dst + Int(s.fileSize), 0, Int(s.memorySize - s.fileSize))
            } catch {
                throw .segmentOutsideRAM(name, start: s.physicalAddress, end: s.physicalAddress + s.memorySize, ramDescription: describe(memory))
            }
        }
    }

    static func place(_ bytes: [UInt8], at address: UInt64, name: String, memory: GuestMemory) throws(ImageError) {
        do { try memory.write(bytes: bytes, at: address) } catch {
            throw .segmentOutsideRAM(name, start: address, end: address + UInt64(bytes.count), ramDescription: describe(memory))
        }
    }

    static func writeLongModeStructures(_ memory: GuestMemory, cpuCount: Int, cmdline: String) throws(ImageError) {
        do {
            try BootStructures.writePageTables(memory)
            try BootStructures.writeBootInfo(memory, cpuCount: cpuCount, cmdline: cmdline)
            var len: UInt = 0
            let p = mv_firmware_ap_trampoline(&len)!
            try memory.write(UnsafeRawBufferPointer(start: p, count: Int(len)), at: BootLayout.apTrampoline)
        } catch {
            throw .segmentOutsideRAM("boot structures", start: 0, end: BootLayout.bootStackTop, ramDescription: describe(memory))
        }
    }

    static func describe(_ memory: GuestMemory) -> String {
        memory.regions.map { "0x\(String($0.guestAddress, radix: 16))-0x\(String($0.end, radix: 16))" }.joined(separator: ", ")
    }
}
