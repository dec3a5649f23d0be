import Testing
@testable import Machine

@Suite("Console escapes (Ctrl-A)")
struct ConsoleEscapeTests {
    @Test func plainBytesPassAndEscapesAreTakenOut() {
        var e = ConsoleEscape()
        #expect(e.filter([0x61, 0x03, 0x0d]) == ([0x61, 0x03, 0x0d], []))
        #expect(e.filter([0x01, 0x01, 0x62]) == ([0x01, 0x62], []))          // Ctrl-A Ctrl-A: one Ctrl-A
        #expect(e.filter([0x01, 0x68, 0x63]) == ([0x63], [.help]))
        #expect(e.filter([0x01, 0x7a, 0x64]) == ([0x64], []))                // unknown: dropped, as QEMU
        #expect(e.filter([0x65, 0x01, 0x78, 0x66]) == ([0x65], [.quit]))     // nothing after quit
    }

    /// An escape split across two reads still counts.
    @Test func escapeSplitAcrossReads() {
        var e = ConsoleEscape()
        #expect(e.filter([0x61, 0x01]) == ([0x61], []))
        #expect(e.filter([0x78]) == ([], [.quit]))
    }
}
