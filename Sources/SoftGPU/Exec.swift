import Glibc

/// The progress type the kernels and the engine pass around (`Kernels.KernelProgress`).
typealias KernelProgress = Kernels.KernelProgress

@inline(__always) func operandAddress(_ c: [UInt32], _ dword: Int) -> UInt64 {
    UInt64(c[dword]) | (UInt64(c[dword + 1]) << 32)
}

/// 2D blits (operands already validated against the command table).
enum Blitter {
    /// COLOR_BLT: fill [x1,x2) x [y1,y2), clipped to the surface, with a 32-bit colour. `shouldAbort` is
    /// polled between rows; returns false when it aborted (the rows before it are filled).
    static func colorBlt(_ c: [UInt32], _ acc: inout GMAccessor, shouldAbort: () -> Bool = { false }) throws(GMFault) -> Bool {
        try colorBlt(c, &acc, from: KernelProgress(), shouldStop: shouldAbort) == nil
    }

    /// COLOR_BLT from `from.i` rows done; returns nil when done, or the progress at the poll that stopped it.
    static func colorBlt(_ c: [UInt32], _ acc: inout GMAccessor, from: KernelProgress, shouldStop: () -> Bool) throws(GMFault) -> KernelProgress? {
        let pitch = UInt64(c[1])
        let (x1, y1) = xy(c[2])
        let (x2, y2) = xy(c[3])
        let dst = operandAddress(c, 4)
        let color = c[6]
        let (w, h) = wh(c[7])
        let xs = max(x1, 0), xe = min(x2, Int(w))
        let ys = max(y1, 0), ye = min(y2, Int(h))
        guard xs < xe, ys < ye, ys + from.i < ye else { return nil }
        for y in (ys + from.i)..<ye {
            if (y - ys) & 63 == 0 && shouldStop() { return KernelProgress(i: y - ys) }
            try acc.forEachRun(dst + UInt64(y) * pitch + UInt64(xs) * 4, UInt64(xe - xs) * 4, write: true) { p, n in
                p.initializeMemory(as: UInt32.self, repeating: color, count: n / 4)
            }
        }
        return nil
    }

    /// SRC_COPY_BLT: copy the destination rectangle from the source surface at (sx, sy); pixels whose
    /// destination or source lies outside its surface are not copied. Overlapping copies behave as if
    /// through a temporary row buffer, rows ordered by address (memmove semantics for equal pitches).
    /// `shouldAbort` is polled between rows; returns false when it aborted.
    static func srcCopyBlt(_ c: [UInt32], _ acc: inout GMAccessor, shouldAbort: () -> Bool = { false }) throws(GMFault) -> Bool {
        try srcCopyBlt(c, &acc, from: KernelProgress(), shouldStop: shouldAbort) == nil
    }

    /// SRC_COPY_BLT from `from.i` rows done (in copy order); nil when done, else the progress when stopped.
    static func srcCopyBlt(_ c: [UInt32], _ acc: inout GMAccessor, from: KernelProgress, shouldStop: () -> Bool) throws(GMFault) -> KernelProgress? {
        let dpitch = UInt64(c[1])
        let (dx1, dy1) = xy(c[2])
        let (dx2, dy2) = xy(c[3])
        let dst = operandAddress(c, 4)
        let (sx, sy) = xy(c[6])
        let spitch = UInt64(c[7])
        let src = operandAddress(c, 8)
        let (dw, dh) = wh(c[10])
        let (sw, sh) = wh(c[11])
        let offX = sx - dx1, offY = sy - dy1
        let xs = max(dx1, 0, -offX), xe = min(dx2, Int(dw), Int(sw) - offX)
        let ys = max(dy1, 0, -offY), ye = min(dy2, Int(dh), Int(sh) - offY)
        guard xs < xe, ys < ye else { return nil }
        let rowBytes = (xe - xs) * 4
        let row = UnsafeMutableRawPointer.allocate(byteCount: rowBytes, alignment: 16)
        defer { row.deallocate() }
        // Destination after source in memory: copy bottom-up so overlapping rows are read before written.
        let firstDst = dst + UInt64(ys) * dpitch + UInt64(xs) * 4
        let firstSrc = src + UInt64(ys + offY) * spitch + UInt64(xs + offX) * 4
        let rows: [Int] = firstDst > firstSrc ? Array((ys..<ye).reversed()) : Array(ys..<ye)
        for (done, y) in rows.enumerated() where done >= from.i {
            if done & 63 == 0 && shouldStop() { return KernelProgress(i: done) }
            let s = src + UInt64(y + offY) * spitch + UInt64(xs + offX) * 4
            let d = dst + UInt64(y) * dpitch + UInt64(xs) * 4
            try acc.copyOut(s, to: row, count: UInt64(rowBytes))
            try acc.copyIn(d, from: row, count: UInt64(rowBytes))
        }
        return nil
    }
}

/// Compute commands on GM (operands already validated against the command table).
enum Compute {
    nonisolated(unsafe) private static let dummy: UnsafeMutablePointer<Float> = {
        let p = UnsafeMutablePointer<Float>.allocate(capacity: 1)
        p.initialize(to: 0)
        return p
    }()

    /// Elements SAXPY computes between two polls of `shouldAbort` (a "row block" of 256 KiB of y).
    static let saxpyBlock = 1 << 16

    /// SAXPY over the host runs of x and y, split where either changes run. `shouldAbort` is polled before
    /// each block of `saxpyBlock` elements; returns false when it aborted (the blocks before it are done).
    static func saxpy(_ c: [UInt32], _ acc: inout GMAccessor, shouldAbort: () -> Bool = { false }) throws(GMFault) -> Bool {
        try saxpy(c, &acc, from: KernelProgress(), shouldStop: shouldAbort) == nil
    }

    /// SAXPY from element `from.i` (a multiple of `saxpyBlock`, where a previous run stopped); nil when
    /// done, else the progress (elements done) at the poll that stopped it.
    static func saxpy(_ c: [UInt32], _ acc: inout GMAccessor, from: KernelProgress, shouldStop: () -> Bool) throws(GMFault) -> KernelProgress? {
        let total = UInt64(c[1])
        let first = UInt64(from.i)
        guard total > first else { return nil }
        let n = total - first
        let a = Float(bitPattern: c[2])
        let xr = try acc.runs(operandAddress(c, 3) + first * 4, n * 4, write: false)
        let yr = try acc.runs(operandAddress(c, 5) + first * 4, n * 4, write: true)
        var i = 0, j = 0, xo = 0, yo = 0
        var sinceCheck = saxpyBlock
        var done = from.i
        while i < xr.count && j < yr.count {
            if sinceCheck >= saxpyBlock {
                if shouldStop() { return KernelProgress(i: done) }
                sinceCheck = 0
            }
            let seg = min(xr[i].length - xo, yr[j].length - yo, (saxpyBlock - sinceCheck) * 4)
            sinceCheck += seg / 4
            done += seg / 4
            Kernels.saxpy(n: seg / 4, a: a,
                          x: UnsafePointer((xr[i].pointer + xo).assumingMemoryBound(to: Float.self)),
                          y: (yr[j].pointer + yo).assumingMemoryBound(to: Float.self))
            xo += seg
            yo += seg
            if xo == xr[i].length { i += 1; xo = 0 }
            if yo == yr[j].length { j += 1; yo = 0 }
        }
        return nil
    }

    /// A matrix operand as one host pointer: direct when its GM range is host-contiguous, otherwise a
    /// gathered copy (written back afterwards for C).
    private struct Operand {
        var pointer: UnsafeMutablePointer<Float>
        var runs: [HostRun]
        var gathered: UnsafeMutableRawPointer?

        init(_ acc: inout GMAccessor, gm: UInt64, bytes: UInt64, write: Bool) throws(GMFault) {
            runs = try acc.runs(gm, bytes, write: write)
            if runs.count == 1 {
                pointer = runs[0].pointer.assumingMemoryBound(to: Float.self)
                gathered = nil
            } else {
                let g = UnsafeMutableRawPointer.allocate(byteCount: Int(bytes), alignment: 64)
                var off = 0
                for r in runs { memcpy(g + off, r.pointer, r.length); off += r.length }
                gathered = g
                pointer = g.assumingMemoryBound(to: Float.self)
            }
        }

        func scatter() {
            guard let g = gathered else { return }
            var off = 0
            for r in runs { memcpy(r.pointer, g + off, r.length); off += r.length }
        }

        func release() { gathered?.deallocate() }
    }

    /// SGEMM; returns false when aborted by a reset.
    static func sgemm(_ c: [UInt32], _ acc: inout GMAccessor, shouldAbort: () -> Bool) throws(GMFault) -> Bool {
        try sgemm(c, &acc, from: KernelProgress(), shouldStop: shouldAbort) == nil
    }

    /// SGEMM from `from` (where a previous run stopped; C in GM holds its partial result); nil when done,
    /// else the progress at the poll that stopped it (C written back first).
    static func sgemm(_ c: [UInt32], _ acc: inout GMAccessor, from: KernelProgress, shouldStop: () -> Bool,
                      blas: Bool = true) throws(GMFault) -> KernelProgress? {
        let m = c[1], n = c[2], k = c[3]
        let alpha = Float(bitPattern: c[4]), beta = Float(bitPattern: c[5])
        let lda = c[8], ldb = c[11], ldc = c[14]
        guard m > 0 && n > 0 else { return nil }
        let C = try Operand(&acc, gm: operandAddress(c, 12), bytes: CommandTable.matrixExtent(rows: m, cols: n, ld: ldc), write: true)
        defer { C.release() }
        var aPtr = UnsafePointer(dummy), bPtr = UnsafePointer(dummy)
        var A: Operand?, B: Operand?
        defer { A?.release(); B?.release() }
        if k > 0 && alpha != 0 {
            A = try Operand(&acc, gm: operandAddress(c, 6), bytes: CommandTable.matrixExtent(rows: m, cols: k, ld: lda), write: false)
            B = try Operand(&acc, gm: operandAddress(c, 9), bytes: CommandTable.matrixExtent(rows: k, cols: n, ld: ldb), write: false)
            aPtr = UnsafePointer(A!.pointer)
            bPtr = UnsafePointer(B!.pointer)
        }
        let stopped = Kernels.sgemm(m: Int(m), n: Int(n), k: alpha != 0 ? Int(k) : 0, alpha: alpha,
                                    a: aPtr, lda: Int(lda), b: bPtr, ldb: Int(ldb),
                                    beta: beta, c: C.pointer, ldc: Int(ldc), useBLAS: blas, from: from, shouldStop: shouldStop)
        C.scatter()
        return stopped
    }
}
