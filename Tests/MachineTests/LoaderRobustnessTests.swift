import TestSupport
import Glibc
import Testing
@testable import Machine

/// Inputs crafted to make the loader trap, allocate or loop without bound: each must end in an
/// ImageError (or a clean load), quickly and within a bounded amount of memory.
@Suite("Loader robustness (no KVM)")
struct LoaderRobustnessTests {
    let code: [UInt8] = [0x90, 0x90, 0xf4]

    func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// An ELF64 header with e_shnum = 0 and section header 0 claiming `sections` sections (extended
    /// numbering), no program headers.
    func extendedSectionsELF(sections: UInt64) -> [UInt8] {
        var h: [UInt8] = [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0] + [UInt8](repeating: 0, count: 8)
        h += le(UInt16(2)) + le(UInt16(62)) + le(UInt32(1)) + le(UInt64(0x100000)) + le(UInt64(64)) + le(UInt64(0x1000))
        h += le(UInt32(0)) + le(UInt16(64)) + le(UInt16(56)) + le(UInt16(0)) + le(UInt16(64)) + le(UInt16(0)) + le(UInt16(0))
        h += [UInt8](repeating: 0, count: 0x1000 - h.count)
        h += le(UInt32(0)) + le(UInt32(0)) + le(UInt64(0)) + le(UInt64(0)) + le(UInt64(0)) + le(sections)   // sh_size
        h += [UInt8](repeating: 0, count: 24)
        return h
    }

    @Test func extendedSectionCountIsRefusedBeforeLibelfAllocatesForIt() throws {
        // 40 M sections in a sparse 2.6 GB file: libelf would initialise ~10 GB of section descriptors.
        let sections: UInt64 = 40_000_000
        let dir = TempDirectory()
        let path = dir.write("sections.elf", extendedSectionsELF(sections: sections), size: sections * 64 + 0x2000)
        let mem = try GuestMemory(bytes: 16 << 20)
        #expect { try ImageLoader.load(.file(path), into: mem, cpuCount: 1, cmdline: "") } throws: { e in
            "\(e)".contains("\(sections) sections")
        }
        // A sane extended count is libelf's business (here: no program headers, so no segments).
        #expect(throws: ImageError.noLoadableSegments("small")) {
            try ImageLoader.load(.bytes(extendedSectionsELF(sections: 1), name: "small"), into: mem, cpuCount: 1, cmdline: "")
        }
    }

    @Test func segmentArithmeticNeverOverflows() throws {
        let mem = try GuestMemory(bytes: 16 << 20)
        func refused(_ segments: [ELFBuilder.Segment], entry: UInt64 = 0x100000) -> Bool {
            let elf = ELFBuilder(entry: entry, segments: segments).build()
            do { _ = try ImageLoader.load(.bytes(elf, name: "k"), into: mem, cpuCount: 1, cmdline: ""); return false }
            catch { return !"\(error)".contains("\n") }
        }
        #expect(refused([.init(paddr: UInt64.max - 1, data: code)]))                                     // paddr + memsz wraps
        #expect(refused([.init(paddr: 0x100000, data: code, memsz: UInt64.max)]))                         // huge bss
        #expect(refused([.init(paddr: 0x100000, data: [], offset: UInt64.max - 1, filesz: 4)]))           // offset + filesz wraps
        #expect(refused([.init(paddr: 0x100000, data: [], offset: 0x40, filesz: 1 << 40)]))               // filesz past EOF
        #expect(refused([.init(paddr: (16 << 20) - 1, data: code)]))                                      // straddles the end of RAM
        #expect(refused([.init(paddr: 0x100000, data: code)], entry: UInt64.max))
    }

    @Test func mpTableMovesAndStaysConsistent() throws {
        // ELF64 over 0x9fc00: the MP table moves to 0xf0000-0xfffff and the boot info points there.
        let mem = try GuestMemory(bytes: 16 << 20)
        let elf = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x90000, data: code, memsz: 0x10000),
                                                         .init(paddr: 0x100000, data: code)]).build()
        let plan = try ImageLoader.load(.bytes(elf, name: "k"), into: mem, cpuCount: 4, cmdline: "")
        let mp = plan.mpTableAddress
        #expect(mp >= 0xf0000 && mp < 0x100000 && mp % 16 == 0)
        #expect(try mem.read(UInt64.self, at: BootLayout.bootInfo + 64) == mp)
        let fp = try mem.readBytes(at: mp, count: 16)
        #expect(Array(fp[0..<4]) == Array("_MP_".utf8) && fp.reduce(0, &+) == 0)
        #expect(UInt64(try mem.read(UInt32.self, at: mp + 4)) == mp + 16)
        let length = Int(try mem.read(UInt16.self, at: mp + 16 + 4))
        let table = try mem.readBytes(at: mp + 16, count: length)
        #expect(Array(table[0..<4]) == Array("PCMP".utf8) && table.reduce(0, &+) == 0)
        // Both places taken: a clear refusal naming the MP table.
        let both = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x90000, data: code, memsz: 0x70000 + 3)]).build()
        #expect { try ImageLoader.load(.bytes(both, name: "k"), into: mem, cpuCount: 1, cmdline: "") } throws: { e in
            "\(e)".contains("MP table")
        }
    }

    /// Deterministic mutations of valid images (ELF64, ELF32 multiboot, a.out kludge): bytes flipped,
    /// header fields set to edge values, files cut short. None may trap; each loads or throws ImageError.
    @Test func mutatedImagesLoadOrFailCleanly() throws {
        var rng = SplitMix64(state: 0x10AD)
        var elf32 = ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code), .init(paddr: 0x101000, data: code, memsz: 64)])
        elf32.is64 = false; elf32.machine = 3; elf32.prefix = multibootHeader(flags: 0x3)
        let seeds: [[UInt8]] = [
            ELFBuilder(entry: 0x100000, segments: [.init(paddr: 0x100000, data: code), .init(paddr: 0x200000, data: [1, 2], memsz: 4096)]).build(),
            elf32.build(),
            MultibootHeader.aoutImage(code: code + [UInt8](repeating: 0x90, count: 64)).bytes,
        ]
        let edges: [UInt64] = [0, 1, 0xff, 0xffff, 0xff000, 0x100000, 0x9fc00, 0xffff_ffff, 0x1_0000_0000, UInt64.max, UInt64.max - 0xfff, 1 << 40]
        let mem = try GuestMemory(bytes: 4 << 20)
        var loaded = 0, refused = 0
        for i in 0..<3000 {
            var bytes = seeds[i % seeds.count]
            for _ in 0..<(1 + rng.below(4)) {
                switch rng.below(4) {
                case 0: bytes[rng.below(bytes.count)] = UInt8(truncatingIfNeeded: rng.next())
                case 1 where bytes.count > 16:   // an edge value over a header field (first 256 bytes), 4 or 8 bytes wide
                    let at = rng.below(min(bytes.count, 256) - 8)
                    let v = edges[rng.below(edges.count)]
                    for k in 0..<(rng.below(2) == 0 ? 4 : 8) { bytes[at + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
                case 2 where bytes.count > 1: bytes = Array(bytes.prefix(max(1, rng.below(bytes.count + 1))))
                default: bytes += (0..<rng.below(64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                }
            }
            do {
                _ = try ImageLoader.load(.bytes(bytes, name: "fuzz"), into: mem, cpuCount: 1 + rng.below(4), cmdline: "x")
                loaded += 1
            } catch {
                #expect(!"\(error)".contains("\n"))
                refused += 1
            }
        }
        #expect(loaded > 0 && refused > 0, "loaded \(loaded), refused \(refused)")
    }

    @Test func guestMemoryRejectsNegativeCounts() throws {
        let mem = try GuestMemory(bytes: 4 << 20)
        #expect(throws: GuestMemoryError.self) { try mem.readBytes(at: 0x1000, count: -1) }
    }
}

