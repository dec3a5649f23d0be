import CLibpng
import SoftGPU

/// Writes scanout images as PNG files with libpng's simplified API.
public enum PNGWriter {
    public struct WriteError: Error, CustomStringConvertible {
        public let path: String
        public let message: String
        public var description: String { "cannot write screenshot \(path): \(message)" }
    }

    /// Writes `image` (XRGB8888 pixels) as an 8-bit RGB PNG.
    public static func write(_ image: Image, to path: String) throws(WriteError) {
        guard image.width > 0, image.height > 0 else { throw WriteError(path: path, message: "the display is off (no primary plane)") }
        var rgb = [UInt8](repeating: 0, count: image.width * image.height * 3)
        for (i, p) in image.pixels.enumerated() {
            rgb[3 * i] = UInt8(truncatingIfNeeded: p >> 16)
            rgb[3 * i + 1] = UInt8(truncatingIfNeeded: p >> 8)
            rgb[3 * i + 2] = UInt8(truncatingIfNeeded: p)
        }
        var png = png_image()
        png.version = UInt32(PNG_IMAGE_VERSION)
        png.width = UInt32(image.width)
        png.height = UInt32(image.height)
        png.format = UInt32(PNG_FORMAT_RGB)
        let ok = rgb.withUnsafeBytes { buf in
            png_image_write_to_file(&png, path, 0, buf.baseAddress, Int32(image.width * 3), nil)
        }
        defer { png_image_free(&png) }
        guard ok != 0 else {
            let msg = withUnsafeBytes(of: png.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            throw WriteError(path: path, message: msg.isEmpty ? "libpng failed" : msg)
        }
    }
}
