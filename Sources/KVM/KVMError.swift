import Glibc

/// A failed KVM (or related system) call: which operation, and the errno it returned.
public struct KVMError: Error, CustomStringConvertible, Equatable, Sendable {
    public let operation: String
    public let errno: Int32

    public init(_ operation: String, errno: Int32 = Glibc.errno) {
        self.operation = operation
        self.errno = errno
    }

    public var description: String {
        "\(operation) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }
}

/// Retries a syscall-like closure while it fails with EINTR; throws KVMError on any other failure.
@inline(__always)
func check(_ operation: @autoclosure () -> String, _ body: () -> Int32) throws -> Int32 {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw KVMError(operation(), errno: e)
    }
}
