import CCompression
import Glibc

/// Host memory for a decompressed kernel: one private anonymous mapping, unmapped when released.
///
/// Threads and ownership: created, filled and read by the thread that loads the guest; never shared.
final class HostBuffer {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    /// Bytes written so far (at most `capacity`).
    var count = 0

    init?(capacity: Int) {
        guard capacity > 0,
              let p = mmap(nil, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
              p != MAP_FAILED else { return nil }
        base = p
        self.capacity = capacity
    }

    deinit { munmap(base, capacity) }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
}

/// The compressed kernel inside a bzImage (`payload_offset`, `payload_length`), decompressed on the host
/// with the well-kept libraries (liblzma, zlib, libzstd) so that no guest runs the kernel's own
/// decompressor, which on a host whose KVM emulates guest ring 0 takes minutes.
///
/// Linux's build appends the decompressed size as a little-endian 32-bit word to every compressed
/// kernel (for gzip it is the format's own ISIZE trailer): that size, checked against guest RAM, is the
/// output buffer's capacity, so a payload that claims or produces more is refused before it costs memory.
enum KernelPayload {
    enum Format: String, Sendable { case xz = "XZ", gzip, zstd }

    /// The payload's format from its magic bytes; nil for formats minivisor leaves to the kernel itself
    /// (bzip2, LZMA, LZO, LZ4).
    static func format(of p: UnsafeRawBufferPointer) -> Format? {
        func starts(_ magic: [UInt8]) -> Bool { p.count >= magic.count && zip(p, magic).allSatisfy { $0 == $1 } }
        if starts([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { return .xz }
        if starts([0x1f, 0x8b]) { return .gzip }
        if starts([0x28, 0xb5, 0x2f, 0xfd]) { return .zstd }
        return nil
    }

    /// The decompressed size Linux's build appended to the payload.
    static func declaredSize(_ p: UnsafeRawBufferPointer) -> UInt64? {
        guard p.count >= 8 else { return nil }
        return (0..<4).reduce(UInt64(0)) { $0 | UInt64(p[p.count - 4 + $1]) << (8 * UInt64($1)) }
    }

    /// Decompresses `payload` into a new buffer. `limit` bounds the declared size (guest RAM: a kernel
    /// larger than that cannot boot); `kernelTooBig` builds the error for a size over it.
    static func decompress(_ payload: UnsafeRawBufferPointer, format: Format, limit: UInt64, name: String,
                           kernelTooBig: (UInt64) -> ImageError) throws(ImageError) -> HostBuffer {
        func bad(_ why: String) -> ImageError { .linuxBadPayload(name, format: format.rawValue, why: why) }
        guard let size = declaredSize(payload), size > 0 else { throw bad("no decompressed size at its end") }
        guard size <= limit else { throw kernelTooBig(size) }
        guard let out = HostBuffer(capacity: Int(size)) else { throw bad("cannot map \(size) bytes of host memory for it") }
        // For XZ and zstd the size word follows the stream; gzip's is the stream's own last field.
        let input = format == .gzip ? payload : UnsafeRawBufferPointer(rebasing: payload[0..<(payload.count - 4)])
        switch format {
        case .xz:
            var memlimit = UInt64.max
            var inPos = 0, outPos = 0
            let r = lzma_stream_buffer_decode(&memlimit, 0, nil, input.baseAddress!.assumingMemoryBound(to: UInt8.self), &inPos,
                                              input.count, out.base.assumingMemoryBound(to: UInt8.self), &outPos, out.capacity)
            guard r == LZMA_OK else { throw bad(r == LZMA_BUF_ERROR ? "larger than its declared \(size) bytes, or truncated" : "liblzma error \(r.rawValue)") }
            out.count = outPos
        case .gzip:
            var s = z_stream()
            guard inflateInit2_(&s, 16 + 15, zlibVersion(), Int32(Swift.MemoryLayout<z_stream>.size)) == Z_OK else { throw bad("zlib cannot start") }
            defer { inflateEnd(&s) }
            s.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.assumingMemoryBound(to: UInt8.self))
            s.next_out = out.base.assumingMemoryBound(to: UInt8.self)
            // Both sizes fit in 32 bits: payload_length and the declared size are 32-bit fields.
            s.avail_in = UInt32(input.count)
            s.avail_out = UInt32(out.capacity)
            let r = inflate(&s, Z_FINISH)
            guard r == Z_STREAM_END else { throw bad(r == Z_BUF_ERROR ? "larger than its declared \(size) bytes, or truncated" : "zlib error \(r)") }
            out.count = out.capacity - Int(s.avail_out)
        case .zstd:
            let frame = ZSTD_findFrameCompressedSize(input.baseAddress, input.count)
            guard ZSTD_isError(frame) == 0 else { throw bad(String(cString: ZSTD_getErrorName(frame))) }
            let n = ZSTD_decompress(out.base, out.capacity, input.baseAddress, frame)
            guard ZSTD_isError(n) == 0 else { throw bad(String(cString: ZSTD_getErrorName(n))) }
            out.count = n
        }
        guard UInt64(out.count) == size else { throw bad("\(out.count) bytes, not the declared \(size)") }
        return out
    }
}
