import Dispatch
import Glibc
import SoftGPU
import VGPU

/// Command-scanner throughput: a realistic batch (fills, copies, stores, register loads, compute) of
/// `batchBytes` is scanned from an in-memory reader, next to a plain copy of the same bytes (the copy the
/// scanner must make anyway) in the same run.
public enum ScannerBenchmark {
    public struct Result: Sendable {
        public let megabytes: Double
        public let scanMBps: Double
        public let copyMBps: Double
        public let commands: Int
        /// Scan throughput / copy throughput, one sample per round (each round scans, then copies).
        public let ratio: Spread
    }

    public static func run(batchBytes: Int = 1 << 20, rounds: Int = 41) throws -> Result {
        let slices = GMSlices(aperture: 0x0200_0000..<0x0600_0000, hidden: 0x1800_0000..<0x2800_0000)
        let surface = BlitSurface(gm: slices.hidden.lowerBound, pitch: 4096, width: 1024, height: 768)
        let src = BlitSurface(gm: slices.hidden.lowerBound + (4 << 20), pitch: 4096, width: 1024, height: 768)
        var b = CommandBuilder()
        var i = 0
        while b.dwords.count * 4 < batchBytes - 256 {
            switch i % 5 {
            case 0: b.colorBlt(dst: surface, x1: i % 900, y1: i % 700, x2: i % 900 + 64, y2: i % 700 + 48, color: UInt32(i))
            case 1: b.srcCopyBlt(dst: surface, x1: 0, y1: 0, x2: 32, y2: 32, src: src, srcX: i % 512, srcY: i % 512)
            case 2: b.storeDataImm(gm: slices.hidden.lowerBound + UInt64(i % 1024) * 4, UInt32(i))
            case 3: b.loadRegisterImm([(Reg.gpr(.bcs, dword: 0), UInt32(i))])
            default: b.noop(count: 2)
            }
            i += 1
        }
        b.batchBufferEnd()
        let batch = b.dwords
        let batchGM = slices.hidden.lowerBound + (32 << 20)
        var ring = CommandBuilder()
        ring.batchBufferStart(gm: batchGM, length: UInt32(batch.count * 4))
        ring.noop(count: (8 - ring.dwords.count % 8) % 8)
        let ringDwords = ring.dwords
        let ringGM = slices.aperture.lowerBound
        let scanner = CommandScanner(slices: slices, commandLoadAllowed: RegisterPolicy.commandLoadAllowed, registerRead: { _ in 0 })

        var scanTimes: [Double] = [], copyTimes: [Double] = []
        var commands = 0
        for round in 0...rounds {      // round 0 warms up (first touch of the scanner's tables and the copy) and is dropped
            // Thread CPU time: time slices given to other processes on a busy host do not count.
            let t0 = threadCPUSeconds()
            let r = scanner.scan(engine: .bcs, ringStart: ringGM, ringBytes: 4096, head: 0, tail: UInt32(ringDwords.count * 4)) { gm, count in
                if gm == ringGM { return Array(ringDwords.prefix(count)) }
                if gm == batchGM && count <= batch.count { return Array(batch.prefix(count)) }
                return nil
            }
            let t1 = threadCPUSeconds()
            switch r {
            case .success(let s): commands = s.commandCount
            case .failure(let e): throw BenchError.unexpected("scanner rejected the benchmark batch: \(e)")
            }
            // A copy takes tens of microseconds, a scan milliseconds: the round's copy time is the best of 9
            // copies right after its scan, so that one disturbed copy does not set the round's ratio.
            var copy = [UInt32](repeating: 0, count: batch.count)
            var copyTime = Double.infinity
            for _ in 0..<9 {
                let t2 = threadCPUSeconds()
                copy.withUnsafeMutableBytes { dst in batch.withUnsafeBytes { src in dst.copyMemory(from: src) } }
                copyTime = min(copyTime, threadCPUSeconds() - t2)
            }
            if copy.last != batch.last { throw BenchError.unexpected("copy mismatch") }
            if round == 0 { continue }
            scanTimes.append(t1 - t0)
            copyTimes.append(copyTime)
        }
        let mb = Double(batch.count * 4) / 1e6
        return Result(megabytes: mb, scanMBps: mb / Spread(scanTimes).median, copyMBps: mb / Spread(copyTimes).median,
                      commands: commands, ratio: Spread(zip(scanTimes, copyTimes).map { $1 / $0 }))
    }
}

func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
