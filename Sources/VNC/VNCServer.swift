import CLibvncserver
import Glibc
import Synchronization

/// A picture to serve: `pixels` are XRGB8888 (0x00RRGGBB), row by row; 0 x 0 when the display is off.
public struct VNCFrame: Sendable {
    public let width: Int
    public let height: Int
    public let pixels: [UInt32]
    public init(width: Int, height: Int, pixels: [UInt32]) { self.width = width; self.height = height; self.pixels = pixels }
}

/// Why the VNC server could not start: one line naming the cause and the fix.
public enum VNCError: Error, Equatable, CustomStringConvertible, Sendable {
    case badAddress(String)
    case cannotListen(host: String, port: Int)
    case thread(Int32)
    public var description: String {
        switch self {
        case .badAddress(let h): return "--vnc host \(h) is not an IPv4 address: give e.g. 127.0.0.1:5900 or 0.0.0.0:5900"
        case let .cannotListen(h, p):
            return p == 0 ? "--vnc 0 found no free port from 5900 to 5999 on \(h): give a free port"
                          : "cannot listen for VNC on \(h):\(p) (port in use or not allowed): give another port, or 0 for the first free one from 5900"
        case .thread(let e): return "cannot start the VNC thread: \(String(cString: strerror(e)))"
        }
    }
}

/// A VNC (RFB 3.8) server over Debian's libvncserver that shows a picture source live and hands key
/// events to a sink. No authentication: it listens on 127.0.0.1 unless given another address.
///
/// Threads and ownership:
/// - `init` (any thread) creates the screen and the listening socket, so a port in use is reported
///   before the VM runs;
/// - `start(sandbox:)` starts the one VNC thread the server owns. It calls `sandbox` first (the machine's
///   VNC seccomp filter: sockets, select), then loops: when a client is connected it takes a picture from
///   `frame` at most every 30 ms, copies the rows that changed into libvncserver's framebuffer and marks
///   them modified, and runs libvncserver's event processing (accepting clients, reading their messages,
///   sending updates) without libvncserver starting threads of its own. libvncserver's screen, its
///   framebuffer and the key callback are only touched on that thread (and by `init`/`stop` before it
///   starts or after it has been joined);
/// - `frame` and `key` are called on the VNC thread and must not block for long;
/// - `stop()` (any thread but the VNC thread; idempotent) asks the loop to end, joins the thread and
///   closes every socket. The only shared state is the `running` flag (an atomic).
public final class VNCServer: @unchecked Sendable {
    public typealias FrameSource = @Sendable () -> VNCFrame
    /// A key went down or up: X11 keysym, as RFB sends it.
    public typealias KeySink = @Sendable (_ keysym: UInt32, _ down: Bool) -> Void

    /// The port it listens on (the one found, for port 0).
    public let port: Int
    public let host: String
    private let screen: rfbScreenInfoPtr
    private let frame: FrameSource
    let key: KeySink
    private let running = Atomic<Bool>(false)
    private let started = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)
    private var thread = pthread_t()
    /// The framebuffer libvncserver sends from (malloc'ed, ours; replaced on a mode change). VNC thread only.
    private var buffer: UnsafeMutablePointer<UInt32>
    private var width: Int
    private var height: Int

    /// Listens on `host` (an IPv4 address) at `port` (0: the first free port from 5900).
    public init(host: String = "127.0.0.1", port: Int, frame: @escaping FrameSource, key: @escaping KeySink) throws(VNCError) {
        var addr = in_addr()
        let h = host == "localhost" ? "127.0.0.1" : host
        guard inet_pton(AF_INET, h, &addr) == 1 else { throw .badAddress(host) }
        self.host = h
        self.frame = frame
        self.key = key
        rfbLogEnable(0)
        width = 640; height = 480
        buffer = UnsafeMutablePointer<UInt32>.allocate(capacity: width * height)
        buffer.initialize(repeating: 0, count: width * height)
        var argc: Int32 = 0
        guard let s = rfbGetScreen(&argc, nil, Int32(width), Int32(height), 8, 3, 4) else {
            buffer.deallocate()
            throw .cannotListen(host: h, port: port)
        }
        screen = s
        s.pointee.frameBuffer = UnsafeMutableRawPointer(buffer).assumingMemoryBound(to: CChar.self)
        Self.setFormat(s)
        s.pointee.desktopName = UnsafePointer(strdup("minivisor"))
        s.pointee.alwaysShared = 1
        s.pointee.listenInterface = addr.s_addr
        s.pointee.ipv6port = 0
        s.pointee.httpPort = 0
        s.pointee.http6Port = 0
        if port == 0 { s.pointee.autoPort = 1 } else { s.pointee.port = Int32(port) }
        s.pointee.kbdAddEvent = { down, keysym, client in
            guard let client, let data = client.pointee.screen.pointee.screenData else { return }
            let server = Unmanaged<VNCServer>.fromOpaque(data).takeUnretainedValue()
            server.key(UInt32(keysym), down != 0)
        }
        mv_rfb_init_server(s)
        guard s.pointee.listenSock >= 0 else {
            rfbScreenCleanup(s)
            buffer.deallocate()
            throw .cannotListen(host: h, port: port)
        }
        self.port = Int(s.pointee.port)
        s.pointee.screenData = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit {
        stop()
        free(UnsafeMutableRawPointer(mutating: screen.pointee.desktopName))
        screen.pointee.desktopName = nil
        rfbScreenCleanup(screen)
        buffer.deallocate()
    }

    /// 0x00RRGGBB little-endian: blue in the low byte.
    private static func setFormat(_ s: rfbScreenInfoPtr) {
        s.pointee.serverFormat.redShift = 16
        s.pointee.serverFormat.greenShift = 8
        s.pointee.serverFormat.blueShift = 0
    }

    /// Starts the VNC thread; it calls `sandbox` before anything else and stops serving (ending the
    /// thread) when that returns false.
    public func start(sandbox: @escaping @Sendable () -> Bool) throws(VNCError) {
        guard !started.exchange(true, ordering: .sequentiallyConsistent) else { return }
        running.store(true, ordering: .sequentiallyConsistent)
        let box = Unmanaged.passRetained(ThreadBody { [unowned self] in
            if sandbox() { self.loop() }
            self.close()
        })
        let rc = pthread_create(&thread, nil, { arg in
            let body = Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue()
            body.run()
            return nil
        }, box.toOpaque())
        if rc != 0 {
            box.release()
            started.store(false, ordering: .sequentiallyConsistent)
            throw .thread(rc)
        }
    }

    /// Ends the VNC thread (if it runs; it disconnects every client and closes the listening socket
    /// itself, under its own filter) and waits for it. Without a thread the sockets are closed here.
    public func stop() {
        running.store(false, ordering: .sequentiallyConsistent)
        if started.exchange(false, ordering: .sequentiallyConsistent) { pthread_join(thread, nil) }
        close()
    }

    /// Disconnects the clients and closes the listening socket, once.
    private func close() {
        guard !closed.exchange(true, ordering: .sequentiallyConsistent) else { return }
        rfbShutdownServer(screen, 1)
    }

    private func loop() {
        var lastCapture = ContinuousClock.now - .seconds(1)
        while running.load(ordering: .relaxed) {
            if screen.pointee.clientHead != nil, ContinuousClock.now - lastCapture >= .milliseconds(30) {
                lastCapture = ContinuousClock.now
                update(frame())
            }
            _ = rfbProcessEvents(screen, 30_000)
        }
    }

    /// Copies `f` into the served framebuffer: a new size replaces it (clients get the new size), else
    /// only the changed rows are copied and marked. A display that is off shows black.
    private func update(_ f: VNCFrame) {
        let w = f.width > 0 ? f.width : width, h = f.height > 0 ? f.height : height
        if w != width || h != height {
            let old = buffer
            buffer = UnsafeMutablePointer<UInt32>.allocate(capacity: w * h)
            buffer.initialize(repeating: 0, count: w * h)
            width = w; height = h
            rfbNewFramebuffer(screen, UnsafeMutableRawPointer(buffer).assumingMemoryBound(to: CChar.self), Int32(w), Int32(h), 8, 3, 4)
            Self.setFormat(screen)
            old.deallocate()
            if f.width > 0 { f.pixels.withUnsafeBufferPointer { _ = memcpy(buffer, $0.baseAddress!, w * h * 4) } }
            rfbMarkRectAsModified(screen, 0, 0, Int32(w), Int32(h))
            return
        }
        var first = -1, last = -1
        f.pixels.withUnsafeBufferPointer { src in
            for y in 0..<h {
                let row = buffer + y * w
                if f.width == 0 {
                    if (0..<w).contains(where: { row[$0] != 0 }) { row.update(repeating: 0, count: w) } else { continue }
                } else {
                    if memcmp(row, src.baseAddress! + y * w, w * 4) == 0 { continue }
                    memcpy(row, src.baseAddress! + y * w, w * 4)
                }
                if first < 0 { first = y }
                last = y
            }
        }
        if first >= 0 { rfbMarkRectAsModified(screen, 0, Int32(first), Int32(w), Int32(last + 1)) }
    }
}

/// A closure handed to a new pthread.
private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}
