import CLibpng
import Glibc
import Minivisor
import Testing

/// Boots Guests/bochs_display.c (written from the bochs-display contract Linux's driver relies on) with
/// `--display bochs`, checks the screenshot's pixels, and serves the display over VNC to Debian's
/// `vncsnapshot` (compared with the screenshot) and to a raw RFB client that types a key into the i8042.
@Suite("bochs-display guest and VNC (needs /dev/kvm)", .serialized, .enabled(if: Support.kvmAvailable, "needs read-write /dev/kvm"))
struct BochsDisplayGuestTests {
    static func readPNG(_ path: String) -> (Int, Int, [UInt8])? { Support.readPNG(path) }

    /// "bochs pixel X Y 0xRRGGBB" lines: every one must match the picture.
    static func checkSamples(_ out: String, _ w: Int, _ rgb: [UInt8], tolerance: Int = 0) -> Int {
        var n = 0
        for line in out.split(separator: "\n") where line.hasPrefix("bochs pixel ") {
            let f = line.split(separator: " ")
            guard f.count == 5, let x = Int(f[2]), let y = Int(f[3]), let c = UInt32(f[4].dropFirst(2), radix: 16) else { continue }
            let o = (y * w + x) * 3
            let want = [Int(c >> 16), Int((c >> 8) & 0xff), Int(c & 0xff)]
            let got = [Int(rgb[o]), Int(rgb[o + 1]), Int(rgb[o + 2])]
            #expect(zip(got, want).allSatisfy { abs($0 - $1) <= tolerance }, "pixel \(x),\(y): \(got) want \(want)")
            n += 1
        }
        return n
    }

    @Test func guestDrawsAndTheScreenshotShowsTheVisibleWindow() throws {
        let path = Support.tempPath("bochs.png")
        defer { unlink(path) }
        let capture = SerialCapture()
        var c = MachineConfiguration()
        c.memoryBytes = 64 << 20
        c.timeout = .seconds(120)
        c.serialOutput = .callback { capture.append($0) }
        let vm = try VirtualMachine(image: .file(try Support.guest("bochs_display")), configuration: c,
                                    bochs: BochsOptions(screenshotPath: path))
        let reason = vm.run()
        let out = capture.text
        #expect(reason == .powerOff, "\(out)")
        #expect(out.contains("bochs display ok"), "\(out)")
        #expect(vm.bochs!.statistics.modeSets == 1 && vm.bochs!.statistics.vgaAccesses >= 1)
        guard let (w, h, rgb) = Self.readPNG(path) else { Issue.record("no readable screenshot at \(path)"); return }
        #expect(w == 640 && h == 480)
        #expect(Self.checkSamples(out, w, rgb) >= 7)
        // The guest painted magenta outside the visible window: none of it may show (offsets, virtual width).
        var magenta = 0
        for i in stride(from: 0, to: rgb.count, by: 3) where rgb[i] == 0xff && rgb[i + 1] == 0 && rgb[i + 2] == 0xff { magenta += 1 }
        #expect(magenta == 0)
    }

    @Test func displayFlagsAreChecked() {
        for (args, text) in [(["--display", "vga"], "--display 'vga' is not understood"),
                             (["--vgpu", "--display", "bochs"], "two displays"),
                             (["--vnc", "5900"], "--vnc needs a display"),
                             (["--display", "bochs", "--vnc", "nohost:5900"], "not an IPv4 address"),
                             (["--display", "bochs", "--vnc", "70000"], "--vnc '70000' is out of range")] {
            let (status, out) = Support.run(Support.minivisor, ["run"] + args)
            #expect(status == 2 && out.contains(text), "\(args): \(status) \(out)")
        }
    }

    // MARK: VNC

    /// Waits (polling, up to `seconds`) until `file` contains `marker`; returns the file's text.
    func waitFor(_ marker: String, in file: String, seconds: Int = 120) -> String {
        var text = ""
        for _ in 0..<(seconds * 10) {
            text = Self.readText(file)
            if text.contains(marker) { break }
            usleep(100_000)
        }
        return text
    }

    /// A minimal RFB 3.8 client: handshake without authentication, then key events.
    struct RFBClient {
        let fd: Int32
        init?(port: Int) {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(Swift.MemoryLayout<sockaddr_in>.size)) } }
            guard ok == 0 else { close(fd); return nil }
            guard let version = read(12), version.starts(with: Array("RFB 003.".utf8)) else { return nil }
            send(Array("RFB 003.008\n".utf8))
            guard let n = read(1), n[0] > 0, let types = read(Int(n[0])), types.contains(1) else { return nil }
            send([1])                                                        // security type None
            guard let result = read(4), result == [0, 0, 0, 0] else { return nil }
            send([1])                                                        // ClientInit: shared
            guard let initMsg = read(24) else { return nil }
            let nameLength = Int(initMsg[20]) << 24 | Int(initMsg[21]) << 16 | Int(initMsg[22]) << 8 | Int(initMsg[23])
            _ = read(nameLength)
        }
        func read(_ n: Int) -> [UInt8]? {
            var out = [UInt8](repeating: 0, count: n), got = 0
            while got < n {
                let r = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, n - got, 0) }
                if r <= 0 { return nil }
                got += r
            }
            return out
        }
        func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) } }
        func key(_ keysym: UInt32, down: Bool) {
            send([4, down ? 1 : 0, 0, 0, UInt8(keysym >> 24), UInt8((keysym >> 16) & 0xff), UInt8((keysym >> 8) & 0xff), UInt8(keysym & 0xff)])
        }
    }

    @Test func vncShowsTheScreenshotAndTypesIntoTheGuest() throws {
        #expect(access("/usr/bin/vncsnapshot", X_OK) == 0, "vncsnapshot is missing: run scripts/install-deps.sh (apt-get install vncsnapshot)")
        #expect(access("/usr/bin/djpeg", X_OK) == 0, "djpeg is missing: run scripts/install-deps.sh (apt-get install libjpeg-turbo-progs)")
        let shot = Support.tempPath("vnc-shot.png"), log = Support.tempPath("vnc-vm.txt")
        let jpeg = Support.tempPath("vnc.jpg"), ppm = Support.tempPath("vnc.ppm")
        defer { for p in [shot, log, jpeg, ppm] { unlink(p) } }
        let vm = Support.spawnShell("\(Support.minivisor) run \(try Support.guest("bochs_display")) --display bochs --vnc 0 "
                                    + "--screenshot \(shot) --cmdline wait=key --timeout 120 > \(log) 2>&1")
        let text = waitFor("bochs waiting for a key", in: log)
        guard text.contains("bochs waiting for a key"),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("minivisor: VNC server listening on 127.0.0.1:") }),
              let port = Int(line.split(separator: ":").last!) else {
            kill(vm, SIGKILL); _ = Support.exitStatus(vm)
            Issue.record("the guest did not get to its key wait: \(text)")
            return
        }
        // A real client's picture equals the screenshot (JPEG at quality 100: small differences at edges).
        let (snapStatus, snapOut) = Support.run("/usr/bin/vncsnapshot", ["-quality", "100", "127.0.0.1::\(port)", jpeg])
        #expect(snapStatus == 0, "\(snapOut)")
        let (djpegStatus, djpegOut) = Support.run("/bin/sh", ["-c", "/usr/bin/djpeg -pnm -outfile \(ppm) \(jpeg)"])
        #expect(djpegStatus == 0, "\(djpegOut)")
        if let (w, h, rgb) = Self.readPNG(shot), let (pw, ph, prgb) = Self.readPPM(ppm) {
            #expect(pw == w && ph == h)
            if pw == w && ph == h {
                let meanError = zip(rgb, prgb).reduce(0) { $0 + abs(Int($1.0) - Int($1.1)) } / rgb.count
                #expect(meanError <= 4, "mean per-channel difference \(meanError)")
                #expect(Self.checkSamples(text, pw, prgb, tolerance: 24) >= 7)
            }
        } else {
            Issue.record("cannot read the screenshot or the VNC capture")
        }
        // Keys from a VNC client reach the guest through the i8042 as set-1 scan codes.
        guard let client = RFBClient(port: port) else {
            kill(vm, SIGKILL); _ = Support.exitStatus(vm)
            Issue.record("RFB handshake with port \(port) failed")
            return
        }
        client.key(0x61, down: true)
        client.key(0x61, down: false)
        let status = Support.exitStatus(vm)
        close(client.fd)
        let final = Self.readText(log)
        #expect(status == 0, "\(final)")
        #expect(final.contains("bochs key 0x1e") && final.contains("bochs key 0x9e"), "\(final)")
    }

    /// The whole file as text ("" when it cannot be read).
    static func readText(_ path: String) -> String {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var out: [UInt8] = [], buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out.filter { $0 != 13 }, as: UTF8.self)   // serial lines end in CR LF
    }

    /// A binary PPM (P6, maxval 255) as (width, height, RGB bytes).
    static func readPPM(_ path: String) -> (Int, Int, [UInt8])? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var w: Int32 = 0, h: Int32 = 0, maxval: Int32 = 0
        var header = [CChar](repeating: 0, count: 3)
        guard fgets(&header, 3, f) != nil, String(cString: header) == "P6" else { return nil }
        guard readInt(f, &w), readInt(f, &h), readInt(f, &maxval), maxval == 255 else { return nil }
        fgetc(f)                                                             // the one whitespace byte
        var data = [UInt8](repeating: 0, count: Int(w * h * 3))
        guard fread(&data, 1, data.count, f) == data.count else { return nil }
        return (Int(w), Int(h), data)
    }

    static func readInt(_ f: UnsafeMutablePointer<FILE>, _ out: inout Int32) -> Bool {
        var c = fgetc(f)
        while c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09 || c == 0x23 {
            if c == 0x23 { while c != 0x0a && c != EOF { c = fgetc(f) } }
            c = fgetc(f)
        }
        var v: Int32 = 0, digits = 0
        while c >= 0x30 && c <= 0x39 { v = v * 10 + c - 0x30; digits += 1; c = fgetc(f) }
        ungetc(c, f)
        out = v
        return digits > 0
    }
}
