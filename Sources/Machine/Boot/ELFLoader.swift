import CLibelf
import Glibc

/// One loadable segment: where it goes, its file bytes and its zero-filled tail.
public struct LoadSegment: Equatable, Sendable {
    public let physicalAddress: UInt64
    public let fileOffset: UInt64
    public let fileSize: UInt64
    public let memorySize: UInt64
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
public enum ELFParser {
    /// Whether the bytes start with the ELF magic.
    public static func isELF(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && bytes[0] == 0x7f && bytes[1] == 0x45 && bytes[2] == 0x4c && bytes[3] == 0x46
    }

    /// Parses the header and program headers. `name` is used in error messages.
    public static func parse(_ bytes: [UInt8], name: String) throws(ImageError) -> ELFImage {
        guard isELF(bytes) else { throw .unknownFormat(name) }
        _ = elf_version(UInt32(EV_CURRENT))
        var copy = bytes   // libelf wants a mutable buffer; it must outlive the Elf handle
        do {
            return try copy.withUnsafeMutableBytes { buf in try parseBuffer(buf, fileSize: bytes.count, name: name) }
        } catch let e as ImageError {
            throw e
        } catch {
            throw .malformedELF(name, "\(error)")
        }
    }

    private static func parseBuffer(_ buf: UnsafeMutableRawBufferPointer, fileSize: Int, name: String) throws(ImageError) -> ELFImage {
        do {
            guard let elf = elf_memory(buf.baseAddress!.assumingMemoryBound(to: CChar.self), buf.count) else {
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
            var segments: [LoadSegment] = []
            for i in 0..<phnum {
                var ph = GElf_Phdr()
                guard gelf_getphdr(elf, Int32(i), &ph) != nil else {
                    throw .malformedELF(name, "program header \(i): \(String(cString: elf_errmsg(-1)))")
                }
                guard ph.p_type == UInt32(PT_LOAD), ph.p_memsz > 0 else { continue }
                guard ph.p_filesz <= ph.p_memsz else { throw .malformedELF(name, "segment \(i) file size exceeds memory size") }
                let (fileEnd, o1) = ph.p_offset.addingReportingOverflow(ph.p_filesz)
                guard !o1, fileEnd <= UInt64(fileSize) else {
                    throw .malformedELF(name, "segment \(i) extends past the end of the file")
                }
                let (_, o2) = ph.p_paddr.addingReportingOverflow(ph.p_memsz)
                guard !o2 else { throw .malformedELF(name, "segment \(i) wraps around the address space") }
                segments.append(LoadSegment(physicalAddress: ph.p_paddr, fileOffset: ph.p_offset,
                                            fileSize: ph.p_filesz, memorySize: ph.p_memsz))
            }
            return ELFImage(is64Bit: cls == ELFCLASS64, machine: ehdr.e_machine, type: ehdr.e_type,
                            entry: ehdr.e_entry, segments: segments)
        }
    }
}
