import Glibc

// Shared pieces of the libFuzzer targets (README.md "Fuzzing", scripts/fuzz.sh): reading an input front to back, and writing
// a target's generated seed inputs when `make fuzz` asks for them.

/// Reads a fuzz input front to back. Past the end every read yields zeros, so every input is usable.
public struct FuzzInput {
    public let bytes: UnsafeBufferPointer<UInt8>
    public private(set) var position = 0

    public init(_ data: UnsafePointer<UInt8>?, _ size: Int) {
        bytes = UnsafeBufferPointer(start: size > 0 ? data : nil, count: size > 0 ? size : 0)
    }

    public var remaining: Int { bytes.count - position }
    public var isAtEnd: Bool { position >= bytes.count }

    public mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { UInt32(u16()) | UInt32(u16()) << 16 }
    public mutating func u64() -> UInt64 { UInt64(u32()) | UInt64(u32()) << 32 }

    /// The unread bytes (and moves to the end).
    public mutating func rest() -> UnsafeBufferPointer<UInt8> {
        let r = UnsafeBufferPointer(rebasing: bytes[min(position, bytes.count)...])
        position = bytes.count
        return r
    }
}

/// Little-endian encoding for seed inputs.
public struct FuzzEncoder {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { u8(UInt8(truncatingIfNeeded: v)); u8(UInt8(truncatingIfNeeded: v >> 8)) }
    public mutating func u32(_ v: UInt32) { u16(UInt16(truncatingIfNeeded: v)); u16(UInt16(truncatingIfNeeded: v >> 16)) }
    public mutating func u64(_ v: UInt64) { u32(UInt32(truncatingIfNeeded: v)); u32(UInt32(truncatingIfNeeded: v >> 32)) }
    public mutating func raw(_ b: [UInt8]) { bytes += b }
    public mutating func dwords(_ d: [UInt32]) { for v in d { u32(v) } }
}

public enum FuzzSeeds {
    /// The environment variable naming the directory `make fuzz` wants a target's generated seeds in.
    public static let variable = "MINIVISOR_FUZZ_SEEDS"

    /// Call from `LLVMFuzzerInitialize`: when MINIVISOR_FUZZ_SEEDS names a directory, writes `make()`'s
    /// inputs there (one file each) and exits; otherwise returns without calling `make`.
    public static func writeIfRequested(_ make: () -> [(name: String, bytes: [UInt8])]) {
        guard let dir = getenv(variable).map({ String(cString: $0) }), !dir.isEmpty else { return }
        mkdir(dir, 0o755)
        for (name, bytes) in make() {
            let path = dir + "/" + name
            guard let f = fopen(path, "wb") else {
                fuzzLog("cannot write seed \(path): \(String(cString: strerror(errno))): check the directory")
                exit(2)
            }
            _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, f) }
            fclose(f)
        }
        exit(0)
    }
}

/// Stops the process with a one-line finding; libFuzzer reports it as a crash and saves the input.
public func fuzzFinding(_ message: String) -> Never {
    fuzzLog("FUZZ FINDING: \(message)")
    abort()
}

/// Writes one line to standard error.
public func fuzzLog(_ line: String) {
    let text = line + "\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
}

/// MINIVISOR_FUZZ_VERBOSE set: targets describe each input's outcome on stderr (for replaying one input).
public let fuzzVerbose = getenv("MINIVISOR_FUZZ_VERBOSE") != nil
