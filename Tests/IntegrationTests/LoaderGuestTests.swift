import Glibc
import Machine
import Minivisor
import Testing

/// Multiboot kernels as plain linkers lay them out, booted end to end. Needs /dev/kvm.
@Suite("Loader guests (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct LoaderGuestTests {
    /// The guest's program headers, to prove the test exercises what it claims.
    func segments(_ path: String) throws -> [LoadSegment] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return try ELFParser.parse(Array(bytes.prefix(max(n, 0))), name: path).segments
    }

    @Test func plainLdKernelWithHeadersBelowOneMiBBoots() throws {
        let image = try Support.guest("multiboot-plain")
        #expect(try segments(image).contains { $0.physicalAddress == 0xff000 }, "ld no longer puts the headers at 0xff000")
        let module = Support.tempPath("plain-module.txt")
        Support.writeFile(module, Array("module body\n".utf8))
        defer { unlink(module) }
        // More than 64 modules with strings over 255 bytes: each must arrive whole.
        let modules = (0..<80).map { i in BootModule(argument: "\(module) #\(i) " + String(repeating: "x", count: 300)) }
        let (reason, out, _) = try Support.boot(.file(image), cmdline: "plain code=21", modules: modules)
        #expect(reason == .debugExit(21), "\(out)")
        #expect(out.contains("multiboot-plain checks passed"))
        #expect(out.contains("cmdline: plain code=21"))
        #expect(out.contains("boot loader: minivisor"))
        for (i, m) in modules.enumerated() { #expect(out.contains("\(m.string)\n"), "module \(i) string") }
    }

    @Test func plainLdKernelThroughTheCommandLine() throws {
        let (status, out) = Support.run(Support.minivisor, ["run", try Support.guest("multiboot-plain"), "--cmdline", "code=3"])
        #expect(status == 7, "\(out)")   // (3 << 1) | 1
        #expect(out.contains("multiboot-plain checks passed"))
    }
}
