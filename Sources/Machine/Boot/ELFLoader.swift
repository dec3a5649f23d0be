import CLibelf
import Glibc

/// One loadable segment: where it goes, its file bytes and its zero-filled tail.
public struct LoadSegment: Equatable, Sendable {
    public let physicalAddress: UInt64
    public let fileOffset: UInt64
    public let fileSize: UInt64
    public let memorySize: UInt64
    /// Where the segment is linked (p_vaddr); the physical address for formats without one.
    public let virtualAddress: UInt64

    public init(physicalAddress: UInt64, fileOffset: UInt64, fileSize: UInt64, memorySize: UInt64, virtualAddress: UInt64? = nil) {
        self.physicalAddress = physicalAddress
        self.fileOffset = fileOffset
        self.fileSize = fileSize
        self.memorySize = memorySize
        self.virtualAddress = virtualAddress ?? physicalAddress
    }
    /// One past the last byte in guest memory (the parsers guarantee this does not overflow).
    public var end: UInt64 { physicalAddress + memorySize }
}

/// What libelf told us about an ELF file.
public struct ELFImage: Equatable, Sendable {
    public let is64Bit: Bool
    public let machine: UInt16
    public let type: UInt16
    public let entry: UInt64
    public let segments: [LoadSegment]
}

/// Parses ELF files with libelf (the design's chosen ELF library). Pure: no guest memory involved.
///
/// Every `PT_LOAD` segment that comes back has `p_filesz <= p_memsz`, its file bytes inside the file,
/// `p_paddr + p_memsz` without overflow, and no overlap with another segment (QEMU refuses overlapping
/// segments too), so the loader can copy at most guest-RAM-many bytes, once.
public enum ELFParser {
    /// More program headers than this is refused before libelf is asked for any (real images have a few).
    public static let maxProgramHeaders = 0xffff
    /// libelf allocates per section; an extended section count (e_shnum = 0) above this is refused first.
    public static let maxSections: UInt64 = 0xffff

    /// Whether the bytes start with the ELF magic.
    public static func isELF(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 4 && bytes[0] == 0x7f && bytes[1] == 0x45 && bytes[2] == 0x4c && bytes[3] == 0x46
    }

    public static func isELF(_ bytes: [UInt8]) -> Bool { bytes.withUnsafeBytes { isELF($0) } }

    public static func parse(_ bytes: [UInt8], name: String) throws(ImageError) -> ELFImage {
        try bytes.withUnsafeBytes { buf in Result { () throws(ImageError) in try parse(buf, name: name) } }.get()
    }

    /// Parses the header and program headers of the file in `bytes` (read only, never written: libelf
    /// reads it with ELF_C_READ_MMAP semantics). `name` is used in error messages.
    public static func parse(_ bytes: UnsafeRawBufferPointer, name: String) throws(ImageError) -> ELFImage {
        guard isELF(bytes), let base = bytes.baseAddress else { throw .unknownFormat(name) }
        try checkSectionCount(bytes, name: name)
        _ = elf_version(UInt32(EV_CURRENT))
        guard let elf = elf_memory(UnsafeMutableRawPointer(mutating: base).assumingMemoryBound(to: CChar.self), bytes.count) else {
            throw .malformedELF(name, String(cString: elf_errmsg(-1)))
        }
        defer { elf_end(elf) }
        guard elf_kind(elf) == ELF_K_ELF else { throw .malformedELF(name, "not an ELF object") }
        let cls = gelf_getclass(elf)
        guard cls == ELFCLASS32 || cls == ELFCLASS64 else { throw .malformedELF(name, "unknown ELF class \(cls)") }
        var ehdr = GElf_Ehdr()
        guard gelf_getehdr(elf, &ehdr) != nil else { throw .malformedELF(name, String(cString: elf_errmsg(-1))) }
        var phnum = 0
        guard elf_getphdrnum(elf, &phnum) == 0 else { throw .malformedELF(name, String(cString: elf_errmsg(-1))) }
        guard phnum <= maxProgramHeaders else {
            throw .malformedELF(name, "\(phnum) program headers, more than the \(maxProgramHeaders) minivisor reads")
        }
        var segments: [LoadSegment] = []
        for i in 0..<phnum {
            var ph = GElf_Phdr()
            guard gelf_getphdr(elf, Int32(i), &ph) != nil else {
                throw .malformedELF(name, "program header \(i): \(String(cString: elf_errmsg(-1)))")
            }
            guard ph.p_type == UInt32(PT_LOAD), ph.p_memsz > 0 else { continue }
            guard ph.p_filesz <= ph.p_memsz else { throw .malformedELF(name, "segment \(i) file size exceeds memory size") }
            let (fileEnd, o1) = ph.p_offset.addingReportingOverflow(ph.p_filesz)
            guard !o1, fileEnd <= UInt64(bytes.count) else {
                throw .malformedELF(name, "segment \(i) extends past the end of the file")
            }
            let (_, o2) = ph.p_paddr.addingReportingOverflow(ph.p_memsz)
            guard !o2 else { throw .malformedELF(name, "segment \(i) wraps around the address space") }
            segments.append(LoadSegment(physicalAddress: ph.p_paddr, fileOffset: ph.p_offset,
                                        fileSize: ph.p_filesz, memorySize: ph.p_memsz, virtualAddress: ph.p_vaddr))
        }
        try checkNoOverlap(segments, name: name)
        return ELFImage(is64Bit: cls == ELFCLASS64, machine: ehdr.e_machine, type: ehdr.e_type,
                        entry: ehdr.e_entry, segments: segments)
    }

    /// Refuses segments that overlap in guest-physical memory (each byte of RAM is loaded at most once).
    static func checkNoOverlap(_ segments: [LoadSegment], name: String) throws(ImageError) {
        let sorted = segments.sorted { $0.physicalAddress < $1.physicalAddress }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.physicalAddress < a.end {
            throw .malformedELF(name, "segments at 0x\(String(a.physicalAddress, radix: 16)) and 0x\(String(b.physicalAddress, radix: 16)) overlap")
        }
    }

    /// With extended section numbering (e_shnum = 0) libelf takes the section count from section header 0
    /// and allocates and initialises a descriptor per section before anything else, so a sparse file of a
    /// few GiB can claim tens of millions of sections and cost gigabytes. Refuse that before libelf runs.
    static func checkSectionCount(_ bytes: UnsafeRawBufferPointer, name: String) throws(ImageError) {
        let littleEndian: Bool
        switch bytes.count >= 52 ? bytes[5] : 0 {   // 52: the smallest (ELF32) header
        case 1: littleEndian = true    // ELFDATA2LSB
        case 2: littleEndian = false   // ELFDATA2MSB
        default: return                // too short or no byte order: libelf refuses it
        }
        let is64 = bytes[4] == 2
        /// The `width`-byte field at `offset`, or nil past the end of the file.
        func value(_ offset: UInt64, _ width: Int) -> UInt64? {
            guard offset <= UInt64(bytes.count), UInt64(width) <= UInt64(bytes.count) - offset else { return nil }
            var v: UInt64 = 0
            for i in 0..<width {
                v |= UInt64(bytes[Int(offset) + (littleEndian ? i : width - 1 - i)]) << (8 * UInt64(i))
            }
            return v
        }
        let shoff = (is64 ? value(0x28, 8) : value(0x20, 4)) ?? 0
        let shnum = (is64 ? value(0x3c, 2) : value(0x30, 2)) ?? 1
        guard shnum == 0, shoff != 0 else { return }
        let (field, overflow) = shoff.addingReportingOverflow(is64 ? 32 : 20)
        guard !overflow, let count = value(field, is64 ? 8 : 4), count > maxSections else { return }
        throw .malformedELF(name, "claims \(count) sections, more than the \(maxSections) minivisor accepts")
    }
}
