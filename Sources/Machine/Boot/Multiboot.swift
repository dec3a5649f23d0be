/// A multiboot (version 1) header found in an image.
public struct MultibootHeader: Equatable, Sendable {
    public static let searchLimit = 8192
    public static let flagPageAlignModules: UInt32 = 1 << 0
    public static let flagMemoryInfo: UInt32 = 1 << 1
    public static let flagVideoMode: UInt32 = 1 << 2
    public static let flagAOutKludge: UInt32 = 1 << 16

    public let fileOffset: Int
    public let flags: UInt32
    public let headerAddress: UInt32
    public let loadAddress: UInt32
    public let loadEndAddress: UInt32
    public let bssEndAddress: UInt32
    public let entryAddress: UInt32

    public var usesAOutKludge: Bool { flags & MultibootHeader.flagAOutKludge != 0 }

    public static func find(in bytes: [UInt8], name: String) throws(ImageError) -> MultibootHeader? {
        try bytes.withUnsafeBytes { buf in Result { () throws(ImageError) in try find(in: buf, name: name) } }.get()
    }

    /// Finds and validates the header in the first 8 KiB. Returns nil when there is no magic there;
    /// throws when a header is present but unusable.
    public static func find(in bytes: UnsafeRawBufferPointer, name: String) throws(ImageError) -> MultibootHeader? {
        func u32(_ o: Int) -> UInt32 {
            UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
        }
        let limit = min(bytes.count, searchLimit) - 12
        guard limit >= 0 else { return nil }
        var o = 0
        while o <= limit {
            if u32(o) == BootMagic.multibootHeader {
                let flags = u32(o + 4)
                guard BootMagic.multibootHeader &+ flags &+ u32(o + 8) == 0 else {
                    o += 4
                    continue   // not a header: checksum does not match
                }
                let required = flags & 0xffff
                let unsupported = required & ~(flagPageAlignModules | flagMemoryInfo | flagVideoMode)
                guard unsupported == 0 else {
                    throw .multiboot(name, "header requires feature bits 0x\(String(unsupported, radix: 16)) that minivisor does not provide; drop them from the header flags")
                }
                if flags & flagAOutKludge != 0 {
                    guard o + 32 <= bytes.count else { throw .multiboot(name, "header with the a.out kludge is truncated; rebuild the image") }
                    return MultibootHeader(fileOffset: o, flags: flags, headerAddress: u32(o + 12), loadAddress: u32(o + 16),
                                           loadEndAddress: u32(o + 20), bssEndAddress: u32(o + 24), entryAddress: u32(o + 28))
                }
                return MultibootHeader(fileOffset: o, flags: flags, headerAddress: 0, loadAddress: 0,
                                       loadEndAddress: 0, bssEndAddress: 0, entryAddress: 0)
            }
            o += 4
        }
        return nil
    }

    /// Load segments and entry point for the a.out kludge, per the multiboot specification.
    public func aoutLayout(fileSize: Int, name: String) throws(ImageError) -> (segments: [LoadSegment], entry: UInt64) {
        guard headerAddress >= loadAddress else { throw .multiboot(name, "header_addr is below load_addr; fix the header") }
        let delta = headerAddress - loadAddress
        guard UInt64(delta) <= UInt64(fileOffset) else { throw .multiboot(name, "load_addr lies before the start of the file; fix the header") }
        let start = UInt64(fileOffset) - UInt64(delta)
        let loadEnd = loadEndAddress == 0 ? UInt64(loadAddress) + UInt64(fileSize) - start : UInt64(loadEndAddress)
        guard loadEnd >= UInt64(loadAddress), start + (loadEnd - UInt64(loadAddress)) <= UInt64(fileSize) else {
            throw .multiboot(name, "load_end_addr runs past the end of the file; fix the header")
        }
        let fileSize = loadEnd - UInt64(loadAddress)
        let memEnd = bssEndAddress == 0 ? loadEnd : UInt64(bssEndAddress)
        guard memEnd >= loadEnd else { throw .multiboot(name, "bss_end_addr is below load_end_addr; fix the header") }
        guard UInt64(entryAddress) >= UInt64(loadAddress), UInt64(entryAddress) < memEnd else {
            throw .entryOutsideImage(name, UInt64(entryAddress))
        }
        return ([LoadSegment(physicalAddress: UInt64(loadAddress), fileOffset: start, fileSize: fileSize,
                             memorySize: memEnd - UInt64(loadAddress))], UInt64(entryAddress))
    }
}

extension MultibootHeader {
    /// A minimal multiboot kernel using the a.out kludge: a 32-byte header at file offset 0, the image loaded
    /// at `loadAddress`, entered right after the header in 32-bit protected mode. For benchmarks and tests
    /// that need to run raw 32-bit code through the ordinary boot path.
    public static func aoutImage(code: [UInt8], loadAddress: UInt32 = 0x10_0000) -> (bytes: [UInt8], entry: UInt32) {
        func le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
        let magic = BootMagic.multibootHeader, flags = flagAOutKludge
        let entry = loadAddress + 32
        let header = le(magic) + le(flags) + le(0 &- (magic &+ flags))
            + le(loadAddress) + le(loadAddress) + le(0) + le(0) + le(entry)   // header, load, load_end, bss_end, entry
        return (header + code, entry)
    }
}

/// Builds the multiboot information: the `multiboot_info` block followed by the memory map, the module
/// list, the command line, the boot loader name and every module string, in one block whose size is
/// computed from what is given (nothing is cut, dropped or overlaid). The loader places the block where
/// the image and modules are not.
struct MultibootInfoWriter {
    static let flagMemory: UInt32 = 1 << 0
    static let flagCmdline: UInt32 = 1 << 2
    static let flagModules: UInt32 = 1 << 3
    static let flagMemoryMap: UInt32 = 1 << 6
    static let flagBootLoaderName: UInt32 = 1 << 9
    static let bootLoaderName = "minivisor"
    /// `multiboot_info` is 88 bytes up to the VBE fields (116 with the framebuffer ones); 128 are cleared.
    static let infoBytes: UInt64 = 128

    struct Module { let start: UInt64; let end: UInt64; let string: String }

    /// Offsets inside the block and its total size.
    struct Layout {
        let memoryMap: [(base: UInt64, length: UInt64, type: UInt32)]
        let memoryMapOffset: UInt64
        let modulesOffset: UInt64
        let cmdlineOffset: UInt64
        let loaderNameOffset: UInt64
        let stringsOffset: UInt64
        let size: UInt64

        init(memory: GuestMemory, cmdline: String, moduleStrings: [String]) {
            // Classic PC map: 0-0x9fc00 usable, up to 1 MiB reserved, then RAM.
            var map: [(base: UInt64, length: UInt64, type: UInt32)] = [(0, 0x9fc00, 1), (0x9fc00, 0x100000 - 0x9fc00, 2)]
            for r in memory.regions {
                let start = max(r.guestAddress, 0x100000)
                if r.end > start { map.append((start, r.end - start, 1)) }
            }
            memoryMap = map
            memoryMapOffset = infoBytes
            modulesOffset = memoryMapOffset + UInt64(map.count) * 24
            cmdlineOffset = modulesOffset + UInt64(moduleStrings.count) * 16
            loaderNameOffset = cmdlineOffset + UInt64(cmdline.utf8.count) + 1
            stringsOffset = loaderNameOffset + UInt64(bootLoaderName.utf8.count) + 1
            size = moduleStrings.reduce(stringsOffset) { $0 + UInt64($1.utf8.count) + 1 }
        }
    }

    /// Writes the block laid out by `layout` at `base` (below 4 GiB: every pointer in it is 32 bits).
    static func write(memory: GuestMemory, at base: UInt64, layout: Layout, cmdline: String, modules: [Module]) throws(GuestMemoryError) {
        guard base < MemoryLayout.fourGiB, layout.size <= MemoryLayout.fourGiB - base else {
            throw .outOfRange(address: base, length: layout.size)
        }
        try memory.fill(0, at: base, count: infoBytes)
        var a = base + layout.memoryMapOffset
        for e in layout.memoryMap {
            try memory.write(UInt32(20), at: a)
            try memory.write(e.base, at: a + 4)
            try memory.write(e.length, at: a + 12)
            try memory.write(e.type, at: a + 20)
            a += 24
        }
        try memory.write(bytes: Array(cmdline.utf8) + [0], at: base + layout.cmdlineOffset)
        try memory.write(bytes: Array(bootLoaderName.utf8) + [0], at: base + layout.loaderNameOffset)
        var s = base + layout.stringsOffset
        var m = base + layout.modulesOffset
        for mod in modules {
            let bytes = Array(mod.string.utf8)
            try memory.write(bytes: bytes + [0], at: s)
            try memory.write(UInt32(mod.start), at: m)
            try memory.write(UInt32(mod.end), at: m + 4)
            try memory.write(UInt32(s), at: m + 8)
            try memory.write(UInt32(0), at: m + 12)
            s += UInt64(bytes.count) + 1
            m += 16
        }
        let lowTop = memory.regions[0].end
        let memUpperKiB = UInt32(truncatingIfNeeded: (lowTop > 0x100000 ? lowTop - 0x100000 : 0) / 1024)
        try memory.write(flagMemory | flagCmdline | flagModules | flagMemoryMap | flagBootLoaderName, at: base + 0)
        try memory.write(UInt32(639), at: base + 4)
        try memory.write(memUpperKiB, at: base + 8)
        try memory.write(UInt32(base + layout.cmdlineOffset), at: base + 16)
        try memory.write(UInt32(modules.count), at: base + 20)
        try memory.write(UInt32(base + layout.modulesOffset), at: base + 24)
        try memory.write(UInt32(layout.memoryMap.count * 24), at: base + 44)
        try memory.write(UInt32(base + layout.memoryMapOffset), at: base + 48)
        try memory.write(UInt32(base + layout.loaderNameOffset), at: base + 64)
    }
}
