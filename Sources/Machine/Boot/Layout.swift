/// Guest-physical addresses of the boot structures (docs/boot-protocol.md). Firmware/ap_trampoline.S
/// hard-codes apMailbox, apTrampoline and pml4: keep them in step. ELF64 guests find every structure at
/// its fixed address; for multiboot kernels only the first page is fixed, the MP table moves out of the
/// image's way and the multiboot information is placed where the image and modules are not.
public enum BootLayout {
    /// The first page: real-mode IVT (0-0x3ff), BIOS data area (0x400-0x4ff), boot GDT at 0x500.
    public static let firstPageEnd: UInt64 = 0x1000
    public static let gdt: UInt64 = 0x500
    public static let bootInfo: UInt64 = 0x1000
    public static let cmdline: UInt64 = 0x2000
    public static let cmdlineMaxBytes = 4095
    public static let memoryMapEntries: UInt64 = 0x4000
    public static let apMailbox: UInt64 = 0x6000
    public static let apTrampoline: UInt64 = 0x8000
    public static let apSIPIVector: UInt32 = UInt32(apTrampoline >> 12)
    public static let pml4: UInt64 = 0x9000
    public static let pdpt: UInt64 = 0xa000
    public static let pageDirectories: UInt64 = 0xb000
    /// Page directories may use [0xb000, 0x70000): 101 pages, 1 GiB each.
    public static let maxPageDirectories = Int((0x70000 - 0xb000) / 0x1000)
    public static let bootStackTop: UInt64 = 0x80000
    /// The MP floating pointer and table: in the last KiB of base memory, or, when the image covers that,
    /// in `mpTableAlternative` (0xf0000-0xfffff), the other area the MP specification has an OS search.
    public static let mpTable: UInt64 = 0x9fc00
    public static let mpTableAlternative: Range<UInt64> = 0xf0000..<0x100000
    public static let ebdaEnd: UInt64 = 0xa0000
    /// The ACPI tables, RSDP first (`ACPITables`): at 0xe0000 unless the image covers it, else at another
    /// 64-byte boundary of `acpiArea` (0xe0000-0xfffff, where an OS searches for the RSDP).
    /// `BootPlan.rsdpAddress` says where they are (for boot_params.acpi_rsdp_addr).
    public static let acpiRSDP: UInt64 = 0xe0000
    public static let acpiArea: Range<UInt64> = 0xe0000..<0x100000
    /// What a firmware memory map (e820) reserves below 1 MiB: the MP table (0x9fc00 and, for large
    /// machines, past 0xa0000) and the BIOS area with the ACPI tables. RAM below it is usable.
    public static let firmwareReserved: Range<UInt64> = mpTable..<0x100000
    /// The identity map marks [uncachedStart, 4 GiB) uncached (IOAPIC at 0xfec00000, LAPIC at 0xfee00000).
    public static let uncachedStart: UInt64 = 0xFE00_0000
    /// Where minivisor loads its own images (the built-in demo guest); guest images usually link here too.
    public static let imageMinimum: UInt64 = 0x100000

    /// The fixed structures of the ELF64 (minivisor) protocol with `pageTableGiB` page directories: an
    /// ELF64 image may load anywhere in RAM except over one of these.
    static func longModeStructures(pageTableGiB: Int) -> [(what: String, start: UInt64, end: UInt64)] {
        [("real-mode IVT, BIOS data area and boot GDT", 0, firstPageEnd),
         ("boot information block", bootInfo, bootInfo + 0x1000),
         ("command line", cmdline, cmdline + 0x2000),
         ("memory map", memoryMapEntries, memoryMapEntries + 0x1000),
         ("AP mailbox", apMailbox, apMailbox + 0x1000),
         ("AP trampoline", apTrampoline, apTrampoline + 0x1000),
         ("page tables", pml4, pageDirectories + UInt64(pageTableGiB) * 0x1000),
         ("boot stack", bootStackTop - 0x10000, bootStackTop)]
    }

    /// Selectors in the boot GDT.
    public static let code64Selector: UInt16 = 0x08
    public static let dataSelector: UInt16 = 0x10
    public static let code32Selector: UInt16 = 0x18
    public static let tssSelector: UInt16 = 0x20

    /// The boot GDT: null, 64-bit code, data, 32-bit code, and a 16-byte TSS descriptor (base 0).
    public static let gdtEntries: [UInt64] = [
        0,
        0x00af_9a00_0000_ffff,
        0x00cf_9200_0000_ffff,
        0x00cf_9a00_0000_ffff,
        0x0000_8b00_0000_0067,
        0,
    ]
}

/// Magic numbers of the boot protocols.
public enum BootMagic {
    public static let minivisorBootInfo: UInt32 = 0x4942_564d   // "MVBI"
    public static let bootInfoVersion: UInt32 = 1
    public static let bootInfoSize: UInt32 = 72
    public static let multibootHeader: UInt32 = 0x1BAD_B002
    public static let multibootBootloader: UInt32 = 0x2BAD_B002
}
