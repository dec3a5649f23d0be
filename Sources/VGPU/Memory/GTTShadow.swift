import Glibc
import Machine
import SoftGPU
import Synchronization

/// The vGPU's GTT window: what the guest wrote (guest-physical addresses) and the shadow entries the GPU
/// uses (bus addresses). Entries outside the vGPU's slices are dropped and read as 0; entries naming
/// anything but guest RAM are rejected: their shadow points at this vGPU's own scratch page (never shared
/// with another vGPU), and the command scanner cannot read through them (`readDwords`).
///
/// Threads and ownership: written from vCPU threads (the GTT window), read by the scanning thread; the
/// guest-written entries are behind one Mutex, never held while calling out (shadow entries are atomics
/// in SoftGPU's GTT).
final class GTTShadow: @unchecked Sendable {
    static let addressMask: UInt64 = 0x000f_ffff_ffff_f000

    let slices: GMSlices
    let gtt: GTT
    let memory: GuestMemory
    let busBase: UInt64
    let scratchBus: UInt64
    /// Guest-written values by GM page index, for the pages in the slices.
    private let guestEntries = Mutex<[Int: UInt64]>([:])
    let rejected = Atomic<UInt64>(0)
    let droppedOutside = Atomic<UInt64>(0)
    /// Called after an aperture page's shadow changes: (GM page index, host pointer or nil for "unbacked").
    var onAperturePageChange: (@Sendable (Int, UInt64?) -> Void)?

    init(slices: GMSlices, gtt: GTT, memory: GuestMemory, busBase: UInt64, scratchBus: UInt64) {
        self.slices = slices
        self.gtt = gtt
        self.memory = memory
        self.busBase = busBase
        self.scratchBus = scratchBus
    }

    func owns(page: Int) -> Bool {
        let gm = UInt64(page) << 12
        return slices.contains(gm, length: 4096)
    }

    /// The guest-visible value of entry `page`.
    func read(page: Int) -> UInt64 {
        guard owns(page: page) else { return 0 }
        return guestEntries.withLock { $0[page] ?? 0 }
    }

    /// Writes `bytes` bytes (4 or 8) of entry `page` at byte `offset` (0 or 4) within the entry.
    /// Returns false when the write was dropped.
    @discardableResult
    func write(page: Int, offset: Int, size: Int, value: UInt64) -> Bool {
        guard owns(page: page) else {
            droppedOutside.add(1, ordering: .relaxed)
            return false
        }
        let entry = guestEntries.withLock { e -> UInt64 in
            var v = e[page] ?? 0
            if size == 8 { v = value }
            else if offset == 0 { v = (v & 0xffff_ffff_0000_0000) | (value & 0xffff_ffff) }
            else { v = (v & 0xffff_ffff) | (value << 32) }
            e[page] = v
            return v
        }
        apply(page: page, guestValue: entry)
        return true
    }

    /// The offset in guest RAM's memfd of the page a valid guest entry names, or nil when the entry is
    /// rejected (bits 63:52 set, or the page is not wholly guest RAM).
    private func accepted(_ guestValue: UInt64) -> UInt64? {
        let gpa = guestValue & GTTShadow.addressMask
        guard guestValue >> 52 == 0, memory.contains(gpa, length: 4096) else { return nil }
        return memory.fileOffset(of: gpa)
    }

    /// Reads `count` dwords of the guest's view of GM at `gm` (the scanner's copies) straight from guest
    /// RAM through the guest's own entries. nil when any page of the range is outside the slices, has an
    /// invalid entry, or has a rejected one: such memory is unreadable, never the scratch page.
    func readDwords(gm: UInt64, count: Int) -> [UInt32]? {
        guard count >= 0, gm % 4 == 0 else { return nil }
        if count == 0 { return [] }
        let bytes = UInt64(count) * 4
        guard slices.contains(gm, length: bytes) else { return nil }
        let first = Int(gm >> 12), last = Int((gm + bytes - 1) >> 12)
        let offsets: [UInt64]? = guestEntries.withLock { e in
            var out: [UInt64] = []
            out.reserveCapacity(last - first + 1)
            for p in first...last {
                guard let v = e[p], v & GTTEntry.valid != 0, let off = accepted(v) else { return nil }
                out.append(off)
            }
            return out
        }
        guard let offsets else { return nil }
        let base = memory.hostBase
        return [UInt32](unsafeUninitializedCapacity: count) { buf, n in
            let dst = UnsafeMutableRawPointer(buf.baseAddress!)
            var done: UInt64 = 0
            var at = gm
            for off in offsets {
                let inPage = at & 0xfff
                let chunk = min(4096 - inPage, bytes - done)
                memcpy(dst + Int(done), base + Int(off + inPage), Int(chunk))
                done += chunk
                at += chunk
            }
            n = count
        }
    }

    /// Translates one guest entry and installs the shadow entry (and the aperture mapping).
    private func apply(page: Int, guestValue: UInt64) {
        guard guestValue & GTTEntry.valid != 0 else {
            _ = gtt.setEntry(page, 0)
            notify(page, nil)
            return
        }
        let flags = guestValue & 0xf   // valid, read-only, cache hint
        if let off = accepted(guestValue) {
            _ = gtt.setEntry(page, (busBase + off) | flags)
            notify(page, off)
        } else {
            rejected.add(1, ordering: .relaxed)
            _ = gtt.setEntry(page, scratchBus | GTTEntry.valid)
            notify(page, nil)
        }
    }

    private func notify(_ page: Int, _ fileOffset: UInt64?) {
        let gm = UInt64(page) << 12
        if slices.aperture.contains(gm) { onAperturePageChange?(page, fileOffset) }
    }

    /// Points every shadow entry of the slices back at nothing (VM teardown).
    func clearAll() {
        let pages = guestEntries.withLock { e -> [Int] in defer { e.removeAll() }; return Array(e.keys) }
        for p in pages { _ = gtt.setEntry(p, 0) }
    }
}
