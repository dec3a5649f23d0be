/// Writers for the structures every guest finds in low memory: GDT, identity-map page tables, MP table,
/// the minivisor boot information block and the AP mailbox. Each is a pure function of its inputs.
enum BootStructures {
    static func writeGDT(_ memory: GuestMemory) throws(GuestMemoryError) {
        for (i, e) in BootLayout.gdtEntries.enumerated() { try memory.write(e, at: BootLayout.gdt + UInt64(i * 8)) }
    }

    /// Identity map with 2 MiB pages covering max(4 GiB, top of RAM) rounded up to 1 GiB (at most
    /// `BootLayout.maxPageDirectories` GiB). Present + writable + user at every level; write-back except
    /// the top 32 MiB below 4 GiB (IOAPIC, LAPIC), which is uncached. Trapped MMIO behaves the same either
    /// way; prefetchable BARs such as a GPU aperture must not be uncached. Returns how many GiB are mapped.
    @discardableResult
    static func writePageTables(_ memory: GuestMemory) throws(GuestMemoryError) -> Int {
        let gib = pageTableGiB(memory)
        try memory.fill(0, at: BootLayout.pml4, count: 0x2000)
        try memory.write(BootLayout.pdpt | 0x7, at: BootLayout.pml4)
        for g in 0..<gib {
            let pd = BootLayout.pageDirectories + UInt64(g) * 0x1000
            try memory.write(pd | 0x7, at: BootLayout.pdpt + UInt64(g) * 8)
            for i in 0..<512 {
                let address = UInt64(g) << 30 | UInt64(i) << 21
                let uncached: UInt64 = (address >= BootLayout.uncachedStart && address < MemoryLayout.fourGiB) ? 0x18 : 0
                try memory.write(address | 0x87 | uncached, at: pd + UInt64(i) * 8)
            }
        }
        return gib
    }

    /// How many GiB (page directories) the identity map for `memory` covers.
    static func pageTableGiB(_ memory: GuestMemory) -> Int {
        let top = max(MemoryLayout.fourGiB, memory.regions.last!.end)
        return min(Int((top + (1 << 30) - 1) >> 30), BootLayout.maxPageDirectories)
    }

    /// The most bytes the MP table can take for `cpuCount` CPUs: room for every PCI interrupt route
    /// the PCI bus may route (eight, `ResourceAllocator.defaultGSIs` 16-23).
    static func mpTableMaximumSize(cpuCount: Int) -> UInt64 {
        UInt64(mpTable(cpuCount: cpuCount, pciInterrupts: (0..<8).map { (device: $0, pin: 1, ioapicPin: 16 + $0) }).count)
    }

    /// MP floating pointer + configuration table at `address` (0x9fc00 unless the image is there): one processor entry per vCPU, a PCI and an
    /// ISA bus, one IOAPIC, ISA IRQs 0-15 routed 1:1 to IOAPIC pins (KVM's default routing), PCI INTx
    /// routes for `pciInterrupts` (device, pin 1-4, IOAPIC pin), and LINT0 = ExtINT, LINT1 = NMI.
    static func mpTable(cpuCount: Int, pciInterrupts: [(device: Int, pin: Int, ioapicPin: Int)] = [],
                        at address: UInt64 = BootLayout.mpTable) -> [UInt8] {
        let ioapicID = UInt8(cpuCount)
        var entries: [UInt8] = []
        var count = 0
        for cpu in 0..<cpuCount {
            entries += [0, UInt8(cpu), 0x14, cpu == 0 ? 0x3 : 0x1]
            entries += le32(0x600) + le32(0x201) + [UInt8](repeating: 0, count: 8)
            count += 1
        }
        entries += [1, 0] + Array("PCI   ".utf8); count += 1
        entries += [1, 1] + Array("ISA   ".utf8); count += 1
        entries += [2, ioapicID, 0x11, 1] + le32(UInt32(MemoryLayout.ioapic)); count += 1
        for irq in 0..<16 {
            entries += [3, 0, 0, 0, 1, UInt8(irq), ioapicID, UInt8(irq)]; count += 1
        }
        for p in pciInterrupts {
            // PCI interrupts are level-triggered, active low: flags po=3 (low), el=3 (level) = 0x0f.
            entries += [3, 0, 0x0f, 0, 0, UInt8(p.device << 2 | (p.pin - 1)), ioapicID, UInt8(p.ioapicPin)]; count += 1
        }
        entries += [4, 3, 0, 0, 0, 0, 0xff, 0]; count += 1   // ExtINT -> LINT0 of all CPUs
        entries += [4, 1, 0, 0, 0, 0, 0xff, 1]; count += 1   // NMI -> LINT1 of all CPUs

        let tableAddress = UInt32(truncatingIfNeeded: address + 16)
        var header: [UInt8] = Array("PCMP".utf8) + le16(UInt16(44 + entries.count)) + [4, 0]
        header += Array("MINIVSR ".utf8) + Array("PC          ".utf8)
        header += le32(0) + le16(0) + le16(UInt16(count)) + le32(UInt32(MemoryLayout.lapic)) + le16(0) + [0, 0]
        var table = header + entries
        table[7] = checksum(table)

        var fp: [UInt8] = Array("_MP_".utf8) + le32(tableAddress) + [1, 4, 0, 0, 0, 0, 0, 0]
        fp[10] = checksum(fp)
        return fp + table
    }

    /// The minivisor boot information block (docs/boot-protocol.md), its memory map and command line.
    static func writeBootInfo(_ memory: GuestMemory, cpuCount: Int, cmdline: String,
                              mpTable: UInt64 = BootLayout.mpTable) throws(GuestMemoryError) {
        var map: [(UInt64, UInt64, UInt32)] = [(0, BootLayout.imageMinimum, 2)]
        for r in memory.regions {
            let start = max(r.guestAddress, BootLayout.imageMinimum)
            if r.end > start { map.append((start, r.end - start, 1)) }
        }
        var a = BootLayout.memoryMapEntries
        for (base, len, type) in map {
            try memory.write(base, at: a)
            try memory.write(len, at: a + 8)
            try memory.write(type, at: a + 16)
            try memory.write(UInt32(0), at: a + 20)
            a += 24
        }
        let cmd = Array(cmdline.utf8.prefix(BootLayout.cmdlineMaxBytes))
        try memory.write(bytes: cmd + [0], at: BootLayout.cmdline)
        let b = BootLayout.bootInfo
        try memory.fill(0, at: b, count: UInt64(BootMagic.bootInfoSize))
        try memory.write(BootMagic.minivisorBootInfo, at: b + 0)
        try memory.write(BootMagic.bootInfoVersion, at: b + 4)
        try memory.write(BootMagic.bootInfoSize, at: b + 8)
        try memory.write(UInt32(cpuCount), at: b + 12)
        try memory.write(BootLayout.cmdline, at: b + 16)
        try memory.write(UInt32(cmd.count), at: b + 24)
        try memory.write(UInt32(map.count), at: b + 28)
        try memory.write(BootLayout.memoryMapEntries, at: b + 32)
        try memory.write(memory.size, at: b + 40)
        try memory.write(BootLayout.apMailbox, at: b + 48)
        try memory.write(BootLayout.apSIPIVector, at: b + 56)
        try memory.write(mpTable, at: b + 64)
        try memory.fill(0, at: BootLayout.apMailbox, count: 32)
    }

    static func checksum(_ bytes: [UInt8]) -> UInt8 {
        UInt8(truncatingIfNeeded: 0 &- bytes.reduce(0) { $0 &+ Int($1) })
    }
    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
}
