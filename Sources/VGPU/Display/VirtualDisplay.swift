import Machine
import SoftGPU

/// The vGPU's virtual display: its `DisplayPipe` (the same model as the software GPU's display), ticked
/// by the mediator thread while PIPE_CONF is on, and scanned out through the GTT.
extension VGPU {
    /// One virtual vblank: counts it and completes the armed flips (several armed between two vblanks
    /// complete together, as on the GPU).
    func vblank() {
        let newly = state.withLock { s in
            let bits = s.display.vblank()
            return s.interrupts.latch(bits)
        }
        if newly != 0 { signalInterrupt() }
    }

    /// Largest width or height of a vGPU scanout (larger planes are clipped).
    public static let maxScanoutDimension = 4096

    /// The vGPU's current scanout: its virtual planes composed through the GTT by the GPU's own display
    /// logic, reading nothing outside the vGPU's slices. An empty image when the primary plane is off.
    public func scanout() -> Image {
        let planes = state.withLock { $0.display.planes }
        guard planes.priCtl & Reg.planeEnable != 0 else { return Image(width: 0, height: 0, pixels: []) }
        let slices = self.slices
        // At most 4096 x 4096 (64 MiB of pixels): a guest must not make the host allocate more per request.
        return DisplayEngine.compose(planes, gtt: host.gpu.gtt, maxDimension: VGPU.maxScanoutDimension,
                                     readable: { slices.contains($0, length: $1) })
    }
}

/// The screenshot request port (0xf5): any write asks the VMM to save the current scanout. The action runs
/// on the vCPU thread that wrote, on purpose: the guest waits, so the picture is exactly the state it asked
/// for (a debugging aid, not a fast path).
public final class ScreenshotPort: BusDevice {
    public static let port: UInt64 = 0xf5
    private let action: @Sendable () -> Void
    public init(action: @escaping @Sendable () -> Void) { self.action = action }
    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) { data.storeLittleEndian(UInt64.max) }
    public func write(offset: UInt64, data: UnsafeRawBufferPointer) { action() }
}
