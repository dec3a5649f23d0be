import Glibc

/// A guest image or module file, opened once and read in place.
///
/// The path is opened with O_NONBLOCK (so a FIFO without a writer, or one swapped in for the file, cannot
/// stall the open) and checked only through the opened descriptor (fstat): anything but a regular file is
/// refused with what it is. Nothing is read into this process's heap: the image is mapped read-only for
/// its headers, and every byte that is loaded goes from the file straight into guest memory with pread
/// (a file that shrinks meanwhile gives an error, not a SIGBUS).
///
/// Threads and ownership: used by the thread that loads the guest, then closed; never shared.
final class ImageFile {
    enum Role { case image, module, initrd }

    let path: String
    let role: Role
    let size: UInt64
    private let fd: Int32

    init(path: String, role: Role) throws(ImageError) {
        self.path = path
        self.role = role
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            let e = errno
            if e == ENOENT || e == ENOTDIR { throw Self.error(path, role, .missing) }
            // Opening a socket fails with ENXIO; say what the path is (for the message only, nothing is opened).
            var st = stat()
            if e == ENXIO, stat(path, &st) == 0, let kind = Self.kind(st.st_mode) { throw Self.error(path, role, .notRegular(kind)) }
            throw Self.error(path, role, .system(e))
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw Self.error(path, role, .system(e))
        }
        if let kind = Self.kind(st.st_mode) {
            close(fd)
            throw Self.error(path, role, .notRegular(kind))
        }
        self.fd = fd
        size = UInt64(max(st.st_size, 0))
    }

    deinit { close(fd) }

    /// Calls `body` with the whole file mapped read-only (MAP_PRIVATE). Only the pages `body` touches are
    /// read, so a huge or sparse file costs address space, not memory. The file must not be empty.
    func withMapping<R>(_ body: (UnsafeRawBufferPointer) throws(ImageError) -> R) throws(ImageError) -> R {
        guard size > 0, size <= UInt64(Int.max) else { throw Self.error(path, role, .system(EFBIG)) }
        guard let p = mmap(nil, Int(size), PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw Self.error(path, role, .system(errno))
        }
        defer { munmap(p, Int(size)) }
        return try body(UnsafeRawBufferPointer(start: p, count: Int(size)))
    }

    /// Reads `count` bytes at file offset `offset` into `destination` (guest memory), retrying after
    /// signals and short reads.
    func read(into destination: UnsafeMutableRawPointer, count: UInt64, offset: UInt64) throws(ImageError) {
        var done: UInt64 = 0
        while done < count {
            let chunk = Int(min(count - done, 1 << 30))
            let n = pread(fd, destination + Int(done), chunk, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Self.error(path, role, n == 0 ? .shrank : .system(errno)) }
            done += UInt64(n)
        }
    }

    enum Failure { case missing, notRegular(String), shrank, system(Int32) }

    static func error(_ path: String, _ role: Role, _ failure: Failure) -> ImageError {
        switch (role, failure) {
        case (.image, .missing): return .notFound(path)
        case (.image, .notRegular(let kind)): return .notRegularFile(path, kind: kind)
        case (.image, .shrank): return .unreadable(path, "the file shrank while it was read")
        case (.image, .system(let e)): return .unreadable(path, String(cString: strerror(e)))
        case (.module, .missing): return .moduleUnreadable(path, "it does not exist")
        case (.module, .notRegular(let kind)): return .moduleUnreadable(path, "it is \(kind), not a regular file")
        case (.module, .shrank): return .moduleUnreadable(path, "the file shrank while it was read")
        case (.module, .system(let e)): return .moduleUnreadable(path, String(cString: strerror(e)))
        case (.initrd, .missing): return .initrdUnreadable(path, "it does not exist")
        case (.initrd, .notRegular(let kind)): return .initrdUnreadable(path, "it is \(kind), not a regular file")
        case (.initrd, .shrank): return .initrdUnreadable(path, "the file shrank while it was read")
        case (.initrd, .system(let e)): return .initrdUnreadable(path, String(cString: strerror(e)))
        }
    }

    /// What a non-regular file is ("a FIFO"), or nil for a regular file.
    static func kind(_ mode: mode_t) -> String? {
        switch mode & S_IFMT {
        case S_IFREG: return nil
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFSOCK: return "a socket"
        case S_IFLNK: return "a symbolic link"
        default: return "a special file"
        }
    }
}
