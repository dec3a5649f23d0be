/// What the ACPI tables describe: the finished device inventory at `Machine.start` (docs/boot-protocol.md).
public struct ACPIInventory: Sendable, Equatable {
    /// vCPUs; their APIC IDs (and ACPI processor UIDs) are 0..<cpuCount.
    public var cpuCount: Int
    /// PCI INTx routes (device, pin, IOAPIC input): the DSDT's `_PRT`, as the MP table has them.
    public var pciInterrupts: [PCIBus.InterruptRoute] = []
    /// The PCI MMIO window the root bridge decodes (its `_CRS`).
    public var pciMMIOWindow: Range<UInt64> = ResourceAllocator.defaultMMIOWindow

    public init(cpuCount: Int, pciInterrupts: [PCIBus.InterruptRoute] = [],
                pciMMIOWindow: Range<UInt64> = ResourceAllocator.defaultMMIOWindow) {
        self.cpuCount = cpuCount
        self.pciInterrupts = pciInterrupts
        self.pciMMIOWindow = pciMMIOWindow
    }

    /// The IOAPIC's ID in both firmware tables (the MP table uses the same: one past the last CPU).
    public var ioapicID: UInt8 { UInt8(truncatingIfNeeded: cpuCount) }
}

/// The ACPI tables minivisor gives every booted guest, as one block of guest memory with the RSDP first
/// (so it can sit at a 16-byte boundary of 0xe0000-0xfffff, where an OS searches for it):
///
///     RSDP (revision 2) -> XSDT -> FADT -> FACS, DSDT
///                               -> MADT
///
/// - FADT: not hardware-reduced. PM1a event block at `PMDevice.eventBlock` (0x600, 4 bytes), PM1a control
///   block at `PMDevice.controlBlock` (0x604, 2 bytes), SCI on ISA IRQ 9, no SMI command port (the
///   machine is always in ACPI mode: SCI_EN reads set), no PM timer, no GPE blocks; reset register =
///   port 0xcf9 (`ResetControl`), value 6; boot flags: legacy devices, an 8042, no VGA, no CMOS RTC.
/// - MADT: one enabled local APIC per vCPU (UID = APIC ID = index), the IOAPIC at 0xfec00000 (GSI base 0,
///   ID as in the MP table), an interrupt source override for the SCI (IRQ 9, level, active high), and
///   LINT1 = NMI on every CPU. ISA IRQs 0-15 map 1:1 to GSIs, as in the MP table (no override needed).
/// - DSDT: `\_S5` = Package { `PMDevice.s5SleepType`, 0, 0, 0 }, `\_SB.PEVT` (QEMU0001, pvpanic at 0x505), and `\_SB.PCI0` (PNP0A03, bus 0) with a
///   `_CRS` (bus numbers 0-255, ports 0xcf8-0xcff, every other I/O port, the PCI MMIO window) and a `_PRT`
///   with each PCI INTx route.
///
/// Every table checksums to zero; the RSDP's first 20 bytes and all 36 do too.
public struct ACPITables: Sendable, Equatable {
    /// Guest-physical address of the block (and of the RSDP, its first bytes).
    public let base: UInt64
    /// The whole block, to be written at `base`.
    public let bytes: [UInt8]
    /// Each table's signature and offset within `bytes` ("RSD PTR " for the RSDP).
    public let tables: [(signature: String, offset: Int, length: Int)]

    public static func == (a: ACPITables, b: ACPITables) -> Bool { a.base == b.base && a.bytes == b.bytes }

    /// The bytes of the table with `signature` ("FACP", "APIC", "DSDT", "FACS", "XSDT", "RSD PTR ").
    public func table(_ signature: String) -> [UInt8]? {
        tables.first { $0.signature == signature }.map { Array(bytes[$0.offset..<$0.offset + $0.length]) }
    }

    static let oemID = Array("MNVSOR".utf8)
    static let oemTableID = Array("MINIVSOR".utf8)
    static let creatorID = Array("MNVS".utf8)

    /// Builds the block for `inventory` at `base` (16-byte aligned, below 4 GiB).
    public init(inventory: ACPIInventory, at base: UInt64) {
        precondition(base % 16 == 0 && base + 0x10000 < 1 << 32, "the ACPI block must be 16-byte aligned below 4 GiB")
        self.base = base
        let dsdt = Self.dsdt(inventory)
        let madt = Self.madt(inventory)
        let facs = Self.facs()
        // Layout: RSDP at 0, FACS at 64 (it must be 64-byte aligned), then XSDT, FADT, MADT, DSDT.
        let facsOffset = 64
        let xsdtOffset = facsOffset + facs.count
        let xsdtLength = 36 + 8 * 2
        let fadtOffset = Self.align16(xsdtOffset + xsdtLength)
        let fadtLength = 276
        let madtOffset = Self.align16(fadtOffset + fadtLength)
        let dsdtOffset = Self.align16(madtOffset + madt.count)
        let at = { (offset: Int) in base + UInt64(offset) }

        let fadt = Self.fadt(facs: at(facsOffset), dsdt: at(dsdtOffset))
        let xsdt = Self.table("XSDT", revision: 1, body: [at(fadtOffset), at(madtOffset)].flatMap { AML.le($0, 8) })
        let rsdp = Self.rsdp(xsdt: at(xsdtOffset))
        assert(fadt.count == fadtLength && xsdt.count == xsdtLength)

        var block = [UInt8](repeating: 0, count: dsdtOffset + dsdt.count)
        let placed: [(String, Int, [UInt8])] = [("RSD PTR ", 0, rsdp), ("FACS", facsOffset, facs), ("XSDT", xsdtOffset, xsdt),
                                                ("FACP", fadtOffset, fadt), ("APIC", madtOffset, madt), ("DSDT", dsdtOffset, dsdt)]
        for (_, offset, bytes) in placed { block.replaceSubrange(offset..<offset + bytes.count, with: bytes) }
        bytes = block
        tables = placed.map { ($0.0, $0.1, $0.2.count) }
    }

    /// The largest block `cpuCount` CPUs can need: every PCI GSI (`ResourceAllocator.defaultGSIs`) routed.
    public static func maximumSize(cpuCount: Int) -> UInt64 {
        let routes = ResourceAllocator.defaultGSIs.enumerated().map { PCIBus.InterruptRoute(device: $0.offset + 1, pin: 1, gsi: $0.element) }
        return UInt64(ACPITables(inventory: ACPIInventory(cpuCount: cpuCount, pciInterrupts: routes), at: 0).bytes.count)
    }

    // MARK: tables

    /// The 36-byte System Description Table header followed by `body`, with its checksum.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var t = Array(signature.utf8) + AML.le(UInt64(36 + body.count), 4) + [revision, 0]
        t += oemID + oemTableID + AML.le(1, 4) + creatorID + AML.le(1, 4) + body
        t[9] = BootStructures.checksum(t)
        return t
    }

    static func rsdp(xsdt: UInt64) -> [UInt8] {
        var r = Array("RSD PTR ".utf8) + [0] + oemID + [2] + AML.le(0, 4)   // no RSDT: revision 2 uses the XSDT
        r += AML.le(36, 4) + AML.le(xsdt, 8) + [0, 0, 0, 0]
        r[8] = BootStructures.checksum(Array(r[0..<20]))
        r[32] = BootStructures.checksum(r)
        return r
    }

    /// FACS: no waking vector, no global lock owner; version 2. No checksum (the format has none).
    static func facs() -> [UInt8] {
        var f = Array("FACS".utf8) + AML.le(64, 4) + [UInt8](repeating: 0, count: 56)
        f[32] = 2   // version
        return f
    }

    /// A Generic Address Structure in system I/O space.
    static func ioGAS(_ port: UInt64, bits: UInt8, accessSize: UInt8) -> [UInt8] {
        [1, bits, 0, accessSize] + AML.le(port, 8)
    }

    static func fadt(facs: UInt64, dsdt: UInt64) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 276 - 36)
        func put(_ offset: Int, _ bytes: [UInt8]) { b.replaceSubrange(offset - 36..<offset - 36 + bytes.count, with: bytes) }
        put(36, AML.le(facs, 4))                                  // FIRMWARE_CTRL
        put(40, AML.le(dsdt, 4))                                  // DSDT
        put(46, AML.le(UInt64(PMDevice.sciIRQ), 2))              // SCI_INT; SMI_CMD (48) stays 0: always in ACPI mode
        put(56, AML.le(PMDevice.eventBlock, 4))                   // PM1a_EVT_BLK
        put(64, AML.le(PMDevice.controlBlock, 4))                 // PM1a_CNT_BLK
        put(88, [4, 2])                                           // PM1_EVT_LEN, PM1_CNT_LEN
        put(96, AML.le(101, 2) + AML.le(1001, 2))                 // P_LVL2/3_LAT: C2 and C3 not supported
        // IAPC_BOOT_ARCH: LEGACY_DEVICES | 8042 | VGA not present | CMOS RTC not present.
        put(109, AML.le(0x0001 | 0x0002 | 0x0004 | 0x0020, 2))
        // Flags: WBINVD | PROC_C1 | PWR_BUTTON (none) | SLP_BUTTON (none) | RESET_REG_SUP.
        put(112, AML.le(1 << 0 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 10, 4))
        put(116, ioGAS(ResetControl.port, bits: 8, accessSize: 1))   // RESET_REG
        put(128, [ResetControl.resetValue])                       // RESET_VALUE
        put(131, [0])                                             // FADT minor version (6.0)
        put(132, AML.le(facs, 8))                                 // X_FIRMWARE_CTRL
        put(140, AML.le(dsdt, 8))                                 // X_DSDT
        put(148, ioGAS(PMDevice.eventBlock, bits: 32, accessSize: 2))    // X_PM1a_EVT_BLK
        put(172, ioGAS(PMDevice.controlBlock, bits: 16, accessSize: 2))  // X_PM1a_CNT_BLK
        put(268, Array("MINIVSOR".utf8))                          // hypervisor vendor identity
        return table("FACP", revision: 6, body: b)
    }

    static func madt(_ inventory: ACPIInventory) -> [UInt8] {
        var b = AML.le(MemoryLayout.lapic, 4) + AML.le(1, 4)       // local APIC address; PCAT_COMPAT (8259s present)
        for cpu in 0..<inventory.cpuCount {
            b += [0, 8, UInt8(cpu), UInt8(cpu)] + AML.le(1, 4)     // processor local APIC: UID, APIC ID, enabled
        }
        b += [1, 12, inventory.ioapicID, 0] + AML.le(MemoryLayout.ioapic, 4) + AML.le(0, 4)   // IOAPIC, GSI base 0
        // The SCI: ISA IRQ 9 -> GSI 9, active high (01), level-triggered (11 << 2).
        b += [2, 10, 0, UInt8(PMDevice.sciIRQ)] + AML.le(UInt64(PMDevice.sciIRQ), 4) + AML.le(0x000d, 2)
        b += [4, 6, 0xff] + AML.le(0, 2) + [1]                     // local APIC NMI: all processors, LINT1
        return table("APIC", revision: 5, body: b)
    }

    static func dsdt(_ inventory: ACPIInventory) -> [UInt8] {
        let s5 = AML.name("\\_S5", AML.package([AML.integer(UInt64(PMDevice.s5SleepType)), AML.integer(0), AML.integer(0), AML.integer(0)]))
        let window = inventory.pciMMIOWindow
        let crs = AML.resourceTemplate([
            AML.wordAddressSpace(kind: 2, typeFlags: 0, range: 0...0xff),
            AML.ioPort(UInt16(PCIBus.configAddressPort), length: UInt8(PCIBus.portRangeSize)),
            AML.wordAddressSpace(kind: 1, typeFlags: 3, range: 0...PCIBus.configAddressPort - 1),
            AML.wordAddressSpace(kind: 1, typeFlags: 3, range: PCIBus.configAddressPort + PCIBus.portRangeSize...0xffff),
            AML.dwordMemory(window.lowerBound...window.upperBound - 1),
        ])
        // _PRT entries: { address (device << 16 | 0xffff), pin (0 = INTA#), source (0: a GSI), GSI }.
        let prt = inventory.pciInterrupts.map { r in
            AML.package([AML.dword(UInt32(r.device) << 16 | 0xffff), AML.integer(UInt64(r.pin - 1)), AML.integer(0), AML.integer(UInt64(r.gsi))])
        }
        let pci0 = AML.device("PCI0", [
            AML.name("_HID", AML.dword(AML.eisaID("PNP0A03"))),
            AML.name("_UID", AML.integer(0)),
            AML.name("_BBN", AML.integer(0)),
            AML.name("_CRS", crs),
            AML.name("_PRT", AML.package(prt)),
        ])
        // QEMU's pvpanic ISA device (what Linux's pvpanic driver binds to): a guest panic ends the VM with
        // status 20 (`PVPanic`).
        let pvpanic = AML.device("PEVT", [
            AML.name("_HID", AML.string("QEMU0001")),
            AML.name("_UID", AML.integer(0)),
            AML.name("_CRS", AML.resourceTemplate([AML.ioPort(UInt16(PVPanic.port), length: 1)])),
        ])
        return table("DSDT", revision: 2, body: s5 + AML.scope("\\_SB", [pci0, pvpanic]))
    }

    static func align16(_ v: Int) -> Int { (v + 15) & ~15 }
}
