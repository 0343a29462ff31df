import CNewBieCPU

/// Rotary embeddings and tiled attention on the CPU.
extension CPUBackend {
    public func rope(_ x: Tensor, cos: Tensor, sin: Tensor, layout: RoPELayout) -> Tensor {
        let (b, l, h, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let half = d / 2
        let out = Tensor.empty(x.shape, dtype: x.dtype)
        let cp = cos.hostPointer.assumingMemoryBound(to: Float.self)
        let sp = sin.hostPointer.assumingMemoryBound(to: Float.self)
        let perSampleTable = cos.shape[0] != 1
        let xb = UnsafeRawPointer(x.buffer.host!), ob = out.buffer.host!
        Parallel.forEach(b * l, grain: 8) { range in
            let t = UnsafeMutablePointer<Float>.allocate(capacity: h * d)
            let o = UnsafeMutablePointer<Float>.allocate(capacity: h * d)
            defer { t.deallocate(); o.deallocate() }
            for bl in range {
                let bi = bl / l, li = bl % l
                let tableRow = ((perSampleTable ? bi : 0) * l + li) * half
                let c = cp + tableRow, s = sp + tableRow
                RowIO.load(xb, x.dtype, offset: x.offset + bl * h * d, stride: 1, count: h * d, into: t)
                for hi in 0..<h {
                    let xi = t + hi * d, oi = o + hi * d
                    switch layout {
                    case .interleaved:
                        for m in 0..<half {
                            let re = xi[2 * m], im = xi[2 * m + 1]
                            oi[2 * m] = re * c[m] - im * s[m]
                            oi[2 * m + 1] = re * s[m] + im * c[m]
                        }
                    case .rotateHalf:
                        for m in 0..<half {
                            let x1 = xi[m], x2 = xi[m + half]
                            oi[m] = x1 * c[m] - x2 * s[m]
                            oi[m + half] = x2 * c[m] + x1 * s[m]
                        }
                    }
                }
                RowIO.store(o, ob, x.dtype, offset: bl * h * d, count: h * d)
            }
        }
        return out
    }

    /// Query rows and key columns of one attention tile. Chosen so that the score tile
    /// (128 x 512 Float32 = 256 KiB) stays in a core's L2 cache.
    static let attentionQueryTile = 128
    static let attentionKeyTile = 512

    /// Flash-attention style: for each (batch, head, query tile) the keys are visited in tiles,
    /// scores S = QK^T come from sgemm, an online softmax keeps a running max and sum per row, and
    /// the output accumulates P V. No Lq x Lk matrix is ever allocated.
    /// Query rows whose keys are all masked produce zeros.
    public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, options: AttentionOptions) -> Tensor {
        let (batch, lq, hq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (lk, hkv, dv) = (k.shape[1], k.shape[2], v.shape[3])
        let group = hq / hkv
        let out = Tensor.empty([batch, lq, hq, dv], dtype: q.dtype)
        if batch * lq * hq == 0 { return out }
        let outF = q.dtype == .f32 ? out : Tensor.empty([batch, lq, hq, dv], dtype: .f32)
        let qf = q.to(.f32), kf = k.to(.f32), vf = v.to(.f32)
        let qp = UnsafePointer(qf.hostPointer.assumingMemoryBound(to: Float.self))
        let kp = UnsafePointer(kf.hostPointer.assumingMemoryBound(to: Float.self))
        let vp = UnsafePointer(vf.hostPointer.assumingMemoryBound(to: Float.self))
        let op = outF.hostPointer.assumingMemoryBound(to: Float.self)
        let scale = options.scale ?? 1 / Float(d).squareRoot()
        let keep: [Bool]? = options.keyPaddingMask.map { m in m.toFloats().map { $0 != 0 } }
        let biasT = options.bias.map { $0.to(.f32) }
        let biasP = biasT.map { UnsafePointer($0.hostPointer.assumingMemoryBound(to: Float.self)) }
        let biasShape = biasT?.shape ?? [1, 1, 1, 1]
        let shift = lk - lq  // causal alignment: query i sees keys j <= i + shift
        let causal = options.causal
        let window = options.slidingWindow

        let bq = CPUBackend.attentionQueryTile, bk = CPUBackend.attentionKeyTile
        let qTiles = (lq + bq - 1) / bq
        let blas = BLAS.required
        blas.singleThreaded {
            Parallel.forEachDynamic(batch * hq * qTiles) { task in
                let qt = task % qTiles, h = (task / qTiles) % hq, b = task / (qTiles * hq)
                let kvh = h / group
                let i0 = qt * bq, rows = Swift.min(bq, lq - i0)
                let s = self.scratch(bq * bk)
                let acc = self.scratch(bq * dv)
                let rowMax = self.scratch(bq)
                let rowSum = self.scratch(bq)
                defer { self.release(s, bq * bk); self.release(acc, bq * dv); self.release(rowMax, bq); self.release(rowSum, bq) }
                acc.update(repeating: 0, count: rows * dv)
                rowMax.update(repeating: -.infinity, count: rows)
                rowSum.update(repeating: 0, count: rows)

                // keys this tile can see at all
                var jBegin = 0, jEnd = lk
                if causal {
                    jEnd = Swift.min(lk, i0 + rows - 1 + shift + 1)
                    if let w = window { jBegin = Swift.max(0, i0 + shift - w + 1) }
                }
                let qBase = qp + ((b * lq + i0) * hq + h) * d
                var j0 = jBegin
                while j0 < jEnd {
                    let cols = Swift.min(bk, jEnd - j0)
                    if let keep = keep, !(j0..<(j0 + cols)).contains(where: { keep[b * lk + $0] }) { j0 += cols; continue }
                    let kBase = kp + ((b * lk + j0) * hkv + kvh) * d
                    blas.sgemm(transA: false, transB: true, m: rows, n: cols, k: d, alpha: scale,
                               a: qBase, lda: hq * d, b: kBase, ldb: hkv * d, beta: 0, c: s, ldc: cols)
                    for r in 0..<rows {
                        let srow = s + r * cols
                        let i = i0 + r
                        if let bp = biasP {
                            let bb = biasShape[0] == 1 ? 0 : b, bh = biasShape[1] == 1 ? 0 : h
                            let brow = bp + ((bb * biasShape[1] + bh) * lq + i) * lk + j0
                            for c in 0..<cols { srow[c] += brow[c] }
                        }
                        if let keep = keep {
                            for c in 0..<cols where !keep[b * lk + j0 + c] { srow[c] = -.infinity }
                        }
                        if causal {
                            let last = i + shift  // last visible key
                            for c in 0..<cols {
                                let j = j0 + c
                                if j > last { srow[c] = -.infinity }
                                else if let w = window, last - j >= w { srow[c] = -.infinity }
                            }
                        }
                        let correction = nb_online_softmax_row(srow, cols, rowMax + r, rowSum + r)
                        if correction != 1 {
                            let arow = acc + r * dv
                            for c in 0..<dv { arow[c] *= correction }
                        }
                    }
                    let vBase = vp + ((b * lk + j0) * hkv + kvh) * dv
                    blas.sgemm(transA: false, transB: false, m: rows, n: dv, k: cols, alpha: 1,
                               a: s, lda: cols, b: vBase, ldb: hkv * dv, beta: 1, c: acc, ldc: dv)
                    j0 += cols
                }
                for r in 0..<rows {
                    let dst = op + ((b * lq + i0 + r) * hq + h) * dv
                    let inv: Float = rowSum[r] > 0 ? 1 / rowSum[r] : 0
                    let arow = acc + r * dv
                    for c in 0..<dv { dst[c] = arow[c] * inv }
                }
            }
        }
        if outF.buffer !== out.buffer { copy(outF, into: out) }
        return out
    }
}
