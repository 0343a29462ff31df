import Foundation
import NewBieTensor

/// Classifier-free guidance as a pure function over velocities, with the official
/// `NextDiT_CLIP.forward_with_cfg` semantics. The model call itself (one batch with the
/// conditional and unconditional halves, or the conditional half alone) belongs to the caller.
public enum CFGCombine {
    /// Guidance runs while t < truncation (t: 0 = noise -> 1 = clean). The official default 100
    /// (any value > 1) means always; 0.25 means only the noisy first part.
    public static func isActive(t: Float, truncation: Float) -> Bool { t < truncation }

    /// v = v_u + scale (v_c - v_u); then, when renorm > 0, per sample (axis 0):
    /// if ||v|| >= renorm ||v_c|| (L2 over all other axes), v <- v renorm ||v_c|| / ||v||.
    /// Inputs [N, ...] of equal shape; the result is float32 [N, ...]. The arithmetic runs in
    /// `dtype`, rounding after each step (norms included) as PyTorch does when the model's output is
    /// bf16: NextDiT's forward_with_cfg passes its compute dtype.
    public static func combine(cond: Tensor, uncond: Tensor, scale: Float, renorm: Float, dtype: DType = .f32) throws -> Tensor {
        guard cond.shape == uncond.shape, cond.rank >= 1 else {
            throw SamplingError("guidance: conditional shape \(cond.shape) and unconditional shape \(uncond.shape) differ")
        }
        guard scale.isFinite, renorm.isFinite, renorm >= 0 else {
            throw SamplingError("guidance: scale \(scale) and renorm \(renorm) must be finite, renorm >= 0")
        }
        func round(_ f: Float) -> Float { Half.round(f, to: dtype) }
        let c = cond.to(dtype), u = uncond.to(dtype)
        let v = u + (c - u) * scale
        if !(renorm > 0) { return v.to(.f32) }
        if c.device != .cpu { return renormOnDevice(v, cond: c, renorm: renorm, dtype: dtype).to(.f32) }
        let n = c.shape[0]
        var parts: [Tensor] = []
        for i in 0..<n {
            let vi = v.narrow(0, start: i, length: 1)
            let condNorm = round(l2(c.narrow(0, start: i, length: 1)))
            let maxNorm = round(condNorm * renorm)
            let newNorm = round(l2(vi))
            parts.append(newNorm >= maxNorm ? vi * round(maxNorm / newNorm) : vi)
        }
        return (n == 1 ? parts[0] : Tensor.concat(parts, axis: 0)).to(.f32)
    }

    /// The guided velocity for one model call: `model(x2, t)` gets the state twice
    /// ([cond | uncond] halves, the caller builds the batch) when guidance is active, and returns
    /// [v_c | v_u]; otherwise `condOnly(x, t)` gives v_c alone. The result has x's shape.
    public static func guided(x: Tensor, t: Float, scale: Float, truncation: Float, renorm: Float,
                              both: (_ x: Tensor, _ t: Float) throws -> (cond: Tensor, uncond: Tensor),
                              condOnly: (_ x: Tensor, _ t: Float) throws -> Tensor) throws -> Tensor {
        if isActive(t: t, truncation: truncation) {
            let (c, u) = try both(x, t)
            return try combine(cond: c, uncond: u, scale: scale, renorm: renorm)
        }
        return try condOnly(x, t).to(.f32)
    }

    /// The renorm of `combine` as device work only (no download, so a step can be recorded and the
    /// host need not wait): the same roundings in the same order, per sample as [N, 1, ...] tensors.
    /// `min(1, round(maxNorm / newNorm))` is the host's branch: the ratio is <= 1 exactly when
    /// newNorm >= maxNorm, and rounds to 1 (a no-op factor) otherwise; 0 / 0 stays NaN on both.
    /// The one difference: norms accumulate in fp32 on the device, in Double on the host.
    static func renormOnDevice(_ v: Tensor, cond c: Tensor, renorm: Float, dtype: DType) -> Tensor {
        let axes = Array(1..<c.rank)
        func norm(_ x: Tensor) -> Tensor {
            axes.isEmpty ? x.to(.f32).apply(.abs).to(dtype)
                : x.to(.f32).reduce(.sumSquares, axes: axes, keepDims: true).sqrt().to(dtype)
        }
        let maxNorm = norm(c) * renorm
        let factor = (maxNorm / norm(v)).clamp(-.infinity, 1)
        return v * factor
    }

    /// L2 norm of all elements, accumulated in Double, rounded to float32.
    static func l2(_ x: Tensor) -> Float {
        var s = 0.0
        for f in x.toFloats() { s += Double(f) * Double(f) }
        return Float(s.squareRoot())
    }
}
