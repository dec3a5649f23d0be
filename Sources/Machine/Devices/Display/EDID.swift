/// A 128-byte EDID 1.4 base block describing the virtual monitor of a display device (VESA E-EDID
/// standard, release A2): manufacturer "MVR", a digital input, sRGB, the preferred mode as the first
/// detailed timing (reduced blanking at 60 Hz), the monitor name "minivisor" and range limits. No
/// extension blocks. Linux reads it through drm_edid (the bochs driver copies it out of BAR2).
public enum EDID {
    public static let header: [UInt8] = [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]

    public static func make(preferredWidth: Int, preferredHeight: Int, refreshHz: Int = 60) -> [UInt8] {
        var e = [UInt8](repeating: 0, count: 128)
        e.replaceSubrange(0..<8, with: header)
        // Manufacturer ID: three letters, 5 bits each ('A' = 1), big-endian.
        let letters = "MVR".utf8.map { UInt16($0 - 0x40) }
        let mfg = letters[0] << 10 | letters[1] << 5 | letters[2]
        e[8] = UInt8(mfg >> 8); e[9] = UInt8(mfg & 0xff)
        e[10] = 0x11; e[11] = 0x11         // product code (little-endian)
        e[16] = 1; e[17] = 34               // week, year of manufacture (2024 - 1990)
        e[18] = 1; e[19] = 4               // EDID 1.4
        e[20] = 0xa5                       // digital, 8 bits per colour, DisplayPort
        // Screen size in cm at about 96 dpi.
        e[21] = UInt8(clamping: preferredWidth * 254 / 9600)
        e[22] = UInt8(clamping: preferredHeight * 254 / 9600)
        e[23] = 120                        // gamma 2.2
        e[24] = 0x06                       // sRGB default, preferred timing includes native format
        // Chromaticity: sRGB primaries and D65 white (10-bit fixed point, as QEMU's generator writes them).
        e.replaceSubrange(25..<35, with: [0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54])
        e[35] = 0x21; e[36] = 0x08         // established timings: 640x480@60, 800x600@60, 1024x768@60
        for i in stride(from: 38, to: 54, by: 2) { e[i] = 1; e[i + 1] = 1 }   // no standard timings
        e.replaceSubrange(54..<72, with: detailedTiming(width: preferredWidth, height: preferredHeight, refreshHz: refreshHz))
        e.replaceSubrange(72..<90, with: textDescriptor(tag: 0xfc, "minivisor"))
        // Range limits: 50-125 Hz vertical, 30-160 kHz horizontal, 600 MHz pixel clock, no timing formula.
        e.replaceSubrange(90..<108, with: [0, 0, 0, 0xfd, 0, 50, 125, 30, 160, 60, 0x01, 0x0a] + [UInt8](repeating: 0x20, count: 6))
        e.replaceSubrange(108..<126, with: [0, 0, 0, 0x10, 0] + [UInt8](repeating: 0, count: 13))   // dummy
        e[126] = 0                          // no extensions
        e[127] = UInt8(truncatingIfNeeded: 256 - Int(e[0..<127].reduce(0) { $0 + Int($1) } % 256))
        return e
    }

    /// An 18-byte detailed timing descriptor with CVT reduced blanking: 160 pixels of horizontal blank
    /// (48 front porch, 32 sync), 23 lines of vertical blank (3 front porch, 6 sync).
    static func detailedTiming(width: Int, height: Int, refreshHz: Int) -> [UInt8] {
        let w = min(max(width, 1), 4095), h = min(max(height, 1), 4095)
        let hBlank = 160, hFront = 48, hSync = 32, vBlank = 23, vFront = 3, vSync = 6
        let clock10kHz = min((w + hBlank) * (h + vBlank) * refreshHz / 10_000, 65_535)
        var d = [UInt8](repeating: 0, count: 18)
        d[0] = UInt8(clock10kHz & 0xff); d[1] = UInt8(clock10kHz >> 8)
        d[2] = UInt8(w & 0xff); d[3] = UInt8(hBlank & 0xff); d[4] = UInt8((w >> 8) << 4 | hBlank >> 8)
        d[5] = UInt8(h & 0xff); d[6] = UInt8(vBlank & 0xff); d[7] = UInt8((h >> 8) << 4 | vBlank >> 8)
        d[8] = UInt8(hFront); d[9] = UInt8(hSync)
        d[10] = UInt8((vFront & 0xf) << 4 | (vSync & 0xf))
        d[11] = 0
        let wmm = w * 254 / 960, hmm = h * 254 / 960
        d[12] = UInt8(wmm & 0xff); d[13] = UInt8(hmm & 0xff); d[14] = UInt8((wmm >> 8) << 4 | (hmm >> 8) & 0xf)
        d[17] = 0x1a                        // digital separate sync, vsync negative, hsync positive (CVT-RB)
        return d
    }

    /// A display descriptor holding text (name 0xfc, serial 0xff): up to 13 characters, LF-terminated,
    /// space-padded.
    static func textDescriptor(tag: UInt8, _ text: String) -> [UInt8] {
        var body = Array(text.utf8.prefix(13))
        if body.count < 13 { body.append(0x0a) }
        while body.count < 13 { body.append(0x20) }
        return [0, 0, 0, tag, 0] + body
    }
}
