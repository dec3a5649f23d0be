import CKVM
import Glibc
import KVM
import Synchronization

/// The gdb stub could not start. One line, cause and fix; the CLI exits with status 2.
public enum GDBStubError: Error, Equatable, CustomStringConvertible, Sendable {
    case cannotListen(port: Int, errno: Int32)

    public var description: String {
        switch self {
        case let .cannotListen(port, e):
            return "--gdb \(port): cannot listen on 127.0.0.1:\(port): \(String(cString: strerror(e))): choose another port"
        }
    }
}

/// A GDB remote-serial-protocol server for one machine (`minivisor run --gdb PORT`), like QEMU's `-s`.
///
/// One gdb at a time connects over TCP (127.0.0.1). Every vCPU is a gdb thread (ids 1..N). The VM stops
/// as a whole (all-stop): when gdb attaches, on Ctrl-C, and when a vCPU hits a breakpoint, watchpoint or
/// finishes a step. Supported: `?`, `g`/`G`, `p`/`P` (general-purpose registers, RIP and EFLAGS are
/// writable), `m`/`M` through the stopped vCPU's page tables, `Z0`/`z0` (int3 placed by the stub; on
/// kvm-pvm ring 0 the int3 stops the vCPU as an emulation failure, elsewhere as a #BP exit), `Z1`
/// (DR0-DR3 through KVM_SET_GUEST_DEBUG), `Z2` write watchpoints of any length on every host with
/// read-only memory slots (`Machine.setWriteWatches`: the watched pages become read-only, the stop comes
/// after the writing instruction), `Z3`/`Z4` (DR0-DR3; refused on a software KVM host, where the
/// instruction emulator never triggers them), `s`, `c`, `vCont`, Ctrl-C, `D` (detach: breakpoints and
/// watchpoints removed, the guest continues), `k` (the VM ends as a power-off), `qXfer:features:read` (target.xml:
/// x86-64 for ELF64 guests, i386 for multiboot guests), thread queries. The end of the VM is reported
/// as `W` with minivisor's exit status.
///
/// Threads and ownership: `init` (the caller's thread) creates the listening socket; `start()` spawns
/// the stub's thread ("gdb"), which owns the sockets and every field of `Session`, runs under the `gdb`
/// seccomp filter, and drives the VM only through `Machine`'s pause/resume/step/state API (the vCPU
/// threads' mailboxes) and, for write watchpoints, `Machine.setWriteWatches` (memory slot ioctls). The machine's debug handler (vCPU threads, monitor) only appends to `events`
/// (one Mutex) and signals `wakeup`.
public final class GDBStub: @unchecked Sendable {
    public let machine: Machine
    /// The TCP port the stub listens on (the one asked for, or the kernel's pick for port 0).
    public let port: Int
    private let listenFD: Int32
    private let wakeup: EventFD
    private final class EventQueue: Sendable { let items = Mutex<[DebugStop]>([]) }
    private let events = EventQueue()
    private let thread = Mutex<pthread_t?>(nil)
    private let view: RegisterView
    /// Data watchpoints need the CPU's debug-register checks, which kvm-pvm's emulator lacks.
    private let watchpointsWork: Bool
    /// The longest write watchpoint (bytes) the stub accepts; gdb asks for whole variables.
    static let maxWriteWatch = 1 << 16

    /// Listens on 127.0.0.1:`port` (0: any free port, see `port`). Throws `GDBStubError`.
    public init(machine: Machine, port: Int) throws {
        self.machine = machine
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw GDBStubError.cannotListen(port: port, errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(Swift.MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, socklen_t(Swift.MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 1) == 0 else {
            let e = errno
            close(fd)
            throw GDBStubError.cannotListen(port: port, errno: e)
        }
        var len = socklen_t(Swift.MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.port = Int(UInt16(bigEndian: addr.sin_port))
        listenFD = fd
        wakeup = try EventFD()
        view = machine.bootPlan?.kind == .multiboot ? .i386 : .x86_64
        watchpointsWork = !machine.configuration.host.softwareKVM
        let events = self.events, wakeup = self.wakeup
        machine.setDebugHandler { stop in
            events.items.withLock { $0.append(stop) }
            wakeup.signal()
        }
    }

    deinit { close(listenFD) }

    /// Starts the stub's thread. Start the machine (paused, for `--gdb-wait`) before or after.
    public func start() {
        let t = OSThread.spawn(name: "gdb") { [self] in
            guard machine.enterSeccomp(.gdb, thread: "gdb") else { return }
            serve()
        }
        thread.withLock { $0 = t }
    }

    /// Waits for the stub's thread to tell the debugger how the VM ended and to finish. Call after the
    /// machine's `wait()` returned.
    public func finish() {
        if let t = thread.withLock({ $0 }) { pthread_join(t, nil) }
    }

    // MARK: the stub's thread

    private struct Session {
        var fd: Int32
        var input: [UInt8] = []
        var noAck = false
        var waitingForStop = false
        var generalThread = 0
        var lastStop: String = "S05"
        var softwareBreakpoints: [UInt64: (physical: UInt64, original: UInt8)] = [:]
        var hardware: [(address: UInt64, kind: Int, length: Int)?] = [nil, nil, nil, nil]
        var writeWatches: [(length: Int, watch: Machine.WriteWatch)] = []
    }

    private func takeEvents() -> [DebugStop] {
        _ = wakeup.consume()
        return events.items.withLock { e in defer { e.removeAll() }; return e }
    }

    private func ended(_ events: [DebugStop]) -> ExitReason? {
        for e in events { if case .ended(let r) = e { return r } }
        return nil
    }

    private func serve() {
        while true {
            var fds = [pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 2, -1) >= 0 else { continue }
            if fds[1].revents != 0, ended(takeEvents()) != nil { return }
            if fds[0].revents & Int16(POLLIN) != 0 {
                let c = accept(listenFD, nil, nil)
                guard c >= 0 else { continue }
                var one: Int32 = 1
                setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(Swift.MemoryLayout<Int32>.size))
                let finished = session(Session(fd: c))
                close(c)
                if finished { return }
            }
        }
    }

    /// Talks to one debugger. Returns true when the VM ended.
    private func session(_ start: Session) -> Bool {
        var s = start
        // All-stop: the VM stops while a debugger is attached and not continuing.
        _ = takeEvents()
        if machine.runState == .running { try? machine.pause() }
        s.lastStop = "T05thread:01;"
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            var fds = [pollfd(fd: s.fd, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeup.fd, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 2, -1) >= 0 else { continue }
            if fds[1].revents != 0 {
                let evs = takeEvents()
                if let reason = ended(evs) {
                    send(&s, String(format2: "W", UInt8(truncatingIfNeeded: reason.exitStatus)))
                    return true
                }
                // The first stop while gdb waits for one is reported; the VM stops as a whole. Other
                // stops (several vCPUs at once) leave their vCPU paused like the rest.
                for case let .stopped(cpu, reason) in evs where s.waitingForStop {
                    try? machine.pause()
                    s.waitingForStop = false
                    s.generalThread = cpu
                    s.lastStop = stopReply(cpu: cpu, reason: reason, &s)
                    send(&s, s.lastStop)
                    break
                }
            }
            guard fds[0].revents != 0 else { continue }
            let n = read(s.fd, &buf, buf.count)
            if n <= 0 { detach(&s); return false }
            s.input += buf[0..<n]
            while let packet = nextPacket(&s) {
                if packet == "\u{3}" {
                    if s.waitingForStop {
                        try? machine.pause()
                        s.waitingForStop = false
                        s.lastStop = "T02thread:\(String(s.generalThread + 1, radix: 16));"
                        send(&s, s.lastStop)
                    }
                    continue
                }
                if !handle(packet, &s) { return false }
            }
        }
    }

    /// The next complete packet from the input ("\u{3}" for an interrupt), acknowledging it.
    private func nextPacket(_ s: inout Session) -> String? {
        while let first = s.input.first, first != UInt8(ascii: "$"), first != 3 { s.input.removeFirst() }
        guard let first = s.input.first else { return nil }
        if first == 3 { s.input.removeFirst(); return "\u{3}" }
        guard let hash = s.input.firstIndex(of: UInt8(ascii: "#")), s.input.count >= hash + 3 else {
            // Far longer than the PacketSize announced in qSupported: not a packet, drop it.
            if s.input.count > 2 * 0x4000 { s.input.removeAll() }
            return nil
        }
        let body = Array(s.input[1..<hash])
        s.input.removeFirst(hash + 3)
        if !s.noAck { _ = write(s.fd, "+", 1) }
        return String(decoding: unescape(body), as: UTF8.self)
    }

    private func unescape(_ b: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while i < b.count {
            if b[i] == 0x7d, i + 1 < b.count { out.append(b[i + 1] ^ 0x20); i += 2 } else { out.append(b[i]); i += 1 }
        }
        return out
    }

    private func send(_ s: inout Session, _ payload: String) {
        var bytes: [UInt8] = []
        for b in payload.utf8 {
            if b == UInt8(ascii: "$") || b == UInt8(ascii: "#") || b == UInt8(ascii: "}") || b == UInt8(ascii: "*") {
                bytes += [0x7d, b ^ 0x20]
            } else { bytes.append(b) }
        }
        let sum = bytes.reduce(UInt8(0), &+)
        let packet = [UInt8(ascii: "$")] + bytes + Array("#".utf8) + Array(String(format2: "", sum).utf8)
        var off = 0
        while off < packet.count {
            let n = packet[off...].withUnsafeBytes { write(s.fd, $0.baseAddress, $0.count) }
            if n <= 0 { return }
            off += n
        }
    }

    private func stopReply(cpu: Int, reason: DebugStop.Reason, _ s: inout Session) -> String {
        let t = "thread:\(String(cpu + 1, radix: 16));"
        switch reason {
        case .softwareBreakpoint: return "T05\(t)swbreak:;"
        case .hardwareBreakpoint: return "T05\(t)hwbreak:;"
        case .watchpoint(let i):
            guard let w = s.hardware[i] else { return "T05\(t)" }
            let kind = w.kind == 2 ? "watch" : (w.kind == 3 ? "rwatch" : "awatch")
            return "T05\(t)\(kind):\(String(w.address, radix: 16));"
        case .writeWatch(let address): return "T05\(t)watch:\(String(address, radix: 16));"
        case .step, .other: return "T05\(t)"
        }
    }

    /// Handles one packet. Returns false when the session ends (detach, kill).
    private func handle(_ p: String, _ s: inout Session) -> Bool {
        let cpu = s.generalThread
        func reply(_ r: String) { send(&s, r) }
        if p == "?" { reply(s.lastStop); return true }
        if p.hasPrefix("qSupported") {
            reply("PacketSize=4000;qXfer:features:read+;swbreak+;hwbreak+;vContSupported+;QStartNoAckMode+")
            return true
        }
        if p == "QStartNoAckMode" { reply("OK"); s.noAck = true; return true }
        if p.hasPrefix("qXfer:features:read:target.xml:") {
            let range = p.dropFirst("qXfer:features:read:target.xml:".count).split(separator: ",")
            guard range.count == 2, let off = Int(range[0], radix: 16), let len = Int(range[1], radix: 16), off >= 0, len >= 0 else { reply("E01"); return true }
            let xml = Array(view.targetXML.utf8)
            let chunk = Array(xml.dropFirst(off).prefix(len))   // off and len come from the client: any size
            reply((off >= xml.count || off + chunk.count == xml.count ? "l" : "m") + String(decoding: chunk, as: UTF8.self))
            return true
        }
        if p == "qfThreadInfo" { reply("m" + (1...machine.vcpuCount).map { String($0, radix: 16) }.joined(separator: ",")); return true }
        if p == "qsThreadInfo" { reply("l"); return true }
        if p == "qC" { reply("QC\(String(cpu + 1, radix: 16))"); return true }
        if p == "qAttached" { reply("1"); return true }
        if p.hasPrefix("qThreadExtraInfo,") {
            reply(hex(Array("vCPU \(Int(p.dropFirst(17), radix: 16).map { $0 - 1 } ?? 0)".utf8)))
            return true
        }
        if p.hasPrefix("H") {
            let id = Int(p.dropFirst(2), radix: 16) ?? 0
            if p.dropFirst().first == "g", id > 0, id <= machine.vcpuCount { s.generalThread = id - 1 }
            reply("OK")
            return true
        }
        if p.hasPrefix("T") {
            let id = Int(p.dropFirst(), radix: 16) ?? 0
            reply(id >= 1 && id <= machine.vcpuCount ? "OK" : "E01")
            return true
        }
        if p == "g" {
            guard let st = try? machine.vcpuState(cpu) else { reply("E01"); return true }
            reply(view.registers.indices.map { hex(view.value($0, st)) }.joined())
            return true
        }
        if p.hasPrefix("p") {
            guard let i = Int(p.dropFirst(), radix: 16), view.registers.indices.contains(i) else { reply("E01"); return true }
            guard let st = try? machine.vcpuState(cpu) else { reply("E01"); return true }
            reply(hex(view.value(i, st)))
            return true
        }
        if p.hasPrefix("P") {
            let parts = p.dropFirst().split(separator: "=")
            guard parts.count == 2, let i = Int(parts[0], radix: 16), view.registers.indices.contains(i),
                  var regs = try? machine.registers(cpu) else { reply("E01"); return true }
            if view.set(i, unhex(parts[1]), &regs) {
                reply((try? machine.setRegisters(cpu, regs)) != nil ? "OK" : "E01")
            } else { reply("OK") }   // segment, x87, SSE: read-only here
            return true
        }
        if p.hasPrefix("G") {
            let bytes = unhex(p.dropFirst())
            guard var regs = try? machine.registers(cpu) else { reply("E01"); return true }
            var off = 0
            for (i, r) in view.registers.enumerated() where off + r.bytes <= bytes.count {
                _ = view.set(i, Array(bytes[off..<(off + r.bytes)]), &regs)
                off += r.bytes
            }
            reply((try? machine.setRegisters(cpu, regs)) != nil ? "OK" : "E01")
            return true
        }
        if p.hasPrefix("m") {
            let parts = p.dropFirst().split(separator: ",")
            guard parts.count == 2, let a = UInt64(parts[0], radix: 16), let n = Int(parts[1], radix: 16), n >= 0 else { reply("E01"); return true }
            let bytes = readGuest(cpu, a, min(n, 0x2000))
            reply(bytes.isEmpty && n > 0 ? "E14" : hex(bytes))
            return true
        }
        if p.hasPrefix("M") {
            let parts = p.dropFirst().split(separator: ":", maxSplits: 1)
            let head = parts.first?.split(separator: ",") ?? []
            guard parts.count == 2, head.count == 2, let a = UInt64(head[0], radix: 16) else { reply("E01"); return true }
            reply(writeGuest(cpu, a, unhex(parts[1])) ? "OK" : "E14")
            return true
        }
        if p.hasPrefix("Z") || p.hasPrefix("z") {
            reply(breakpoint(p, &s))
            return true
        }
        if p == "vCont?" { reply("vCont;c;C;s;S"); return true }
        if p.hasPrefix("vCont;") {
            // Step the thread named with s (the others stay stopped), else continue all.
            let actions = p.dropFirst(6).split(separator: ";")
            if let step = actions.first(where: { $0.hasPrefix("s") || $0.hasPrefix("S") }) {
                let id = step.split(separator: ":").dropFirst().first?.split(separator: ".").last.flatMap { Int($0, radix: 16) }
                resume(&s, step: id.map { $0 - 1 } ?? cpu)
            } else {
                resume(&s, step: nil)
            }
            return true
        }
        if p.hasPrefix("c") || p.hasPrefix("C") { resume(&s, step: nil); return true }
        if p.hasPrefix("s") || p.hasPrefix("S") { resume(&s, step: cpu); return true }
        if p == "D" || p.hasPrefix("D;") {
            reply("OK")
            detach(&s)
            return false
        }
        if p == "k" || p.hasPrefix("vKill") {
            if p.hasPrefix("vKill") { reply("OK") }
            removeBreakpoints(&s)
            machine.requestStop(.powerOff)
            return false
        }
        reply("")   // not supported
        return true
    }

    private func resume(_ s: inout Session, step: Int?) {
        s.waitingForStop = true
        if let step, step >= 0, step < machine.vcpuCount {
            s.generalThread = step
            do { try machine.step(step) } catch { s.waitingForStop = false; send(&s, "E01") }
        } else {
            try? machine.resume()
        }
    }

    private func detach(_ s: inout Session) {
        // A debugger that goes away while the guest runs: stop it to take the breakpoints out.
        if machine.runState == .running { try? machine.pause() }
        removeBreakpoints(&s)
        s.waitingForStop = false
        try? machine.resume()
    }

    private func removeBreakpoints(_ s: inout Session) {
        for (_, bp) in s.softwareBreakpoints { try? machine.memory.write(bp.original, at: bp.physical) }
        s.softwareBreakpoints.removeAll()
        s.hardware = [nil, nil, nil, nil]
        if !s.writeWatches.isEmpty {
            s.writeWatches.removeAll()
            try? machine.setWriteWatches([])
        }
        machine.setSoftwareBreakpoints([])
        if machine.runState == .paused { applyGuestDebug(s) }
    }

    /// Z/z packets: type 0 software (int3), 1 hardware execution, 2 write, 3 read, 4 access watchpoints.
    private func breakpoint(_ p: String, _ s: inout Session) -> String {
        let insert = p.first == "Z"
        let f = p.dropFirst().split(separator: ",")
        guard f.count >= 3, let type = Int(f[0]), let address = UInt64(f[1], radix: 16), let kind = Int(f[2].prefix { $0 != ";" }, radix: 16) else { return "E01" }
        switch type {
        case 0:
            if insert {
                if s.softwareBreakpoints[address] != nil { return "OK" }
                guard let pa = try? machine.translate(s.generalThread, address), let original: UInt8 = try? machine.memory.read(at: pa),
                      (try? machine.memory.write(UInt8(0xcc), at: pa)) != nil else { return "E14" }
                s.softwareBreakpoints[address] = (pa, original)
            } else {
                guard let bp = s.softwareBreakpoints.removeValue(forKey: address) else { return "OK" }
                try? machine.memory.write(bp.original, at: bp.physical)
            }
            machine.setSoftwareBreakpoints(Set(s.softwareBreakpoints.keys))
        case 2 where machine.supportsWriteWatches:
            return writeWatch(insert: insert, address: address, length: kind, &s)
        case 1...4:
            if type >= 2 && !watchpointsWork { return "" }   // gdb says so; `set can-use-hw-watchpoints 0` steps instead
            let length = type == 1 ? 1 : kind
            guard [1, 2, 4, 8].contains(length) else { return "E22" }
            if insert {
                guard let slot = s.hardware.firstIndex(where: { $0 == nil }) else { return "E28" }
                s.hardware[slot] = (address, type, length)
            } else {
                guard let slot = s.hardware.firstIndex(where: { $0?.address == address && $0?.kind == type }) else { return "OK" }
                s.hardware[slot] = nil
            }
        default: return ""
        }
        return applyGuestDebug(s) ? "OK" : "E01"
    }

    /// Z2/z2 through read-only pages: the watched bytes' guest-physical ranges come from vCPU
    /// `generalThread`'s page tables now (later page-table changes do not move the watchpoint).
    private func writeWatch(insert: Bool, address: UInt64, length: Int, _ s: inout Session) -> String {
        if !insert {
            guard let i = s.writeWatches.firstIndex(where: { $0.watch.address == address && $0.length == length }) else { return "OK" }
            let removed = s.writeWatches.remove(at: i)
            do { try machine.setWriteWatches(s.writeWatches.map(\.watch)) } catch {
                s.writeWatches.insert(removed, at: i)
                return "E01"
            }
            return "OK"
        }
        guard length > 0, length <= Self.maxWriteWatch else { return "E22" }
        var ranges: [Range<UInt64>] = []
        var a = address, left = UInt64(length)
        while left > 0 {
            let chunk = min(left, 4096 - (a & 4095))
            guard let pa = try? machine.translate(s.generalThread, a) else { return "E14" }
            ranges.append(pa..<(pa + chunk))
            a &+= chunk
            left -= chunk
        }
        s.writeWatches.append((length, Machine.WriteWatch(address: address, ranges: ranges)))
        do { try machine.setWriteWatches(s.writeWatches.map(\.watch)) } catch {
            s.writeWatches.removeLast()
            return "E14"   // not RAM (MMIO, the vGPU aperture), or the host refused: gdb says it cannot insert it
        }
        return "OK"
    }

    @discardableResult
    private func applyGuestDebug(_ s: Session) -> Bool {
        var d = KVMVCPU.GuestDebug()
        d.softwareBreakpoints = !s.softwareBreakpoints.isEmpty
        if s.hardware.contains(where: { $0 != nil }) {
            var dr7: UInt64 = 1 << 10   // reserved bit 10 reads as 1
            var addresses: [UInt64] = [0, 0, 0, 0]
            for (i, h) in s.hardware.enumerated() {
                guard let h else { continue }
                addresses[i] = h.address
                let rw: UInt64 = h.kind == 1 ? 0 : (h.kind == 2 ? 1 : 3)
                let len: UInt64 = [1: 0, 2: 1, 8: 2, 4: 3][h.length] ?? 0
                dr7 |= (1 << UInt64(2 * i)) | (rw << UInt64(16 + 4 * i)) | (len << UInt64(18 + 4 * i))
            }
            d.hardwareBreakpoints = (addresses, dr7)
        }
        var ok = true
        for i in 0..<machine.vcpuCount where (try? machine.setGuestDebug(i, d)) == nil { ok = false }
        return ok
    }

    /// Reads guest-virtual memory through vCPU `cpu`'s page tables, page by page; stops at the first
    /// unmapped page.
    private func readGuest(_ cpu: Int, _ address: UInt64, _ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        var a = address
        while out.count < count {
            let chunk = min(count - out.count, Int(4096 - (a & 4095)))
            guard let pa = try? machine.translate(cpu, a), let bytes = try? machine.memory.readBytes(at: pa, count: chunk) else { break }
            out += bytes
            a &+= UInt64(chunk)
        }
        return out
    }

    private func writeGuest(_ cpu: Int, _ address: UInt64, _ bytes: [UInt8]) -> Bool {
        var done = 0
        var a = address
        while done < bytes.count {
            let chunk = min(bytes.count - done, Int(4096 - (a & 4095)))
            guard let pa = try? machine.translate(cpu, a), (try? machine.memory.write(bytes: bytes[done..<(done + chunk)], at: pa)) != nil else { return false }
            done += chunk
            a &+= UInt64(chunk)
        }
        return true
    }

    private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format2: "", $0) }.joined() }

    private func unhex(_ s: Substring) -> [UInt8] {
        var out: [UInt8] = []
        var it = s.utf8.makeIterator()
        while let h = it.next(), let l = it.next() {
            guard let v = UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16) else { break }
            out.append(v)
        }
        return out
    }
}

extension String {
    /// `prefix` followed by `b` as two lower-case hex digits.
    init(format2 prefix: String, _ b: UInt8) {
        self = prefix + String(format2: b)
    }
}
