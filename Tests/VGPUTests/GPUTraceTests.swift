import FoundationEssentials
import Glibc
import Machine
import SoftGPU
import Testing
@testable import VGPU

/// The Chrome trace writer: what goes in comes out as valid trace-event JSON that a JSON parser (the
/// toolchain's, not ours) reads back, with engine tracks, vGPU tracks and bounded size.
@Suite("GPU trace (Chrome trace event format)")
struct GPUTraceTests {
    struct File: Decodable {
        struct Event: Decodable {
            let ph: String
            let name: String
            let pid: Int
            let tid: Int?
            let ts: Double?
            let dur: Double?
            let args: [String: String]?
        }
        let traceEvents: [Event]
        let otherData: [String: String]
    }

    func decode(_ trace: GPUTrace) throws -> File {
        try JSONDecoder().decode(File.self, from: Data(trace.json().utf8))
    }

    @Test func turnsAndInstantsRoundTrip() throws {
        let trace = GPUTrace()
        trace.nameVGPU(2, "vm \"two\"\n")
        let t0 = ContinuousClock.now
        trace.turn(engine: .rcs, vgpu: 1, submission: 7, start: t0, end: t0 + .milliseconds(3), reason: .completed,
                   args: [("commands", "12")])
        trace.turn(engine: .bcs, vgpu: 2, submission: 1, start: t0 + .milliseconds(1), end: t0 + .milliseconds(2),
                   reason: .sliceExpired)
        trace.instant("rejected: reason 5", vgpu: 2, engine: .rcs, at: t0 + .milliseconds(4), args: [("reason", "5")])
        let f = try decode(trace)
        let turns = f.traceEvents.filter { $0.ph == "X" }
        #expect(turns.count == 2)
        #expect(turns[0].name == "vgpu1 #7" && turns[0].tid == EngineID.rcs.rawValue + 1 && turns[0].pid == 1)
        #expect(abs((turns[0].dur ?? 0) - 3000) < 1, "3 ms in microseconds: \(turns[0].dur ?? -1)")
        #expect(abs((turns[1].ts ?? 0) - (turns[0].ts ?? 0) - 1000) < 1)
        #expect(turns[0].args?["switched out"] == "completed" && turns[0].args?["commands"] == "12")
        #expect(turns[1].args?["switched out"] == "slice expired")
        let instants = f.traceEvents.filter { $0.ph == "i" }
        #expect(instants.count == 1 && instants[0].tid == 2 && instants[0].pid == 2 && instants[0].args?["reason"] == "5")
        let names = f.traceEvents.filter { $0.ph == "M" && $0.name == "thread_name" }.compactMap { $0.args?["name"] }
        #expect(names.contains("RCS") || names.contains("rcs"), "\(names)")
        #expect(names.contains("vgpu2 (vm \"two\"\n)"), "\(names)")
        #expect(f.otherData["droppedEvents"] == "0")
    }

    @Test func eventsBeyondTheLimitAreCountedNotKept() throws {
        let trace = GPUTrace(maximumEvents: 10)
        for i in 0..<25 { trace.instant("e\(i)", vgpu: 1) }
        #expect(trace.events.count == 10 && trace.dropped == 15)
        let f = try decode(trace)
        #expect(f.otherData["droppedEvents"] == "15")
        #expect(f.traceEvents.filter { $0.ph == "i" }.count == 10)
    }

    @Test func concurrentRecordingLosesNothing() throws {
        let trace = GPUTrace()
        DispatchQueueLike.concurrentPerform(4) { t in
            for i in 0..<1000 { trace.instant("t\(t)-\(i)", vgpu: t + 1) }
        }
        #expect(trace.events.count == 4000)
        #expect(try decode(trace).traceEvents.filter { $0.ph == "i" }.count == 4000)
    }

    @Test func writesAFileAndRefusesAnInput() throws {
        let path = "/tmp/minivisor-trace-\(getpid()).json"
        defer { unlink(path) }
        let trace = GPUTrace()
        trace.instant("x", vgpu: 1)
        try trace.write(to: path)
        let fd = open(path, O_RDONLY)
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        let n = read(fd, &buf, buf.count)
        close(fd)
        #expect(n > 0)
        let f = try JSONDecoder().decode(File.self, from: Data(buf[0..<max(n, 0)]))
        #expect(f.traceEvents.contains { $0.ph == "i" && $0.name == "x" })
        #expect(throws: OutputError.self) { try trace.write(to: path, refusing: [InputFile(.image, path)]) }
    }

    @Test func numbersAreExactToTheNanosecond() {
        #expect(GPUTrace.number(1.5) == "1.500")
        #expect(GPUTrace.number(0.001) == "0.001")
        #expect(GPUTrace.number(12345.0004) == "12345.000")
        #expect(GPUTrace.number(.nan) == "0")
        #expect(GPUTrace.string("a\u{1}\u{2028}") == "\"a\\u0001\\u2028\"")
    }
}

/// Threads without Dispatch's cooperative pool.
enum DispatchQueueLike {
    static func concurrentPerform(_ n: Int, _ body: @escaping @Sendable (Int) -> Void) {
        let threads = (0..<n).compactMap { i in OSThread.spawn(name: "trace-test-\(i)") { body(i) } }
        for t in threads { pthread_join(t, nil) }
    }
}
