/// Address ranges already claimed, and first-fit, aligned placement of new ranges in what is left of a set
/// of areas. The loaders use it for guest-physical memory (image segments, modules, boot structures), the
/// `ResourceAllocator` for the PCI MMIO and port windows. All arithmetic is overflow-checked: any input
/// gives an answer or nil, never a trap.
public struct AddressRanges: Sendable {
    public init() {}
    public struct Claim: Equatable, Sendable {
        public let start: UInt64
        public let end: UInt64
        public let what: String
    }

    /// Claimed ranges, sorted by start (they never overlap one another).
    public private(set) var claims: [Claim] = []

    /// The first claim overlapping [start, end), if any. Empty ranges overlap nothing.
    public func overlap(_ start: UInt64, _ end: UInt64) -> Claim? {
        guard start < end else { return nil }
        return claims.first { $0.start < end && start < $0.end }
    }

    /// Claims [start, end) (the caller has checked it is free).
    public mutating func claim(_ start: UInt64, _ end: UInt64, _ what: String) {
        guard start < end else { return }
        let i = claims.firstIndex { $0.start > start } ?? claims.endIndex
        claims.insert(Claim(start: start, end: end, what: what), at: i)
    }

    /// Gives back the claim that starts at `start`.
    public mutating func release(start: UInt64) { claims.removeAll { $0.start == start } }

    /// The lowest `align`-aligned address at or above `from`, inside one of `areas`, where `size` bytes
    /// are unclaimed; nil when there is none. `align` is a power of two.
    public func place(size: UInt64, align: UInt64, from: UInt64, in areas: [Range<UInt64>]) -> UInt64? {
        for area in areas {
            guard var a = Self.alignUp(max(area.lowerBound, from), align) else { continue }
            while a < area.upperBound, size <= area.upperBound - a {
                guard let c = overlap(a, a + size) else { return a }
                guard let next = Self.alignUp(c.end, align) else { break }
                a = next
            }
        }
        return nil
    }

    /// The largest unclaimed, `align`-aligned block at or above `from` inside `areas` (for error messages).
    public func largestFree(align: UInt64, from: UInt64, in areas: [Range<UInt64>]) -> UInt64 {
        var best: UInt64 = 0
        for area in areas {
            guard var a = Self.alignUp(max(area.lowerBound, from), align) else { continue }
            while a < area.upperBound {
                let next = claims.first { $0.end > a }
                let stop = min(area.upperBound, next.map { max($0.start, a) } ?? area.upperBound)
                best = max(best, stop - a)
                guard let n = next, n.start < area.upperBound, let after = Self.alignUp(n.end, align) else { break }
                a = after
            }
        }
        return best
    }

    static func alignUp(_ v: UInt64, _ align: UInt64) -> UInt64? {
        let (sum, overflow) = v.addingReportingOverflow(align - 1)
        return overflow ? nil : sum & ~(align - 1)
    }
}
