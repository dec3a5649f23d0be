import Glibc
import Testing
import KVM
@testable import Machine

/// A temporary directory for files a test creates; removed (with its files) when the test ends.
final class TempDirectory {
    let path: String
    private var files: [String] = []
    private var directories: [String] = []

    init() {
        var template = Array("/tmp/minivisor-loader-XXXXXX".utf8CString)
        path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
    }

    deinit {
        for f in files { unlink(f) }
        for d in directories.reversed() { rmdir(d) }
        rmdir(path)
    }

    /// Registers `name` for removal and returns its full path.
    func file(_ name: String) -> String {
        let p = path + "/" + name
        files.append(p)
        return p
    }

    /// Writes `bytes` to `name`; when `size` is larger, extends the file sparsely (ftruncate) to that size.
    @discardableResult
    func write(_ name: String, _ bytes: [UInt8], size: UInt64? = nil) -> String {
        let p = file(name)
        let fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        precondition(fd >= 0, "cannot create \(p)")
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        precondition(written == bytes.count)
        if let size { precondition(ftruncate(fd, off_t(size)) == 0, "ftruncate \(p)") }
        close(fd)
        return p
    }

    func fifo(_ name: String) -> String {
        let p = file(name)
        precondition(mkfifo(p, 0o600) == 0, "mkfifo \(p)")
        return p
    }

    func directory(_ name: String) -> String {
        let p = path + "/" + name
        precondition(mkdir(p, 0o700) == 0)
        directories.append(p)
        return p
    }
}

/// Guest images and modules given as files: opened without blocking, refused unless they are regular
/// files, and sized against guest RAM before any of their bytes are read.
@Suite("Image and module files (no KVM)")
struct ImageFileTests {
    static let tib: UInt64 = 1 << 40
    let code: [UInt8] = [0x90, 0x90, 0xf4]

    func memory() throws -> GuestMemory { try GuestMemory(bytes: 16 << 20) }

    /// The description of the ImageError that loading throws (records an issue if it does not throw one).
    func loadError(_ image: BootImage, modules: [BootModule] = [],
                   sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let mem = try memory()
        do {
            _ = try ImageLoader.load(image, into: mem, cpuCount: 1, cmdline: "", modules: modules)
            Issue.record("loading succeeded", sourceLocation: sourceLocation)
            return ""
        } catch {
            let text = "\(error)"
            #expect(!text.contains("\n") && !text.contains("\r"), "error spans lines: \(text)", sourceLocation: sourceLocation)
            return text
        }
    }

    /// A multiboot kernel (a.out kludge) to hang modules on.
    var kernel: BootImage { .bytes(MultibootHeader.aoutImage(code: code).bytes, name: "kernel") }

    @Test func hugeSparseImageIsAnErrorNotACrash() throws {
        let dir = TempDirectory()
        let path = dir.write("huge.img", [], size: Self.tib)
        let text = try loadError(.file(path))
        #expect(text.contains("neither an ELF64"), "\(text)")
    }

    @Test func hugeSegmentOfASparseImageIsRefusedBeforeItIsRead() throws {
        // A valid ELF header whose one segment claims 512 GiB of file bytes, in a 1 TiB sparse file.
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: [], memsz: 1 << 39, offset: 0x1000, filesz: 1 << 39)]).build()
        let dir = TempDirectory()
        let path = dir.write("huge.elf", elf, size: Self.tib)
        let text = try loadError(.file(path))
        #expect(text.contains("outside guest RAM"), "\(text)")
    }

    @Test func hugeSparseModuleIsRefusedBeforeItIsRead() throws {
        let dir = TempDirectory()
        let path = dir.write("huge.mod", [], size: Self.tib)
        let text = try loadError(kernel, modules: [BootModule(argument: path)])
        #expect(text.contains("module") && text.contains("\(Self.tib) bytes"), "\(text)")
    }

    @Test func moduleBiggerThanRAMIsRefused() throws {
        let dir = TempDirectory()
        let path = dir.write("big.mod", Array("first bytes".utf8), size: 32 << 20)   // RAM is 16 MiB
        let text = try loadError(kernel, modules: [BootModule(argument: "\(path) arg")])
        #expect(text.contains("\(32 << 20) bytes") && text.contains("--memory"), "\(text)")
    }

    @Test func fifoIsRefusedWithoutBlocking() throws {
        let dir = TempDirectory()
        let fifo = dir.fifo("pipe")
        let asImage = try loadError(.file(fifo))
        #expect(asImage.contains("FIFO"), "\(asImage)")
        let asModule = try loadError(kernel, modules: [BootModule(argument: fifo)])
        #expect(asModule.contains("FIFO") && asModule.contains("module"), "\(asModule)")
    }

    @Test func directoryIsRefused() throws {
        let dir = TempDirectory()
        let d = dir.directory("sub")
        #expect(try loadError(.file(d)).contains("directory"))
        #expect(try loadError(kernel, modules: [BootModule(argument: d)]).contains("directory"))
    }

    @Test func characterDeviceIsRefused() throws {
        let asImage = try loadError(.file("/dev/zero"))
        #expect(asImage.contains("character device"), "\(asImage)")
        let asModule = try loadError(kernel, modules: [BootModule(argument: "/dev/zero")])
        #expect(asModule.contains("character device"), "\(asModule)")
    }

    @Test func missingFilesAreNamed() throws {
        #expect(try loadError(.file("/nonexistent/guest.elf")).contains("does not exist"))
        #expect(try loadError(kernel, modules: [BootModule(argument: "/nonexistent/mod")]).contains("/nonexistent/mod"))
    }

    @Test func pathWithANewlineStaysOnOneLine() throws {
        let dir = TempDirectory()
        let missing = dir.path + "/no\nsuch"
        let text = try loadError(.file(missing))
        #expect(text.contains("no\\nsuch"), "\(text)")
        let garbage = dir.write("bad\nimage", [UInt8](repeating: 0x41, count: 100))
        #expect(try loadError(.file(garbage)).contains("bad\\nimage"))
        let module = dir.write("bad\nmodule", [], size: 64 << 20)
        #expect(try loadError(kernel, modules: [BootModule(argument: module)]).contains("bad\\nmodule"))
        #expect(try loadError(kernel, modules: [BootModule(argument: dir.path + "/no\nmodule")]).contains("no\\nmodule"))
    }

    @Test func everyImageErrorIsOneLineWhateverTheName() {
        let n = "evil\nname\r\u{1b}[31m'\\"
        let all: [ImageError] = [
            .notFound(n), .unreadable(n, "Permission denied"), .notRegularFile(n, kind: "a FIFO"), .empty(n), .unknownFormat(n),
            .wrongClass(n, "32-bit"), .wrongMachine(n, 3), .notExecutable(n, 3), .malformedELF(n, "x"), .noLoadableSegments(n),
            .segmentOutsideRAM(n, start: 1, end: 2, ramDescription: "0x0-0x1000"),
            .overlapsBootStructure(n, start: 1, end: 2, structure: "page tables", structureStart: 0, structureEnd: 3),
            .entryOutsideImage(n, 1), .linuxProtocolTooOld(n, version: 0x205), .linuxNo64BitEntry(n, why: "x"),
            .linuxBadPayload(n, format: "XZ", why: "x"), .linuxKernelDoesNotFit(n, needsEnd: 1, ramDescription: "0x0-0x1000"),
            .linuxCommandLineTooLong(3000, max: 2047), .initrdUnreadable(n, "it does not exist"),
            .initrdDoesNotFit(n, size: 2, largestFree: 1), .initrdNeedsLinux(n), .multiboot(n, "x"), .moduleUnreadable(n, "it does not exist"),
            .moduleDoesNotFit(n, size: 1, largestFree: 0), .multibootInfoDoesNotFit(bytes: 1, modules: 1, largestFree: 0),
            .noRoomForBootStructures("MP table", ramDescription: "0x0-0x1000"), .commandLineTooLong(5000),
            .nulInText("the string of module \(quoted(n))"),
        ]
        for e in all {
            let text = e.description
            #expect(!text.unicodeScalars.contains { $0.value < 0x20 }, "\(text)")
            if text.contains("evil") { #expect(text.contains(quoted(n)), "\(text)") }
        }
    }

    @Test func fileImagesLoadLikeByteImages() throws {
        let elf = ELFBuilder(entry: 0x100000, segments: [
            .init(paddr: 0x100000, data: code),
            .init(paddr: 0x200000, data: [1, 2, 3, 4], memsz: 64),
        ]).build()
        let dir = TempDirectory()
        let path = dir.write("guest.elf", elf)
        let mem = try memory()
        try mem.fill(0xaa, at: 0x200000, count: 64)
        let plan = try ImageLoader.load(.file(path), into: mem, cpuCount: 1, cmdline: "")
        #expect(plan.kind == .elf64)
        #expect(try mem.readBytes(at: 0x100000, count: 3) == code)
        #expect(try mem.readBytes(at: 0x200000, count: 64) == [1, 2, 3, 4] + [UInt8](repeating: 0, count: 60))
    }
}
