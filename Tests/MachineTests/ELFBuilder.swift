/// Builds small ELF files in memory for loader tests.
struct ELFBuilder {
    struct Segment {
        var type: UInt32 = 1; var paddr: UInt64; var data: [UInt8]; var memsz: UInt64? = nil; var offset: UInt64? = nil
        /// p_vaddr when it should differ from p_paddr (a vmlinux links at 0xffffffff81000000).
        var vaddr: UInt64? = nil
        /// p_filesz when it should differ from data.count (e.g. a segment whose bytes lie in a sparse tail).
        var filesz: UInt64? = nil
    }
    var is64 = true
    var machine: UInt16 = 62
    var type: UInt16 = 2
    var entry: UInt64
    var segments: [Segment]
    var prefix: [UInt8] = []   // bytes placed right after the headers (e.g. a multiboot header)

    func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    func build() -> [UInt8] {
        let ehsize = is64 ? 64 : 52, phentsize = is64 ? 56 : 32
        let phoff = ehsize
        var dataOffset = UInt64(phoff + phentsize * segments.count + prefix.count)
        var offsets: [UInt64] = []
        for s in segments { offsets.append(s.offset ?? dataOffset); dataOffset += UInt64(s.data.count) }
        var h: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        h += le(type) + le(machine) + le(UInt32(1))
        if is64 { h += le(entry) + le(UInt64(phoff)) + le(UInt64(0)) }
        else { h += le(UInt32(entry)) + le(UInt32(phoff)) + le(UInt32(0)) }
        h += le(UInt32(0)) + le(UInt16(ehsize)) + le(UInt16(phentsize)) + le(UInt16(segments.count))
        h += le(UInt16(is64 ? 64 : 40)) + le(UInt16(0)) + le(UInt16(0))
        for (i, s) in segments.enumerated() {
            let memsz = s.memsz ?? UInt64(s.data.count)
            let filesz = s.filesz ?? UInt64(s.data.count)
            if is64 {
                h += le(s.type) + le(UInt32(7)) + le(offsets[i]) + le(s.vaddr ?? s.paddr) + le(s.paddr)
                h += le(filesz) + le(memsz) + le(UInt64(0x1000))
            } else {
                h += le(s.type) + le(UInt32(offsets[i])) + le(UInt32(s.paddr)) + le(UInt32(s.paddr))
                h += le(UInt32(truncatingIfNeeded: filesz)) + le(UInt32(truncatingIfNeeded: memsz)) + le(UInt32(7)) + le(UInt32(0x1000))
            }
        }
        h += prefix
        for s in segments where s.offset == nil { h += s.data }
        return h
    }
}

/// A multiboot header (optionally with the a.out kludge fields).
func multibootHeader(flags: UInt32, checksumOK: Bool = true, aout: (header: UInt32, load: UInt32, loadEnd: UInt32, bssEnd: UInt32, entry: UInt32)? = nil) -> [UInt8] {
    func le(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    let magic: UInt32 = 0x1BADB002
    var sum = 0 &- (magic &+ flags)
    if !checksumOK { sum &+= 1 }
    var h = le(magic) + le(flags) + le(sum)
    if let a = aout { h += le(a.header) + le(a.load) + le(a.loadEnd) + le(a.bssEnd) + le(a.entry) }
    return h
}
