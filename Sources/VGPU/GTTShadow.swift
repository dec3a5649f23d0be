import Machine
import SoftGPU
import Synchronization

/// The vGPU's GTT window: what the guest wrote (guest-physical addresses) and the shadow entries the GPU
/// uses (bus addresses). Entries outside the vGPU's slices are dropped and read as 0; entries naming
/// anything but guest RAM shadow to the scratch page. Called on vCPU threads; state behind a Mutex.
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

    /// Translates one guest entry and installs the shadow entry (and the aperture mapping).
    private func apply(page: Int, guestValue: UInt64) {
        guard guestValue & GTTEntry.valid != 0 else {
            _ = gtt.setEntry(page, 0)
            notify(page, nil)
            return
        }
        let gpa = guestValue & GTTShadow.addressMask
        let flags = guestValue & 0xf   // valid, read-only, cache hint
        if guestValue >> 52 == 0, memory.contains(gpa, length: 4096), let off = memory.fileOffset(of: gpa) {
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
