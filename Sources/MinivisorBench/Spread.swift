/// Many paired samples of one quantity (a ratio, a cost), summarised so that a reader sees how sure it is:
/// the median, the interquartile range, and a distribution-free 95% confidence interval for the median
/// (order statistics: ranks n/2 -+ 0.98 sqrt(n); no resampling, so the same samples always give the same
/// interval). A few noisy samples move none of these much, unlike a minimum or a mean.
public struct Spread: Sendable, Equatable, CustomStringConvertible {
    public let median: Double
    public let q1: Double
    public let q3: Double
    /// 95% confidence interval for the median (the whole sample range when there are 5 samples or fewer).
    public let low: Double
    public let high: Double
    public let count: Int

    public init(_ samples: [Double]) {
        let s = samples.sorted()
        count = s.count
        guard !s.isEmpty else { median = .nan; q1 = .nan; q3 = .nan; low = .nan; high = .nan; return }
        func quantile(_ p: Double) -> Double {
            let x = p * Double(s.count - 1)
            let i = Int(x), f = x - Double(i)
            return i + 1 < s.count ? s[i] + (s[i + 1] - s[i]) * f : s[i]
        }
        median = quantile(0.5)
        q1 = quantile(0.25)
        q3 = quantile(0.75)
        let n = Double(s.count), h = 1.96 * n.squareRoot() / 2
        let lowRank = max(Int((n / 2 - h).rounded(.down)), 1)                 // 1-based ranks
        let highRank = min(Int((1 + n / 2 + h).rounded(.up)), s.count)
        low = s[lowRank - 1]
        high = s[highRank - 1]
    }

    /// Half the confidence interval's width relative to the median (0.02 = the median is known to -+2%).
    public var relativeHalfWidth: Double { (high - low) / 2 / abs(median) }

    /// "1.052 (95% CI 1.031-1.070, IQR 1.020-1.081, 15 samples)".
    public func text(_ precision: Int) -> String {
        "\(fixed(median, precision)) (95% CI \(fixed(low, precision))-\(fixed(high, precision)), IQR \(fixed(q1, precision))-\(fixed(q3, precision)), \(count) samples)"
    }

    public var description: String { text(3) }
}

/// `v` with `precision` digits after the point.
public func fixed(_ v: Double, _ precision: Int) -> String {
    guard v.isFinite else { return v.isNaN ? "nan" : (v < 0 ? "-inf" : "inf") }
    var scale = 1.0
    for _ in 0..<precision { scale *= 10 }
    guard abs(v) * scale < 9e18 else { return String(v) }
    let n = Int64((abs(v) * scale).rounded())
    let whole = n / Int64(scale), frac = n % Int64(scale)
    var f = String(frac)
    while f.count < precision { f = "0" + f }
    return (v < 0 && n != 0 ? "-" : "") + String(whole) + (precision > 0 ? "." + f : "")
}
