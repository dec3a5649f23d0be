import Logging
import Synchronization

/// A swift-log handler that keeps every line it is given, for tests that count what a guest made the VMM log.
final class LogCapture: Sendable {
    struct Line: Sendable { let level: Logger.Level; let text: String }
    private let store = Mutex<[Line]>([])

    /// A logger writing into this capture at `level` and above.
    func logger(level: Logger.Level = .trace) -> Logger {
        var l = Logger(label: "test") { _ in Handler(capture: self) }
        l.logLevel = level
        return l
    }

    var lines: [Line] { store.withLock { $0 } }
    var texts: [String] { lines.map(\.text) }
    /// Total bytes written, one newline per line, as a stream handler would.
    var bytes: Int { lines.reduce(0) { $0 + $1.text.utf8.count + 1 } }

    func append(_ line: Line) { store.withLock { $0.append(line) } }

    struct Handler: LogHandler {
        let capture: LogCapture
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            capture.append(Line(level: event.level, text: event.message.description))
        }
    }
}

/// The K of every "(K similar messages suppressed)" in `texts`, summed.
func suppressedTotal(_ texts: [String]) -> Int {
    let tail = " similar messages suppressed)"
    return texts.reduce(0) { sum, t in
        guard t.hasSuffix(tail), let open = t.lastIndex(of: "("),
              let k = Int(t[t.index(after: open)...].dropLast(tail.count)) else { return sum }
        return sum + k
    }
}
