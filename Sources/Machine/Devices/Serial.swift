import Glibc
import Synchronization

/// Where the UART's transmitted bytes go.
public enum SerialOutput: Sendable {
    /// This process's standard output. Writes wait for a full pipe or terminal, but never past the VM's stop.
    case stdout
    /// A regular file (created or truncated), a FIFO with a reader, or a character device. Nothing is
    /// opened until `Serial16550.openOutput(refusing:)` (which `VirtualMachine` calls once the VM is built)
    /// or, failing that, the first transmitted byte. Opened without blocking; writes never block the VM.
    case file(String)
    case none
    /// Every transmitted byte is passed to the closure (called on a vCPU thread).
    case callback(@Sendable (UInt8) -> Void)
    /// This process's standard output, a line at a time, each line written as `prefix` + the line in one
    /// write (so the lines of several VMs sharing standard output never mix). A line longer than 4 KiB is
    /// cut there; a last line without a newline is written, with one, when the VM ends (`flushOutput`).
    case stdoutLines(prefix: String)
}

/// A 16550A UART (8 registers, divisor latch, 16-byte receive FIFO, THRE and RX-data interrupts).
/// Idle line status reads 0x60 (THR empty, transmitter empty).
///
/// Threads and ownership: registers are touched by vCPU threads, `receive` by the stdin reader; all
/// register state is in `State` behind one Mutex. The interrupt line is driven and transmitted bytes are
/// written after the lock is dropped. Output to stdout or a file goes through a `SerialSink`.
public final class Serial16550: BusDevice {
    struct State {
        var ier: UInt8 = 0
        var lcr: UInt8 = 0
        var mcr: UInt8 = 0x08
        var scr: UInt8 = 0
        var fcr: UInt8 = 0
        var dll: UInt8 = 0x0c
        var dlh: UInt8 = 0
        var rx: [UInt8] = []
        var thrInterruptPending = false
        var irqLevel = false
    }

    private let state = Mutex(State())
    private let sink: @Sendable (UInt8) -> Void
    private let setIRQ: @Sendable (Bool) -> Void
    /// The descriptor writer for `.stdout`, `.stdoutLines` and `.file`; nil for `.none` and `.callback`.
    private let output: SerialSink?
    /// The pending line for `.stdoutLines`.
    private let lines: PrefixedLines?

    /// `setIRQ` drives the UART's interrupt line (IRQ 4 for COM1). Opens nothing (see `SerialOutput.file`).
    public init(output: SerialOutput, setIRQ: @escaping @Sendable (Bool) -> Void) throws {
        self.setIRQ = setIRQ
        var lines: PrefixedLines? = nil
        switch output {
        case .stdout:
            let s = SerialSink(.stdout)
            self.output = s
            sink = { s.write($0) }
        case .stdoutLines(let prefix):
            let s = SerialSink(.stdout)
            self.output = s
            let l = PrefixedLines(prefix: prefix, sink: s)
            lines = l
            sink = { l.append($0) }
        case .none:
            self.output = nil
            sink = { _ in }
        case .callback(let f):
            self.output = nil
            sink = f
        case .file(let path):
            let s = SerialSink(.file(OutputFile(.serial, path)))
            self.output = s
            sink = { s.write($0) }
        }
        self.lines = lines
    }

    /// Opens the output file (`SerialOutput.file`) now, refusing any of `inputs`; a no-op for other
    /// outputs and when already open. Call once the VM is built, before it runs.
    public func openOutput(refusing inputs: [InputFile] = []) throws(OutputError) {
        try output?.open(refusing: inputs)
    }

    /// Writes what is left of a last line (`.stdoutLines`), even after `cancelOutput`, waiting at most
    /// about a second for a full pipe. Call once the VM has stopped.
    public func flushOutput() { lines?.flush() }

    /// Makes a vCPU waiting to write output give up, and drops output from now on (the VM is stopping).
    /// Safe from any thread.
    public func cancelOutput() { output?.cancel() }

    /// Queues received bytes (from stdin or a test) and raises the RX interrupt if enabled.
    public func receive(_ bytes: [UInt8]) {
        let level = state.withLock { s -> Bool? in
            for b in bytes where s.rx.count < 16 { s.rx.append(b) }
            return updateIRQ(&s)
        }
        drive(level)
    }

    /// Free space in the receive FIFO.
    public var receiveSpace: Int { state.withLock { 16 - $0.rx.count } }

    private func iir(_ s: State) -> UInt8 {
        let fifo: UInt8 = (s.fcr & 1) != 0 ? 0xc0 : 0
        if (s.ier & 0x01) != 0 && !s.rx.isEmpty { return fifo | 0x04 }
        if (s.ier & 0x02) != 0 && s.thrInterruptPending { return fifo | 0x02 }
        return fifo | 0x01
    }

    /// Recomputes the interrupt level; returns it when it changed (the line is only driven on changes).
    private func updateIRQ(_ s: inout State) -> Bool? {
        let level = (iir(s) & 0x01) == 0 && (s.mcr & 0x08) != 0  // OUT2 gates the IRQ on PCs
        guard level != s.irqLevel else { return nil }
        s.irqLevel = level
        return level
    }

    private func drive(_ level: Bool?) { if let l = level { setIRQ(l) } }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        guard offset < 8 else { data.storeLittleEndian(UInt64.max); return }
        let (value, level) = state.withLock { s -> (UInt8, Bool?) in
            let dlab = (s.lcr & 0x80) != 0
            var v: UInt8 = 0
            switch offset {
            case 0:
                if dlab { v = s.dll } else if !s.rx.isEmpty { v = s.rx.removeFirst() }
            case 1: v = dlab ? s.dlh : s.ier
            case 2:
                v = iir(s)
                if v & 0x0f == 0x02 { s.thrInterruptPending = false }  // reading IIR clears THRE
            case 3: v = s.lcr
            case 4: v = s.mcr
            case 5: v = 0x60 | (s.rx.isEmpty ? 0 : 0x01)
            case 6: v = (s.mcr & 0x10) != 0 ? 0xf0 : 0xb0  // loopback: all inputs high; else CTS|DSR|DCD
            default: v = s.scr
            }
            return (v, updateIRQ(&s))
        }
        data.storeLittleEndian(UInt64(value))
        drive(level)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) {
        guard offset < 8, data.count >= 1 else { return }
        let v = data[0]
        var out: UInt8? = nil
        let level = state.withLock { s -> Bool? in
            let dlab = (s.lcr & 0x80) != 0
            switch offset {
            case 0:
                if dlab { s.dll = v } else {
                    if (s.mcr & 0x10) != 0 { if s.rx.count < 16 { s.rx.append(v) } } else { out = v }
                    s.thrInterruptPending = true  // transmitted at once: THR empty again
                }
            case 1:
                if dlab { s.dlh = v } else {
                    let wasOff = (s.ier & 0x02) == 0
                    s.ier = v & 0x0f
                    if wasOff && (s.ier & 0x02) != 0 { s.thrInterruptPending = true }
                }
            case 2:
                s.fcr = v
                if (v & 0x02) != 0 { s.rx.removeAll() }
            case 3: s.lcr = v
            case 4: s.mcr = v & 0x1f
            case 7: s.scr = v
            default: break
            }
            return updateIRQ(&s)
        }
        if let o = out { sink(o) }
        drive(level)
    }
}

/// Writes transmitted bytes to standard output or an output file: partial writes are completed, EINTR
/// and EAGAIN retried (waiting in `poll` slices, so a full pipe or a paused terminal holds the vCPU
/// only until the VM stops), and a sink that fails (EPIPE, EIO, EFBIG, ENOSPC, ...) is reported once on
/// stderr, after which its output is dropped and the guest keeps running.
///
/// Threads and ownership: `write` runs on any vCPU thread, several at once; `open` on the thread that
/// starts the VM (or on the first `write`); `cancel` on any thread. The descriptor and the open/failed
/// flags are in `State` behind one Mutex, never held while writing or waiting; the descriptor is closed
/// only in `deinit`, so a writer never sees it closed under it.
final class SerialSink: Sendable {
    enum Target: Sendable { case stdout, file(OutputFile) }

    /// How bytes reach the descriptor.
    enum Method: Sendable {
        /// write(2) on a non-blocking descriptor, or on a regular file (which never waits).
        case write
        /// send(2) with MSG_DONTWAIT: standard output is a socket.
        case send
        /// poll(2) for POLLOUT, then write(2): standard output is a blocking pipe or terminal that could
        /// not be reopened (slow with small pipes; the fallback only).
        case pollThenWrite
    }

    private struct State {
        var fd: Int32 = -1
        var ownsDescriptor = false
        var method = Method.write
        var opened = false
        var failed = false
    }

    let target: Target
    private let state = Mutex(State())
    private let cancelled = Atomic<Bool>(false)

    init(_ target: Target) { self.target = target }

    deinit {
        let (fd, owned) = state.withLock { ($0.fd, $0.ownsDescriptor) }
        if owned && fd >= 0 { close(fd) }
    }

    /// How messages name the sink.
    var name: String {
        switch target {
        case .stdout: return "standard output"
        case .file(let o): return o.label
        }
    }

    func open(refusing inputs: [InputFile]) throws(OutputError) {
        let result = state.withLock { s -> Result<Void, OutputError> in
            guard !s.opened else { return .success(()) }
            switch target {
            case .stdout:
                var st = stat()
                let type = fstat(1, &st) == 0 ? st.st_mode & S_IFMT : 0
                s.fd = 1
                if type == S_IFREG {
                    s.method = .write
                } else if type == S_IFSOCK {
                    s.method = .send
                } else {
                    // A pipe or terminal: a non-blocking open file description of our own, so that the
                    // shell sharing descriptor 1 never sees O_NONBLOCK.
                    let own = Glibc.open("/proc/self/fd/1", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
                    if own >= 0 {
                        s.fd = own
                        s.ownsDescriptor = true
                        s.method = .write
                    } else {
                        s.method = .pollThenWrite
                    }
                }
            case .file(let o):
                do throws(OutputError) { s.fd = try OutputFiles.open(o, refusing: inputs) } catch { return .failure(error) }
                s.ownsDescriptor = true
                s.method = .write    // opened O_NONBLOCK: EAGAIN leads to poll
            }
            s.opened = true
            return .success(())
        }
        try result.get()
    }

    func cancel() { cancelled.store(true, ordering: .sequentiallyConsistent) }

    func write(_ byte: UInt8) {
        var b = byte
        withUnsafeBytes(of: &b) { write($0) }
    }

    /// `force`: write even after `cancel()` (the last line of a stopped VM), giving up after about a second
    /// of waiting instead.
    func write(_ bytes: UnsafeRawBufferPointer, force: Bool = false) {
        var (fd, failed, opened, method) = state.withLock { ($0.fd, $0.failed, $0.opened, $0.method) }
        guard !failed else { return }
        if !opened {
            do { try open(refusing: []) } catch {
                reportFailure("\(error)")
                return
            }
            (fd, method) = state.withLock { ($0.fd, $0.method) }
        }
        var done = 0
        var waitFirst = method == .pollThenWrite
        var forcedWaits = 0
        while done < bytes.count {
            if !force && cancelled.load(ordering: .relaxed) { return }   // the VM is stopping: drop the rest
            if waitFirst {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                let r = poll(&p, 1, 100)     // slices: `cancelled` is looked at again at least every 100 ms
                if force && r == 0 { forcedWaits += 1; if forcedWaits >= 10 { return } }
                if r == 0 || (r < 0 && errno == EINTR) { continue }
                if r < 0 { reportFailure(errno); return }
                // Ready, or POLLERR/POLLHUP: the write below tells which.
            }
            let start = bytes.baseAddress! + done, count = bytes.count - done
            let n = method == .send ? send(fd, start, count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
                                    : Glibc.write(fd, start, count)
            if n > 0 {
                done += n
                waitFirst = method == .pollThenWrite
                continue
            }
            let e = n < 0 ? errno : EAGAIN
            switch e {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: waitFirst = true
            default: reportFailure(e); return
            }
        }
    }

    private func reportFailure(_ e: Int32) {
        reportFailure("cannot write serial output to \(name): \(errnoDescription(e))")
    }

    /// Marks the sink failed and says so once on stderr.
    private func reportFailure(_ message: String) {
        let first = state.withLock { s -> Bool in
            defer { s.failed = true }
            return !s.failed
        }
        guard first else { return }
        var line = "minivisor: \(message); serial output is dropped from here on, the guest keeps running\n"
        line.withUTF8 { b in _ = Glibc.write(2, b.baseAddress, b.count) }
    }
}

/// The line being assembled for `SerialOutput.stdoutLines`, written whole with its prefix.
///
/// Threads and ownership: `append` runs on vCPU threads, `flush` on the thread that ends the VM; the
/// pending bytes are in one Mutex, taken out under it and written after it is dropped.
final class PrefixedLines: Sendable {
    static let maximumLine = 4096
    private let prefix: [UInt8]
    private let sink: SerialSink
    private let pending = Mutex<[UInt8]>([])

    init(prefix: String, sink: SerialSink) {
        self.prefix = Array(prefix.utf8)
        self.sink = sink
    }

    func append(_ byte: UInt8) {
        let line = pending.withLock { p -> [UInt8]? in
            p.append(byte)
            guard byte == 10 || p.count >= Self.maximumLine else { return nil }
            defer { p.removeAll(keepingCapacity: true) }
            return p
        }
        if let line { emit(line, force: false) }
    }

    func flush() {
        let rest = pending.withLock { p -> [UInt8] in
            defer { p.removeAll() }
            return p
        }
        if !rest.isEmpty { emit(rest, force: true) }
    }

    private func emit(_ line: [UInt8], force: Bool) {
        var out = prefix
        out.append(contentsOf: line)
        if out.last != 10 { out.append(10) }
        out.withUnsafeBytes { sink.write($0, force: force) }
    }
}
