import Testing
@testable import Machine

@Suite("ELF64 and multiboot loading (no KVM)")
struct LoaderTests {
    let code: [UInt8] = [0x90, 0x90, 0xf4]

    func memory(_ mib: UInt64 = 16) throws -> GuestMemory { try GuestMemory(bytes: mib << 20) }

    func load(_ bytes: [UInt8], mem: GuestMemory? = nil, modules: [BootModule] = [], cmdline: String = "") throws(ImageError) -> BootPlan {
        let m = mem ?? (try! memory())
        return try ImageLoader.load(.bytes(bytes, name: "test.elf"), into: m, cpuCount: 2, cmdline: cmdline, modules: modules)
    }

    @Test func loadsELF64SegmentsAndZeroesBSS() throws {
        let mem = try memory()
        try mem.fill(0xaa, at: 0x200000, count: 64)
        let elf = ELFBuilder(entry: 0x100000, segments: [
            .init(paddr: 0x100000, data: code),
            .init(paddr: 0x200000, data: [1, 2, 3, 4], memsz: 64),
        ]).build()
        let plan = try load(elf, mem: mem)
        #expect(plan == BootPlan(kind: .elf64, entry: .long64(rip: 0x100000), hasAPTrampoline: true))
        #expect(try mem.readBytes(at: 0x100000, count: 3) == code)
        #expect(try mem.readBytes(at: 0x200000, count: 6) == [1, 2, 3, 4, 0, 0])
        #expect(try mem.read(UInt8.self, at: 0x200000 + 63) == 0)
    }

    @Test func rejectsSegmentOutsideRAM() throws {
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code), .init(paddr: 0x2000000, data: code)]).build()
        #expect { try load(elf) } throws: { e in
            guard case .segmentOutsideRAM(_, let s, _, _)? = e as? ImageError else { return false }
            return s == 0x2000000
        }
    }

    @Test func rejectsSegmentWhoseBSSRunsPastRAM() throws {
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code, memsz: 64 << 20)]).build()
        #expect(throws: ImageError.self) { try load(elf) }
    }

    @Test func rejectsSegmentOverTheAPTrampoline() throws {
        let elf = ELFBuilder(entry: 0x8000, segments: [.init(paddr: 0x8000, data: code)]).build()
        #expect(throws: ImageError.overlapsBootStructure("test.elf", start: 0x8000, end: 0x8003, structure: "AP trampoline",
                                                         structureStart: 0x8000, structureEnd: 0x9000)) { try load(elf) }
    }

    @Test func rejectsWrongMachine() throws {
        var b = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)])
        b.machine = 183   // aarch64
        #expect(throws: ImageError.wrongMachine("test.elf", 183)) { try load(b.build()) }
    }

    @Test func rejectsSharedObject() throws {
        var b = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)])
        b.type = 3
        #expect(throws: ImageError.notExecutable("test.elf", 3)) { try load(b.build()) }
    }

    @Test func rejectsEntryOutsideSegments() throws {
        let elf = ELFBuilder(entry: 0x300000, segments: [.init(paddr: 0x100000, data: code)]).build()
        #expect(throws: ImageError.entryOutsideImage("test.elf", 0x300000)) { try load(elf) }
    }

    @Test func rejectsNoLoadableSegments() throws {
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(type: 4, paddr: 0x100000, data: code)]).build()
        #expect(throws: ImageError.noLoadableSegments("test.elf")) { try load(elf) }
    }

    @Test func rejectsSegmentPastEndOfFile() throws {
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code, offset: 1 << 20)]).build()
        #expect { try load(elf) } throws: { e in
            if case .malformedELF? = e as? ImageError { return true }
            return false
        }
    }

    @Test func rejectsTruncatedHeader() throws {
        let elf = Array(ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)]).build().prefix(40))
        #expect(throws: ImageError.self) { try load(elf) }
    }

    @Test func rejectsGarbageEmptyAndBzImage() throws {
        #expect(throws: ImageError.unknownFormat("test.elf")) { try load([UInt8](repeating: 0x41, count: 100)) }
        #expect(throws: ImageError.empty("test.elf")) { try load([]) }
        var bz = [UInt8](repeating: 0, count: 0x300)
        bz[0x202] = 0x48; bz[0x203] = 0x64; bz[0x204] = 0x72; bz[0x205] = 0x53
        #expect(throws: ImageError.linuxProtocolTooOld("test.elf", version: 0)) { try load(bz) }
    }

    @Test func rejects32BitELFWithoutMultiboot() throws {
        var b = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)])
        b.is64 = false; b.machine = 3
        #expect(throws: ImageError.wrongClass("test.elf", "32-bit")) { try load(b.build()) }
    }

    @Test func rejectsModulesForELF64() throws {
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)]).build()
        #expect(throws: ImageError.self) { try load(elf, modules: [BootModule(argument: "/etc/hostname")]) }
    }

    @Test func rejectsOverlongCommandLine() throws {
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)]).build()
        #expect(throws: ImageError.commandLineTooLong(5000)) { try load(elf, cmdline: String(repeating: "x", count: 5000)) }
    }

    @Test func missingFileIsNotFound() throws {
        #expect(throws: ImageError.notFound("/nonexistent/guest.elf")) {
            try ImageLoader.load(.file("/nonexistent/guest.elf"), into: try memory(), cpuCount: 1, cmdline: "")
        }
    }

    // MARK: multiboot

    @Test func multibootELF32LoadsWithInfo() throws {
        var b = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code)])
        b.is64 = false; b.machine = 3
        b.prefix = multibootHeader(flags: 0x3)
        let mem = try memory()
        let plan = try load(b.build(), mem: mem, cmdline: "console=ttyS0")
        #expect(plan.entry == .multiboot(eip: 0x100000, info: 0x1000))   // the classic place, when free
        let info = BootLayout.bootInfo
        let flags: UInt32 = try mem.read(at: info)
        #expect(flags & 0x4d == 0x4d)   // MEM | CMDLINE | MODS | MMAP
        #expect(try mem.read(UInt32.self, at: info + 4) == 639)
        #expect(try mem.read(UInt32.self, at: info + 8) == (16 - 1) * 1024)
        #expect(try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: info + 16))) == "console=ttyS0")
        // mmap: 3 entries (low, reserved, high), 24 bytes each.
        #expect(try mem.read(UInt32.self, at: info + 44) == 72)
        let mmap = UInt64(try mem.read(UInt32.self, at: info + 48))
        #expect(try mem.read(UInt64.self, at: mmap + 24 * 2 + 4) == 0x100000)
        #expect(try mem.read(UInt64.self, at: mmap + 24 * 2 + 12) == (16 << 20) - 0x100000)
    }

    @Test func multibootAOutKludgeWithModule() throws {
        // Header at file offset 0, image loaded at 1 MiB, entry right after the header, 4 KiB of bss.
        let header = multibootHeader(flags: 0x10001, aout: (0x100000, 0x100000, 0, 0x102000, 0x100020))
        let image = header + [UInt8](repeating: 0, count: 32 - header.count) + code
        let moduleText = "module body\n"
        let path = "/tmp/minivisor-test-module-\(getpid())"
        FileHelper.write(path, moduleText)
        defer { FileHelper.remove(path) }
        let mem = try memory()
        let plan = try load(image, mem: mem, modules: [BootModule(argument: "\(path) arg1")])
        guard case let .multiboot(eip, infoAddress) = plan.entry else { Issue.record("not multiboot: \(plan)"); return }
        #expect(eip == 0x100020)
        #expect(try mem.readBytes(at: 0x100020, count: 3) == code)
        let info = UInt64(infoAddress)
        #expect(try mem.read(UInt32.self, at: info + 20) == 1)
        let mods = UInt64(try mem.read(UInt32.self, at: info + 24))
        let start = UInt64(try mem.read(UInt32.self, at: mods))
        let end = UInt64(try mem.read(UInt32.self, at: mods + 4))
        #expect(start % 4096 == 0 && start >= 0x102000)
        #expect(end - start == UInt64(moduleText.utf8.count))
        #expect(try mem.readBytes(at: start, count: Int(end - start)) == Array(moduleText.utf8))
        #expect(try mem.readCString(at: UInt64(try mem.read(UInt32.self, at: mods + 8))) == "\(path) arg1")
    }

    @Test func multibootHeaderRules() throws {
        #expect(try MultibootHeader.find(in: multibootHeader(flags: 0x3, checksumOK: false) + [UInt8](repeating: 0, count: 64), name: "k") == nil)
        #expect(throws: ImageError.self) { try MultibootHeader.find(in: multibootHeader(flags: 0x10) + [UInt8](repeating: 0, count: 64), name: "k") }
        let late = [UInt8](repeating: 0, count: 8192) + multibootHeader(flags: 0)
        #expect(try MultibootHeader.find(in: late, name: "k") == nil)   // beyond the first 8 KiB
        let found = try MultibootHeader.find(in: [0, 0, 0, 0] + multibootHeader(flags: 0x2) + [0, 0, 0, 0], name: "k")
        #expect(found?.fileOffset == 4)
    }

    @Test func aoutImageEncoderRoundTrips() throws {
        let (bytes, entry) = MultibootHeader.aoutImage(code: code, loadAddress: 0x200000)
        let header = try #require(try MultibootHeader.find(in: bytes, name: "k"))
        let (segments, parsedEntry) = try header.aoutLayout(fileSize: bytes.count, name: "k")
        #expect(parsedEntry == UInt64(entry) && entry == 0x200020)
        #expect(segments == [LoadSegment(physicalAddress: 0x200000, fileOffset: 0, fileSize: UInt64(bytes.count), memorySize: UInt64(bytes.count))])
        let mem = try memory()
        #expect(try load(bytes, mem: mem).entry == .multiboot(eip: 0x200020, info: 0x1000))
        #expect(try mem.readBytes(at: 0x200020, count: 3) == code)
    }

    @Test func multibootAOutRejectsBadAddresses() throws {
        let h = multibootHeader(flags: 0x10000, aout: (0x100000, 0x100000, 0x200000, 0, 0x100020))   // load_end past file
        #expect(throws: ImageError.self) { try load(h + [UInt8](repeating: 0, count: 64)) }
        let h2 = multibootHeader(flags: 0x10000, aout: (0x100000, 0x100000, 0, 0, 0x500000))          // entry outside
        #expect(throws: ImageError.self) { try load(h2 + [UInt8](repeating: 0, count: 64)) }
    }
}

import Glibc
enum FileHelper {
    static func write(_ path: String, _ text: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        var t = text
        t.withUTF8 { _ = Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
    static func remove(_ path: String) { unlink(path) }
}
