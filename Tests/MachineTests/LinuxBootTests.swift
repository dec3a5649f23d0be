import Foundation
import Testing
@testable import Machine

/// A made-up bzImage: a setup header (version, xloadflags, payload fields) over one setup sector, then
/// the protected-mode part holding `payload` at payload_offset 0x40.
struct BzImageBuilder {
    var version: UInt16 = 0x020f
    var xloadflags: UInt16 = 0x1
    var initrdAddrMax: UInt32 = 0x7fff_ffff
    var cmdlineSize: UInt32 = 2047
    var prefAddress: UInt64 = 0x100_0000
    var initSize: UInt32 = 0x20_0000
    var payload: [UInt8] = []

    func build() -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 2 * 512)
        func put(_ v: UInt64, _ offset: Int, _ width: Int) {
            for i in 0..<width { b[offset + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        }
        put(1, 0x1f1, 1)                                   // setup_sects: one sector after the boot sector
        put(0xaa55, 0x1fe, 2)
        put(0xeb, 0x200, 1); put(0x66, 0x201, 1)            // jmp over the header: it ends at 0x268
        put(UInt64(LinuxSetupHeader.magic), 0x202, 4)
        put(UInt64(version), 0x206, 2)
        put(0x01, 0x211, 1)
        put(0x100000, 0x214, 4)
        put(UInt64(initrdAddrMax), 0x22c, 4)
        put(0x20_0000, 0x230, 4)
        put(1, 0x234, 1)
        put(UInt64(xloadflags), 0x236, 2)
        put(UInt64(cmdlineSize), 0x238, 4)
        put(0x40, 0x248, 4)
        put(UInt64(payload.count), 0x24c, 4)
        put(prefAddress, 0x258, 8)
        put(UInt64(initSize), 0x260, 4)
        return b + [UInt8](repeating: 0x90, count: 0x40) + payload
    }
}

/// gzip with stored (uncompressed) deflate blocks: a valid stream zlib inflates, built without zlib.
func gzipStored(_ data: [UInt8]) -> [UInt8] {
    var out: [UInt8] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]
    var rest = data[...]
    repeat {
        let chunk = rest.prefix(0xffff)
        rest = rest.dropFirst(chunk.count)
        let n = UInt16(chunk.count)
        out += [rest.isEmpty ? 1 : 0, UInt8(n & 0xff), UInt8(n >> 8), UInt8(~n & 0xff), UInt8(~n >> 8)] + chunk
    } while !rest.isEmpty
    var crc: UInt32 = 0xffff_ffff
    for byte in data {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = crc & 1 != 0 ? (crc >> 1) ^ 0xedb8_8320 : crc >> 1 }
    }
    crc = ~crc
    let size = UInt32(truncatingIfNeeded: data.count)
    for v in [crc, size] { out += (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
    return out
}

@Suite("Linux boot protocol (no KVM)")
struct LinuxBootTests {
    let code: [UInt8] = [0x90, 0x90, 0xf4]

    func memory(_ mib: UInt64 = 64) throws -> GuestMemory { try GuestMemory(bytes: mib << 20) }

    func load(_ bytes: [UInt8], mem: GuestMemory? = nil, cmdline: String = "console=ttyS0", initrd: String? = nil,
              host: HostProfile = HostProfile(softwareKVM: false)) throws(ImageError) -> BootPlan {
        let m = mem ?? (try! memory())
        return try ImageLoader.load(.bytes(bytes, name: "kernel"), into: m, cpuCount: 1, cmdline: cmdline, initrd: initrd, host: host)
    }

    /// A vmlinux-like ELF: entry 16 MiB (phys_startup_64), linked at the kernel text mapping.
    var vmlinux: [UInt8] {
        ELFBuilder(entry: 0x100_0000, segments: [
            .init(paddr: 0x100_0000, data: code, memsz: 0x1000, vaddr: 0xffff_ffff_8100_0000),
        ]).build()
    }

    func temporaryFile(_ bytes: [UInt8]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("mv-initrd-\(UUID().uuidString)").path
        FileManager.default.createFile(atPath: path, contents: Data(bytes))
        return path
    }

    @Test func parsesTheSetupHeader() throws {
        let bz = BzImageBuilder(payload: [1, 2, 3]).build()
        let h = try bz.withUnsafeBytes { b in try LinuxSetupHeader.parse(b, name: "k") }
        #expect(h.version == 0x020f && h.setupSects == 1 && h.kernelOffset == 1024)
        #expect(h.has64BitEntry && h.relocatable && h.cmdlineSize == 2047 && h.commandLineMax == 2047)
        #expect(h.payloadOffset == 0x40 && h.payloadLength == 3 && h.prefAddress == 0x100_0000 && h.initSize == 0x20_0000)
        #expect(h.end == 0x268 && h.initrdLimit == 0x8000_0000)
        var old = BzImageBuilder(); old.version = 0x020b
        let o = try old.build().withUnsafeBytes { b in try LinuxSetupHeader.parse(b, name: "k") }
        #expect(!o.has64BitEntry, "2.11 has no 64-bit entry even with XLF_KERNEL_64 set")
        var noFlag = BzImageBuilder(); noFlag.xloadflags = 0
        #expect(try !noFlag.build().withUnsafeBytes { b in try LinuxSetupHeader.parse(b, name: "k") }.has64BitEntry)
        #expect(LinuxSetupHeader.versionText(0x020f) == "2.15" && LinuxSetupHeader.versionText(0x0206) == "2.06")
    }

    @Test func refusesOldProtocolsAndNonKernels() throws {
        var old = BzImageBuilder(); old.version = 0x0205
        #expect(throws: ImageError.linuxProtocolTooOld("kernel", version: 0x0205)) { try load(old.build()) }
        #expect(ImageError.linuxProtocolTooOld("kernel", version: 0x0205).description.contains("2.05, older than the 2.06"))
        #expect(throws: ImageError.unknownFormat("kernel")) { try load([UInt8](repeating: 0x41, count: 4096)) }
        // An --initrd with a minivisor ELF64 guest is refused: only Linux takes one.
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)]).build()
        #expect(throws: ImageError.initrdNeedsLinux("kernel")) { try load(elf, initrd: "/nonexistent") }
        // ...and an ELF64 guest still boots with the minivisor protocol, not as Linux.
        #expect(try load(elf).kind == .elf64)
    }

    @Test func e820CoversRAMAndReservesTheFirmwareAreas() throws {
        typealias E = LinuxLayout.E820Entry
        let small = LinuxLayout.e820(GuestMemory.layout(bytes: 256 << 20))
        #expect(small == [E(0, 0x9fc00, E.ram), E(0x9fc00, 0x400, E.reserved), E(0xe0000, 0x20000, E.reserved),
                          E(0x100000, (256 << 20) - 0x100000, E.ram)])
        // RAM above the hole continues at 4 GiB; the hole itself is a gap (the PCI window).
        let big = LinuxLayout.e820(GuestMemory.layout(bytes: 4 << 30))
        #expect(big.last == E(1 << 32, (4 << 30) - 0xC000_0000, E.ram))
        #expect(big[3] == E(0x100000, 0xC000_0000 - 0x100000, E.ram))
        #expect(!big.contains { $0.address < 1 << 32 && $0.address + $0.size > 0xC000_0000 })
    }

    @Test func initrdGoesHighPageAlignedAndWithinTheLimits() {
        // Top of RAM, page-aligned down.
        #expect(LinuxLayout.initrdAddress(size: 0x1800, kernelEnd: 0x200_0000, ramEnd: 0x1000_0000, limit: 0x8000_0000) == 0x1000_0000 - 0x2000)
        // initrd_addr_max below RAM's end wins.
        #expect(LinuxLayout.initrdAddress(size: 0x1000, kernelEnd: 0x200_0000, ramEnd: 0x1000_0000, limit: 0x800_0000) == 0x800_0000 - 0x1000)
        // Not above the kernel: nil, and the room it had is what the error reports.
        #expect(LinuxLayout.initrdAddress(size: 0x1000_0000, kernelEnd: 0x200_0000, ramEnd: 0x1000_0000, limit: 0x8000_0000) == nil)
        #expect(LinuxLayout.initrdAddress(size: UInt64.max, kernelEnd: 0, ramEnd: 0x1000_0000, limit: 0x8000_0000) == nil)
        #expect(LinuxLayout.initrdRoom(kernelEnd: 0x200_0001, ramEnd: 0x1000_0000, limit: 0x8000_0000) == 0x1000_0000 - 0x200_1000)
    }

    @Test func bootParamsCarryTheHeaderCommandLineInitrdAndE820() throws {
        let bz = BzImageBuilder(payload: [1, 2, 3]).build()
        let e820 = LinuxLayout.e820(GuestMemory.layout(bytes: 64 << 20))
        let z = LinuxLayout.bootParams(setupHeader: Array(bz[0x1f1..<0x268]), cmdlineAddress: 0x20000,
                                       initrd: (0x3ff_0000, 0x1234), e820: e820)
        func f(_ o: Int, _ w: Int) -> UInt64 { (0..<w).reduce(0) { $0 | UInt64(z[o + $1]) << (8 * UInt64($1)) } }
        #expect(z.count == 4096)
        #expect(f(0x202, 4) == UInt64(LinuxSetupHeader.magic) && f(0x1fe, 2) == 0xaa55 && f(0x206, 2) == 0x020f)
        #expect(f(0x210, 1) == 0xff, "type_of_loader: undefined")
        #expect(f(0x228, 4) == 0x20000 && f(0x0c8, 4) == 0)
        #expect(f(0x218, 4) == 0x3ff_0000 && f(0x21c, 4) == 0x1234)
        #expect(f(0x1e8, 1) == UInt64(e820.count))
        for (i, e) in e820.enumerated() {
            #expect(f(0x2d0 + 20 * i, 8) == e.address && f(0x2d0 + 20 * i + 8, 8) == e.size && f(0x2d0 + 20 * i + 16, 4) == UInt64(e.type))
        }
        // A vmlinux has no header: a 2.15 one is made up.
        let v = LinuxLayout.bootParams(setupHeader: nil, cmdlineAddress: 0x20000, initrd: nil, e820: e820)
        #expect(v[0x206] == 0x0f && v[0x207] == 0x02 && v[0x218] == 0)
    }

    @Test func bootsAVmlinuxAtItsPhysicalEntry() throws {
        let mem = try memory()
        let plan = try load(vmlinux, mem: mem, cmdline: "console=ttyS0 quiet")
        #expect(plan.kind == .linux)
        #expect(plan.entry == .linux64(rip: 0x100_0000, bootParams: LinuxLayout.bootParams))
        #expect(try mem.readBytes(at: 0x100_0000, count: 3) == code)
        #expect(try mem.readBytes(at: LinuxLayout.cmdline, count: 21) == Array("console=ttyS0 quiet".utf8) + [0, 0])
        #expect(try mem.read(UInt32.self, at: LinuxLayout.bootParams + 0x228) == UInt32(LinuxLayout.cmdline))
    }

    @Test func decompressesAGzipPayloadOnTheHost() throws {
        let mem = try memory()
        let plan = try load(BzImageBuilder(payload: gzipStored(vmlinux)).build(), mem: mem)
        #expect(plan.entry == .linux64(rip: 0x100_0000, bootParams: LinuxLayout.bootParams))
        #expect(try mem.readBytes(at: 0x100_0000, count: 3) == code)
        #expect(plan.log.first?.contains("gzip payload decompressed on the host") == true)
        // The setup header reached boot_params.
        #expect(try mem.read(UInt32.self, at: LinuxLayout.bootParams + 0x202) == LinuxSetupHeader.magic)
        // A payload that does not decompress is one line naming the format.
        var broken = gzipStored(vmlinux)
        broken[20] ^= 0xff   // inside the stored block's length/complement pair
        #expect(throws: ImageError.self) { try load(BzImageBuilder(payload: broken).build()) }
        do { _ = try load(BzImageBuilder(payload: broken).build()); Issue.record("accepted a broken payload") } catch {
            #expect(error.description.contains("gzip payload does not decompress"))
        }
    }

    @Test func otherPayloadsRunTheKernelsOwnDecompressorAtItsSixtyFourBitEntry() throws {
        let mem = try memory()
        let bz = BzImageBuilder(payload: [0x42, 0x5a, 0x68] + [UInt8](repeating: 0, count: 0x400)).build()   // bzip2 magic
        let plan = try load(bz, mem: mem)
        #expect(plan.entry == .linux64(rip: 0x100000 + 0x200, bootParams: LinuxLayout.bootParams))
        #expect(try mem.readBytes(at: 0x100000, count: 4) == [0x90, 0x90, 0x90, 0x90])
        var no64 = BzImageBuilder(payload: [0x42, 0x5a, 0x68]); no64.xloadflags = 0
        #expect(throws: ImageError.self) { try load(no64.build()) }
        do { _ = try load(no64.build()) } catch { #expect(error.description.contains("no 64-bit entry point")) }
    }

    @Test func aKernelLargerThanRAMIsRefused() throws {
        var big = BzImageBuilder(payload: [0x42, 0x5a, 0x68] + [UInt8](repeating: 0, count: 0x400)); big.initSize = 0x1000_0000   // 256 MiB above 16 MiB
        #expect(throws: ImageError.linuxKernelDoesNotFit("kernel", needsEnd: 0x1100_0000, ramDescription: "0x0-0x4000000")) {
            try load(big.build())
        }
        // A decompressed kernel that claims more than RAM is refused before it is decompressed.
        var claims = gzipStored(vmlinux)
        claims.replaceSubrange((claims.count - 4)..., with: [0, 0, 0, 0x10])   // 256 MiB
        #expect(throws: ImageError.linuxKernelDoesNotFit("kernel", needsEnd: 0x1000_0000, ramDescription: "0x0-0x4000000")) {
            try load(BzImageBuilder(payload: claims).build())
        }
        // A vmlinux linked above RAM.
        let high = ELFBuilder(entry: 0x800_0000, segments: [.init(paddr: 0x800_0000, data: code, vaddr: 0xffff_ffff_8800_0000)]).build()
        #expect(throws: ImageError.linuxKernelDoesNotFit("kernel", needsEnd: 0x800_0003, ramDescription: "0x0-0x4000000")) {
            try load(high)
        }
    }

    @Test func placesTheInitrdHighAndRefusesOneThatDoesNotFit() throws {
        let mem = try memory()
        let bytes = (0..<5000).map { UInt8(truncatingIfNeeded: $0) }
        let path = try temporaryFile(bytes)
        defer { unlink(path) }
        let plan = try load(vmlinux, mem: mem, initrd: path)
        let at: UInt64 = (64 << 20) - 0x2000
        #expect(try mem.read(UInt32.self, at: LinuxLayout.bootParams + 0x218) == UInt32(at))
        #expect(try mem.read(UInt32.self, at: LinuxLayout.bootParams + 0x21c) == 5000)
        #expect(try mem.readBytes(at: at, count: 5000) == bytes)
        #expect(plan.log.contains { $0.contains("initrd") && $0.contains("0x3ffe000") })

        // 40 MiB does not fit between a kernel ending at 16 MiB + 4 KiB and 64 MiB... (47 MiB room), 50 MiB does not.
        let huge = try temporaryFile([])
        defer { unlink(huge) }
        #expect(truncate(huge, 50 << 20) == 0)
        #expect(throws: ImageError.initrdDoesNotFit(huge, size: 50 << 20, largestFree: (64 << 20) - 0x100_1000)) {
            try load(vmlinux, initrd: huge)
        }
        #expect(throws: ImageError.initrdUnreadable("/nonexistent/initrd", "it does not exist")) {
            try load(vmlinux, initrd: "/nonexistent/initrd")
        }
    }

    @Test func emulatingHostsGetTheirParametersOthersNothing() throws {
        let mem = try memory()
        let plan = try load(vmlinux, mem: mem, cmdline: "console=ttyS0", host: HostProfile(softwareKVM: true))
        let written = try mem.readBytes(at: LinuxLayout.cmdline, count: 300)
        let text = String(decoding: written.prefix { $0 != 0 }, as: UTF8.self)
        #expect(text.hasPrefix("console=ttyS0 noxsave clearcpuid=141,145,150,151,154,"))
        #expect(plan.log.contains { $0.contains("kvm-pvm") && $0.contains("noxsave") })
        #expect(LinuxLayout.hostCommandLine(HostProfile(softwareKVM: false)) == "")
        #expect(try !load(vmlinux).log.contains { $0.contains("kvm-pvm") })
        // The whole line counts against the kernel's limit.
        var short = BzImageBuilder(payload: gzipStored(vmlinux)); short.cmdlineSize = 20
        #expect(throws: ImageError.linuxCommandLineTooLong(21, max: 20)) { try load(short.build(), cmdline: String(repeating: "x", count: 21)) }
    }
}
