/// The serial console's keyboard escapes, as QEMU's `-serial mon:stdio`/`-nographic` has them: Ctrl-A
/// starts an escape; Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A to the guest, Ctrl-A h prints the
/// list; any other key after Ctrl-A is dropped (as QEMU drops it). Everything else passes through.
///
/// Threads and ownership: a value type, owned by the one thread reading the terminal.
public struct ConsoleEscape: Sendable {
    /// Ctrl-A.
    public static let prefix: UInt8 = 0x01
    /// What the escapes are, for the help line (raw terminal: lines end in CR LF).
    public static let help = "minivisor: console escapes: Ctrl-A x quits (status 18), Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h shows this\r\n"

    public enum Action: Sendable, Equatable { case quit, help }

    private var pending = false

    public init() {}

    /// Splits `bytes` into what goes to the guest and the escape commands typed, in order. After `quit`
    /// the rest of `bytes` is dropped.
    public mutating func filter(_ bytes: some Sequence<UInt8>) -> (guest: [UInt8], actions: [Action]) {
        var guest: [UInt8] = []
        var actions: [Action] = []
        for b in bytes {
            if pending {
                pending = false
                switch b {
                case Self.prefix: guest.append(b)
                case UInt8(ascii: "x"), UInt8(ascii: "X"): actions.append(.quit); return (guest, actions)
                case UInt8(ascii: "h"), UInt8(ascii: "H"), UInt8(ascii: "?"): actions.append(.help)
                default: break
                }
            } else if b == Self.prefix {
                pending = true
            } else {
                guest.append(b)
            }
        }
        return (guest, actions)
    }
}
