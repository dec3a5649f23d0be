import Glibc
import SoftGPU

/// The vGPU's mediator thread: PV doorbells (ioeventfds) in, scanned submissions out to the pipeline, and
/// the virtual display's vblanks while PIPE_CONF is on (see VGPU's "Threads and ownership").
extension VGPU {
    func mediatorLoop() {
        var fds = [pollfd(fd: control.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: doorbells[0].fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: doorbells[1].fd, events: Int16(POLLIN), revents: 0)]
        var nextVBlank = ContinuousClock.now + vblankInterval
        while isRunning {
            let pipeOn = state.withLock { $0.display.isEnabled }
            var timeout: Int32 = -1
            if pipeOn {
                let left = nextVBlank - ContinuousClock.now
                timeout = Int32(max(0, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
            }
            _ = poll(&fds, 3, timeout)
            _ = control.consume()
            for e in EngineID.allCases where doorbells[e.rawValue].consume() != nil {
                fastDoorbell(e)
            }
            let now = ContinuousClock.now
            if pipeOn && now >= nextVBlank {
                vblank()
                while nextVBlank <= now { nextVBlank += vblankInterval }   // skip missed frames, no bursts
            } else if !pipeOn {
                nextVBlank = now + vblankInterval
            }
        }
    }
}
