import Firmware
import Glibc
import KVM

/// What to boot.
public enum BootImage: Sendable {
    /// An ELF64 x86-64 executable or a multiboot kernel in a file (mapped and read in place, never copied whole).
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
    /// 32-bit protected mode, paging off, EAX = multiboot magic, EBX = `info` (the multiboot information).
    case multiboot(eip: UInt32, info: UInt32)
    /// Real mode at segment:0.
    case real16(segment: UInt16)
    /// Linux's 64-bit boot protocol: long mode, paging on (identity map), RSI = boot_params.
    case linux64(rip: UInt64, bootParams: UInt64)
}

/// The result of loading an image: how to enter it and what kind it was.
public struct BootPlan: Sendable, Equatable {
    public enum Kind: String, Sendable { case elf64 = "ELF64", multiboot = "multiboot", demo = "built-in demo", realMode = "real-mode blob", linux = "Linux" }
    public let kind: Kind
    public let entry: BootEntry
    /// Whether secondary CPUs can be started through the firmware trampoline.
    public let hasAPTrampoline: Bool
    /// Where the MP floating pointer is (0x9fc00 unless the image covers it; see `BootLayout.mpTable`).
    public let mpTableAddress: UInt64
    /// Where the ACPI tables' RSDP is (0xe0000 unless the image covers it; see `BootLayout.acpiRSDP`), or
    /// nil for guests that get no ACPI tables (real-mode blobs). `Machine.start` writes the tables there.
    public let rsdpAddress: UInt64?
    /// Lines for the boot log: what was loaded how, and what minivisor added (the CLI prints them).
    public let log: [String]

    public init(kind: Kind, entry: BootEntry, hasAPTrampoline: Bool, mpTableAddress: UInt64 = BootLayout.mpTable,
                rsdpAddress: UInt64? = BootLayout.acpiRSDP, log: [String] = []) {
        self.kind = kind
        self.entry = entry
        self.hasAPTrampoline = hasAPTrampoline
        self.mpTableAddress = mpTableAddress
        self.rsdpAddress = rsdpAddress
        self.log = log
    }
}

/// An image's bytes: one read-only buffer for parsing (a file mapping or an array's storage) and a way
/// to copy a range of them into guest memory, the only copy ever made (pread from the file, or memcpy).
public struct ImageSource {
    public let name: String
    public let bytes: UnsafeRawBufferPointer
    let file: ImageFile?

    func copy(offset: UInt64, count: UInt64, to destination: UnsafeMutableRawPointer) throws(ImageError) {
        guard count > 0 else { return }
        guard offset <= UInt64(bytes.count), count <= UInt64(bytes.count) - offset, let base = bytes.baseAddress else {
            throw .malformedELF(name, "segment bytes lie past the end of the file")
        }
        if let file {
            try file.read(into: destination, count: count, offset: offset)
        } else {
            destination.copyMemory(from: base + Int(offset), byteCount: Int(count))
        }
    }
}

/// Loads images into guest memory and writes the boot structures their protocol needs.
///
/// Every size that comes from the image or a module (segments, bss, module files, strings) is checked
/// against guest RAM and the other claimed ranges before any byte of it is read or written, and with
/// overflow-checked arithmetic: no input traps, and what cannot be loaded intact is refused with one line.
public enum ImageLoader {
    /// Loads `image`, writes its boot structures for `cpuCount` CPUs (1-255), and returns how to enter it.
    /// `initrd` is for Linux kernels only; `host` decides what is added to a Linux command line.
    public static func load(_ image: BootImage, into memory: GuestMemory, cpuCount: Int, cmdline: String,
                            modules: [BootModule] = [], initrd: String? = nil,
                            host: HostProfile = HostProfile(softwareKVM: false)) throws(ImageError) -> BootPlan {
        precondition((1...255).contains(cpuCount), "cpuCount must be 1-255 (ConfigurationError.validate checks it)")
        guard cmdline.utf8.count <= BootLayout.cmdlineMaxBytes else { throw .commandLineTooLong(cmdline.utf8.count) }
        guard !cmdline.utf8.contains(0) else { throw .nulInText("the command line") }
        let context = Context(memory: memory, cpuCount: cpuCount, cmdline: cmdline, modules: modules, initrd: initrd, host: host)

        switch image {
        case .builtinDemo:
            if initrd != nil { throw .initrdNeedsLinux("built-in demo guest") }
            var len: UInt = 0
            let p = mv_firmware_demo_guest(&len)!
            try context.writeFixedLowStructures()
            try place(UnsafeRawBufferPointer(start: p, count: Int(len)), at: BootLayout.imageMinimum, name: "built-in demo guest", memory: memory)
            try context.writeLongModeStructures(mpTable: BootLayout.mpTable)
            return BootPlan(kind: .demo, entry: .long64(rip: BootLayout.imageMinimum), hasAPTrampoline: true)

        case let .realModeBlob(bytes, loadAddress):
            precondition(loadAddress < 0x100000 && loadAddress % 16 == 0, "real-mode blob must sit below 1 MiB, 16-byte aligned")
            try context.writeFixedLowStructures()
            try bytes.withUnsafeBytes { buf in Result { () throws(ImageError) in
                try place(buf, at: loadAddress, name: "real-mode blob", memory: memory)
            } }.get()
            return BootPlan(kind: .realMode, entry: .real16(segment: UInt16(loadAddress >> 4)), hasAPTrampoline: false, rsdpAddress: nil)

        case .file(let path):
            let file = try ImageFile(path: path, role: .image)
            guard file.size > 0 else { throw .empty(path) }
            return try file.withMapping { buf throws(ImageError) in
                try context.load(ImageSource(name: path, bytes: buf, file: file))
            }

        case let .bytes(bytes, name):
            guard !bytes.isEmpty else { throw .empty(name) }
            return try bytes.withUnsafeBytes { buf in Result { () throws(ImageError) in
                try context.load(ImageSource(name: name, bytes: buf, file: nil))
            } }.get()
        }
    }

    static func place(_ bytes: UnsafeRawBufferPointer, at address: UInt64, name: String, memory: GuestMemory) throws(ImageError) {
        do { try memory.write(bytes, at: address) } catch {
            throw .segmentOutsideRAM(name, start: address, end: address &+ UInt64(bytes.count), ramDescription: describe(memory))
        }
    }

    static func describe(_ memory: GuestMemory) -> String {
        memory.regions.map { "0x\(String($0.guestAddress, radix: 16))-0x\(String($0.end, radix: 16))" }.joined(separator: ", ")
    }

    /// The boot protocols images are tried against, in order (the first that recognises an image boots it).
    static let protocols: [any BootProtocol] = [LinuxBootProtocol(), ELF64BootProtocol(), MultibootBootProtocol()]

    /// One load: the memory, the machine's shape and what the user passed (a protocol's target).
    public struct Context {
        public let memory: GuestMemory
        public let cpuCount: Int
        public let cmdline: String
        public let modules: [BootModule]
        /// The Linux initrd (`--initrd`); other protocols refuse one.
        public let initrd: String?
        public let host: HostProfile

        public init(memory: GuestMemory, cpuCount: Int, cmdline: String, modules: [BootModule],
                    initrd: String? = nil, host: HostProfile = .detect()) {
            self.memory = memory
            self.cpuCount = cpuCount
            self.cmdline = cmdline
            self.modules = modules
            self.initrd = initrd
            self.host = host
        }

        /// Boots `source` with the first protocol in `ImageLoader.protocols` that recognises it, or says
        /// why none does.
        func load(_ source: ImageSource) throws(ImageError) -> BootPlan {
            for p in ImageLoader.protocols where try p.recognises(source) {
                if initrd != nil, !(p is LinuxBootProtocol) { throw .initrdNeedsLinux(source.name) }
                return try p.load(source, into: self)
            }
            let bytes = source.bytes, name = source.name
            if ELFParser.isELF(bytes) {
                let cls = bytes.count > 4 && bytes[4] == 1 ? "32-bit" : "non-64-bit"
                throw .wrongClass(name, cls)
            }
            throw .unknownFormat(name)
        }

        // MARK: ELF64 (minivisor protocol): fixed low-memory structures

        func loadELF64(_ elf: ELFImage, _ source: ImageSource) throws(ImageError) -> BootPlan {
            var ranges = AddressRanges()
            for s in BootLayout.longModeStructures(pageTableGiB: BootStructures.pageTableGiB(memory)) {
                ranges.claim(s.start, s.end, s.what)
            }
            try claimSegments(elf.segments, entry: elf.entry, name: source.name, in: &ranges)
            let mp = try placeMPTable(name: source.name, in: &ranges)
            let rsdp = try placeACPITables(name: source.name, in: &ranges)
            try copySegments(elf.segments, source)
            try writeFixedLowStructures(mpTable: mp)
            try writeLongModeStructures(mpTable: mp)
            return BootPlan(kind: .elf64, entry: .long64(rip: elf.entry), hasAPTrampoline: true, mpTableAddress: mp, rsdpAddress: rsdp)
        }

        // MARK: multiboot: only the first page is fixed

        /// Where placed multiboot data may go: usable RAM below 4 GiB, outside the reserved 0x9fc00-1 MiB.
        var multibootAreas: [Range<UInt64>] {
            let top = min(memory.regions[0].end, MemoryLayout.fourGiB)
            return [BootLayout.firstPageEnd..<BootLayout.mpTable, 0x100000..<top].filter { $0.lowerBound < top }
                .map { $0.lowerBound..<min($0.upperBound, top) }
        }

        func loadMultiboot(segments: [LoadSegment], entry: UInt64, _ source: ImageSource) throws(ImageError) -> BootPlan {
            for m in modules where m.string.utf8.contains(0) { throw .nulInText("the string of module \(quoted(m.path))") }
            var ranges = AddressRanges()
            ranges.claim(0, BootLayout.firstPageEnd, "real-mode IVT, BIOS data area and boot GDT")
            try claimSegments(segments, entry: entry, name: source.name, in: &ranges)
            let mp = try placeMPTable(name: source.name, in: &ranges)
            let rsdp = try placeACPITables(name: source.name, in: &ranges)
            try copySegments(segments, source)

            // Modules: page-aligned after the kernel, as QEMU and GRUB load them; each file is sized
            // against the free RAM left for it before a byte of it is read, then read straight into place.
            let areas = multibootAreas
            var cursor = segments.map(\.end).max() ?? 0
            var loaded: [MultibootInfoWriter.Module] = []
            for m in modules {
                let file = try ImageFile(path: m.path, role: .module)
                guard let start = ranges.place(size: file.size, align: MemoryLayout.pageSize, from: cursor, in: areas) else {
                    throw .moduleDoesNotFit(m.path, size: file.size,
                                            largestFree: ranges.largestFree(align: MemoryLayout.pageSize, from: cursor, in: areas))
                }
                if file.size > 0 {
                    let destination: UnsafeMutableRawPointer
                    do { destination = try memory.pointer(start, length: file.size) } catch {
                        throw .moduleDoesNotFit(m.path, size: file.size, largestFree: 0)
                    }
                    try file.read(into: destination, count: file.size, offset: 0)
                }
                ranges.claim(start, start + file.size, "module \(quoted(m.path))")
                loaded.append(.init(start: start, end: start + file.size, string: m.string))
                cursor = start + file.size
            }

            // The information block, module list and strings: one block, sized from what was given.
            let layout = MultibootInfoWriter.Layout(memory: memory, cmdline: cmdline, moduleStrings: modules.map(\.string))
            guard let info = ranges.place(size: layout.size, align: MemoryLayout.pageSize, from: BootLayout.firstPageEnd, in: areas) else {
                throw .multibootInfoDoesNotFit(bytes: layout.size, modules: modules.count,
                                               largestFree: ranges.largestFree(align: MemoryLayout.pageSize, from: 0, in: areas))
            }
            do { try MultibootInfoWriter.write(memory: memory, at: info, layout: layout, cmdline: cmdline, modules: loaded) }
            catch { throw .noRoomForBootStructures("multiboot information", ramDescription: describe(memory)) }
            try writeFixedLowStructures(mpTable: mp)
            return BootPlan(kind: .multiboot, entry: .multiboot(eip: UInt32(truncatingIfNeeded: entry), info: UInt32(info)),
                            hasAPTrampoline: false, mpTableAddress: mp, rsdpAddress: rsdp)
        }

        // MARK: shared steps

        /// Checks every segment lies in RAM and on no claimed range (boot structures, other segments), and
        /// that the entry point is inside one; then claims them. Nothing is written yet.
        func claimSegments(_ segments: [LoadSegment], entry: UInt64, name: String, in ranges: inout AddressRanges) throws(ImageError) {
            guard !segments.isEmpty else { throw .noLoadableSegments(name) }
            for s in segments {
                guard memory.contains(s.physicalAddress, length: s.memorySize) else {
                    throw .segmentOutsideRAM(name, start: s.physicalAddress, end: s.end, ramDescription: describe(memory))
                }
                if let c = ranges.overlap(s.physicalAddress, s.end) {
                    if c.what == "image" {
                        throw .malformedELF(name, "segments at 0x\(String(c.start, radix: 16)) and 0x\(String(s.physicalAddress, radix: 16)) overlap")
                    }
                    throw .overlapsBootStructure(name, start: s.physicalAddress, end: s.end, structure: c.what,
                                                 structureStart: c.start, structureEnd: c.end)
                }
                ranges.claim(s.physicalAddress, s.end, "image")
            }
            guard segments.contains(where: { entry >= $0.physicalAddress && entry < $0.end }) else {
                throw .entryOutsideImage(name, entry)
            }
        }

        /// The MP table goes at 0x9fc00 unless the image is there, else in 0xf0000-0xfffff; claims it.
        func placeMPTable(name: String, in ranges: inout AddressRanges) throws(ImageError) -> UInt64 {
            let size = BootStructures.mpTableMaximumSize(cpuCount: cpuCount)
            let preferred = BootLayout.mpTable
            let address: UInt64
            if let c = ranges.overlap(preferred, preferred + size) {
                guard let a = ranges.place(size: size, align: 16, from: 0, in: [BootLayout.mpTableAlternative]) else {
                    throw .overlapsBootStructure(name, start: c.start, end: c.end, structure: "MP table (0xf0000-0xfffff, its other place, is taken too)",
                                                 structureStart: preferred, structureEnd: preferred + size)
                }
                address = a
            } else {
                address = preferred
            }
            guard memory.contains(address, length: size) else {
                throw .noRoomForBootStructures("MP table", ramDescription: describe(memory))
            }
            ranges.claim(address, address + size, "MP table")
            return address
        }

        /// The ACPI tables go at 0xe0000 unless the image is there, else at another 64-byte boundary of
        /// 0xe0000-0xfffff (after the MP table, if that moved there); claims them.
        func placeACPITables(name: String, in ranges: inout AddressRanges) throws(ImageError) -> UInt64 {
            let size = ACPITables.maximumSize(cpuCount: cpuCount)
            guard let address = ranges.place(size: size, align: 64, from: BootLayout.acpiRSDP, in: [BootLayout.acpiArea]) else {
                let area = BootLayout.acpiArea
                let c = ranges.overlap(area.lowerBound, area.upperBound)
                throw .overlapsBootStructure(name, start: c?.start ?? area.lowerBound, end: c?.end ?? area.upperBound,
                                             structure: "ACPI tables (0xe0000-0xfffff)", structureStart: area.lowerBound,
                                             structureEnd: area.lowerBound + size)
            }
            guard memory.contains(address, length: size) else {
                throw .noRoomForBootStructures("ACPI tables", ramDescription: describe(memory))
            }
            ranges.claim(address, address + size, "ACPI tables")
            return address
        }

        /// Copies each segment's file bytes into guest memory once and zeroes its tail (checked before).
        func copySegments(_ segments: [LoadSegment], _ source: ImageSource) throws(ImageError) {
            for s in segments {
                let destination: UnsafeMutableRawPointer
                do { destination = try memory.pointer(s.physicalAddress, length: s.memorySize) } catch {
                    throw .segmentOutsideRAM(source.name, start: s.physicalAddress, end: s.end, ramDescription: describe(memory))
                }
                try source.copy(offset: s.fileOffset, count: s.fileSize, to: destination)
                memset(destination + Int(s.fileSize), 0, Int(s.memorySize - s.fileSize))
            }
        }

        /// The first page (GDT at 0x500) and the MP table, which every kind of guest gets.
        func writeFixedLowStructures(mpTable: UInt64 = BootLayout.mpTable) throws(ImageError) {
            do {
                try BootStructures.writeGDT(memory)
                try memory.write(bytes: BootStructures.mpTable(cpuCount: cpuCount, at: mpTable), at: mpTable)
            } catch { throw .noRoomForBootStructures("boot GDT and MP table", ramDescription: describe(memory)) }
        }

        func writeLongModeStructures(mpTable: UInt64) throws(ImageError) {
            do {
                try BootStructures.writePageTables(memory)
                try BootStructures.writeBootInfo(memory, cpuCount: cpuCount, cmdline: cmdline, mpTable: mpTable)
                var len: UInt = 0
                let p = mv_firmware_ap_trampoline(&len)!
                try memory.write(UnsafeRawBufferPointer(start: p, count: Int(len)), at: BootLayout.apTrampoline)
            } catch {
                throw .noRoomForBootStructures("page tables, boot information and AP trampoline", ramDescription: describe(memory))
            }
        }
    }
}
