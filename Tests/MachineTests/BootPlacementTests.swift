import Glibc
import Testing
@testable import Machine

/// Where the boot structures go relative to the image: images below 1 MiB, multiboot information sized
/// from what is given (modules, strings), nothing dropped, cut or overwritten.
@Suite("Boot structure placement (no KVM)")
struct BootPlacementTests {
    let code: [UInt8] = [0x90, 0x90, 0xf4]

    /// The multiboot information address the plan hands the kernel in EBX.
    func infoAddress(_ plan: BootPlan) throws -> UInt64 {
        guard case let .multiboot(_, info) = plan.entry else { throw PlanError() }
        return UInt64(info)
    }
    struct PlanError: Error {}

    func elf32(_ segments: [ELFBuilder.Segment], entry: UInt64) -> [UInt8] {
        var b = ELFBuilder(entry: entry, segments: segments)
        b.is64 = false; b.machine = 3
        b.prefix = multibootHeader(flags: 0x3)
        return b.build()
    }

    func load(_ bytes: [UInt8], _ mem: GuestMemory, modules: [BootModule] = [], cmdline: String = "") throws -> BootPlan {
        try ImageLoader.load(.bytes(bytes, name: "k"), into: mem, cpuCount: 2, cmdline: cmdline, modules: modules)
    }

    func errorText(_ body: () throws -> BootPlan) -> String {
        do { _ = try body(); return "" } catch { return "\(error)" }
    }

    /// Ranges of [start, end) that overlap.
    func overlaps(_ a: (UInt64, UInt64), _ b: (UInt64, UInt64)) -> Bool { a.0 < b.1 && b.0 < a.1 }

    @Test func thousandModulesWithLongStringsAllArriveIntact() throws {
        let dir = TempDirectory()
        let contents = (0..<10).map { i in Array("module file \(i)\n".utf8) + [UInt8](repeating: UInt8(i), count: 100 * i) }
        let paths = contents.enumerated().map { dir.write("m\($0.offset)", $0.element) }
        let modules = (0..<1000).map { i -> BootModule in
            let tail = String(repeating: Character(UnicodeScalar(UInt8(0x61 + i % 26))), count: 1000)
            return BootModule(argument: "\(paths[i % 10]) #\(i) \(tail)")
        }
        let cmdline = "console=ttyS0 " + String(repeating: "c", count: 4000)
        let mem = try GuestMemory(bytes: 32 << 20)
        let plan = try load(elf32([.init(paddr: 0x100000, data: code)], entry: 0x100000), mem, modules: modules, cmdline: cmdline)
        let info = try infoAddress(plan)
        #expect(try mem.read(UInt32.self, at: info) & 0x20c == 0x20c)   // CMDLINE | MODS | LOADER
        #expect(try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: info + 16)), limit: 8192) == cmdline)
        #expect(try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: info + 64))) == "minivisor")
        let count = try mem.read(UInt32.self, at: info + 20)
        #expect(count == 1000)
        let list = UInt64(try mem.read(UInt32.self, at: info + 24))
        var previousEnd: UInt64 = 0x100003
        var mismatches = 0
        for i in 0..<Int(min(count, 1000)) {
            let e = list + UInt64(i) * 16
            let start = UInt64(try mem.read(UInt32.self, at: e)), end = UInt64(try mem.read(UInt32.self, at: e + 4))
            let string = try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: e + 8)), limit: 4096)
            let body = end >= start ? (try? mem.readBytes(at: start, count: Int(end - start))) : nil
            if string != modules[i].string || start % 4096 != 0 || start < previousEnd || body != contents[i % 10] {
                mismatches += 1
            }
            #expect(!overlaps((start, end), (list, list + 16 * 1000)))
            #expect(!overlaps((start, end), (info, info + 88)))
            previousEnd = end
        }
        #expect(mismatches == 0)
    }

    @Test func moreMultibootInformationThanRAMIsRefused() throws {
        let dir = TempDirectory()
        let path = dir.write("m", Array("x".utf8))
        // 4 MiB of RAM, 3000 page-aligned modules: they cannot all fit; the refusal says so.
        let modules = (0..<3000).map { BootModule(argument: "\(path) \($0)") }
        let mem = try GuestMemory(bytes: 4 << 20)
        let text = errorText { try load(elf32([.init(paddr: 0x100000, data: code)], entry: 0x100000), mem, modules: modules) }
        #expect(text.contains("free guest RAM") && text.contains("--memory"), "\(text)")
        // Modules that fit, strings that do not: the information block itself is refused.
        let long = [BootModule(argument: "\(path) " + String(repeating: "s", count: 3 << 20))]
        let info = errorText { try load(elf32([.init(paddr: 0x100000, data: code)], entry: 0x100000), mem, modules: long) }
        #expect(info.contains("multiboot information") && info.contains("does not fit") && info.contains("--memory"), "\(info)")
    }

    @Test func plainLdKernelWithHeadersBelowOneMiBLoads() throws {
        // As `ld -m elf_i386 -Ttext=0x100000` links it: ELF headers in a read-only segment at 0xff000.
        let header = [UInt8](repeating: 0x7f, count: 0xd4)
        let mem = try GuestMemory(bytes: 16 << 20)
        let plan = try load(elf32([.init(paddr: 0xff000, data: header), .init(paddr: 0x100000, data: code)], entry: 0x100000), mem,
                            cmdline: "low")
        #expect(try mem.readBytes(at: 0xff000, count: 0xd4) == header)
        #expect(try mem.readBytes(at: 0x100000, count: 3) == code)
        let info = try infoAddress(plan)
        #expect(!overlaps((info, info + 88), (0xff000, 0x100003)))
        #expect(try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: info + 16))) == "low")
    }

    @Test func elf64SegmentsBelowOneMiBOutsideTheBootStructuresLoad() throws {
        let mem = try GuestMemory(bytes: 16 << 20)
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0xff000, data: [1, 2, 3]), .init(paddr: 0x100000, data: code)]).build()
        let plan = try ImageLoader.load(.bytes(elf, name: "k"), into: mem, cpuCount: 1, cmdline: "")
        #expect(plan.kind == .elf64)
        #expect(try mem.readBytes(at: 0xff000, count: 3) == [1, 2, 3])
        // Over the page tables: refused, naming them.
        let bad = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x9800, data: [1]), .init(paddr: 0x100000, data: code)]).build()
        let text = errorText { try ImageLoader.load(.bytes(bad, name: "k"), into: mem, cpuCount: 1, cmdline: "") }
        #expect(text.contains("page tables") && text.contains("0x9800"), "\(text)")
    }

    @Test func segmentOverTheRealModeIVTIsRefusedClearly() throws {
        let mem = try GuestMemory(bytes: 16 << 20)
        let text = errorText { try load(elf32([.init(paddr: 0x400, data: code)], entry: 0x400), mem) }
        #expect(text.contains("IVT") && text.contains("0x400"), "\(text)")
    }

    @Test func imageOverTheMPTableMovesIt() throws {
        let mem = try GuestMemory(bytes: 16 << 20)
        // One segment covering 0x90000-0xa0000 (where the MP table normally is).
        let plan = try load(elf32([.init(paddr: 0x90000, data: code, memsz: 0x10000)], entry: 0x90000), mem)
        #expect(plan.mpTableAddress != BootLayout.mpTable)
        #expect(plan.mpTableAddress >= 0xf0000 && plan.mpTableAddress < 0x100000)
        #expect(try mem.readBytes(at: plan.mpTableAddress, count: 4) == Array("_MP_".utf8))
        #expect(try mem.readBytes(at: 0x90000, count: 3) == code)
        #expect(try mem.readBytes(at: 0x9fc00, count: 4) == [0, 0, 0, 0])   // bss stays zero
    }

    @Test func overlappingSegmentsAreRefused() throws {
        let mem = try GuestMemory(bytes: 16 << 20)
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code, memsz: 0x2000),
                                                         .init(paddr: 0x101000, data: code)]).build()
        let text = errorText { try ImageLoader.load(.bytes(elf, name: "k"), into: mem, cpuCount: 1, cmdline: "") }
        #expect(text.contains("overlap"), "\(text)")
    }

    @Test func nulInAModuleStringIsRefused() throws {
        let dir = TempDirectory()
        let path = dir.write("m", [1])
        let mem = try GuestMemory(bytes: 16 << 20)
        let text = errorText { try load(elf32([.init(paddr: 0x100000, data: code)], entry: 0x100000), mem,
                                        modules: [BootModule(argument: "\(path) a\u{0}b")]) }
        #expect(text.contains("NUL"), "\(text)")
    }
}
