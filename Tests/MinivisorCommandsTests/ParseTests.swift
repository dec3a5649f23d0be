import Glibc
import Minivisor
import MinivisorCommands
import Testing

/// The command-line parser on its own: argv in, a checked request or one line out; nothing runs.
@Suite("Command-line parsing")
struct ParseTests {
    func request(_ argv: [String]) throws -> RunRequest {
        guard case .success(.run(let r)) = parseArguments(argv) else {
            Issue.record("\(argv) did not parse as run: \(parseArguments(argv))")
            throw CLIError("unexpected")
        }
        return r
    }

    func refusal(_ argv: [String], sourceLocation: SourceLocation = #_sourceLocation) -> String {
        switch parseArguments(argv) {
        case .failure(let e):
            #expect(e.status == 2, sourceLocation: sourceLocation)
            #expect(!e.message.contains("\n"), "two lines: \(e.message)", sourceLocation: sourceLocation)
            return e.message
        case .success(let c):
            Issue.record("\(argv) was accepted: \(c)", sourceLocation: sourceLocation)
            return ""
        }
    }

    @Test func defaultsAndValues() throws {
        let d = try request([])
        #expect(d.image == nil && d.memoryBytes == 256 << 20 && d.cpus == 1 && d.serial == .stdio && d.timeoutSeconds == nil)
        #expect(d.kvmDevicePath == "/dev/kvm")
        let r = try request(["run", "g.elf", "--memory", "64MiB", "--cpus", "4", "--timeout", "0.25", "--serial", "file:out.txt",
                             "--module", "m.bin a b", "--pit", "on", "--log-level", "debug", "--vgpu", "--screenshot", "s.png"])
        #expect(r.image == "g.elf" && r.memoryBytes == 64 << 20 && r.cpus == 4 && r.serial == .file("out.txt"))
        #expect(r.timeout == .milliseconds(250) && r.modules == ["m.bin a b"] && r.pit == .on && r.vgpu && r.screenshot == "s.png")
        guard case .success(.run(let e)) = parseArguments([], environment: ["MINIVISOR_KVM_DEVICE": "/dev/other"]) else {
            Issue.record("environment not taken"); return
        }
        #expect(e.kvmDevicePath == "/dev/other")
    }

    @Test func helpIsNotAnError() {
        for argv in [["--help"], ["run", "--help"], ["help", "bench"]] {
            guard case .success(.help(let text)) = parseArguments(argv) else { Issue.record("\(argv)"); continue }
            #expect(text.contains("USAGE") || text.contains("Usage"))
        }
    }

    /// Numeric flags: overflow, nan, inf, negative and zero are refused with the flag and its range, before
    /// any arithmetic (`--timeout 1e16` used to trap converting to Int64).
    @Test func numericFlagsAreRangeChecked() {
        for t in ["1e16", "1e400", "nan", "inf", "-inf", "-1", "0", "0.0001", "31536001"] {
            let m = refusal(["run", "--timeout", t])
            #expect(m.contains("--timeout") && m.contains("0.001 to 31536000"), "\(m)")
        }
        #expect(refusal(["run", "--timeout", "soon"]).contains("is not a number"))
        for mem in ["99999999999999T", "18446744073709551615", "18446744073709551616", "64T", "17179869184G"] {
            let m = refusal(["run", "--memory", mem])
            #expect(m.contains("--memory") && m.contains("more than this host's physical memory") && m.contains("give 4M to"), "\(m)")
        }
        for mem in ["0", "1M", "4095K"] { #expect(refusal(["run", "--memory", mem]).contains("too small")) }
        #expect(refusal(["run", "--memory", "4194305"]).contains("multiple of 4K"))
        for mem in ["-5", "1.5G", "", "1e9", "M"] { #expect(refusal(["run", "--memory", mem]).contains("is not a size")) }
        for c in ["0", "-1", "256", "99999999999999999999", "-99999999999999999999"] {
            let m = refusal(["run", "--cpus", c])
            #expect(m.contains("--cpus") && m.contains("from 1 to 255"), "\(m)")
        }
        #expect(refusal(["run", "--cpus", "two"]).contains("is not a whole number"))
        for (flag, bad) in [("--iterations", "0"), ("--iterations", "4294967295"), ("--iterations", "-1"), ("--rounds", "0"),
                            ("--rounds", "99999999999999999999"), ("--startup-runs", "0"), ("--startup-runs", "1001"),
                            ("--exit-seconds", "0"), ("--exit-seconds", "3601"), ("--exit-target", "0"), ("--exit-target", "51"),
                            ("--sched-seconds", "-1"), ("--sched-seconds", "61")] {
            let m = refusal(["bench", flag, bad])
            #expect(m.contains(flag) && m.contains(" to "), "\(m)")
        }
    }

    @Test func otherFlagsAndCombinations() {
        #expect(refusal(["run", "--serial", "tcp:1"]).contains("--serial"))
        #expect(refusal(["run", "--serial", "file:"]).contains("needs a path"))
        #expect(refusal(["run", "--screenshot", "x.png"]).contains("add --display bochs or --vgpu"))
        #expect(refusal(["run", "--vgpu", "--screenshot", ""]).contains("needs a path"))
        #expect(refusal(["run", "--pit", "maybe"]).contains("--pit"))
        #expect(refusal(["run", "--log-level", "loud"]).contains("--log-level"))
        #expect(refusal(["run", "--module", ""]).contains("--module"))
        #expect(refusal(["run", ""]).contains("image path is empty"))
        #expect(refusal(["run", "--frobnicate"]).contains("--frobnicate"))
        #expect(refusal(["run", "a", "b"]).contains("'b'"))
        if case .failure(let e) = parseArguments([], environment: ["MINIVISOR_KVM_DEVICE": ""]) {
            #expect(e.message.contains("MINIVISOR_KVM_DEVICE"))
        } else { Issue.record("empty MINIVISOR_KVM_DEVICE accepted") }
    }

    @Test func linuxKernelFlags() throws {
        let r = try request(["run", "--kernel", "bzImage", "--initrd", "initramfs.cpio.gz", "--append", "console=ttyS0 quiet"])
        #expect(r.image == "bzImage" && r.initrd == "initramfs.cpio.gz" && r.cmdline == "console=ttyS0 quiet")
        #expect(r.configuration().initrd == "initramfs.cpio.gz")
        #expect(r.configuration().inputFiles(image: r.bootImage).contains(InputFile(.initrd, "initramfs.cpio.gz")))
        // A positional image still works, and --cmdline is the same as --append.
        let p = try request(["run", "vmlinux", "--cmdline", "quiet"])
        #expect(p.image == "vmlinux" && p.cmdline == "quiet" && p.initrd == nil)
        #expect(refusal(["run", "a.elf", "--kernel", "b"]).contains("give one of them"))
        #expect(refusal(["run", "--initrd", "i.cpio"]).contains("add --kernel"))
        #expect(refusal(["run", "--kernel", "k", "--initrd", ""]).contains("--initrd needs a path"))
        #expect(refusal(["run", "--kernel", "k", "--append", "a", "--cmdline", "b"]).contains("use one of them"))
    }

    /// User text in messages is quoted and escaped: a value with a line break still gives one line.
    @Test func userTextStaysOnOneLine() {
        for argv in [["run", "--cpus", "1\n2"], ["run", "--memory", "1\n"], ["run", "--timeout", "1\n"],
                     ["run", "--serial", "x\ny"], ["run", "--pit", "a\nb"], ["run", "--log-level", "a\r\nb"],
                     ["run", "--foo\nbar"], ["run", "a", "b\nc"], ["bench", "--rounds", "\n"]] {
            let m = refusal(argv)
            #expect(m.contains("\\n"), "\(m)")
        }
    }

    /// Unicode's own line breaks (LINE and PARAGRAPH SEPARATOR, NEL) are escaped too (found by FuzzCLIParser).
    @Test func unicodeLineSeparatorsStayOnOneLine() {
        for sep in ["\u{2028}", "\u{2029}", "\u{85}"] {
            for argv in [["run", "--pit", "a\(sep)b"], ["run", "a", "b\(sep)c"], ["run", "--x\(sep)y"], ["run", "--serial", "x\(sep)"]] {
                let m = refusal(argv)
                let breaks = m.contains { $0.isNewline }
                #expect(!breaks, "\(argv): \(m)")
            }
        }
    }

    /// Any argv: a result, never a trap or an exit; refusals are one line with status 2. Deterministic.
    @Test func arbitraryArgumentsNeverTrap() {
        let words = ["run", "bench", "help", "--memory", "--cpus", "--timeout", "--serial", "--module", "--vgpu",
                     "--screenshot", "--pit", "--log-level", "--cmdline", "--iterations", "--rounds", "--startup-runs",
                     "--image", "--guests", "--help", "-h", "--", "-", "", "=", "--memory=", "--cpus=-1", "1e16", "nan",
                     "-inf", "0", "-1", "18446744073709551616", "99999999999999T", "file:", "file:x", "stdio", "none",
                     "auto", "on", "trace", "\n", "\u{0}", "é", "--timeout=1e308", "4294967296", "-9223372036854775808"]
        var state: UInt64 = 0x9e37_79b9_7f4a_7c15
        func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        for _ in 0..<600 {
            var argv: [String] = []
            for _ in 0..<Int(next() % 7) {
                if next() % 5 == 0 {
                    argv.append(String(decoding: (0..<Int(next() % 6)).map { _ in UInt8(truncatingIfNeeded: next()) }, as: UTF8.self))
                } else {
                    argv.append(words[Int(next() % UInt64(words.count))])
                }
            }
            if case .failure(let e) = parseArguments(argv) {
                #expect(e.status == 2 && !e.message.isEmpty && !e.message.contains("\n"), "\(argv): \(e.message)")
            }
        }
    }
}

@Suite("Argument encoding")
struct EncodingTests {
    /// Bytes that are not UTF-8 are refused with the argument's number and its bytes escaped; UTF-8
    /// (including non-ASCII names) passes.
    @Test func onlyUTF8Passes() {
        #expect(checkEncoding(arguments: [Array("run".utf8), Array("gäst.elf".utf8)], kvmDevice: Array("/dev/kvm".utf8)) == nil)
        let e = checkEncoding(arguments: [Array("run".utf8), [0x61, 0xff, 0x0a]], kvmDevice: nil)
        #expect(e?.message == "argument 2, 'a\\xff\\x0a', is not UTF-8: give file names in UTF-8 (rename the file, or link to it under a UTF-8 name)")
        #expect(e?.status == 2)
        #expect(checkEncoding(arguments: [], kvmDevice: [0xc3])?.message.hasPrefix("MINIVISOR_KVM_DEVICE '\\xc3' is not UTF-8") == true)
    }
}
