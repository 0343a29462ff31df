/// 2-D convolution (im2col in bands of output rows, then sgemm) and nearest upsampling.
extension CPUBackend {
    /// Upper bound for one im2col band, in Float32 elements (32 MiB).
    static let im2colBudget = 8 << 20

    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, options o: Conv2dOptions) -> Tensor {
        let (batch, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (cout, kh, kw) = (weight.shape[0], weight.shape[2], weight.shape[3])
        let oh = (h + o.padTop + o.padBottom - kh) / o.strideH + 1
        let ow = (w + o.padLeft + o.padRight - kw) / o.strideW + 1
        let out = Tensor.empty([batch, cout, oh, ow], dtype: x.dtype)
        let kdim = cin * kh * kw
        let blas = BLAS.required
        let xf = x.to(.f32), wf = weight.to(.f32)
        let outF = x.dtype == .f32 ? out : Tensor.empty([batch, cout, oh, ow], dtype: .f32)
        let xp = UnsafePointer(xf.hostPointer.assumingMemoryBound(to: Float.self))
        let wp = UnsafePointer(wf.hostPointer.assumingMemoryBound(to: Float.self))
        let op = outF.hostPointer.assumingMemoryBound(to: Float.self)
        let pointwise = kh == 1 && kw == 1 && o.strideH == 1 && o.strideW == 1 && o.padTop == 0 && o.padBottom == 0 && o.padLeft == 0 && o.padRight == 0
        let bandRows = Swift.max(1, Swift.min(oh, CPUBackend.im2colBudget / Swift.max(kdim * ow, 1)))
        let colCount = kdim * bandRows * ow
        let col = pointwise ? nil : scratch(colCount)
        defer { if let c = col { release(c, colCount) } }
        for b in 0..<batch {
            let xb = xp + b * cin * h * w
            let ob = op + b * cout * oh * ow
            if pointwise {
                blas.sgemm(transA: false, transB: false, m: cout, n: oh * ow, k: cin, alpha: 1,
                           a: wp, lda: kdim, b: xb, ldb: h * w, beta: 0, c: ob, ldc: oh * ow)
                continue
            }
            var y0 = 0
            while y0 < oh {
                let rows = Swift.min(bandRows, oh - y0)
                let n = rows * ow
                let colp = col!
                // im2col: row (ci, ky, kx), column (oy, ox) of this band
                Parallel.forEach(kdim, grain: 4) { range in
                    for kk in range {
                        let ci = kk / (kh * kw), ky = (kk / kw) % kh, kx = kk % kw
                        let dst = colp + kk * n
                        let src = xb + ci * h * w
                        for r in 0..<rows {
                            let iy = (y0 + r) * o.strideH - o.padTop + ky
                            let drow = dst + r * ow
                            if iy < 0 || iy >= h { drow.update(repeating: 0, count: ow); continue }
                            let srow = src + iy * w
                            for ox in 0..<ow {
                                let ix = ox * o.strideW - o.padLeft + kx
                                drow[ox] = (ix >= 0 && ix < w) ? srow[ix] : 0
                            }
                        }
                    }
                }
                blas.sgemm(transA: false, transB: false, m: cout, n: n, k: kdim, alpha: 1,
                           a: wp, lda: kdim, b: colp, ldb: n, beta: 0, c: ob + y0 * ow, ldc: oh * ow)
                y0 += rows
            }
        }
        if let bias = bias {
            let bv = bias.toFloats()
            Parallel.forEach(batch * cout) { range in
                for bc in range {
                    let p = op + bc * oh * ow, v = bv[bc % cout]
                    for i in 0..<(oh * ow) { p[i] += v }
                }
            }
        }
        if outF.buffer !== out.buffer { copy(outF, into: out) }
        return out
    }

    public func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let (batch, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let out = Tensor.empty([batch, c, 2 * h, 2 * w], dtype: x.dtype)
        let es = x.dtype.byteSize
        let src = UnsafeRawPointer(x.hostPointer), dst = out.hostPointer
        Parallel.forEach(batch * c * h, grain: 16) { range in
            for row in range {
                let plane = row / h, y = row % h
                let s = src + (plane * h * w + y * w) * es
                let d0 = dst + (plane * 4 * h * w + 2 * y * 2 * w) * es
                for xx in 0..<w {
                    let v = s + xx * es
                    (d0 + 2 * xx * es).copyMemory(from: v, byteCount: es)
                    (d0 + (2 * xx + 1) * es).copyMemory(from: v, byteCount: es)
                }
                (d0 + 2 * w * es).copyMemory(from: d0, byteCount: 2 * w * es)
            }
        }
        return out
    }
}
