/// A small encoder for the ACPI Machine Language terms minivisor's DSDT needs (ACPI 6.5 chapter 20):
/// names, integers, strings, packages, buffers, scopes and devices, plus the resource descriptors of a
/// PCI root bridge's `_CRS` (chapter 6.4). Every function returns the encoded bytes of one term.
enum AML {
    // Opcodes (ACPI 6.5 section 20.3).
    static let zeroOp: UInt8 = 0x00, oneOp: UInt8 = 0x01, onesOp: UInt8 = 0xff
    static let bytePrefix: UInt8 = 0x0a, wordPrefix: UInt8 = 0x0b, dwordPrefix: UInt8 = 0x0c, qwordPrefix: UInt8 = 0x0e
    static let stringPrefix: UInt8 = 0x0d
    static let nameOp: UInt8 = 0x08, scopeOp: UInt8 = 0x10, bufferOp: UInt8 = 0x11, packageOp: UInt8 = 0x12
    static let extOpPrefix: UInt8 = 0x5b, deviceOp: UInt8 = 0x82
    static let rootChar: UInt8 = 0x5c, dualNamePrefix: UInt8 = 0x2e, multiNamePrefix: UInt8 = 0x2f

    /// PkgLength for `contentLength` bytes that follow it; the encoded length counts its own bytes too.
    static func pkgLength(_ contentLength: Int) -> [UInt8] {
        if contentLength + 1 <= 0x3f { return [UInt8(contentLength + 1)] }
        for extra in 1...3 {
            let total = contentLength + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var bytes = [UInt8(extra << 6) | UInt8(total & 0x0f)]
            for i in 0..<extra { bytes.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * i))) }
            return bytes
        }
        preconditionFailure("AML package of \(contentLength) bytes exceeds the 28-bit PkgLength")
    }

    /// A NameString: "\\_S5", "_SB.PCI0", "_HID". Segments shorter than four characters are padded with
    /// '_' as ASL does.
    static func nameString(_ path: String) -> [UInt8] {
        var rest = Substring(path)
        var prefix: [UInt8] = []
        if rest.hasPrefix("\\") { prefix = [rootChar]; rest = rest.dropFirst() }
        let segments = rest.split(separator: ".").map { s -> [UInt8] in
            precondition((1...4).contains(s.utf8.count), "AML name segment \(s) must be 1-4 characters")
            return Array(s.utf8) + [UInt8](repeating: UInt8(ascii: "_"), count: 4 - s.utf8.count)
        }
        switch segments.count {
        case 0: return prefix + [0]   // NullName
        case 1: return prefix + segments[0]
        case 2: return prefix + [dualNamePrefix] + segments[0] + segments[1]
        default: return prefix + [multiNamePrefix, UInt8(segments.count)] + segments.flatMap { $0 }
        }
    }

    /// The shortest integer encoding (ZeroOp, OneOp, OnesOp or a Byte/Word/DWord/QWord constant).
    static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [zeroOp]
        case 1: return [oneOp]
        case ...0xff: return [bytePrefix, UInt8(v)]
        case ...0xffff: return [wordPrefix] + le(v, 2)
        case ...0xffff_ffff: return [dwordPrefix] + le(v, 4)
        default: return [qwordPrefix] + le(v, 8)
        }
    }

    /// A DWord constant even when a shorter form exists (as ASL writes EisaId values).
    static func dword(_ v: UInt32) -> [UInt8] { [dwordPrefix] + le(UInt64(v), 4) }

    static func string(_ s: String) -> [UInt8] { [stringPrefix] + Array(s.utf8) + [0] }

    /// `Name(path, value)`; `value` is an encoded data object.
    static func name(_ path: String, _ value: [UInt8]) -> [UInt8] { [nameOp] + nameString(path) + value }

    /// `Package(n) { elements }`.
    static func package(_ elements: [[UInt8]]) -> [UInt8] {
        precondition(elements.count <= 255, "AML Package with more than 255 elements needs VarPackage")
        let body = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [packageOp] + pkgLength(body.count) + body
    }

    /// `Buffer() { bytes }`.
    static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        let body = integer(UInt64(bytes.count)) + bytes
        return [bufferOp] + pkgLength(body.count) + body
    }

    static func scope(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(path) + terms.flatMap { $0 }
        return [scopeOp] + pkgLength(body.count) + body
    }

    static func device(_ path: String, _ terms: [[UInt8]]) -> [UInt8] {
        let body = nameString(path) + terms.flatMap { $0 }
        return [extOpPrefix, deviceOp] + pkgLength(body.count) + body
    }

    /// `EisaId("PNP0A03")`: three letters in five bits each and four hex digits, stored big-endian.
    static func eisaID(_ id: String) -> UInt32 {
        let c = Array(id.utf8)
        precondition(c.count == 7, "an EISA ID is three letters and four hex digits")
        let letters = (UInt32(c[0] - 0x40) << 10) | (UInt32(c[1] - 0x40) << 5) | UInt32(c[2] - 0x40)
        let digits = UInt32(String(decoding: c[3...], as: UTF8.self), radix: 16)!
        return (letters << 16 | digits).byteSwapped
    }

    // MARK: resource descriptors (ACPI 6.5 section 6.4)

    /// The flags of an address space descriptor for a bridge that produces the range, with fixed bounds.
    static let producerFixed: UInt8 = 0x0c

    /// Word Address Space Descriptor (type 0x88): `kind` 1 = I/O, 2 = bus numbers.
    static func wordAddressSpace(kind: UInt8, typeFlags: UInt8, range: ClosedRange<UInt64>) -> [UInt8] {
        [0x88] + le(13, 2) + [kind, producerFixed, typeFlags]
            + le(0, 2) + le(range.lowerBound, 2) + le(range.upperBound, 2) + le(0, 2) + le(range.upperBound - range.lowerBound + 1, 2)
    }

    /// DWord Address Space Descriptor (type 0x87) for memory: read-write, non-cacheable.
    static func dwordMemory(_ range: ClosedRange<UInt64>) -> [UInt8] {
        [0x87] + le(23, 2) + [0, producerFixed, 0x01]
            + le(0, 4) + le(range.lowerBound, 4) + le(range.upperBound, 4) + le(0, 4) + le(range.upperBound - range.lowerBound + 1, 4)
    }

    /// I/O Port Descriptor (small, type 0x47): 16-bit decode, a fixed range of `length` ports.
    static func ioPort(_ base: UInt16, length: UInt8) -> [UInt8] {
        [0x47, 0x01] + le(UInt64(base), 2) + le(UInt64(base), 2) + [1, length]
    }

    /// A resource template: the descriptors and the End Tag (checksum 0: "treat as correct").
    static func resourceTemplate(_ descriptors: [[UInt8]]) -> [UInt8] {
        buffer(descriptors.flatMap { $0 } + [0x79, 0x00])
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
}
