import Glibc
import Testing
@testable import VGPU
import SoftGPU

/// vGPU types and the GPU's partition: sizes from the one table, first-fit slices that never overlap, a
/// clear error when graphics memory runs out, and docs/vgpu.md's table matching the code.
@Suite("vGPU types and graphics-memory partition")
struct VGPUTypeTests {
    @Test func atLeastSixteenOfTheDefaultTypeFit() {
        let host = GPUHost()
        #expect(host.capacity(of: .default) >= 16)
        #expect(host.capacity(of: .small) == 28 && host.capacity(of: .medium) == 18 && host.capacity(of: .large) == 3)
    }

    @Test func slicesAreDisjointUniqueAndInsideTheirAreas() throws {
        let host = GPUHost()
        var taken: [(Int, GMSlices)] = []
        let types: [VGPUType] = [.large, .small, .medium, .small, .large, .medium, .medium, .small]
        for t in types {
            let (id, s) = try host.allocate(type: t)
            #expect(UInt64(s.aperture.count) == t.apertureBytes && UInt64(s.hidden.count) == t.hiddenBytes)
            #expect(host.apertureArea.contains(s.aperture.lowerBound) && s.aperture.upperBound <= host.apertureArea.upperBound)
            #expect(host.hiddenArea.contains(s.hidden.lowerBound) && s.hidden.upperBound <= host.hiddenArea.upperBound)
            for (other, o) in taken {
                #expect(other != id)
                #expect(!s.aperture.overlaps(o.aperture) && !s.hidden.overlaps(o.hidden))
            }
            // The host's shadow arena of this id is in the host's reserve, not in any vGPU's slice.
            let arena = host.shadowArena(id: id)
            #expect(arena.gm >= host.gpu.config.apertureSize && arena.gm + arena.bytes <= host.hiddenArea.lowerBound)
            taken.append((id, s))
        }
        // Released slices are reused; ids too.
        let (id3, s3) = taken[3]
        host.release(id: id3)
        let (again, s) = try host.allocate(type: .small)
        #expect(again == id3 && s == s3)
    }

    @Test func exhaustionNamesTheSliceAndTheFix() throws {
        let host = GPUHost()
        for _ in 0..<3 { _ = try host.allocate(type: .large) }
        #expect(throws: GPUHost.AllocationError.self) { try host.allocate(type: .large) }
        do {
            _ = try host.allocate(type: .large)
        } catch {
            #expect(error.description.contains("64 MiB aperture slice") && error.description.contains("smaller vGPU type"))
        }
        // Small ones still fit beside them until the aperture is used up, then the same error.
        var n = 0
        while (try? host.allocate(type: .small)) != nil { n += 1 }
        #expect(n == Int((host.apertureArea.count - 3 * Int(VGPUType.large.apertureBytes)) / Int(VGPUType.small.apertureBytes)))
    }

    @Test func idsRunOutBeforeMemoryWithATinyType() {
        var p = GPUHost.Partition()
        p.maxVGPUs = 4
        let host = GPUHost(partition: p)
        let tiny = VGPUType(name: "tiny", apertureBytes: 1 << 20, hiddenBytes: 1 << 20, weight: 1)
        for _ in 0..<4 { #expect((try? host.allocate(type: tiny)) != nil) }
        #expect(throws: GPUHost.AllocationError.tooMany(max: 4)) { try host.allocate(type: tiny) }
    }

    /// docs/vgpu.md's type table lists exactly the types of `VGPUType.all`, with their sizes, weights
    /// and capacities.
    @Test func docsTableMatchesTheTypes() throws {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)
        let path = parts.joined(separator: "/") + "/docs/vgpu.md"
        guard let f = fopen(path, "r") else { Issue.record("cannot read \(path)"); return }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&buf, 1, buf.count, f)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let host = GPUHost()
        var rows: [String: [String]] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("| ") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: " ") }
            guard cells.count == 5, let first = cells.first?.split(separator: " ").first.map(String.init),
                  VGPUType.named(first) != nil else { continue }
            rows[first] = cells
        }
        #expect(Set(rows.keys) == Set(VGPUType.all.map(\.name)))
        for t in VGPUType.all {
            guard let c = rows[t.name] else { continue }
            #expect(c[1] == "\(t.apertureBytes >> 20) MiB" && c[2] == "\(t.hiddenBytes >> 20) MiB", "\(c)")
            #expect(c[3] == "\(t.weight)" && c[4] == "\(host.capacity(of: t))", "\(c)")
            #expect(c[0].contains("(default)") == (t == .default))
        }
    }
}

private extension Substring {
    func trimmingCharacters(in set: Character) -> String {
        var s = self
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}
