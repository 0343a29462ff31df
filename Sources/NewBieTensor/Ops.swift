/// The op API model code calls. Each wrapper checks shapes, prepares the layout the backend
/// protocol promises (contiguous inputs, broadcast views) and dispatches to the tensor's backend.
extension Tensor {
    // MARK: element-wise

    public func apply(_ op: UnaryOp) -> Tensor { backend.unary(op, self, dtype: dtype) }

    public func silu() -> Tensor { apply(.silu) }
    public func gelu(approximate: Bool) -> Tensor { apply(approximate ? .geluTanh : .geluErf) }
    public func tanh() -> Tensor { apply(.tanh) }
    public func sigmoid() -> Tensor { apply(.sigmoid) }
    public func exp() -> Tensor { apply(.exp) }
    public func sqrt() -> Tensor { apply(.sqrt) }
    public func square() -> Tensor { apply(.square) }
    public func scaled(_ s: Float) -> Tensor { apply(.affine(s, 0)) }
    public func affine(scale: Float, shift: Float) -> Tensor { apply(.affine(scale, shift)) }
    public func clamp(_ lo: Float, _ hi: Float) -> Tensor { apply(.clamp(lo, hi)) }

    /// Element-wise op with NumPy broadcasting; the result takes the dtype of `self` unless given.
    public func binary(_ op: BinaryOp, _ other: Tensor, dtype outType: DType? = nil) -> Tensor {
        precondition(device == other.device, "\(op): tensors on \(device) and \(other.device)")
        guard let shape = Tensor.broadcastShape(self.shape, other.shape) else {
            preconditionFailure("\(op): shapes \(self.shape) and \(other.shape) do not broadcast")
        }
        let a = self.shape == shape ? self : expand(shape)
        let b = other.shape == shape ? other : other.expand(shape)
        return backend.binary(op, a, b, dtype: outType ?? dtype)
    }

    public static func + (a: Tensor, b: Tensor) -> Tensor { a.binary(.add, b) }
    public static func - (a: Tensor, b: Tensor) -> Tensor { a.binary(.sub, b) }
    public static func * (a: Tensor, b: Tensor) -> Tensor { a.binary(.mul, b) }
    public static func / (a: Tensor, b: Tensor) -> Tensor { a.binary(.div, b) }
    public static func + (a: Tensor, s: Float) -> Tensor { a.apply(.affine(1, s)) }
    public static func * (a: Tensor, s: Float) -> Tensor { a.apply(.affine(s, 0)) }

    // MARK: reductions

    /// Reduces over the contiguous range of axes `axes` (e.g. [1, 2, 3]); `keepDims` keeps size-1 axes.
    public func reduce(_ op: ReduceOp, axes: [Int], keepDims: Bool = false, dtype outType: DType? = nil) -> Tensor {
        let ax = axes.map { axis($0) }.sorted()
        precondition(!ax.isEmpty && ax.last! - ax.first! + 1 == ax.count, "reduce over non-adjacent axes \(axes)")
        let x = contiguous()
        let outer = shape[..<ax.first!].reduce(1, *)
        let n = ax.map { shape[$0] }.reduce(1, *)
        let inner = shape[(ax.last! + 1)...].reduce(1, *)
        let r = backend.reduce(op, x, outer: outer, n: n, inner: inner, dtype: outType ?? dtype)
        var outShape = shape
        for a in ax.reversed() { if keepDims { outShape[a] = 1 } else { outShape.remove(at: a) } }
        return r.reshape(outShape)
    }

    public func sum(axis a: Int, keepDims: Bool = false) -> Tensor { reduce(.sum, axes: [a], keepDims: keepDims) }
    public func mean(axis a: Int, keepDims: Bool = false) -> Tensor { reduce(.mean, axes: [a], keepDims: keepDims) }
    public func max(axis a: Int, keepDims: Bool = false) -> Tensor { reduce(.max, axes: [a], keepDims: keepDims) }

    public func softmax() -> Tensor { backend.softmax(contiguous()) }

    // MARK: normalisation

    public func rmsNorm(weight: Tensor?, eps: Float, style: RMSNormStyle = .roundThenWeight) -> Tensor {
        if let w = weight { precondition(w.shape == [shape.last!], "rmsNorm weight \(w.shape) does not match last axis of \(shape)") }
        return backend.rmsNorm(contiguous(), weight: weight?.contiguous(), eps: eps, style: style)
    }

    public func layerNorm(weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        if let w = weight { precondition(w.shape == [shape.last!], "layerNorm weight \(w.shape) does not match \(shape)") }
        if let b = bias { precondition(b.shape == [shape.last!], "layerNorm bias \(b.shape) does not match \(shape)") }
        return backend.layerNorm(contiguous(), weight: weight?.contiguous(), bias: bias?.contiguous(), eps: eps)
    }

    public func groupNorm(groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        precondition(rank >= 2 && shape[1] % groups == 0, "groupNorm: \(shape[1]) channels do not split into \(groups) groups")
        return backend.groupNorm(contiguous(), groups: groups, weight: weight?.contiguous(), bias: bias?.contiguous(), eps: eps)
    }

    /// `groupNorm(...).silu()`, one fused pass where the backend has one (same rounding points).
    public func groupNormSiLU(groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        precondition(rank >= 2 && shape[1] % groups == 0, "groupNormSiLU: \(shape[1]) channels do not split into \(groups) groups")
        return backend.groupNormSiLU(contiguous(), groups: groups, weight: weight?.contiguous(), bias: bias?.contiguous(), eps: eps)
    }

    // MARK: matrix products

    /// y = x W^T + b, W [out, in].
    public func linear(_ weight: Tensor, bias: Tensor? = nil) -> Tensor {
        precondition(weight.rank == 2 && weight.shape[1] == shape.last!,
                     "linear: input \(shape) does not match weight \(weight.shape) ([out, in])")
        if let b = bias { precondition(b.shape == [weight.shape[0]], "linear: bias \(b.shape) for weight \(weight.shape)") }
        return backend.linear(contiguous(), weight: weight.contiguous(), bias: bias?.contiguous())
    }

    /// Batched matrix product over the last two axes; leading axes must match.
    public func matmul(_ other: Tensor, transposeB: Bool = false) -> Tensor {
        precondition(rank >= 2 && other.rank == rank, "matmul: ranks of \(shape) and \(other.shape) differ")
        let lead = Array(shape.dropLast(2))
        precondition(lead == Array(other.shape.dropLast(2)), "matmul: batch axes of \(shape) and \(other.shape) differ")
        let m = shape[rank - 2], k = shape[rank - 1]
        let kb = transposeB ? other.shape[rank - 1] : other.shape[rank - 2]
        let n = transposeB ? other.shape[rank - 2] : other.shape[rank - 1]
        precondition(k == kb, "matmul: inner sizes of \(shape) and \(other.shape) differ")
        let batch = lead.reduce(1, *)
        let a3 = reshape([batch, m, k])
        let b3 = other.reshape(transposeB ? [batch, n, k] : [batch, k, n])
        return backend.matmul(a3, b3, transposeB: transposeB).reshape(lead + [m, n])
    }

    // MARK: transformer ops

    /// Rotary embedding of x [B, L, H, D] with cos/sin [B or 1, L, D/2].
    public func rope(cos: Tensor, sin: Tensor, layout: RoPELayout) -> Tensor {
        precondition(rank == 4 && shape[3] % 2 == 0, "rope: x must be [B, L, H, D] with even D, got \(shape)")
        precondition(cos.rank == 3 && cos.shape[1] == shape[1] && cos.shape[2] == shape[3] / 2 && (cos.shape[0] == 1 || cos.shape[0] == shape[0]),
                     "rope: cos \(cos.shape) does not fit x \(shape)")
        precondition(sin.shape == cos.shape, "rope: sin \(sin.shape) and cos \(cos.shape) differ")
        // the tables are small: they follow x to its device
        return backend.rope(contiguous(), cos: cos.to(.f32, device: device), sin: sin.to(.f32, device: device), layout: layout)
    }

    /// Scaled-dot-product attention. self = q [B, Lq, Hq, D]; k, v [B, Lk, Hkv, D]; Hq a multiple of Hkv.
    public func attention(k: Tensor, v: Tensor, options: AttentionOptions = AttentionOptions()) -> Tensor {
        precondition(rank == 4 && k.rank == 4 && v.rank == 4, "attention: q, k, v must be [B, L, H, D]")
        let (b, _, hq, d) = (shape[0], shape[1], shape[2], shape[3])
        precondition(k.shape[0] == b && v.shape[0] == b && k.shape[1] == v.shape[1] && k.shape[2] == v.shape[2] && k.shape[3] == d,
                     "attention: q \(shape), k \(k.shape), v \(v.shape) do not fit")
        precondition(hq % k.shape[2] == 0, "attention: \(hq) query heads do not share \(k.shape[2]) KV heads evenly")
        if let m = options.keyPaddingMask {
            precondition(m.shape == [b, k.shape[1]], "attention: key padding mask \(m.shape) should be [\(b), \(k.shape[1])]")
        }
        if let bias = options.bias {
            precondition(bias.rank == 4 && (bias.shape[0] == 1 || bias.shape[0] == b) && (bias.shape[1] == 1 || bias.shape[1] == hq)
                         && bias.shape[2] == shape[1] && bias.shape[3] == k.shape[1],
                         "attention: bias \(bias.shape) does not broadcast to [\(b), \(hq), \(shape[1]), \(k.shape[1])]")
        }
        // masks and biases follow q to its device
        var opts = options
        opts.keyPaddingMask = options.keyPaddingMask?.to(device: device).contiguous()
        opts.bias = options.bias?.to(device: device).contiguous()
        return backend.attention(contiguous(), k.contiguous(), v.contiguous(), options: opts)
    }

    /// Rows of `self` ([V, D]) picked by integer `ids` (any shape); result ids.shape + [D].
    public func embedding(_ ids: Tensor, dtype outType: DType? = nil) -> Tensor {
        precondition(rank == 2, "embedding table must be [V, D], got \(shape)")
        precondition(ids.dtype == .i32 || ids.dtype == .i64, "embedding ids must be i32 or i64, got \(ids.dtype)")
        let flat = ids.contiguous().reshape([ids.count])
        return backend.embedding(contiguous(), ids: flat, dtype: outType ?? dtype).reshape(ids.shape + [shape[1]])
    }

    // MARK: fused transformer ops (see Backend for the exact semantics)

    /// `rmsNorm(weight) * (1 + scale)` with scale [B, D] broadcast over the tokens of x [B, L, D].
    public func rmsNormModulate(weight: Tensor, eps: Float, scale: Tensor?) -> Tensor {
        precondition(rank == 3 && weight.shape == [shape[2]], "rmsNormModulate: x \(shape), weight \(weight.shape)")
        if let s = scale { precondition(s.shape == [shape[0], shape[2]], "rmsNormModulate: scale \(s.shape) for x \(shape)") }
        return backend.rmsNormModulate(contiguous(), weight: weight.contiguous(), eps: eps, scale: scale?.contiguous())
    }

    /// `self + tanh(gate) * y.rmsNorm(weight)`, gate [B, D].
    public func rmsNormGatedResidual(_ y: Tensor, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor {
        precondition(rank == 3 && y.shape == shape && weight.shape == [shape[2]], "rmsNormGatedResidual: x \(shape), y \(y.shape), weight \(weight.shape)")
        if let g = gate { precondition(g.shape == [shape[0], shape[2]], "rmsNormGatedResidual: gate \(g.shape) for x \(shape)") }
        return backend.rmsNormGatedResidual(contiguous(), y.contiguous(), weight: weight.contiguous(), eps: eps, gate: gate?.contiguous())
    }

    /// `silu(self) * b`.
    public func swiglu(_ b: Tensor) -> Tensor {
        precondition(shape == b.shape, "swiglu: shapes \(shape) and \(b.shape) differ")
        return backend.swiglu(contiguous(), b.contiguous())
    }

    // fp8 layers' inputs as e4m3 codes with one scale per row (QuantizedOps.swift): the same values
    // as quantizing the 16-bit result, written in one pass where the backend fuses them.

    /// Per-row e4m3 codes and scales of self [..., k].
    public func quantizedRowsE4M3() -> E4M3Rows { backend.quantizeRowsE4M3(contiguous()) }

    /// `rmsNormModulate(...)` quantized per row (rounded to self's dtype first).
    public func rmsNormModulateE4M3(weight: Tensor, eps: Float, scale: Tensor?) -> E4M3Rows {
        precondition(rank == 3 && weight.shape == [shape[2]], "rmsNormModulateE4M3: x \(shape), weight \(weight.shape)")
        if let s = scale { precondition(s.shape == [shape[0], shape[2]], "rmsNormModulateE4M3: scale \(s.shape) for x \(shape)") }
        return backend.rmsNormModulateE4M3(contiguous(), weight: weight.contiguous(), eps: eps, scale: scale?.contiguous())
    }

    /// `swiglu(b)` quantized per row (rounded to self's dtype first).
    public func swigluE4M3(_ b: Tensor) -> E4M3Rows {
        precondition(shape == b.shape, "swigluE4M3: shapes \(shape) and \(b.shape) differ")
        return backend.swigluE4M3(contiguous(), b.contiguous())
    }

    /// `rmsNormGatedResidual` of an fp8 product before its scales (see `ScaledProduct`).
    public func rmsNormGatedResidual(_ y: ScaledProduct, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor {
        if y.isScaled { return rmsNormGatedResidual(y.raw, weight: weight, eps: eps, gate: gate) }
        precondition(rank == 3 && y.shape == shape && weight.shape == [shape[2]], "rmsNormGatedResidual: x \(shape), y \(y.shape), weight \(weight.shape)")
        if let g = gate { precondition(g.shape == [shape[0], shape[2]], "rmsNormGatedResidual: gate \(g.shape) for x \(shape)") }
        return backend.rmsNormGatedResidual(contiguous(), y, weight: weight.contiguous(), eps: eps, gate: gate?.contiguous())
    }

    /// q, k, v from a fused projection [B, L, (heads + 2 kvHeads) * D], q and k RMS-normalised per
    /// head and rotated; cos/sin [B or 1, L, D/2].
    public func qkvNormRope(heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                            cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor) {
        precondition(rank == 3 && shape[2] % (heads + 2 * kvHeads) == 0, "qkvNormRope: \(shape) does not split into \(heads)+2x\(kvHeads) heads")
        let d = shape[2] / (heads + 2 * kvHeads)
        precondition(qNorm.shape == [d] && kNorm.shape == [d], "qkvNormRope: q/k norm weights \(qNorm.shape), \(kNorm.shape) for head dim \(d)")
        return backend.qkvNormRope(contiguous(), heads: heads, kvHeads: kvHeads, qNorm: qNorm.contiguous(), kNorm: kNorm.contiguous(),
                                   eps: eps, cos: cos.to(.f32, device: device), sin: sin.to(.f32, device: device), layout: layout)
    }

    // MARK: convolution

    public func conv2d(_ weight: Tensor, bias: Tensor? = nil, options: Conv2dOptions = Conv2dOptions()) -> Tensor {
        precondition(rank == 4 && weight.rank == 4 && weight.shape[1] == shape[1],
                     "conv2d: input \(shape) does not match weight \(weight.shape) ([Cout, Cin, kh, kw])")
        if let b = bias { precondition(b.shape == [weight.shape[0]], "conv2d: bias \(b.shape) for weight \(weight.shape)") }
        let oh = (shape[2] + options.padTop + options.padBottom - weight.shape[2]) / options.strideH + 1
        let ow = (shape[3] + options.padLeft + options.padRight - weight.shape[3]) / options.strideW + 1
        precondition(oh > 0 && ow > 0, "conv2d: kernel \(weight.shape) larger than padded input \(shape)")
        return backend.conv2d(contiguous(), weight: weight.contiguous(), bias: bias?.contiguous(), options: options)
    }

    public func upsampleNearest2x() -> Tensor {
        precondition(rank == 4, "upsample expects NCHW, got \(shape)")
        return backend.upsampleNearest2x(contiguous())
    }
}
