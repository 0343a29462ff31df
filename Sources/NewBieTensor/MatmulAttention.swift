/// Attention composed of other backend ops (matrix products, element-wise ops, reductions), for
/// shapes a backend's fused kernel does not cover: CUDA's flash kernels take head dims 64-128, the
/// VAE has one head of 512 channels over 16384 tokens and Gemma heads of 256.
extension Backend {
    /// The same contract and result as `attention` (q [B, Lq, Hq, D], k [B, Lk, Hkv, D],
    /// v [B, Lk, Hkv, Dv], contiguous and on this backend's device, masks and bias too; result
    /// [B, Lq, Hq, Dv] in q's dtype; query rows that see no key give zeros).
    ///
    /// Query rows are taken in chunks whose Float32 scores, B x Hq x rows x Lk, stay within
    /// `maxScoreBytes` (at least one row); the working set is about twice that. Scores, softmax
    /// and P V are Float32 as in the flash kernels: unnormalised exp(s - rowmax) times V accumulated
    /// by a Float32 matmul, divided by the row sum and rounded once to q's dtype.
    public func attentionByMatmul(_ q: Tensor, _ k: Tensor, _ v: Tensor, options: AttentionOptions,
                                  maxScoreBytes: Int = 256 << 20) -> Tensor {
        precondition([q, k, v].allSatisfy { $0.device == device }, "attentionByMatmul: q, k, v must be on \(device)")
        let (b, lq, hq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (lk, hkv, dv) = (k.shape[1], k.shape[2], v.shape[3])
        let group = hq / hkv
        let out = Tensor.empty([b, lq, hq, dv], dtype: q.dtype, device: device)
        if out.count == 0 { return out }
        if lk == 0 { fill(out, value: 0); return out }  // no key at all: every row is fully masked
        let scale = options.scale ?? 1 / Float(d).squareRoot()

        // K and V widened once, heads first ([B * Hkv, Lk, D]): the g query heads sharing a KV head
        // then stack their rows against it in one batched matmul, without repeating K or V.
        let kf = k.permute([0, 2, 1, 3]).to(.f32).reshape([b * hkv, lk, d])
        let vf = v.permute([0, 2, 1, 3]).to(.f32).reshape([b * hkv, lk, dv])

        // Hidden keys get -inf added to their scores. The padding mask ([B, Lk]) is read on the host,
        // as the CPU kernel does; causal visibility is built per chunk from positions (exact
        // integers in Float32): log(1) = 0 where visible, log(0) = -inf where not.
        let keyMask = options.keyPaddingMask.map { m in
            Tensor(m.toFloats().map { $0 != 0 ? 0 : -Float.infinity }, shape: [b, 1, 1, lk], device: device)
        }
        let shift = lk - lq  // query i sees keys j <= i + shift
        var positions: (query: Tensor, key: Tensor)? = nil
        if options.causal {
            precondition(Swift.max(lq, lk) + Swift.abs(shift) < 1 << 24, "attentionByMatmul: positions beyond 2^24 are not exact in Float32")
            positions = (Tensor((0..<lq).map { Float($0 + shift) }, shape: [lq, 1], device: device),
                         Tensor((0..<lk).map { Float($0) }, shape: [1, lk], device: device))
        }

        let rowBytes = b * hq * lk * MemoryLayout<Float>.size
        let chunk = Swift.max(1, Swift.min(lq, maxScoreBytes / rowBytes))
        var i0 = 0
        while i0 < lq {
            let rows = Swift.min(chunk, lq - i0)
            // scaled queries widened in the same pass, [B * Hkv, g * rows, D]
            let qc = unary(.affine(scale, 0), q.narrow(1, start: i0, length: rows).permute([0, 2, 1, 3]), dtype: .f32)
                .reshape([b * hkv, group * rows, d])
            var s = qc.matmul(kf, transposeB: true).reshape([b, hq, rows, lk])

            // every additive term summed first (at most the size of s), then added to s once
            var add = keyMask
            if let pos = positions {
                let rel = pos.query.narrow(0, start: i0, length: rows) - pos.key  // [rows, Lk]: i + shift - j
                var visible = (rel + 1).clamp(0, 1)
                if let w = options.slidingWindow { visible = visible * rel.affine(scale: -1, shift: Float(w)).clamp(0, 1) }
                let causalMask = visible.apply(.log).reshape([1, 1, rows, lk])
                add = add.map { $0 + causalMask } ?? causalMask
            }
            if let bias = options.bias {
                let bc = bias.narrow(2, start: i0, length: rows)
                add = add.map { bc.binary(.add, $0, dtype: .f32) } ?? bc
            }
            if let a = add { s = s + a }

            // A fully masked row has max -inf; clamped to a finite value its exp is 0, not NaN.
            let rowMax = s.max(axis: -1, keepDims: true).clamp(-.greatestFiniteMagnitude, .infinity)
            s = s - rowMax
            s = s.exp()
            let rowSum = s.sum(axis: -1, keepDims: true).reshape([b * hkv, group * rows, 1])
            let pv = s.reshape([b * hkv, group * rows, lk]).matmul(vf)
            // a row that sees a key sums to at least 1 (its max gives exp(0)); a fully masked row has
            // P V = 0 and sum 0, which the clamp turns into 0 / 1
            let o = pv.binary(.div, rowSum.clamp(1, .infinity), dtype: q.dtype)
            copy(o.reshape([b, hq, rows, dv]).permute([0, 2, 1, 3]), into: out.narrow(1, start: i0, length: rows))
            i0 += rows
        }
        return out
    }
}
