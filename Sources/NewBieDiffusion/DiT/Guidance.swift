import Foundation
import NewBieTensor

/// Classifier-free guidance with the official `NextDiT_CLIP.forward_with_cfg` semantics.
public struct CFGOptions: Sendable, Equatable {
    /// Guidance scale: v = v_u + scale (v_c - v_u).
    public var scale: Float
    /// Guidance only while t < truncation (t runs 0 = noise -> 1 = clean); at or above it the
    /// conditional half alone runs and v = v_c. The official default 100 means "always".
    public var truncation: Float
    /// When > 0: if ||v|| >= renorm ||v_c|| (L2 over C, H, W per sample), v is rescaled to
    /// renorm ||v_c||. 0 turns it off.
    public var renorm: Float

    public init(scale: Float, truncation: Float = 100, renorm: Float = 1) {
        self.scale = scale; self.truncation = truncation; self.renorm = renorm
    }
}

extension NextDiT {
    /// forward_with_cfg: the batch is [conditional half | unconditional half], both halves carrying
    /// the same latent and time. Returns cat[v, v] ([2n, C, H, W], Float32) so both halves stay equal.
    /// The guidance arithmetic runs in the compute dtype, rounding after each step as PyTorch does.
    /// The official code compares norms with `.item()` (one sample per half); here the renorm is
    /// decided per sample, which is the same for that case.
    public func forwardWithCFG(_ x: Tensor, t: [Float], capFeats: Tensor, capMask: Tensor, clipPooled: Tensor?,
                               options: CFGOptions) throws -> Tensor {
        let total = x.shape.first ?? 0
        guard total >= 2, total % 2 == 0 else { throw DiTError("forwardWithCFG: batch \(total) is not [cond | uncond] halves") }
        guard t.count == total else { throw DiTError("forwardWithCFG: \(t.count) times for a batch of \(total)") }
        let n = total / 2
        var v: Tensor
        if CFGCombine.isActive(t: t[0], truncation: options.truncation) {
            let out = try forwardRaw(x, t: t, capFeats: capFeats, capMask: capMask, clipPooled: clipPooled)
            v = try CFGCombine.combine(cond: out.narrow(0, start: 0, length: n), uncond: out.narrow(0, start: n, length: n),
                                       scale: options.scale, renorm: options.renorm, dtype: dtype)
        } else {
            v = try forwardRaw(x.narrow(0, start: 0, length: n), t: Array(t[0..<n]),
                               capFeats: capFeats.narrow(0, start: 0, length: n), capMask: capMask.narrow(0, start: 0, length: n),
                               clipPooled: clipPooled?.narrow(0, start: 0, length: n))
        }
        return Tensor.concat([v.to(.f32), v.to(.f32)], axis: 0)
    }
}

/// One prompt's conditioning for the DiT: Gemma caption features [n, L, cap_feat_dim] (right
/// padded), their mask [n, L] and the pooled Jina CLIP text vector [n, clip_text_dim].
public struct DiTConditioning: @unchecked Sendable {
    public var capFeats: Tensor
    public var capMask: Tensor
    public var clipPooled: Tensor?
    public init(capFeats: Tensor, capMask: Tensor, clipPooled: Tensor?) {
        self.capFeats = capFeats; self.capMask = capMask; self.clipPooled = clipPooled
    }

    /// The same conditioning with captions padded (zeros, mask 0) to `length` tokens.
    func padded(to length: Int) -> DiTConditioning {
        let l = capFeats.shape[1]
        if l == length { return self }
        let n = capFeats.shape[0]
        let feats = Tensor.concat([capFeats, Tensor.zeros([n, length - l, capFeats.shape[2]], dtype: capFeats.dtype)], axis: 1)
        let mask = Tensor.concat([capMask.to(.f32), Tensor.zeros([n, length - l])], axis: 1)
        return DiTConditioning(capFeats: feats, capMask: mask, clipPooled: clipPooled)
    }
}

extension NextDiT {
    /// The guided velocity of state `x` [n, C, H, W] at time `t`, as a sampler calls it: builds the
    /// [cond | uncond] batch of `forwardWithCFG` (the state twice, captions padded to the longer of
    /// the two) and returns the first half, [n, C, H, W] Float32.
    public func guidedVelocity(_ x: Tensor, t: Float, cond: DiTConditioning, uncond: DiTConditioning,
                               options: CFGOptions) throws -> Tensor {
        let n = x.shape.first ?? 0
        guard cond.capFeats.rank == 3, uncond.capFeats.rank == 3, cond.capFeats.shape[0] == n, uncond.capFeats.shape[0] == n else {
            throw DiTError("guidedVelocity: conditioning batches \(cond.capFeats.shape), \(uncond.capFeats.shape) do not match the state \(x.shape)")
        }
        if let v = try recordedVelocity(x, t: t, cond: cond, uncond: uncond, options: options) { return v }
        let l = max(cond.capFeats.shape[1], uncond.capFeats.shape[1])
        let c = cond.padded(to: l), u = uncond.padded(to: l)
        var clip: Tensor? = nil
        if let cc = c.clipPooled, let uc = u.clipPooled { clip = Tensor.concat([cc, uc], axis: 0) }
        let out = try forwardWithCFG(Tensor.concat([x, x], axis: 0), t: [Float](repeating: t, count: 2 * n),
                                     capFeats: Tensor.concat([c.capFeats, u.capFeats.to(c.capFeats.dtype)], axis: 0),
                                     capMask: Tensor.concat([c.capMask.to(.f32), u.capMask.to(.f32)], axis: 0),
                                     clipPooled: clip, options: options)
        return out.narrow(0, start: 0, length: n).contiguous()
    }
}
