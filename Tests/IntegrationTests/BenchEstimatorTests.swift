import MinivisorBench
import Testing

/// The exit benchmark's estimator, on made-up timings (no clock, no KVM): what a reader of `make bench`
/// gets from rounds measured on a busy host.
@Suite struct BenchEstimatorTests {
    typealias Sample = ExitBenchmark.Sample

    /// A round on a host where every run is slowed by `slow`, except the runs named in `fast`.
    func round(costMicroseconds m: Double, _ c: Double, n: Double, slow: Double, fast: Set<String> = []) -> ExitBenchmark.Round {
        func s(_ name: String, _ seconds: Double) -> Sample {
            let f = fast.contains(name) ? 1.0 : slow
            return Sample(seconds: seconds * f, cpuSeconds: seconds * f)
        }
        let fixed = 0.002   // VM start inside run(): cancels in t(2N) - t(N)
        return ExitBenchmark.Round(minivisorN: s("m1", fixed + n * m / 1e6), minivisor2N: s("m2", fixed + 2 * n * m / 1e6),
                                   baselineN: s("c1", fixed + n * c / 1e6), baseline2N: s("c2", fixed + 2 * n * c / 1e6))
    }

    /// The old estimator compared (min t(2N) - min t(N)) over all rounds, per side: one round in which the
    /// host happened to be quiet for just minivisor's N run and the C loop's 2N run moved the ratio from 1.0
    /// to 2.3 (the 0.78-then-1.38 swings of issue 6). Per-round ratios and their median do not move.
    @Test func oneQuietMomentDoesNotMoveTheRatio() {
        let n = 20000.0
        var rounds = (0..<6).map { _ in round(costMicroseconds: 11, 11, n: n, slow: 1.3) }
        rounds.insert(round(costMicroseconds: 11, 11, n: n, slow: 1.3, fast: ["m1", "c2"]), at: 3)
        let r = ExitBenchmark.estimate(.mmioWrite, rounds: rounds, iterations: UInt32(n))
        #expect(abs(r.ratio.median - 1.0) < 0.01, "ratio \(r.ratio)")
        #expect(abs(r.minivisorMicroseconds.median - 11 * 1.3) < 0.1, "minivisor \(r.minivisorMicroseconds)")
        #expect(r.ratio.count == 7)
    }

    /// Two halves of the same noisy measurement give the same answer within 5%: the "same answer twice" of
    /// issue 6, on rounds whose runs are each slowed by 0-40% independently.
    @Test func twoNoisyRunsAgree() {
        var seed: UInt64 = 0x9e37_79b9_7f4a_7c15
        func noise() -> Double {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return 1 + Double(seed >> 11) / Double(1 << 53) * 0.4
        }
        func run() -> Double {
            let n = 20000.0
            let rounds = (0..<25).map { _ in
                ExitBenchmark.Round(minivisorN: Sample(seconds: 0, cpuSeconds: 0.002 + n * 12e-6 * noise()),
                                    minivisor2N: Sample(seconds: 0, cpuSeconds: 0.002 + 2 * n * 12e-6 * noise()),
                                    baselineN: Sample(seconds: 0, cpuSeconds: 0.001 + n * 10e-6 * noise()),
                                    baseline2N: Sample(seconds: 0, cpuSeconds: 0.001 + 2 * n * 10e-6 * noise()))
            }
            return ExitBenchmark.estimate(.portWrite, rounds: rounds, iterations: UInt32(n)).ratio.median
        }
        let a = run(), b = run()
        #expect(abs(a / b - 1) < 0.05, "\(a) vs \(b)")
        #expect(abs(a / 1.2 - 1) < 0.1 && abs(b / 1.2 - 1) < 0.1, "\(a), \(b); true ratio 1.2")
    }

    @Test func spreadOfKnownSamples() {
        let s = Spread((1...15).map(Double.init).reversed())
        #expect(s.median == 8 && s.q1 == 4.5 && s.q3 == 11.5 && s.count == 15)
        // Ranks floor(7.5 - 3.8) = 3 and ceil(8.5 + 3.8) = 13 of 15.
        #expect(s.low == 3 && s.high == 13, "\(s)")
        #expect(s.text(1) == "8.0 (95% CI 3.0-13.0, IQR 4.5-11.5, 15 samples)")
        let few = Spread([2, 1, 3])
        #expect(few.median == 2 && few.low == 1 && few.high == 3)
        #expect(Spread([]).count == 0 && Spread([]).median.isNaN)
    }
}
