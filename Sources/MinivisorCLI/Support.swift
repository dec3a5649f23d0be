import Glibc
import MinivisorCommands

/// Opens /dev/null on each of descriptors 0, 1 and 2 that is closed (open() takes the lowest free
/// number, so each lands where it belongs). Exits with status 14 if that is impossible.
func ensureStandardDescriptors() {
    for fd: Int32 in 0...2 where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
        let opened = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY)
        if opened != fd { Glibc.exit(CLIStatus.hostError) }
    }
}

/// Writes all of `text` to `fd` (retrying partial writes and EINTR), without C's shared FILE state.
/// Errors (a closed pipe) are ignored: there is nowhere left to report them.
func writeAll(_ fd: Int32, _ text: String) {
    var t = text
    t.withUTF8 { b in
        var done = 0
        while done < b.count {
            let n = Glibc.write(fd, b.baseAddress! + done, b.count - done)
            if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else { return }
        }
    }
}

func writeStderr(_ text: String) { writeAll(2, text) }

func fail(_ message: String, status: Int32) -> Never {
    writeStderr("minivisor: \(message)\n")
    Glibc.exit(status)
}
