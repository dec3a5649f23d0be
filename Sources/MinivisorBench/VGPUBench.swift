import Dispatch
import Glibc
import Machine
import Minivisor
import SoftGPU
import Synchronization
import VGPU

/// vGPU benchmarks: the `vgpu_bench` guest measures from inside (ring 3), and for GPU workloads the host
/// times the guest's submissions through the mediator (first doorbell to last completion) and then the
/// same workload submitted by host code straight to the same software GPU ("native"), in the same run.
public enum VGPUBenchmark {
    public struct GuestRun: Sendable {
        public let values: [String: UInt64]
        public let window: Duration?
        public let engineBusy: Duration
    }

    /// Boots `image` with a vGPU on `host`, with `cmdline`; returns its "bench NAME VALUE" lines.
    public static func runGuest(_ image: String, cmdline: String, host: GPUHost) throws -> GuestRun {
        var c = MachineConfiguration()
        c.memoryBytes = 256 << 20
        c.cmdline = cmdline
        c.timeout = .seconds(300)
        let capture = SerialCapture()
        c.serialOutput = .callback { capture.append($0) }
        let vm = try VirtualMachine(image: .file(image), configuration: c, vgpu: VGPUOptions(host: host))
        let reason = vm.run()
        let out = capture.text
        guard reason == .powerOff, out.contains("vgpu bench ok") else {
            throw BenchError.unexpected("vgpu_bench (\(cmdline)) ended with \(reason): \(out.split(separator: "\n").suffix(3).joined(separator: " | "))")
        }
        var values: [String: UInt64] = [:]
        for line in out.split(separator: "\n") where line.hasPrefix("bench ") {
            let f = line.split(separator: " ")
            if f.count >= 3, let v = UInt64(f[2]) { values[String(f[1])] = v }
        }
        return GuestRun(values: values, window: vm.vgpu?.activeWindow, engineBusy: vm.vgpu?.engineBusy ?? .zero)
    }

    public static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    /// `reps` SGEMMs of n x n x n, each its own batch, submitted natively on RCS; seconds from the first
    /// submission to the last completion.
    public static func nativeSGEMM(host: GPUHost, n: Int, reps: Int) throws -> Double {
        let gpu = host.gpu
        let bytes = UInt64(n * n * 4)
        // The host's own aperture reserve (never given to a vGPU): queue, then the three matrices.
        let q = try NativeQueue(gpu: gpu, engine: .rcs, gm: 0, ringPages: 4, batchBytes: 64 << 10)
        let base: UInt64 = 2 << 20
        let a = try gpu.mapHostMemory(gm: base, bytes: bytes)
        let b = try gpu.mapHostMemory(gm: base + bytes, bytes: bytes)
        let c = try gpu.mapHostMemory(gm: base + 2 * bytes, bytes: bytes)
        defer { a.release(); b.release(); c.release() }
        let fa = a.floats(n * n), fb = b.floats(n * n)
        for i in 0..<(n * n) { fa[i] = Float(Int(i % 17) - 8) / 16; fb[i] = Float(Int(i % 13) - 6) / 8 }
        let t0 = DispatchTime.now().uptimeNanoseconds
        var seq: UInt32 = 0
        for _ in 0..<reps {
            var cmd = CommandBuilder()
            cmd.sgemm(m: UInt32(n), n: UInt32(n), k: UInt32(n), alpha: 1, beta: 0, a: a.gm, lda: UInt32(n),
                      b: b.gm, ldb: UInt32(n), c: c.gm, ldc: UInt32(n))
            seq = try q.submit(cmd)
        }
        try q.wait(for: seq, timeout: 300)
        let t1 = DispatchTime.now().uptimeNanoseconds
        return Double(t1 - t0) / 1e9
    }

    /// The guest's fill stream (same surface, positions, colours and batch size), submitted natively on BCS.
    public static func nativeFills(host: GPUHost, fills: Int, perBatch: Int) throws -> Double {
        let gpu = host.gpu
        let fw = 1024, fh = 768, fill = 16, slotsX = fw / fill, slots = slotsX * (fh / fill)
        let q = try NativeQueue(gpu: gpu, engine: .bcs, gm: 8 << 20, ringPages: 16, batchBytes: 4 << 20)
        let surface = try gpu.mapHostMemory(gm: 16 << 20, bytes: UInt64(fw * fh * 4))
        defer { surface.release() }
        let s = BlitSurface(gm: surface.gm, pitch: UInt32(fw * 4), width: UInt16(fw), height: UInt16(fh))
        let t0 = DispatchTime.now().uptimeNanoseconds
        var seq: UInt32 = 0
        var i = 0
        while i < fills {
            var cmd = CommandBuilder()
            for _ in 0..<perBatch where i < fills {
                let k = (i * 7) % slots
                let x = (k % slotsX) * fill, y = (k / slotsX) * fill
                cmd.colorBlt(dst: s, x1: x, y1: y, x2: x + fill, y2: y + fill,
                             color: UInt32(truncatingIfNeeded: i &* 0x0001_0203 &+ 0x0040_5060) & 0x00ff_ffff)
                i += 1
            }
            seq = try q.submit(cmd)
        }
        try q.wait(for: seq, timeout: 300)
        let t1 = DispatchTime.now().uptimeNanoseconds
        return Double(t1 - t0) / 1e9
    }
}
