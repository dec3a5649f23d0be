import CLibpng
import Glibc
import KVM
import Machine
import SoftGPU

/// Writes scanout images as PNG files with libpng's simplified API.
public enum PNGWriter {
    public struct WriteError: Error, CustomStringConvertible {
        public let path: String
        public let message: String
        public var description: String { "cannot write screenshot \(quoted(path)): \(message)" }
    }

    /// Writes `image` (XRGB8888 pixels) as an 8-bit RGB PNG. The file is opened without blocking and
    /// checked before it is truncated (`OutputFiles.open`): a regular file or a character device, none of
    /// `inputs`.
    public static func write(_ image: Image, to path: String, refusing inputs: [InputFile] = []) throws(WriteError) {
        guard image.width > 0, image.height > 0 else { throw WriteError(path: path, message: "the display is off (no primary plane)") }
        var rgb = [UInt8](repeating: 0, count: image.width * image.height * 3)
        for (i, p) in image.pixels.enumerated() {
            rgb[3 * i] = UInt8(truncatingIfNeeded: p >> 16)
            rgb[3 * i + 1] = UInt8(truncatingIfNeeded: p >> 8)
            rgb[3 * i + 2] = UInt8(truncatingIfNeeded: p)
        }
        let fd: Int32
        do { fd = try OutputFiles.open(OutputFile(.screenshot, path), refusing: inputs) } catch {
            throw WriteError(path: path, message: "it \(error.reason)")
        }
        guard let file = fdopen(fd, "wb") else {
            let e = errno
            close(fd)
            throw WriteError(path: path, message: errnoDescription(e))
        }
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        png.width = UInt32(image.width)
        png.height = UInt32(image.height)
        png.format = UInt32(PNG_FORMAT_RGB)
        errno = 0
        let ok = rgb.withUnsafeBytes { buf in
            png_image_write_to_stdio(&png, file, 0, buf.baseAddress, Int32(image.width * 3), nil)
        }
        var e: Int32 = ok == 0 ? errno : 0
        if fflush(file) != 0 && e == 0 { e = errno }
        if fclose(file) != 0 && e == 0 { e = errno }
        defer { png_image_free(&png) }
        guard ok != 0, e == 0 else {
            let msg = withUnsafeBytes(of: png.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            let cause = e != 0 ? errnoDescription(e) : (msg.isEmpty ? "libpng failed" : msg)
            throw WriteError(path: path, message: cause)
        }
    }
}
