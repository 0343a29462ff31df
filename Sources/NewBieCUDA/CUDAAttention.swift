import Foundation
import NewBieTensor

// Transformer ops: rotary embedding, attention (flash and reference kernels), fused QKV norm + RoPE.

extension CUDABackend {
    // MARK: transformer ops

    public func rope(_ x: Tensor, cos: Tensor, sin: Tensor, layout: RoPELayout) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let (b, l, h, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let n = b * l * h * d / 2
        if n == 0 { return out }
        launch("nb_rope", grid: blocks(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(ptr(cos)).ptr(ptr(sin)).ptr(ptr(out)).i64(b).i64(l).i64(h).i64(d)
            .i32(cos.shape[0] == 1 ? 0 : 1).i32(layout == .interleaved ? 0 : 1))
        return out
    }

    public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, options: AttentionOptions) -> Tensor {
        let (b, lq, hq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (lk, hkv, dv) = (k.shape[1], k.shape[2], v.shape[3])
        let aligned = [ptr(q), ptr(k), ptr(v)].allSatisfy { $0 % 16 == 0 }
        let flash = (q.dtype == .bf16 || q.dtype == .f16) && k.dtype == q.dtype && v.dtype == q.dtype && d == dv
            && [64, 96, 128].contains(d) && aligned && !forceReferenceAttention
        // Head dims the flash kernels do not cover (the VAE's 512, Gemma's 256) and large Float32
        // problems go through matrix products (cuBLASLt) with chunked Float32 scores; the
        // one-warp-per-row reference kernel is left for small shapes. Unmasked 16-bit problems
        // (the VAE's mid-block) keep their operands in 16 bits on the tensor cores.
        if !flash && !forceReferenceAttention && (Swift.max(d, dv) > 128 || lq * lk >= 1 << 16) {
            let plain = options.keyPaddingMask == nil && options.bias == nil && !options.causal && options.slidingWindow == nil
            if plain && (q.dtype == .bf16 || q.dtype == .f16) && k.dtype == q.dtype && v.dtype == q.dtype {
                return attentionByProducts16(q, k, v, scale: options.scale ?? 1 / Float(d).squareRoot())
            }
            return attentionByMatmul(q, k, v, options: options)
        }
        precondition(d <= 256 && dv <= 256, "CUDA attention supports head dims up to 256")
        let out = empty([b, lq, hq, dv], q.dtype)
        if b * lq * hq == 0 { return out }
        let kk = k.dtype == q.dtype ? k : k.to(q.dtype), vv = v.dtype == q.dtype ? v : v.to(q.dtype)
        let mask = options.keyPaddingMask.map { $0.to(.f32) }
        let bias = options.bias.map { $0.to(.f32) }
        var p = AttnParamsRaw()
        p.i64s = [Int64(b), Int64(lq), Int64(lk), Int64(hq), Int64(hkv), Int64(d), Int64(dv)]
        p.scale = options.scale ?? 1 / Float(d).squareRoot()
        p.causal = options.causal ? 1 : 0
        p.window = Int32(options.slidingWindow ?? 0)
        p.hasMask = mask == nil ? 0 : 1
        p.hasBias = bias == nil ? 0 : 1
        p.biasB = Int64(bias?.shape[0] ?? 1)
        p.biasH = Int64(bias?.shape[1] ?? 1)
        let bytes = q.dtype.byteSize
        if flash {
            var f: [UInt8] = []
            func put<T>(_ v: T) { withUnsafeBytes(of: v) { f.append(contentsOf: $0) } }
            for v in [b, lq, lk, hq, hkv] { put(Int64(v)) }
            put(p.scale); put(p.causal); put(p.window); put(p.hasMask); put(p.hasBias); put(Int32(0))
            put(p.biasB); put(p.biasH)
            let type = q.dtype == .bf16 ? "bf16" : "f16"
            // Hopper (sm_90a module loaded): the wgmma kernel, for everything but an additive bias
            let wgmma = "nb_flash_wgmma_\(type)_d\(d)"
            if flashVariant == "auto", bias == nil, functions[wgmma] != nil {
                lastFlashKernel = wgmma
                let qTiles = (lq + Self.hopperFlashRows - 1) / Self.hopperFlashRows
                launch(wgmma, grid: b * hq * qTiles, block: 384, shared: Self.hopperFlashSharedBytes(headDim: d),
                       KernelArgs().ptr(ptr(q)).ptr(ptr(kk)).ptr(ptr(vv)).ptr(mask.map(ptr) ?? 0).ptr(ptr(out)).bytes(f))
                return out
            }
            let w = flashVariant == "w8" ? 8 : 4
            let kernel = "nb_flash_\(type)_d\(d)_w\(w)"
            lastFlashKernel = kernel
            // flash.cu: 16 query rows per warp, K and V double-buffered in tiles of 64 keys
            let rowsPerBlock = 16 * w
            let qTiles = (lq + rowsPerBlock - 1) / rowsPerBlock
            launch(kernel, grid: b * hq * qTiles, block: 32 * w, shared: (rowsPerBlock + 4 * 64) * (d + 8) * bytes,
                   KernelArgs().ptr(ptr(q)).ptr(ptr(kk)).ptr(ptr(vv)).ptr(mask.map(ptr) ?? 0).ptr(bias.map(ptr) ?? 0)
                    .ptr(ptr(out)).bytes(f))
            return out
        }
        let warps = b * lq * hq
        launch("nb_attention_ref", grid: (warps * 32 + 255) / 256, KernelArgs().ptr(ptr(q)).ptr(ptr(kk)).ptr(ptr(vv))
            .i32(Self.dtypeCode(q.dtype)).ptr(mask.map(ptr) ?? 0).ptr(bias.map(ptr) ?? 0).ptr(ptr(out)).bytes(p.encoded()))
        return out
    }

    /// flash_hopper.cu: 128 query rows per block (two consumer warpgroups), a producer warpgroup.
    static let hopperFlashRows = 128
    /// flash_hopper.cu's shared memory: the Q tile, 3 stages of 128-key K and V tiles, 6 mbarriers.
    /// Unmasked attention by two cuBLASLt products with 16-bit operands, for head dims the flash
    /// kernels do not take (the VAE's one head of 512 over every latent position): S = Q K^T as
    /// fp32 (the products of 16-bit values are exact, summed in fp32), one softmax pass writing
    /// P = exp(scale (S - rowmax)) rounded to q's dtype and the fp32 row sums, then P V in fp32
    /// divided by the sum and rounded once: the flash kernels' arithmetic. `attentionByMatmul`
    /// widens everything to fp32 instead, whose products run without tensor cores (about 150 ms of
    /// a 2048x2048 decode). Query rows go in chunks whose fp32 scores stay within `maxScoreBytes`.
    public func attentionByProducts16(_ q: Tensor, _ k: Tensor, _ v: Tensor, scale: Float,
                                      maxScoreBytes: Int = 256 << 20) -> Tensor {
        let (b, lq, hq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (lk, hkv, dv) = (k.shape[1], k.shape[2], v.shape[3])
        let group = hq / hkv
        let out = empty([b, lq, hq, dv], q.dtype)
        if out.count == 0 || driver.failed { return out }
        if lk == 0 { fill(out, value: 0); return out }
        // heads first, [B * Hkv, L, D]: the g query heads sharing a KV head stack their rows
        let kh = k.permute([0, 2, 1, 3]).contiguous().reshape([b * hkv, lk, d])
        let vh = v.permute([0, 2, 1, 3]).contiguous().reshape([b * hkv, lk, dv])
        let rowBytes = b * hq * lk * MemoryLayout<Float>.size
        let chunk = Swift.max(1, Swift.min(lq, maxScoreBytes / rowBytes))
        var i0 = 0
        while i0 < lq && !driver.failed {
            let rows = Swift.min(chunk, lq - i0)
            let qc = q.narrow(1, start: i0, length: rows).permute([0, 2, 1, 3]).contiguous().reshape([b * hkv, group * rows, d])
            let s = matmul(qc, kh, transposeB: true, outDType: .f32)
            let p = empty(s.shape, q.dtype), sums = empty([b * hkv, group * rows, 1], .f32)
            setCurrent()
            launch("nb_softmax_rows_p16", grid: b * hkv * group * rows, KernelArgs().ptr(ptr(s)).ptr(ptr(p))
                .i32(Self.dtypeCode(q.dtype)).ptr(ptr(sums)).i64(lk).f32(scale))
            let pv = matmul(p, vh, transposeB: false, outDType: .f32)
            let o = pv.binary(.div, sums, dtype: q.dtype)
            copy(o.reshape([b, hq, rows, dv]).permute([0, 2, 1, 3]), into: out.narrow(1, start: i0, length: rows))
            i0 += rows
        }
        return out
    }

    static func hopperFlashSharedBytes(headDim d: Int) -> Int { 128 * d * 2 + 3 * 2 * 128 * d * 2 + 6 * 8 }

    public func qkvNormRope(_ qkv: Tensor, heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                            cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor) {
        let (b, l) = (qkv.shape[0], qkv.shape[1])
        let d = qkv.shape[2] / (heads + 2 * kvHeads)
        let q = empty([b, l, heads, d], qkv.dtype), k = empty([b, l, kvHeads, d], qkv.dtype), v = empty([b, l, kvHeads, d], qkv.dtype)
        let warps = b * l * (heads + 2 * kvHeads)
        if warps == 0 { return (q, k, v) }
        let kn = kNorm.dtype == qNorm.dtype ? kNorm : kNorm.to(qNorm.dtype)
        if layout == .interleaved, d % 4 == 0, d <= 128, cos.dtype == .f32, sin.dtype == .f32, cos.isContiguous, sin.isContiguous,
           b * l * (heads + 2 * kvHeads) < Int(Int32.max) / 32, let t = fastSuffix([qkv, qNorm, kn], rowLength: 8) {
            launch("nb_qkv_norm_rope_" + t, grid: (warps + 7) / 8, KernelArgs().ptr(ptr(qkv)).ptr(ptr(qNorm)).ptr(ptr(kn))
                .ptr(ptr(cos)).ptr(ptr(sin)).ptr(ptr(q)).ptr(ptr(k)).ptr(ptr(v)).i32(Int32(l)).i32(Int32(heads)).i32(Int32(kvHeads))
                .i32(Int32(d)).i32(cos.shape[0] == 1 ? 0 : 1).i32(Int32(b * l)).f32(eps))
            return (q, k, v)
        }
        launch("nb_qkv_norm_rope", grid: (warps + 7) / 8, KernelArgs().ptr(ptr(qkv)).i32(Self.dtypeCode(qkv.dtype))
            .ptr(ptr(qNorm)).ptr(ptr(kn)).i32(Self.dtypeCode(qNorm.dtype)).ptr(ptr(cos)).ptr(ptr(sin))
            .ptr(ptr(q)).ptr(ptr(k)).ptr(ptr(v)).i64(b).i64(l).i64(heads).i64(kvHeads).i64(d)
            .i32(cos.shape[0] == 1 ? 0 : 1).i32(layout == .interleaved ? 0 : 1).f32(eps))
        return (q, k, v)
    }
}

/// Mirrors `AttnParams` in attention.cu (7 x i64, float, 4 x int, pad, 2 x i64 = 96 bytes).
struct AttnParamsRaw {
    var i64s: [Int64] = []
    var scale: Float = 1
    var causal: Int32 = 0, window: Int32 = 0, hasMask: Int32 = 0, hasBias: Int32 = 0
    var biasB: Int64 = 1, biasH: Int64 = 1

    func encoded() -> [UInt8] {
        var out: [UInt8] = []
        func put<T>(_ v: T) { withUnsafeBytes(of: v) { out.append(contentsOf: $0) } }
        for v in i64s { put(v) }
        put(scale); put(causal); put(window); put(hasMask); put(hasBias)
        while out.count % 8 != 0 { out.append(0) }
        put(biasB); put(biasH)
        return out
    }
}
