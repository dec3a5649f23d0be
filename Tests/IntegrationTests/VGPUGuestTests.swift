import CLibpng
import Dispatch
import Glibc
import Synchronization
import Minivisor
import Testing

/// Boots the vGPU guests (Guests/vgpu_*.c) with a vGPU and checks serial output, status and pixels.
@Suite("vGPU guests (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct VGPUGuestTests {
    func boot(_ name: String, screenshot: String? = nil, host: GPUHost? = nil) throws -> (ExitReason, String, VirtualMachine) {
        let capture = SerialCapture()
        var c = MachineConfiguration()
        c.memoryBytes = 128 << 20
        c.timeout = .seconds(120)
        c.serialOutput = .callback { capture.append($0) }
        let vm = try VirtualMachine(image: .file(try Support.guest(name)), configuration: c,
                                    vgpu: VGPUOptions(host: host ?? GPUHost(), screenshotPath: screenshot))
        let reason = vm.run()
        return (reason, capture.text, vm)
    }

    func readPNG(_ path: String) -> (Int, Int, [UInt8])? { Support.readPNG(path) }

    @Test func fillAndCopyReachTheScreen() throws {
        let path = Support.tempPath("fill.png")
        defer { unlink(path) }
        let (reason, out, vm) = try boot("vgpu_fill", screenshot: path)
        #expect(reason == .powerOff, "\(out)")
        #expect(out.contains("vgpu fill ok"))
        #expect(vm.vgpu!.statistics.submissions >= 2)
        guard let (w, h, rgb) = readPNG(path) else {
            Issue.record("no readable screenshot at \(path)")
            return
        }
        #expect(w == 640 && h == 480)
        // The guest prints the colours it expects at sample pixels: "vgpu fill pixel X Y 0xRRGGBB".
        var samples = 0
        for line in out.split(separator: "\n") where line.hasPrefix("vgpu fill pixel ") {
            let f = line.split(separator: " ")
            guard f.count == 6, let x = Int(f[3]), let y = Int(f[4]), let c = UInt32(f[5].dropFirst(2), radix: 16) else { continue }
            let o = (y * w + x) * 3
            #expect([rgb[o], rgb[o + 1], rgb[o + 2]] == [UInt8(c >> 16), UInt8((c >> 8) & 0xff), UInt8(c & 0xff)], "pixel \(x),\(y)")
            samples += 1
        }
        #expect(samples >= 4)
    }

    @Test func flipsCompleteWithInterrupts() throws {
        let (reason, out, vm) = try boot("vgpu_flip")
        #expect(reason == .powerOff, "\(out)")
        #expect(out.contains("vgpu flip ok"))
        #expect(vm.vgpu!.statistics.rejections == 0)
    }

    @Test func computeResultsAreRight() throws {
        let (reason, out, _) = try boot("vgpu_compute")
        #expect(reason == .powerOff, "\(out)")
        #expect(out.contains("SAXPY ok") && out.contains("SGEMM ok"))
        #expect(out.contains("vgpu compute ok"))
    }

    @Test func adversarialGuestIsRefusedReportedAndHarmless() throws {
        let (reason, out, vm) = try boot("vgpu_adversarial")
        #expect(reason == .powerOff, "\(out)")
        #expect(out.contains("vgpu adversarial ok"))
        let s = vm.vgpu!.statistics
        #expect(s.rejections > 0 && s.gttRejected > 0 && s.gttDroppedOutside > 0 && s.badAccesses > 0)
    }

    @Test func vmsWithAVGPUAreFreed() throws {
        // No reference cycle keeps a machine (its guest RAM, its KVM VM) alive after its VM is gone, and the
        // vGPU's slices return to the GPU.
        let host = GPUHost()
        weak var machine: Machine?
        weak var vgpu: VGPU?
        for _ in 0..<3 {
            var c = MachineConfiguration()
            c.memoryBytes = 16 << 20
            c.serialOutput = .none
            let vm = try VirtualMachine(image: .realModeBlob([0xfa, 0xf4], loadAddress: 0x7c00), configuration: c,
                                        vgpu: VGPUOptions(host: host))
            machine = vm.machine
            vgpu = vm.vgpu
            #expect(vm.run() == .powerOff)
        }
        #expect(machine == nil)
        #expect(vgpu == nil)
        var held: [VirtualMachine] = []
        for _ in 0..<host.capacity {
            var c = MachineConfiguration()
            c.memoryBytes = 16 << 20
            c.serialOutput = .none
            held.append(try VirtualMachine(image: .realModeBlob([0xfa, 0xf4], loadAddress: 0x7c00), configuration: c,
                                           vgpu: VGPUOptions(host: host)))
        }
        #expect(held.count == host.capacity)
    }

    @Test func twoVMsShareOneGPUAtOnce() throws {
        // Two VMs with a vGPU each, both built first (so both hold slices), then run at the same time.
        let host = GPUHost()
        var vms: [(String, VirtualMachine, SerialCapture)] = []
        for name in ["vgpu_fill", "vgpu_compute"] {
            let capture = SerialCapture()
            var c = MachineConfiguration()
            c.memoryBytes = 128 << 20
            c.timeout = .seconds(120)
            c.serialOutput = .callback { capture.append($0) }
            vms.append((name, try VirtualMachine(image: .file(try Support.guest(name)), configuration: c,
                                                 vgpu: VGPUOptions(host: host)), capture))
        }
        #expect(vms[0].1.vgpu!.id != vms[1].1.vgpu!.id)
        #expect(vms[0].1.vgpu!.slices.aperture.upperBound <= vms[1].1.vgpu!.slices.aperture.lowerBound)
        let reasons = Mutex<[String: ExitReason]>([:])
        let group = DispatchGroup()
        for (name, vm, _) in vms {
            DispatchQueue.global().async(group: group) {
                let r = vm.run()
                reasons.withLock { $0[name] = r }
            }
        }
        group.wait()
        let r = reasons.withLock { $0 }
        #expect(r["vgpu_fill"] == .powerOff && vms[0].2.text.contains("vgpu fill ok"), "\(vms[0].2.text)")
        #expect(r["vgpu_compute"] == .powerOff && vms[1].2.text.contains("vgpu compute ok"), "\(vms[1].2.text)")
    }
}
