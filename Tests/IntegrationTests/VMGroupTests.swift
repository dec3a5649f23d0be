import Glibc
import Minivisor
import Testing

/// Several VMs in one process sharing one GPU (`VMGroup`, `minivisor run --config`): each VM draws its
/// own picture on its own display at the same time, every screenshot shows that VM's picture, 16 VMs with
/// vGPUs start, work and end, and the CLI prefixes each VM's serial lines and reports each status.
@Suite("VM groups sharing one GPU (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct VMGroupTests {
    /// Runs `count` vgpu_fill guests at once, each with its own tint, and checks every VM's screenshot
    /// against the pixels that VM's guest says it drew (and that no two VMs' pictures are the same).
    func drawTogether(_ count: Int, type: VGPUType) throws {
        let captures = (0..<count).map { _ in SerialCapture() }
        let shots = (0..<count).map { Support.tempPath("group\(count)-\($0).png") }
        defer { shots.forEach { unlink($0) } }
        let image = try Support.guest("vgpu_fill")
        let members = (0..<count).map { i -> VMGroup.Member in
            var c = MachineConfiguration()
            c.memoryBytes = 32 << 20
            c.timeout = .seconds(120)
            c.cmdline = "tint=" + String(0x10_1010 * (i + 1) & 0xffffff, radix: 16)
            let capture = captures[i]
            c.serialOutput = .callback { capture.append($0) }
            return VMGroup.Member(name: "vm\(i)", image: .file(image), configuration: c,
                                  vgpu: VGPUOptions(screenshotPath: shots[i], type: type))
        }
        let group = try VMGroup(members, gpu: GPUHost())
        #expect(Set(group.vms.map { $0.vgpu!.id }).count == count, "every vGPU has its own id")
        let outcomes = group.run()
        var pictures = Set<[UInt8]>()
        for (i, o) in outcomes.enumerated() {
            let out = captures[i].text
            #expect(o.name == "vm\(i)")
            #expect(o.reason == .powerOff && out.contains("vgpu fill ok"), "vm\(i): \(o.reason)\n\(out)")
            guard let (w, _, rgb) = Support.readPNG(shots[i]) else {
                Issue.record("vm\(i): no screenshot")
                continue
            }
            pictures.insert(rgb)
            var samples = 0
            for line in out.split(separator: "\n") where line.hasPrefix("vgpu fill pixel ") {
                let f = line.split(separator: " ")
                guard f.count == 6, let x = Int(f[3]), let y = Int(f[4]), let c = UInt32(f[5].dropFirst(2), radix: 16) else { continue }
                let p = (y * w + x) * 3
                #expect([rgb[p], rgb[p + 1], rgb[p + 2]] == [UInt8(c >> 16), UInt8((c >> 8) & 0xff), UInt8(c & 0xff)], "vm\(i) pixel \(x),\(y)")
                samples += 1
            }
            #expect(samples == 4, "vm\(i)")
        }
        #expect(pictures.count == count, "each VM's screenshot is its own picture")
    }

    @Test func twoVMsDrawToTheirOwnDisplays() throws { try drawTogether(2, type: .default) }

    @Test func fourVMsDrawToTheirOwnDisplays() throws { try drawTogether(4, type: .small) }

    @Test func sixteenVMsWithVGPUsStartWorkAndEnd() throws { try drawTogether(16, type: .default) }

    /// An attacker VM (vgpu_adversarial, two rounds: every forbidden access, then a sweep over all of GM)
    /// runs beside a victim VM (vgpu_victim) that keeps a pattern in its aperture and hidden GM and renders
    /// and computes round after round, checking everything after every round. The victim stops when the
    /// attacker has ended (a byte on its serial port). Every attack is refused and counted on the
    /// attacker's vGPU; the victim's pattern, frames and results stay intact and it is never refused.
    @Test func attackerBesideVictimReachesNothing() throws {
        let victimOut = SerialCapture(), attackerOut = SerialCapture()
        let shot = Support.tempPath("victim.png")
        defer { unlink(shot) }
        var vc = MachineConfiguration()
        vc.memoryBytes = 64 << 20
        vc.timeout = .seconds(300)
        vc.cmdline = "seed=4242"
        vc.serialOutput = .callback { victimOut.append($0) }
        var ac = vc
        ac.cmdline = "rounds=2"
        ac.serialOutput = .callback { attackerOut.append($0) }
        let group = try VMGroup([
            .init(name: "victim", image: .file(try Support.guest("vgpu_victim")), configuration: vc,
                  vgpu: VGPUOptions(screenshotPath: shot)),
            .init(name: "attacker", image: .file(try Support.guest("vgpu_adversarial")), configuration: ac,
                  vgpu: VGPUOptions()),
        ], gpu: GPUHost())
        let victim = group.vms[0], attacker = group.vms[1]
        try group.start()
        let attackerReason = attacker.wait()
        victim.machine.serial.receive([0x71])          // "the attack is over": the victim finishes its round
        let victimReason = victim.wait()
        let a = attackerOut.text, v = victimOut.text
        #expect(attackerReason == .powerOff && a.contains("vgpu adversarial ok"), "\(attackerReason)\n\(a)")
        #expect(a.contains("round 2 of 2 done, 0 failed"), "\(a)")
        #expect(victimReason == .powerOff && v.contains("vgpu victim ok"), "\(victimReason)\n\(v)")
        let rounds = v.split(separator: "\n").first { $0.hasPrefix("vgpu victim ok: ") }
            .flatMap { Int($0.split(separator: " ")[3]) } ?? 0
        #expect(rounds >= 20, "the victim worked throughout the attack: \(rounds) rounds")
        let vs = victim.vgpu!.statistics, ast = attacker.vgpu!.statistics
        #expect(vs.rejections == 0 && vs.gttDroppedOutside == 0 && vs.refusedAddressWrites == 0, "\(vs)")
        #expect(ast.rejections >= 2 * 44, "every attack refused and reported: \(ast)")
        #expect(ast.gttDroppedOutside >= 2 * 247 && ast.refusedAddressWrites >= 2 * 247, "\(ast)")
        // The victim's display shows the victim's last frame: one colour, its own.
        guard let (w, h, rgb) = Support.readPNG(shot) else {
            Issue.record("no victim screenshot")
            return
        }
        #expect(w == 256 && h == 128)
        var colours = Set<UInt32>()
        for p in stride(from: 0, to: rgb.count, by: 3) {
            colours.insert(UInt32(rgb[p]) << 16 | UInt32(rgb[p + 1]) << 8 | UInt32(rgb[p + 2]))
        }
        #expect(colours.count == 1, "\(colours.count) colours")
    }

    @Test func aVMThatDoesNotFitFailsTheGroupByName() throws {
        let image = try Support.guest("hello")
        let members = (0..<4).map { i in
            VMGroup.Member(name: "big\(i)", image: .file(image), configuration: MachineConfiguration(),
                           vgpu: VGPUOptions(type: .large))
        }
        #expect {
            _ = try VMGroup(members, gpu: GPUHost())
        } throws: { error in
            "\(error)".contains("VM 'big3'") && "\(error)".contains("graphics memory is exhausted")
        }
    }

    @Test func cliRunsTheFileAndReportsEveryVM() throws {
        let hello = try Support.guest("hello"), code = try Support.guest("exitcode"), fill = try Support.guest("vgpu_fill")
        let config = Support.tempPath("vms.json")
        let log = Support.tempPath("fill.log")
        defer { unlink(config); unlink(log) }
        let json = """
        {"vms": [
          {"name": "greeter", "image": "\(hello)", "memory": "32M", "cmdline": "one two"},
          {"name": "coder", "image": "\(code)", "memory": "32M", "cmdline": "code=5"},
          {"name": "painter", "image": "\(fill)", "memory": "32M", "vgpu": "small", "serial": "file:\(log)"}
        ]}
        """
        Support.writeFile(config, Array(json.utf8))
        let (status, output) = Support.run(Support.minivisor, ["run", "--config", config, "--timeout", "60"])
        #expect(status == 11, "the first non-zero status, coder's (5 << 1 | 1): \(output)")
        let lines = output.split(separator: "\n").map(String.init)
        #expect(lines.contains("greeter | hello from minivisor guest"), "\(output)")
        #expect(lines.contains("greeter | cmdline: one two"), "\(output)")
        #expect(lines.contains { $0.hasPrefix("coder | exitcode:") }, "\(output)")
        #expect(!lines.contains { $0.hasPrefix("painter |") }, "painter's serial goes to its file")
        #expect(Support.readFile(log).contains("vgpu fill ok"))
        #expect(lines.contains("minivisor: VM greeter: exit status 0 (guest powered off)"), "\(output)")
        #expect(lines.contains { $0.hasPrefix("minivisor: VM coder: exit status 11") }, "\(output)")
        #expect(lines.contains("minivisor: VM painter: exit status 0 (guest powered off)"), "\(output)")
    }

    @Test func cliRefusesBadFilesWithOneLine() throws {
        let config = Support.tempPath("bad.json")
        defer { unlink(config) }
        Support.writeFile(config, Array("{\"vms\": [{\"name\": \"a\", \"cpus\": 0}]}".utf8))
        let (status, output) = Support.run(Support.minivisor, ["run", "--config", config])
        #expect(status == 2)
        #expect(output.split(separator: "\n").count == 1 && output.contains("vms[0].cpus"), "\(output)")
        // Two VMs writing one file are refused before anything runs.
        let hello = try Support.guest("hello")
        let shared = Support.tempPath("shared.log")
        Support.writeFile(config, Array("{\"vms\": [{\"name\": \"a\", \"image\": \"\(hello)\", \"serial\": \"file:\(shared)\"}, {\"name\": \"b\", \"image\": \"\(hello)\", \"serial\": \"file:\(shared)\"}]}".utf8))
        let (s2, o2) = Support.run(Support.minivisor, ["run", "--config", config])
        #expect(s2 == 2, "\(o2)")
        #expect(access(shared, F_OK) != 0, "nothing was created")
    }
}
