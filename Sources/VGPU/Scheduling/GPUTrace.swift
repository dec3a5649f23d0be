import Glibc
import Machine
import SoftGPU
import Synchronization

/// The GPU scheduler's timeline, written as Chrome trace event JSON (`--trace PATH`; docs/tracing.md):
/// one track per physical engine, where each slice is one vGPU's turn on that engine (which vGPU, which
/// submission, how long, and why it was switched out), and one track per vGPU for instant events
/// (rejected submissions, resets, hangs). Perfetto (ui.perfetto.dev) and chrome://tracing open it.
///
/// Threads and ownership: events are recorded from any thread (dispatchers, vCPU threads, the mediator)
/// into one `State` behind one Mutex, never held while calling out; `write(to:refusing:)` runs once, on
/// the thread that ends the VMs. At most `maximumEvents` are kept; later ones are counted as dropped
/// (the count is in the file's metadata), so a long run cannot grow the process without bound.
public final class GPUTrace: Sendable {
    /// Why a vGPU's turn on an engine ended.
    public enum SwitchReason: String, Sendable {
        /// Its submission finished.
        case completed
        /// Its time slice ran out at a command boundary; the rest of the submission waits for its next turn.
        case sliceExpired = "slice expired"
        /// The guest reset the engine (RESET), or the VM stopped.
        case aborted
        /// The watchdog found the vGPU hung and reset it.
        case hang
        /// An execution fault (for example an invalid GTT entry) ended the submission.
        case fault
    }

    public struct Event: Sendable, Equatable {
        public enum Kind: Sendable, Equatable { case turn(SwitchReason), instant }
        public var kind: Kind
        public var name: String
        public var engine: EngineID?
        public var vgpu: Int
        /// Microseconds since the trace began.
        public var start: Double
        public var duration: Double
        public var args: [(String, String)]

        public static func == (a: Event, b: Event) -> Bool {
            a.kind == b.kind && a.name == b.name && a.engine == b.engine && a.vgpu == b.vgpu && a.start == b.start
                && a.duration == b.duration && a.args.map(\.0) == b.args.map(\.0) && a.args.map(\.1) == b.args.map(\.1)
        }
    }

    private struct State {
        var events: [Event] = []
        var dropped = 0
        var vgpuNames: [Int: String] = [:]
    }

    public let maximumEvents: Int
    private let origin = ContinuousClock.now
    private let state = Mutex(State())

    public init(maximumEvents: Int = 1_000_000) { self.maximumEvents = maximumEvents }

    /// Microseconds from the start of the trace to `t`.
    public func micros(_ t: ContinuousClock.Instant) -> Double {
        let d = t - origin
        return Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
    }

    /// Names vGPU `id`'s track (the VM's name).
    public func nameVGPU(_ id: Int, _ name: String) { state.withLock { $0.vgpuNames[id] = name } }

    /// One vGPU's turn on an engine, from `start` to `end`.
    public func turn(engine: EngineID, vgpu: Int, submission: UInt64, start: ContinuousClock.Instant,
                     end: ContinuousClock.Instant, reason: SwitchReason, args: [(String, String)] = []) {
        let s = micros(start)
        append(Event(kind: .turn(reason), name: "vgpu\(vgpu) #\(submission)", engine: engine, vgpu: vgpu, start: s,
                     duration: max(0, micros(end) - s),
                     args: [("vgpu", "\(vgpu)"), ("submission", "\(submission)"), ("switched out", reason.rawValue)] + args))
    }

    /// Something that happened to vGPU `vgpu` at `at`: a rejection, a reset, a hang.
    public func instant(_ name: String, vgpu: Int, engine: EngineID? = nil, at: ContinuousClock.Instant = .now,
                        args: [(String, String)] = []) {
        append(Event(kind: .instant, name: name, engine: engine, vgpu: vgpu, start: micros(at), duration: 0,
                     args: [("vgpu", "\(vgpu)")] + (engine.map { [("engine", "\($0)")] } ?? []) + args))
    }

    private func append(_ e: Event) {
        state.withLock { s in
            if s.events.count < maximumEvents { s.events.append(e) } else { s.dropped += 1 }
        }
    }

    /// The events so far, in the order they were recorded.
    public var events: [Event] { state.withLock { $0.events } }
    public var dropped: Int { state.withLock { $0.dropped } }

    /// The trace as Chrome trace event JSON.
    public func json() -> String {
        let (events, dropped, names) = state.withLock { ($0.events, $0.dropped, $0.vgpuNames) }
        var out = "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"producer\":\"minivisor\",\"droppedEvents\":\"\(dropped)\"},\"traceEvents\":[\n"
        var first = true
        func add(_ line: String) {
            if !first { out += ",\n" }
            first = false
            out += line
        }
        add(#"{"ph":"M","name":"process_name","pid":1,"args":{"name":"GPU engines"}}"#)
        for e in EngineID.allCases {
            add("{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":\(e.rawValue + 1),\"args\":{\"name\":\"\(e)\"}}")
        }
        add(#"{"ph":"M","name":"process_name","pid":2,"args":{"name":"vGPU events"}}"#)
        for id in Set(events.map(\.vgpu)).union(names.keys).sorted() {
            let n = names[id].map { "vgpu\(id) (\($0))" } ?? "vgpu\(id)"
            add("{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":2,\"tid\":\(id),\"args\":{\"name\":\(Self.string(n))}}")
        }
        for e in events {
            let args = "{" + e.args.map { "\(Self.string($0.0)):\(Self.string($0.1))" }.joined(separator: ",") + "}"
            switch e.kind {
            case .turn:
                add("{\"ph\":\"X\",\"name\":\(Self.string(e.name)),\"cat\":\"submission\",\"pid\":1,\"tid\":\((e.engine?.rawValue ?? 0) + 1),\"ts\":\(Self.number(e.start)),\"dur\":\(Self.number(e.duration)),\"args\":\(args)}")
            case .instant:
                add("{\"ph\":\"i\",\"s\":\"t\",\"name\":\(Self.string(e.name)),\"cat\":\"event\",\"pid\":2,\"tid\":\(e.vgpu),\"ts\":\(Self.number(e.start)),\"args\":\(args)}")
            }
        }
        return out + "\n]}\n"
    }

    /// Writes the trace to `path` (created or truncated; checked against `inputs` on the descriptor).
    public func write(to path: String, refusing inputs: [InputFile] = []) throws(OutputError) {
        let fd = try OutputFiles.open(OutputFile(.trace, path), refusing: inputs)
        defer { close(fd) }
        _ = ftruncate(fd, 0)
        var text = json()
        let failure: Int32? = text.withUTF8 { b -> Int32? in
            var done = 0
            while done < b.count {
                let n = Glibc.write(fd, b.baseAddress! + done, b.count - done)
                if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                if n <= 0 { return n < 0 ? errno : EIO }
                done += n
            }
            return nil
        }
        if let e = failure { throw OutputError(OutputFile(.trace, path), .cannotOpen(e)) }
    }

    /// A JSON string literal.
    static func string(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if u.value < 0x20 || u.value == 0x2028 || u.value == 0x2029 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }

    /// A JSON number with microsecond resolution to a nanosecond.
    static func number(_ v: Double) -> String {
        guard v.isFinite else { return "0" }
        let ns = Int64((v * 1000).rounded())
        let whole = ns / 1000, frac = abs(ns % 1000)
        let f = String(frac)
        return "\(whole).\(String(repeating: "0", count: 3 - f.count))\(f)"
    }
}
