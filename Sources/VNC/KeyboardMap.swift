/// X11 keysyms (what RFB key events carry) to PC scan code set 1 (what an i8042 with translation on
/// gives the guest), for a US keyboard layout. A shifted character maps to its key (the client sends
/// the shift key as its own event). Keys outside the table are dropped.
public enum KeyboardMap {
    /// The bytes for `keysym` going down (make) or up (break: the make code | 0x80), with the 0xE0
    /// prefix for extended keys; empty for keys the table does not know.
    public static func set1(keysym: UInt32, down: Bool) -> [UInt8] {
        guard let (code, extended) = lookup(keysym) else { return [] }
        let byte = down ? code : code | 0x80
        return extended ? [0xe0, byte] : [byte]
    }

    static func lookup(_ k: UInt32) -> (UInt8, Bool)? {
        if let c = special[k] { return c }
        guard k < 0x80, let scalar = Unicode.Scalar(k) else { return nil }
        let ch = Character(scalar).lowercased()
        return ascii[ch].map { ($0, false) }
    }

    private static let ascii: [String: UInt8] = {
        var m: [String: UInt8] = [:]
        for (row, start) in [("1234567890-=", 0x02), ("qwertyuiop[]", 0x10), ("asdfghjkl;'`", 0x1e), ("\\zxcvbnm,./", 0x2b)] {
            for (i, c) in row.enumerated() { m[String(c)] = UInt8(start + i) }
        }
        // Shifted symbols on the same keys (US layout).
        for (shifted, base) in zip("!@#$%^&*()_+{}:\"~|<>?", "1234567890-=[];'`\\,./") { m[String(shifted)] = m[String(base)] }
        m[" "] = 0x39
        return m
    }()

    private static let special: [UInt32: (UInt8, Bool)] = {
        var m: [UInt32: (UInt8, Bool)] = [
            0xff08: (0x0e, false), 0xff09: (0x0f, false), 0xff0d: (0x1c, false), 0xff1b: (0x01, false),
            0xffe1: (0x2a, false), 0xffe2: (0x36, false), 0xffe3: (0x1d, false), 0xffe4: (0x1d, true),
            0xffe5: (0x3a, false), 0xffe9: (0x38, false), 0xffea: (0x38, true), 0xffe7: (0x38, false),
            0xffeb: (0x5b, true), 0xffec: (0x5c, true), 0xff7f: (0x45, false), 0xff14: (0x46, false),
            0xff50: (0x47, true), 0xff52: (0x48, true), 0xff55: (0x49, true), 0xff51: (0x4b, true),
            0xff53: (0x4d, true), 0xff57: (0x4f, true), 0xff54: (0x50, true), 0xff56: (0x51, true),
            0xff63: (0x52, true), 0xffff: (0x53, true), 0xff8d: (0x1c, true), 0xffaa: (0x37, false),
        ]
        for i in 0..<10 { m[0xffbe + UInt32(i)] = (0x3b + UInt8(i), false) }   // F1-F10
        m[0xffc8] = (0x57, false); m[0xffc9] = (0x58, false)                    // F11, F12
        return m
    }()
}
