import FoundationEssentials
import Glibc
import Minivisor
import Testing

/// Hang recovery with real guests (docs/vgpu.md section 4, "Hangs"): a VM whose submission holds the engine
/// far past the watchdog's limit beside two working VMs; and `--trace` (docs/tracing.md) from the CLI.
@Suite("GPU hang recovery and traces with guests (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct HangAndTraceTests {
    static func config(_ capture: SerialCapture, cmdline: String = "", memory: UInt64 = 64 << 20) -> MachineConfiguration {
        var c = MachineConfiguration()
        c.memoryBytes = memory
        c.timeout = .seconds(300)
        c.cmdline = cmdline
        c.serialOutput = .callback { capture.append($0) }
        return c
    }

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

    /// The victim alone, then the hang VM beside the victim and a painter (vgpu_fill): the hung vGPU is reset
    /// (and recovers, and survives a device reset), the others finish correctly; the victim's slowdown and
    /// the time from the limit to the reset are printed.
    @Test func aHungVMIsResetAloneWhileTheOthersFinish() throws {
        let rounds = "rounds=1000"   // about 2 s of work: it runs throughout the hang
        let aloneOut = SerialCapture()
        let alone = try VMGroup([.init(name: "victim", image: .file(try Support.guest("vgpu_victim")),
                                       configuration: Self.config(aloneOut, cmdline: rounds), vgpu: VGPUOptions())],
                                gpu: GPUHost(hangLimit: .milliseconds(100)))
        let aloneOutcome = alone.run()[0]
        #expect(aloneOutcome.reason == .powerOff && aloneOut.text.contains("vgpu victim ok"), "\(aloneOutcome.reason)\n\(aloneOut.text)")
        let aloneTime = try #require(alone.vms[0].vgpu?.activeWindow)

        let hangOut = SerialCapture(), victimOut = SerialCapture(), fillOut = SerialCapture()
        let gpu = GPUHost(hangLimit: .milliseconds(100))
        let group = try VMGroup([
            .init(name: "hang", image: .file(try Support.guest("vgpu_hang")), configuration: Self.config(hangOut), vgpu: VGPUOptions()),
            .init(name: "victim", image: .file(try Support.guest("vgpu_victim")), configuration: Self.config(victimOut, cmdline: rounds),
                  vgpu: VGPUOptions()),
            .init(name: "painter", image: .file(try Support.guest("vgpu_fill")), configuration: Self.config(fillOut, memory: 32 << 20),
                  vgpu: VGPUOptions(type: .small)),
        ], gpu: gpu)
        let outcomes = group.run()
        let h = hangOut.text, v = victimOut.text, f = fillOut.text
        #expect(outcomes[0].reason == .powerOff && h.contains("vgpu hang ok"), "\(outcomes[0].reason)\n\(h)")
        #expect(outcomes[1].reason == .powerOff && v.contains("vgpu victim ok"), "\(outcomes[1].reason)\n\(v)")
        #expect(outcomes[2].reason == .powerOff && f.contains("vgpu fill ok"), "\(outcomes[2].reason)\n\(f)")
        let hung = group.vms[0].vgpu!, victim = group.vms[1].vgpu!, painter = group.vms[2].vgpu!
        #expect(hung.resets.hangs == 1 && hung.resets.device == 1, "\(hung.resets)")
        #expect(victim.resets.hangs == 0 && painter.resets.hangs == 0, "only the hung vGPU is reset")
        #expect(victim.statistics.rejections == 0 && painter.statistics.rejections == 0)
        let report = try #require(hung.hangReports.first)
        let withHang = try #require(victim.activeWindow)
        let slowdown = Self.seconds(withHang) / Self.seconds(aloneTime) - 1
        print("hang beside two VMs: time from the 100 ms limit to the reset \(Self.seconds(report.timeToReset) * 1000) ms; "
              + "victim's GPU work \(Self.seconds(aloneTime)) s alone, \(Self.seconds(withHang)) s beside the hang and a painter "
              + "(\(Int((slowdown * 100).rounded())) % slower)")
        #expect(report.timeToReset < .seconds(1), "time to reset \(report.timeToReset)")
        // Bounded: the hang costs the others at most its limit plus the reset (the painter shares the GPU too).
        #expect(withHang < aloneTime * 4 + .seconds(5), "victim alone \(aloneTime), beside the hang \(withHang)")
    }

    struct TraceFile: Decodable {
        struct Event: Decodable {
            let ph: String
            let name: String
            let pid: Int
            let tid: Int?
            let args: [String: String]?
        }
        let traceEvents: [Event]
    }

    /// `minivisor run --config` with a top-level "trace": turns of both vGPUs on the RCS and BCS tracks, the
    /// attacker's rejections as instants on its own track, tracks named after the VMs.
    @Test func cliTraceOfTwoVMsShowsTurnsAndRejections() throws {
        let config = Support.tempPath("trace-vms.json"), trace = Support.tempPath("trace.json")
        defer { unlink(config); unlink(trace) }
        let json = """
        {"trace": "\(trace)", "vms": [
          {"name": "painter", "image": "\(try Support.guest("vgpu_fill"))", "memory": "32M", "vgpu": "small", "serial": "none"},
          {"name": "attacker", "image": "\(try Support.guest("vgpu_adversarial"))", "memory": "64M", "vgpu": "medium", "serial": "none"}
        ]}
        """
        Support.writeFile(config, Array(json.utf8))
        let (status, output) = Support.run(Support.minivisor, ["run", "--config", config, "--timeout", "300", "--log-level", "error"])
        #expect(status == 0, "\(output)")
        let file = try JSONDecoder().decode(TraceFile.self, from: Data(Support.readBytes(trace)))
        let names = Dictionary(file.traceEvents.filter { $0.ph == "M" && $0.pid == 2 }.compactMap { e in e.tid.map { ($0, e.args?["name"] ?? "") } },
                               uniquingKeysWith: { a, _ in a })
        let painter = try #require(names.first { $0.value.hasSuffix("(painter)") }?.key, "\(names)")
        let attacker = try #require(names.first { $0.value.hasSuffix("(attacker)") }?.key, "\(names)")
        let turns = file.traceEvents.filter { $0.ph == "X" && $0.pid == 1 }
        func turnsOf(_ id: Int, engineTrack: Int) -> Int { turns.filter { $0.tid == engineTrack && $0.args?["vgpu"] == "\(id)" }.count }
        #expect(turnsOf(painter, engineTrack: 2) > 0, "painter's blits on the BCS track")
        #expect(turnsOf(attacker, engineTrack: 1) > 0 && turnsOf(attacker, engineTrack: 2) > 0, "attacker's turns on both tracks")
        #expect(turns.allSatisfy { ["completed", "aborted", "fault", "hang", "slice expired"].contains($0.args?["switched out"] ?? "") })
        let rejections = file.traceEvents.filter { $0.ph == "i" && $0.name == "rejected" }
        #expect(rejections.count >= 40 && rejections.allSatisfy { $0.tid == attacker }, "\(rejections.count) rejections")
        #expect(rejections.contains { $0.args?["reason"] == "5" }, "an address outside the slices (reason 5)")
        #expect(file.traceEvents.contains { $0.ph == "i" && $0.name == "RESET" && $0.tid == attacker })
    }

    @Test func cliRefusesATraceWithoutAVGPUAndATraceThatIsAnInput() throws {
        let hello = try Support.guest("hello")
        let (s1, o1) = Support.run(Support.minivisor, ["run", hello, "--trace", Support.tempPath("t.json")])
        #expect(s1 == 2 && o1.contains("--trace") && o1.split(separator: "\n").count == 1, "\(o1)")
        let (s2, o2) = Support.run(Support.minivisor, ["run", "--vgpu", hello, "--trace", hello])
        #expect(s2 == 2 && o2.contains("--trace") && o2.split(separator: "\n").count == 1, "\(o2)")
    }
}
