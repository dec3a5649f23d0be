import Synchronization
import Testing
@testable import Machine

/// What a fake KVM saw: the slots it holds, refusing overlaps as KVM does, and failing on request.
final class FakeSlots: Sendable {
    struct State {
        var slots: [UInt32: RAMSlotLayout.Piece] = [:]
        var calls = 0
        var failAtCall: Int?
    }
    let state = Mutex(State())
    struct Refused: Error {}

    func set(_ slot: UInt32, _ piece: RAMSlotLayout.Piece?) throws {
        try state.withLock { (s: inout State) throws -> Void in
            s.calls += 1
            if s.calls == s.failAtCall { throw Refused() }
            guard let piece else { s.slots[slot] = nil; return }
            guard s.slots[slot] == nil else { throw Refused() }   // a live slot cannot be moved
            for p in s.slots.values where p.guestAddress < piece.end && piece.guestAddress < p.end { throw Refused() }
            s.slots[slot] = piece
        }
    }
    var pieces: [RAMSlotLayout.Piece] { state.withLock { $0.slots.values.sorted { $0.guestAddress < $1.guestAddress } } }
}

@Suite("RAM slot layout for write watchpoints (no KVM)")
struct RAMSlotLayoutTests {
    static let regions = GuestMemory.layout(bytes: 0xC000_0000 + (16 << 20))   // low region and one at 4 GiB

    func make(readOnly: Bool = true) throws -> (RAMSlotLayout, FakeSlots, ResourceAllocator) {
        let fake = FakeSlots()
        let resources = ResourceAllocator()
        let layout = try RAMSlotLayout(regions: Self.regions, resources: resources, readOnlySupported: readOnly) { try fake.set($0, $1) }
        return (layout, fake, resources)
    }

    @Test func readOnlyPagesAreCutOutAndMerged() throws {
        let (layout, fake, _) = try make()
        let initial = fake.pieces
        #expect(initial.count == 2 && initial.allSatisfy { !$0.readOnly })
        // Two watchpoints on one page, a watch across a page boundary (two adjacent pages: one run), and
        // a page in the region at 4 GiB.
        try layout.setReadOnlyPages([0x5000, 0x7000, 0x8000, 0x1_0000_1000])
        let p = fake.pieces
        #expect(p.map { $0.guestAddress..<$0.end } == [
            0..<0x5000, 0x5000..<0x6000, 0x6000..<0x7000, 0x7000..<0x9000, 0x9000..<0xC000_0000,
            0x1_0000_0000..<0x1_0000_1000, 0x1_0000_1000..<0x1_0000_2000, 0x1_0000_2000..<0x1_0100_0000,
        ])
        #expect(p.map(\.readOnly) == [false, true, false, true, false, false, true, false])
        // Same host memory: each piece's offset is its distance into the region's part of the memfd.
        #expect(p[3].hostOffset == 0x7000)
        #expect(p[6].hostOffset == 0xC000_0000 + 0x1000)
        #expect(layout.isReadOnly(0x8fff) && !layout.isReadOnly(0x9000))
        #expect(layout.layout == p)
        try layout.setReadOnlyPages([])
        #expect(fake.pieces == initial)
    }

    @Test func onlyChangedSlotsAreTouched() throws {
        let (layout, fake, _) = try make()
        try layout.setReadOnlyPages([0x5000])
        let calls = fake.state.withLock { $0.calls }
        try layout.setReadOnlyPages([0x5000, 0x1_0000_0000])   // the low region stays as it was
        #expect(fake.state.withLock { $0.calls } - calls == 3, "one deletion, two creations in the high region")
    }

    @Test func aRefusedChangePutsThePreviousLayoutBack() throws {
        let (layout, fake, resources) = try make()
        try layout.setReadOnlyPages([0x5000])
        let before = fake.pieces
        fake.state.withLock { $0.failAtCall = $0.calls + 3 }   // delete ok, create ok, then refused
        #expect(throws: RAMSlotError.self) { try layout.setReadOnlyPages([0x9000]) }
        #expect(fake.pieces == before)
        #expect(layout.layout == before)
        #expect(layout.readOnlyPages == [0x5000])
        // The slot numbers of the abandoned pieces went back to the allocator: the layout holds 0-3.
        #expect(try resources.allocateMemorySlot() == 4)
    }

    @Test func pagesOutsideRAMAndHostsWithoutReadOnlyMemoryAreRefused() throws {
        let (layout, fake, _) = try make()
        let before = fake.pieces
        #expect(throws: RAMSlotError.notRAM(page: 0xFEC0_0000)) { try layout.setReadOnlyPages([0xFEC0_0000]) }
        #expect(throws: RAMSlotError.notRAM(page: 0x5004)) { try layout.setReadOnlyPages([0x5004]) }
        #expect(fake.pieces == before)
        let (plain, _, _) = try make(readOnly: false)
        #expect(throws: RAMSlotError.readOnlyUnsupported) { try plain.setReadOnlyPages([0x5000]) }
        try plain.setReadOnlyPages([])
        for e in [RAMSlotError.readOnlyUnsupported, .notRAM(page: 0x1000), .busy, .kvm("x")] {
            #expect(!e.description.contains("\n") && e.description.contains(": "))
        }
    }
}
