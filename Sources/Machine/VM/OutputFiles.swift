import Glibc
import KVM

/// A file's identity on this host (device and inode): hard links, symbolic links and `../` spellings of
/// one file compare equal.
public struct FileIdentity: Hashable, Sendable {
    public let device: UInt64
    public let inode: UInt64

    /// The identity of what `path` names (symbolic links followed); nil when it cannot be stat'ed.
    public init?(path: String) {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        self.init(st)
    }

    init(_ st: stat) {
        device = UInt64(st.st_dev)
        inode = UInt64(st.st_ino)
    }
}

/// A file the VM reads: never to be opened for writing by the same VM.
public struct InputFile: Sendable, Equatable {
    public enum Kind: Sendable, Equatable { case image, module, initrd, kvmDevice }
    public let kind: Kind
    public let path: String
    public init(_ kind: Kind, _ path: String) { self.kind = kind; self.path = path }

    /// How messages name it, e.g. "the guest image 'hello.elf'".
    public var label: String {
        switch kind {
        case .image: return "the guest image \(quoted(path))"
        case .module: return "the module \(quoted(path))"
        case .initrd: return "the initrd \(quoted(path))"
        case .kvmDevice: return "the KVM device \(quoted(path))"
        }
    }
}

/// A file the VM writes: the serial output file or the screenshot.
public struct OutputFile: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// `--serial file:PATH` (`SerialOutput.file`): a regular file, a FIFO with a reader or a character device.
        case serial
        /// `--screenshot PATH` (`VGPUOptions.screenshotPath`): a regular file or a character device.
        case screenshot
        /// `--trace PATH`: the GPU scheduler's timeline (Chrome trace event JSON), a regular file.
        case trace
    }
    public let kind: Kind
    public let path: String
    public init(_ kind: Kind, _ path: String) { self.kind = kind; self.path = path }

    /// How messages name it, e.g. "--serial file:'out.txt'".
    public var label: String {
        switch kind {
        case .serial: return "--serial file:\(quoted(path))"
        case .screenshot: return "--screenshot \(quoted(path))"
        case .trace: return "--trace \(quoted(path))"
        }
    }

    /// The file kinds this output accepts, for messages.
    var accepted: String {
        switch kind {
        case .serial: return "give a regular file, a FIFO or a character device"
        case .screenshot, .trace: return "give a regular file"
        }
    }
}

/// An output file minivisor refuses or cannot open. One line: the output, the cause and the fix; the CLI
/// exits with status 2.
public struct OutputError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Problem: Equatable, Sendable {
        case emptyPath
        case sameAsInput(String)           // label of the input
        case sameAsOutput(String)          // label of the other output
        case isDirectory
        case noDirectory(String)           // the missing or non-directory parent
        case notWritable(Int32)            // errno
        case unsupportedType(String)       // "a socket", "a FIFO", ...
        case fifoWithoutReader
        case cannotOpen(Int32)             // errno
    }
    public let output: OutputFile
    public let problem: Problem

    public init(_ output: OutputFile, _ problem: Problem) {
        self.output = output
        self.problem = problem
    }

    /// The cause and the fix, without naming the output ("is a directory: give a file path").
    public var reason: String {
        switch problem {
        case .emptyPath:
            return "is an empty path: give a file path"
        case .sameAsInput(let input):
            return "is the same file as \(input): writing it would destroy the input; give another output path"
        case .sameAsOutput(let other):
            return "is the same file as \(other): give each output its own path"
        case .isDirectory:
            return "is a directory: give a file path"
        case .noDirectory(let dir):
            return "cannot be created: \(quoted(dir)) is not an existing directory; create it or give another path"
        case .notWritable(let e):
            return "is not writable: \(errnoDescription(e)); give a writable path"
        case .unsupportedType(let kind):
            return "is \(kind): \(output.accepted)"
        case .fifoWithoutReader:
            return "is a FIFO with no reader: start the reader first or give a regular file"
        case .cannotOpen(let e):
            return "cannot be opened: \(errnoDescription(e)); give a writable path"
        }
    }

    public var description: String { "\(output.label) \(reason)" }
}

/// "No space left on device (ENOSPC)": strerror and the errno's name, for one-line messages.
public func errnoDescription(_ e: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", EINTR: "EINTR", EIO: "EIO", ENXIO: "ENXIO", EBADF: "EBADF",
        EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY", EEXIST: "EEXIST",
        ENODEV: "ENODEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", ENFILE: "ENFILE",
        EMFILE: "EMFILE", ETXTBSY: "ETXTBSY", EFBIG: "EFBIG", ENOSPC: "ENOSPC", ESPIPE: "ESPIPE",
        EROFS: "EROFS", EPIPE: "EPIPE", ENAMETOOLONG: "ENAMETOOLONG", ELOOP: "ELOOP", EDQUOT: "EDQUOT",
        ECONNRESET: "ECONNRESET", ENOTCONN: "ENOTCONN", EOVERFLOW: "EOVERFLOW",
    ]
    let text = String(cString: strerror(e))
    return "\(text) (\(names[e] ?? "errno \(e)"))"
}

/// Up-front checks of the files a VM reads and writes, and opening outputs once the VM is ready to run.
/// Nothing here creates or truncates a file before `open`.
public enum OutputFiles {
    /// Checks every output before anything is opened for writing: that it can be created or written,
    /// is a kind of file it accepts, is not the same file as any input (device and inode: hard links,
    /// symbolic links and `../` spellings are caught) and not the same file as another output.
    /// Inputs that do not exist are skipped (the loader reports them). Opens nothing.
    public static func check(outputs: [OutputFile], inputs: [InputFile]) throws(OutputError) {
        var seen: [(OutputFile, OutputKey)] = []
        let inputIDs = inputs.compactMap { i in FileIdentity(path: i.path).map { (i, $0) } }
        for o in outputs {
            let key = try checkOne(o)
            if case .existing(let id) = key, let (input, _) = inputIDs.first(where: { $0.1 == id }) {
                throw OutputError(o, .sameAsInput(input.label))
            }
            // Two outputs may share a character device (/dev/null), not a file.
            if let (other, _) = seen.first(where: { $0.1 == key }), !isCharacterDevice(o.path) {
                throw OutputError(o, .sameAsOutput(other.label))
            }
            seen.append((o, key))
        }
    }

    /// Opens `output` for writing without blocking (a FIFO without a reader is refused, never waited
    /// for), checks what was opened (fstat) and truncates a regular file only after checking that it is
    /// none of `inputs`. Returns the descriptor (O_NONBLOCK, close-on-exec); the caller closes it.
    public static func open(_ output: OutputFile, refusing inputs: [InputFile]) throws(OutputError) -> Int32 {
        guard !output.path.isEmpty else { throw OutputError(output, .emptyPath) }
        let fd = Glibc.open(output.path, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0o644)
        guard fd >= 0 else {
            let e = errno
            var st = stat()
            let known = stat(output.path, &st) == 0
            if e == ENXIO && known && (st.st_mode & S_IFMT) == S_IFIFO { throw OutputError(output, .fifoWithoutReader) }
            if e == ENXIO && known { throw OutputError(output, .unsupportedType(kindName(st.st_mode))) }
            if e == EISDIR { throw OutputError(output, .isDirectory) }
            throw OutputError(output, .cannotOpen(e))
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw OutputError(output, .cannotOpen(e))
        }
        let type = st.st_mode & S_IFMT
        let acceptable = type == S_IFREG || type == S_IFCHR || (type == S_IFIFO && output.kind == .serial)
        guard acceptable else {
            close(fd)
            throw OutputError(output, .unsupportedType(kindName(st.st_mode)))
        }
        let id = FileIdentity(st)
        if let input = inputs.first(where: { FileIdentity(path: $0.path) == id }) {
            close(fd)
            throw OutputError(output, .sameAsInput(input.label))
        }
        if type == S_IFREG {
            while ftruncate(fd, 0) != 0 {
                let e = errno
                if e == EINTR { continue }
                close(fd)
                throw OutputError(output, .cannotOpen(e))
            }
        }
        return fd
    }

    static func isCharacterDevice(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR
    }

    enum OutputKey: Equatable {
        case existing(FileIdentity)
        case new(directory: FileIdentity, name: String)
    }

    static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFSOCK: return "a socket"
        case S_IFBLK: return "a block device"
        case S_IFCHR: return "a character device"
        case S_IFLNK: return "a symbolic link to a missing file"
        default: return "not a regular file"
        }
    }

    /// Checks one output without opening it; returns what identifies it among the outputs.
    static func checkOne(_ o: OutputFile) throws(OutputError) -> OutputKey {
        guard !o.path.isEmpty else { throw OutputError(o, .emptyPath) }
        var st = stat()
        if stat(o.path, &st) == 0 {
            let type = st.st_mode & S_IFMT
            switch type {
            case S_IFDIR: throw OutputError(o, .isDirectory)
            case S_IFREG, S_IFCHR: break
            case S_IFIFO where o.kind == .serial: break
            default: throw OutputError(o, .unsupportedType(kindName(st.st_mode)))
            }
            guard access(o.path, W_OK) == 0 else { throw OutputError(o, .notWritable(errno)) }
            return .existing(FileIdentity(st))
        }
        let e = errno
        var lst = stat()
        if e == ENOENT && lstat(o.path, &lst) == 0 { throw OutputError(o, .unsupportedType(kindName(lst.st_mode))) }
        guard e == ENOENT else {
            if e == ENOTDIR { throw OutputError(o, .noDirectory(directory(of: o.path))) }
            throw OutputError(o, .notWritable(e))
        }
        if o.path.hasSuffix("/") { throw OutputError(o, .noDirectory(o.path)) }
        let dir = directory(of: o.path)
        var dst = stat()
        guard stat(dir, &dst) == 0, (dst.st_mode & S_IFMT) == S_IFDIR else { throw OutputError(o, .noDirectory(dir)) }
        guard access(dir, W_OK | X_OK) == 0 else { throw OutputError(o, .notWritable(errno)) }
        let name = String(o.path.split(separator: "/", omittingEmptySubsequences: true).last ?? Substring(o.path))
        return .new(directory: FileIdentity(dst), name: name)
    }

    /// The directory part of `path` ("." for a bare name).
    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = path[..<slash]
        return dir.isEmpty ? "/" : String(dir)
    }
}
