import Glibc
import KVM

/// The setup header of a Linux x86 kernel image (bzImage), as the boot protocol defines it
/// (Documentation/arch/x86/boot.rst): the fields minivisor checks or uses, read from the file.
/// Fields a protocol version does not have read as zero.
public struct LinuxSetupHeader: Equatable, Sendable {
    /// "HdrS" at 0x202.
    public static let magic: UInt32 = 0x5372_6448
    /// 2.06: cmdline_size; older kernels are refused.
    public static let minimumVersion: UInt16 = 0x0206
    /// Where the header starts in the file and in boot_params.
    public static let start = 0x1f1
    /// The header part of boot_params ends here (struct setup_header is shorter; the rest is zero).
    public static let maximumEnd = 0x290

    public var setupSects: UInt8
    public var version: UInt16
    public var loadflags: UInt8
    public var code32Start: UInt32
    public var initrdAddrMax: UInt32
    public var kernelAlignment: UInt32
    public var relocatable: Bool
    public var xloadflags: UInt16
    public var cmdlineSize: UInt32
    public var payloadOffset: UInt32
    public var payloadLength: UInt32
    public var prefAddress: UInt64
    public var initSize: UInt32
    /// One past the header's last byte in the file: 0x202 plus the jump offset at 0x201, at most `maximumEnd`.
    public var end: Int

    /// File offset of the protected-mode kernel: (setup_sects + 1) * 512, where setup_sects 0 means 4.
    public var kernelOffset: UInt64 { UInt64((setupSects == 0 ? 4 : Int(setupSects)) + 1) * 512 }
    /// XLF_KERNEL_64 with protocol 2.12 or later: the protected-mode kernel has a 64-bit entry at +0x200.
    public var has64BitEntry: Bool { version >= 0x020c && xloadflags & 1 != 0 }
    /// The highest address the initrd may end at (initrd_addr_max; 0x37ffffff for kernels that leave it 0).
    public var initrdLimit: UInt64 { UInt64(initrdAddrMax == 0 ? 0x37ff_ffff : initrdAddrMax) + 1 }
    /// The longest command line (without its NUL) the kernel takes.
    public var commandLineMax: Int { version >= 0x0206 ? Int(min(cmdlineSize, 0xffff)) : 255 }

    /// "2.15" for 0x020f.
    public static func versionText(_ v: UInt16) -> String {
        "\(v >> 8).\(v & 0xff < 10 ? "0" : "")\(v & 0xff)"
    }

    /// Whether `bytes` carry the "HdrS" magic at 0x202.
    public static func isPresent(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 0x208 && le(bytes, 0x202, 4) == UInt64(magic)
    }

    /// Reads the header; throws `linuxProtocolTooOld` for protocols before 2.06 and `unknownFormat`
    /// without the magic.
    public static func parse(_ bytes: UnsafeRawBufferPointer, name: String) throws(ImageError) -> LinuxSetupHeader {
        guard isPresent(bytes) else { throw .unknownFormat(name) }
        let version = UInt16(le(bytes, 0x206, 2))
        guard version >= minimumVersion else { throw .linuxProtocolTooOld(name, version: version) }
        let end = min(0x202 + Int(bytes.count > 0x201 ? bytes[0x201] : 0), maximumEnd, bytes.count)
        func f(_ offset: Int, _ width: Int) -> UInt64 { offset + width <= end ? le(bytes, offset, width) : 0 }
        return LinuxSetupHeader(
            setupSects: UInt8(f(0x1f1, 1)), version: version, loadflags: UInt8(f(0x211, 1)),
            code32Start: UInt32(f(0x214, 4)), initrdAddrMax: UInt32(f(0x22c, 4)), kernelAlignment: UInt32(f(0x230, 4)),
            relocatable: f(0x234, 1) != 0, xloadflags: UInt16(f(0x236, 2)), cmdlineSize: UInt32(f(0x238, 4)),
            payloadOffset: UInt32(f(0x248, 4)), payloadLength: UInt32(f(0x24c, 4)), prefAddress: f(0x258, 8),
            initSize: UInt32(f(0x260, 4)), end: end)
    }

    /// The little-endian `width`-byte field at `offset` (the caller checked it is inside `bytes`).
    static func le(_ bytes: UnsafeRawBufferPointer, _ offset: Int, _ width: Int) -> UInt64 {
        (0..<width).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
    }
}

/// Guest-physical layout of a Linux boot (the 64-bit boot protocol, as Firecracker and crosvm lay it out)
/// and the pure functions that decide it: the e820 map, the initrd's place, the zero page.
public enum LinuxLayout {
    /// boot_params, the "zero page".
    public static let bootParams: UInt64 = 0x7000
    /// The kernel command line.
    public static let cmdline: UInt64 = 0x20000
    /// Where the protected-mode part of a bzImage goes when the kernel decompresses itself.
    public static let protectedModeKernel: UInt64 = 0x100000
    /// The 64-bit entry point's offset in the protected-mode kernel.
    public static let entry64Offset: UInt64 = 0x200
    /// Reserved below 1 MiB: the EBDA's last KiB (MP table) and the BIOS area 0xe0000-0xfffff (the MP
    /// table's other place, where an OS looks for the ACPI RSDP). 0xa0000-0xdffff (VGA, option ROMs) is
    /// left out of the map as on a PC.
    public static let reservedLow: [Range<UInt64>] = [BootLayout.mpTable..<BootLayout.ebdaEnd, 0xe0000..<0x100000]

    public struct E820Entry: Equatable, Sendable {
        public static let ram: UInt32 = 1, reserved: UInt32 = 2
        public let address: UInt64
        public let size: UInt64
        public let type: UInt32
        public init(_ address: UInt64, _ size: UInt64, _ type: UInt32) { self.address = address; self.size = size; self.type = type }
    }

    /// The e820 map for RAM `regions` (`GuestMemory.layout`): base memory below the MP table, the reserved
    /// firmware areas, RAM from 1 MiB to the 32-bit hole and RAM above 4 GiB. The hole itself (PCI BARs,
    /// IOAPIC, LAPIC) is a gap, which Linux takes as the PCI window, as on QEMU and Firecracker.
    public static func e820(_ regions: [GuestMemory.Region]) -> [E820Entry] {
        var out: [E820Entry] = []
        guard let low = regions.first else { return out }
        out.append(E820Entry(0, min(BootLayout.mpTable, low.end), E820Entry.ram))
        for r in reservedLow where r.lowerBound < low.end { out.append(E820Entry(r.lowerBound, r.upperBound - r.lowerBound, E820Entry.reserved)) }
        if low.end > BootLayout.imageMinimum {
            out.append(E820Entry(BootLayout.imageMinimum, low.end - BootLayout.imageMinimum, E820Entry.ram))
        }
        for r in regions.dropFirst() { out.append(E820Entry(r.guestAddress, r.size, E820Entry.ram)) }
        return out
    }

    /// Where an initrd of `size` bytes goes: as high as possible, page-aligned, ending at or below
    /// min(`ramEnd`, `limit`), starting at or above `kernelEnd`; nil when it does not fit.
    public static func initrdAddress(size: UInt64, kernelEnd: UInt64, ramEnd: UInt64, limit: UInt64) -> UInt64? {
        let top = min(ramEnd, limit)
        guard size <= top else { return nil }
        let start = (top - size) & ~(MemoryLayout.pageSize - 1)
        return start >= kernelEnd ? start : nil
    }

    /// The page-aligned room between `kernelEnd` and the top an initrd may reach (for error messages).
    public static func initrdRoom(kernelEnd: UInt64, ramEnd: UInt64, limit: UInt64) -> UInt64 {
        let top = min(ramEnd, limit) & ~(MemoryLayout.pageSize - 1)
        let bottom = (kernelEnd &+ MemoryLayout.pageSize &- 1) & ~(MemoryLayout.pageSize - 1)
        return top > bottom ? top - bottom : 0
    }

    /// The zero page (4096 bytes): the image's setup header (bytes 0x1f1..<end of the file, or nil for a
    /// vmlinux, which has none: then a 2.15 header is made up), with the loader's fields filled in.
    public static func bootParams(setupHeader: [UInt8]?, cmdlineAddress: UInt64,
                                  initrd: (address: UInt64, size: UInt64)?, e820: [E820Entry]) -> [UInt8] {
        var z = [UInt8](repeating: 0, count: 4096)
        func put(_ v: UInt64, _ offset: Int, _ width: Int) {
            for i in 0..<width { z[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        }
        if let h = setupHeader {
            for (i, b) in h.prefix(LinuxSetupHeader.maximumEnd - LinuxSetupHeader.start).enumerated() { z[LinuxSetupHeader.start + i] = b }
        } else {
            put(0x020f, 0x206, 2)                // version 2.15
            put(0x01, 0x211, 1)                  // loadflags: LOADED_HIGH
            put(0x7fff_ffff, 0x22c, 4)           // initrd_addr_max
            put(0x0100_0000, 0x230, 4)           // kernel_alignment (as Firecracker)
            put(2047, 0x238, 4)                  // cmdline_size (COMMAND_LINE_SIZE - 1)
        }
        put(0xaa55, 0x1fe, 2)                    // boot_flag
        put(UInt64(LinuxSetupHeader.magic), 0x202, 4)
        put(0xff, 0x210, 1)                      // type_of_loader: undefined loader
        put(cmdlineAddress & 0xffff_ffff, 0x228, 4)
        put(cmdlineAddress >> 32, 0x0c8, 4)      // ext_cmd_line_ptr
        if let r = initrd {
            put(r.address & 0xffff_ffff, 0x218, 4); put(r.address >> 32, 0x0c0, 4)
            put(r.size & 0xffff_ffff, 0x21c, 4); put(r.size >> 32, 0x0c4, 4)
        }
        let entries = e820.prefix(128)
        put(UInt64(entries.count), 0x1e8, 1)
        for (i, e) in entries.enumerated() {
            put(e.address, 0x2d0 + 20 * i, 8); put(e.size, 0x2d0 + 20 * i + 8, 8); put(UInt64(e.type), 0x2d0 + 20 * i + 16, 4)
        }
        return z
    }

    /// What minivisor adds to a Linux command line on hosts whose KVM emulates guest ring 0 (kvm-pvm):
    /// there the guest's CPUID shows features whatever the VMM sets (see README), and the instructions
    /// behind them stop the vCPU with an emulation failure, so the kernel is told to leave them alone.
    /// The bits are the kernel's X86_FEATURE numbers (word 4 = CPUID.1:ECX, word 9 = CPUID.7:EBX),
    /// stable across kernel versions; names need CONFIG_X86_FEATURE_NAMES.
    public static let emulatingHostFeatures: [(name: String, bit: Int)] = [
        ("cx16", 4 * 32 + 13), ("pcid", 4 * 32 + 17), ("movbe", 4 * 32 + 22), ("popcnt", 4 * 32 + 23),
        ("xsave", 4 * 32 + 26), ("avx", 4 * 32 + 28), ("rdrand", 4 * 32 + 30), ("fsgsbase", 9 * 32 + 0),
        ("avx2", 9 * 32 + 5), ("smep", 9 * 32 + 7), ("invpcid", 9 * 32 + 10), ("rdseed", 9 * 32 + 18),
        ("smap", 9 * 32 + 20), ("clwb", 9 * 32 + 24),
    ]

    /// The parameters added on such hosts (empty on others).
    public static func hostCommandLine(_ host: HostProfile) -> String {
        guard host.softwareKVM else { return "" }
        return "noxsave clearcpuid=" + emulatingHostFeatures.map { String($0.bit) }.joined(separator: ",")
    }
}

/// The Linux x86 64-bit boot protocol: a bzImage or an uncompressed vmlinux ELF, with an optional initrd
/// and the command line (docs/boot-protocol.md, "Linux").
///
/// A bzImage whose payload is XZ, gzip or zstd is decompressed on the host and the vmlinux ELF inside is
/// booted at its 64-bit entry (startup_64), as for a vmlinux; any other bzImage is loaded at 1 MiB and
/// entered at its own 64-bit entry (+0x200), where its decompressor runs in the guest. Either way the
/// boot processor starts in long mode on the identity map with the boot GDT and RSI = boot_params.
public struct LinuxBootProtocol: BootProtocol {
    public init() {}

    /// The kernel's text mapping (__START_KERNEL_map): a vmlinux's segments are linked here.
    static let kernelTextMap: UInt64 = 0xffff_ffff_8000_0000

    public func recognises(_ image: ImageSource) throws(ImageError) -> Bool {
        if LinuxSetupHeader.isPresent(image.bytes) { return true }
        return Self.isVmlinux(image.bytes, name: image.name)
    }

    /// An ELF64 x86-64 executable with a segment linked in the kernel's text mapping.
    static func isVmlinux(_ bytes: UnsafeRawBufferPointer, name: String) -> Bool {
        guard ELFParser.isELF(bytes), bytes.count > 18, bytes[4] == 2,
              let elf = try? ELFParser.parse(bytes, name: name), elf.machine == 62, elf.type == 2 else { return false }
        return elf.segments.contains { $0.virtualAddress >= kernelTextMap }
    }

    public func load(_ image: ImageSource, into target: ImageLoader.Context) throws(ImageError) -> BootPlan {
        try target.loadLinux(image)
    }
}

extension ImageLoader.Context {
    /// Top of low RAM (below the 32-bit hole), where the kernel and initrd must fit.
    var lowRAMEnd: UInt64 { min(memory.regions[0].end, MemoryLayout.mmioHoleStart) }

    func loadLinux(_ source: ImageSource) throws(ImageError) -> BootPlan {
        let name = source.name
        guard modules.isEmpty else {
            throw .multiboot(name, "--module is only passed to multiboot kernels; this is a Linux kernel, give an --initrd instead")
        }
        var ranges = AddressRanges()
        let pageTables = BootStructures.pageTableGiB(memory)
        ranges.claim(0, BootLayout.firstPageEnd, "real-mode IVT, BIOS data area and boot GDT")
        ranges.claim(LinuxLayout.bootParams, LinuxLayout.bootParams + 0x1000, "boot_params (zero page)")
        ranges.claim(BootLayout.pml4, BootLayout.pageDirectories + UInt64(pageTables) * 0x1000, "page tables")
        ranges.claim(BootLayout.bootStackTop - 0x10000, BootLayout.bootStackTop, "boot stack")
        ranges.claim(LinuxLayout.cmdline, LinuxLayout.cmdline + 0x10000, "command line")
        ranges.claim(BootLayout.ebdaEnd, 0xe0000, "VGA and option ROM area")   // the MP table takes its place in reservedLow
        let tooBig = { (end: UInt64) in ImageError.linuxKernelDoesNotFit(name, needsEnd: end, ramDescription: ImageLoader.describe(memory)) }

        var setupHeader: [UInt8]? = nil
        var commandLineMax = 2047
        var initrdLimit: UInt64 = 0x8000_0000
        var how: String
        let entry: UInt64
        var kernelEnd: UInt64
        if LinuxSetupHeader.isPresent(source.bytes) {
            let h = try LinuxSetupHeader.parse(source.bytes, name: name)
            setupHeader = Array(source.bytes[LinuxSetupHeader.start..<h.end])
            commandLineMax = h.commandLineMax
            initrdLimit = h.initrdLimit
            let kernelBytes = UInt64(source.bytes.count) > h.kernelOffset ? UInt64(source.bytes.count) - h.kernelOffset : 0
            let payloadStart = h.kernelOffset + UInt64(h.payloadOffset)
            let payload: UnsafeRawBufferPointer? = h.version >= 0x0208 && h.payloadLength > 0
                && UInt64(h.payloadOffset) + UInt64(h.payloadLength) <= kernelBytes
                ? UnsafeRawBufferPointer(rebasing: source.bytes[Int(payloadStart)..<Int(payloadStart + UInt64(h.payloadLength))]) : nil
            if let payload, let format = KernelPayload.format(of: payload) {
                let buffer = try KernelPayload.decompress(payload, format: format, limit: lowRAMEnd, name: name, kernelTooBig: tooBig)
                let inner = ImageSource(name: name, bytes: buffer.bytes, file: nil)
                let elf: ELFImage
                do { elf = try ELFParser.parse(inner.bytes, name: name) } catch {
                    throw .linuxBadPayload(name, format: format.rawValue, why: "it holds no kernel ELF: \(error)")
                }
                guard elf.is64Bit, elf.machine == 62 else {
                    throw .linuxNo64BitEntry(name, why: "the kernel inside is not an x86-64 ELF")
                }
                (entry, kernelEnd) = try placeELF(elf, inner, in: &ranges, tooBig: tooBig)
                how = "bzImage, protocol \(LinuxSetupHeader.versionText(h.version)), \(format.rawValue) payload decompressed on the host (\(buffer.count >> 10) KiB), entered at startup_64"
            } else {
                guard h.has64BitEntry else {
                    throw .linuxNo64BitEntry(name, why: "its payload is not XZ, gzip or zstd and it has no 64-bit entry point (needs protocol 2.12 and XLF_KERNEL_64)")
                }
                let load = LinuxLayout.protectedModeKernel
                guard kernelBytes > LinuxLayout.entry64Offset else { throw .linuxNo64BitEntry(name, why: "the file ends inside its setup code") }
                // The image's own decompressor works in [max(load, pref_address), +init_size).
                let base = max(h.prefAddress, load)
                let (needs, o) = base.addingReportingOverflow(UInt64(h.initSize))
                guard !o, needs <= lowRAMEnd, load + kernelBytes <= lowRAMEnd else { throw tooBig(o ? UInt64.max : max(needs, load + kernelBytes)) }
                let segment = LoadSegment(physicalAddress: load, fileOffset: h.kernelOffset, fileSize: kernelBytes, memorySize: kernelBytes)
                try claimSegments([segment], entry: load + LinuxLayout.entry64Offset, name: name, in: &ranges)
                try copySegments([segment], source)
                entry = load + LinuxLayout.entry64Offset
                kernelEnd = max(needs, load + kernelBytes)
                how = "bzImage, protocol \(LinuxSetupHeader.versionText(h.version)), payload left to the kernel's own decompressor, entered at 0x\(String(entry, radix: 16))"
            }
        } else {
            let elf = try ELFParser.parse(source.bytes, name: name)
            (entry, kernelEnd) = try placeELF(elf, source, in: &ranges, tooBig: tooBig)
            how = "vmlinux ELF, entered at startup_64"
        }

        // The command line, with what this host needs added (shown in the boot log).
        let added = LinuxLayout.hostCommandLine(host)
        let fullCommandLine = [cmdline, added].filter { !$0.isEmpty }.joined(separator: " ")
        let cmd = Array(fullCommandLine.utf8)
        guard cmd.count <= min(commandLineMax, 0xffff) else { throw .linuxCommandLineTooLong(cmd.count, max: commandLineMax) }

        // The initrd: as high as it fits below the kernel's limit, page-aligned, straight from the file.
        var initrdPlace: (address: UInt64, size: UInt64)? = nil
        if let path = initrd {
            let file = try ImageFile(path: path, role: .initrd)
            guard let at = LinuxLayout.initrdAddress(size: file.size, kernelEnd: kernelEnd, ramEnd: lowRAMEnd, limit: initrdLimit),
                  ranges.overlap(at, at + file.size) == nil else {
                throw .initrdDoesNotFit(path, size: file.size, largestFree: LinuxLayout.initrdRoom(kernelEnd: kernelEnd, ramEnd: lowRAMEnd, limit: initrdLimit))
            }
            if file.size > 0 {
                let destination: UnsafeMutableRawPointer
                do { destination = try memory.pointer(at, length: file.size) } catch {
                    throw .initrdDoesNotFit(path, size: file.size, largestFree: 0)
                }
                try file.read(into: destination, count: file.size, offset: 0)
            }
            ranges.claim(at, at + file.size, "initrd")
            initrdPlace = (at, file.size)
        }

        let mp = try placeMPTable(name: name, in: &ranges)
        let zeroPage = LinuxLayout.bootParams(setupHeader: setupHeader, cmdlineAddress: LinuxLayout.cmdline,
                                              initrd: initrdPlace, e820: LinuxLayout.e820(memory.regions))
        do {
            try memory.write(bytes: cmd + [0], at: LinuxLayout.cmdline)
            try memory.write(bytes: zeroPage, at: LinuxLayout.bootParams)
            try BootStructures.writePageTables(memory)
        } catch {
            throw .noRoomForBootStructures("boot_params, command line and page tables", ramDescription: ImageLoader.describe(memory))
        }
        try writeFixedLowStructures(mpTable: mp)
        var log = ["Linux: \(how)"]
        if let r = initrdPlace { log.append("Linux: initrd \(quoted(initrd ?? "")) (\(r.size) bytes) at 0x\(String(r.address, radix: 16))") }
        if !added.isEmpty {
            log.append("Linux: this host's KVM emulates guest ring 0 (kvm-pvm), added to the command line: \(added) (clears \(LinuxLayout.emulatingHostFeatures.map(\.name).joined(separator: ",")))")
        }
        return BootPlan(kind: .linux, entry: .linux64(rip: entry, bootParams: LinuxLayout.bootParams), hasAPTrampoline: false,
                        mpTableAddress: mp, log: log)
    }

    /// Loads a kernel ELF's segments (checked against RAM, the boot structures and each other) and
    /// returns its entry point and the end of its highest segment.
    private func placeELF(_ elf: ELFImage, _ source: ImageSource, in ranges: inout AddressRanges,
                          tooBig: (UInt64) -> ImageError) throws(ImageError) -> (UInt64, UInt64) {
        guard elf.machine == 62 else { throw .wrongMachine(source.name, elf.machine) }
        guard elf.type == 2 else { throw .notExecutable(source.name, elf.type) }
        let end = elf.segments.map(\.end).max() ?? 0
        guard end <= lowRAMEnd else { throw tooBig(end) }
        // vmlinux's entry is phys_startup_64 (physical); a virtual one is translated through its segment.
        var entry = elf.entry
        if entry >= LinuxBootProtocol.kernelTextMap,
           let s = elf.segments.first(where: { entry >= $0.virtualAddress && entry - $0.virtualAddress < $0.memorySize }) {
            entry = s.physicalAddress + (entry - s.virtualAddress)
        }
        try claimSegments(elf.segments, entry: entry, name: source.name, in: &ranges)
        try copySegments(elf.segments, source)
        return (entry, end)
    }
}
