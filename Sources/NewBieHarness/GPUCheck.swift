import Foundation
import NewBieCUDA
import NewBieDiffusion
import NewBiePipeline
import NewBieTensor

/// The GPU self-check behind `newbie gpu-check`: every op of the backend protocol on the GPU against
/// the CPU backend, on fresh random inputs, in fp32, bf16 and fp16. GPU outputs start as NaN
/// (poisoned allocations), so an element a kernel does not write fails the check. Then every model
/// of the pipeline (the tiny random NewBie: both text encoders, the DiT through two guided sampler
/// steps, the VAE decoder) runs on the CPU and on the GPU from the same files, under uniform and
/// mixed precision policies.
public struct GPUCheck {
    /// One compared output: relative L2 error of the GPU against the reference, and its limit.
    public struct Row: Sendable {
        public let name: String
        public let dtype: String
        public let error: Double
        public let limit: Double
        public var passed: Bool { error <= limit }
    }
    public let seed: UInt64
    public init(seed: UInt64) { self.seed = seed }

    /// Runs every check on GPU 0. Throws a `DeviceError` when there is no usable GPU.
    public func run(log: (String) -> Void = { print($0) }) throws -> [Row] {
        // the CPU reference's matrix products need a BLAS: say so before any check runs (an error
        // of this machine's setup, not a missing GPU)
        do { _ = try Backends.open(.cpu) } catch { throw PipelineError("gpu-check: the CPU reference: \(error)") }
        let cuda = try DeviceSupport.openCUDA(0)
        cuda.poisonAllocations = true
        defer { cuda.poisonAllocations = false }
        log("gpu-check on \(cuda.name) (sm_\(cuda.computeCapability)), seed \(seed)")
        var rng = SplitMix(seed: seed)
        var rows: [Row] = []

        func rand(_ shape: [Int], _ dt: DType = .f32, scale: Float = 1, positive: Bool = false) -> Tensor {
            let n = shape.reduce(1, *)
            return Tensor((0..<n).map { _ in let u = rng.uniform() * scale; return positive ? Swift.abs(u) + 0.1 : u }, shape: shape, dtype: dt)
        }
        // `body` must only move prepared inputs to the device: it runs once per device.
        func check(_ name: String, _ dt: DType, _ body: (Device) -> Tensor) {
            let cpu = body(.cpu)
            let gpu = body(.cuda(0))
            let err = Numerics.relativeL2(gpu.to(device: .cpu).toFloats(), cpu.toFloats())
            let tol = dt == .f32 ? 1e-5 : 1e-2
            rows.append(Row(name: name, dtype: dt.rawValue, error: gpu.shape == cpu.shape ? err : .infinity, limit: tol))
        }

        // uploads over 4 MiB go through the two pinned halves with no wait between tensors: three
        // of 70 MB back to back (each spans both halves, the last piece odd-sized), then combined
        let ups = (0..<3).map { i in rand([17_500_003], scale: Float(i + 1)) }
        check("upload 3 x 70 MB (staged)", .f32) { d in
            let t = ups.map { $0.to(device: d) }
            return t[0] * t[1] + t[2]
        }

        for dt in [DType.f32, .bf16, .f16] {
            let x = rand([3, 37, 130], dt)
            let g = { (t: Tensor, d: Device) in t.to(device: d) }
            check("copy permute", dt) { d in g(x, d).permute([2, 0, 1]).contiguous() }
            check("cast to f32", dt) { d in g(x, d).to(.f32) }
            check("cast from f32", dt) { d in g(x.to(.f32), d).to(dt) }
            for (name, op) in [("silu", UnaryOp.silu), ("gelu tanh", .geluTanh), ("gelu erf", .geluErf), ("tanh", .tanh),
                               ("exp", .exp), ("sin", .sin), ("cos", .cos), ("sigmoid", .sigmoid), ("affine", .affine(1.5, -0.25)), ("clamp", .clamp(-0.5, 0.5))] {
                check("unary \(name)", dt) { d in g(x, d).apply(op) }
            }
            let row = rand([3, 1, 130], dt)
            check("binary add broadcast", dt) { d in g(x, d) + g(row, d) }
            check("binary mul broadcast", dt) { d in g(x, d) * g(row, d) }
            let den = rand([3, 37, 130], dt, positive: true)
            check("binary div", dt) { d in g(x, d) / g(den, d) }
            check("reduce sum axis 1", dt) { d in g(x, d).sum(axis: 1) }
            check("reduce mean last", dt) { d in g(x, d).mean(axis: -1) }
            check("reduce max", dt) { d in g(x, d).max(axis: 2) }
            check("reduce sumSquares 1,2", dt) { d in g(x, d).reduce(.sumSquares, axes: [1, 2]) }
            check("softmax", dt) { d in g(x.scaled(4), d).softmax() }
            let w = rand([130], dt), bvec = rand([130], dt)
            check("rmsNorm", dt) { d in g(x, d).rmsNorm(weight: g(w, d), eps: 1e-5) }
            check("rmsNorm gemma", dt) { d in g(x, d).rmsNorm(weight: g(w, d), eps: 1e-6, style: .gemmaOnePlusWeight) }
            check("layerNorm affine", dt) { d in g(x, d).layerNorm(weight: g(w, d), bias: g(bvec, d), eps: 1e-5) }
            check("layerNorm plain", dt) { d in g(x, d).layerNorm(weight: nil, bias: nil, eps: 1e-6) }
            let img = rand([2, 64, 9, 11], dt)
            let gw = rand([64], dt), gb = rand([64], dt)
            check("groupNorm", dt) { d in g(img, d).groupNorm(groups: 32, weight: g(gw, d), bias: g(gb, d), eps: 1e-6) }
            let bigImg = rand([1, 128, 128, 128], dt), bw = rand([128], dt), bb = rand([128], dt)
            check("groupNorm large groups", dt) { d in g(bigImg, d).groupNorm(groups: 32, weight: g(bw, d), bias: g(bb, d), eps: 1e-6) }
            // the fused GroupNorm(+SiLU) kernels: scalar (9x11 planes) and 16-byte vectors (128x128),
            // against the CPU's GroupNorm then SiLU; then the unfused path kept for comparison
            check("groupNorm+SiLU", dt) { d in g(img, d).groupNormSiLU(groups: 32, weight: g(gw, d), bias: g(gb, d), eps: 1e-6) }
            check("groupNorm+SiLU large groups", dt) { d in g(bigImg, d).groupNormSiLU(groups: 32, weight: g(bw, d), bias: g(bb, d), eps: 1e-6) }
            let shifted = rand([2, 128, 32, 40], dt, scale: 3).affine(scale: 1, shift: 40).to(dt)
            check("groupNorm+SiLU mean 40", dt) { d in g(shifted, d).groupNormSiLU(groups: 32, weight: g(bw, d), bias: g(bb, d), eps: 1e-6) }
            CUDABackend.fuseVAEOps = false
            check("groupNorm+SiLU unfused", dt) { d in g(bigImg, d).groupNormSiLU(groups: 32, weight: g(bw, d), bias: g(bb, d), eps: 1e-6) }
            CUDABackend.fuseVAEOps = true
            let lw = rand([96, 130], dt, scale: 0.2), lb = rand([96], dt)
            check("linear + bias", dt) { d in g(x, d).linear(g(lw, d), bias: g(lb, d)) }
            let a3 = rand([4, 33, 40], dt), b3 = rand([4, 40, 27], dt), bt = rand([4, 27, 40], dt)
            check("matmul", dt) { d in g(a3, d).matmul(g(b3, d)) }
            check("matmul transposeB", dt) { d in g(a3, d).matmul(g(bt, d), transposeB: true) }
            let q = rand([2, 37, 6, 32], dt), k = rand([2, 45, 2, 32], dt), v = rand([2, 45, 2, 32], dt)
            let cosT = rand([2, 37, 16]), sinT = rand([2, 37, 16])
            check("rope interleaved", dt) { d in g(q, d).rope(cos: g(cosT, d), sin: g(sinT, d), layout: .interleaved) }
            check("rope rotate-half", dt) { d in g(q, d).rope(cos: g(cosT.narrow(0, start: 0, length: 1), d), sin: g(sinT.narrow(0, start: 0, length: 1), d), layout: .rotateHalf) }
            let mask = Tensor((0..<90).map { Float(($0 % 45) < ($0 < 45 ? 45 : 30) ? 1 : 0) }, shape: [2, 45])
            check("attention gqa", dt) { d in g(q, d).attention(k: g(k, d), v: g(v, d)) }
            check("attention mask", dt) { d in g(q, d).attention(k: g(k, d), v: g(v, d), options: AttentionOptions(keyPaddingMask: g(mask, d))) }
            check("attention causal window", dt) { d in g(q, d).attention(k: g(k, d), v: g(v, d), options: AttentionOptions(causal: true, slidingWindow: 16)) }
            let bias = rand([1, 6, 37, 45])
            check("attention bias", dt) { d in g(q, d).attention(k: g(k, d), v: g(v, d), options: AttentionOptions(bias: g(bias, d))) }
            // the matrix-product path: head dims above 128 and large problems the flash kernel does not take
            let q5 = rand([2, 40, 4, 256], dt), k5 = rand([2, 50, 2, 256], dt), v5 = rand([2, 50, 2, 256], dt)
            let m5 = Tensor((0..<100).map { Float(($0 % 50) < ($0 < 50 ? 50 : 21) ? 1 : 0) }, shape: [2, 50])
            check("attention d256 (matmul) mask", dt) { d in g(q5, d).attention(k: g(k5, d), v: g(v5, d), options: AttentionOptions(keyPaddingMask: g(m5, d))) }
            check("attention d256 (matmul) causal", dt) { d in g(q5, d).attention(k: g(k5, d), v: g(v5, d), options: AttentionOptions(causal: true, slidingWindow: 9)) }
            let q6 = rand([1, 300, 1, 512], dt), k6 = rand([1, 300, 1, 512], dt), v6 = rand([1, 300, 1, 512], dt)
            check("attention d512 1 head (matmul)", dt) { d in g(q6, d).attention(k: g(k6, d), v: g(v6, d)) }
            // unmasked 16-bit problems take 16-bit products (attentionByProducts16): GQA with an odd
            // key count, and the query rows in chunks (nine of at most 37 rows)
            let q10 = rand([2, 70, 4, 256], dt), k10 = rand([2, 93, 2, 256], dt), v10 = rand([2, 93, 2, 256], dt)
            check("attention d256 gqa unmasked (matmul)", dt) { d in g(q10, d).attention(k: g(k10, d), v: g(v10, d)) }
            if dt != .f32 {
                check("attention d512 16-bit products chunked", dt) { d in
                    d == .cpu ? q6.attention(k: k6, v: v6)
                              : cuda.attentionByProducts16(g(q6, d), g(k6, d), g(v6, d), scale: 1 / Float(512).squareRoot(), maxScoreBytes: 300 * 4 * 37)
                }
            }
            // The flash kernels against the CPU: mma.sync (flash.cu) with 4 and 8 warps on every GPU and,
            // on compute capability 9.0, the wgmma kernel (flash_hopper.cu, variant "auto"). Each row
            // also checks which kernel ran: a wgmma row that ran another kernel (or a bias row that ran
            // wgmma, which takes no bias) fails, so the new kernel cannot pass by not running.
            let chosenFlash = cuda.flashVariant
            let variants = ["w4", "w8"] + (cuda.computeCapability == 90 ? ["auto"] : [])
            for variant in variants where dt != .f32 {
                cuda.flashVariant = variant
                let label = variant == "auto" ? "wgmma" : variant
                func flashCheck(_ name: String, wgmma: Bool, _ body: (Device) -> Tensor) {
                    cuda.lastFlashKernel = nil
                    check("flash \(label) \(name)", dt, body)
                    let ran = cuda.lastFlashKernel ?? "no flash kernel"
                    let expected = wgmma ? ran.hasPrefix("nb_flash_wgmma_") : (ran.hasPrefix("nb_flash_") && !ran.hasPrefix("nb_flash_wgmma_"))
                    if !expected {
                        rows.append(Row(name: "flash \(label) \(name): ran \(ran)", dtype: dt.rawValue, error: .infinity, limit: 0))
                    }
                }
                let onWgmma = variant == "auto"
                // past one query tile and one key tile (64 for mma.sync, 128 for wgmma) in each direction
                let q2 = rand([2, 150, 6, 96], dt), k2 = rand([2, 200, 2, 96], dt), v2 = rand([2, 200, 2, 96], dt)
                let m2 = Tensor((0..<400).map { Float(($0 % 200) < ($0 < 200 ? 200 : 77) ? 1 : 0) }, shape: [2, 200])
                let b2 = rand([2, 1, 150, 200])
                flashCheck("d96 gqa mask", wgmma: onWgmma) { d in g(q2, d).attention(k: g(k2, d), v: g(v2, d), options: AttentionOptions(keyPaddingMask: g(m2, d))) }
                flashCheck("d96 bias", wgmma: false) { d in g(q2, d).attention(k: g(k2, d), v: g(v2, d), options: AttentionOptions(bias: g(b2, d))) }
                flashCheck("d96 causal win", wgmma: onWgmma) { d in g(q2, d).attention(k: g(k2, d), v: g(v2, d), options: AttentionOptions(causal: true, slidingWindow: 70)) }
                for hd in [64, 128] {
                    let q3 = rand([1, 130, 4, hd], dt), k3 = rand([1, 97, 4, hd], dt), v3 = rand([1, 97, 4, hd], dt)
                    flashCheck("d\(hd)", wgmma: onWgmma) { d in g(q3, d).attention(k: g(k3, d), v: g(v3, d)) }
                }
                let q4 = rand([1, 1, 8, 96], dt), k4 = rand([1, 300, 8, 96], dt), v4 = rand([1, 300, 8, 96], dt)
                flashCheck("Lq=1", wgmma: onWgmma) { d in g(q4, d).attention(k: g(k4, d), v: g(v4, d)) }
                // a whole 128-key tile masked in sample 0 (skipped by both kernels' vote), a ragged hole
                // and a masked tail in sample 1; three key tiles of 128, the last partial
                let q7 = rand([2, 300, 6, 96], dt), k7 = rand([2, 333, 2, 96], dt), v7 = rand([2, 333, 2, 96], dt)
                let m7 = Tensor((0..<666).map { i -> Float in
                    let (s, j) = (i / 333, i % 333)
                    return (s == 0 ? (128..<256).contains(j) : ((5..<40).contains(j) || j >= 300)) ? 0 : 1
                }, shape: [2, 333])
                flashCheck("d96 mask holes", wgmma: onWgmma) { d in g(q7, d).attention(k: g(k7, d), v: g(v7, d), options: AttentionOptions(keyPaddingMask: g(m7, d))) }
                // every key of sample 1 masked: its rows are zeros, as on the CPU
                let q8 = rand([2, 70, 4, 96], dt), k8 = rand([2, 90, 4, 96], dt), v8 = rand([2, 90, 4, 96], dt)
                let m8 = Tensor((0..<180).map { Float($0 < 90 ? 1 : 0) }, shape: [2, 90])
                flashCheck("d96 one sample all masked", wgmma: onWgmma) { d in g(q8, d).attention(k: g(k8, d), v: g(v8, d), options: AttentionOptions(keyPaddingMask: g(m8, d))) }
                let q9 = rand([1, 257, 4, 128], dt), k9 = rand([1, 257, 4, 128], dt), v9 = rand([1, 257, 4, 128], dt)
                flashCheck("d128 causal", wgmma: onWgmma) { d in g(q9, d).attention(k: g(k9, d), v: g(v9, d), options: AttentionOptions(causal: true)) }
            }
            cuda.flashVariant = chosenFlash
            // fused transformer ops against the CPU's composition of unfused ops
            let xs = rand([2, 37, 130], dt), ys = rand([2, 37, 130], dt), sc = rand([2, 130], dt), nw = rand([130], dt)
            check("fused rmsNorm+modulate", dt) { d in g(xs, d).rmsNormModulate(weight: g(nw, d), eps: 1e-5, scale: g(sc, d)) }
            check("fused rmsNorm+gate+residual", dt) { d in g(xs, d).rmsNormGatedResidual(g(ys, d), weight: g(nw, d), eps: 1e-5, gate: g(sc, d)) }
            check("fused rmsNorm+residual", dt) { d in g(xs, d).rmsNormGatedResidual(g(ys, d), weight: g(nw, d), eps: 1e-5, gate: nil) }
            check("fused swiglu", dt) { d in g(xs, d).swiglu(g(ys, d)) }
            let qkvIn = rand([2, 37, 10 * 32], dt), qn = rand([32], dt), kn = rand([32], dt)
            for layout in [RoPELayout.interleaved, .rotateHalf] {
                for (i, name) in ["q", "k", "v"].enumerated() {
                    check("fused qkv norm rope \(name) \(layout == .interleaved ? "il" : "rh")", dt) { d in
                        let r = g(qkvIn, d).qkvNormRope(heads: 6, kvHeads: 2, qNorm: g(qn, d), kNorm: g(kn, d), eps: 1e-5,
                                                        cos: g(cosT, d), sin: g(sinT, d), layout: layout)
                        return [r.q, r.k, r.v][i]
                    }
                }
            }
            let table = rand([50, 24], dt)
            let ids = Tensor(ints: [3, 0, 49, 7, 7, 12], shape: [2, 3])
            check("embedding", dt) { d in g(table, d).embedding(g(ids, d)) }
            let cw = rand([16, 64, 3, 3], dt, scale: 0.1), cb = rand([16], dt)
            check("conv 3x3 pad 1", dt) { d in g(img, d).conv2d(g(cw, d), bias: g(cb, d), options: Conv2dOptions(stride: 1, padding: 1)) }
            let pw = rand([16, 64, 1, 1], dt, scale: 0.1)
            check("conv 1x1", dt) { d in g(img, d).conv2d(g(pw, d), bias: nil) }
            let pb = rand([16], dt)
            check("conv 1x1 + bias", dt) { d in g(img, d).conv2d(g(pw, d), bias: g(pb, d)) }
            // the bias folded into the product needs kdim + 1 padded to 8: 8 input channels x 3x3 = 72
            let cw8 = rand([16, 8, 3, 3], dt, scale: 0.1), img8 = rand([2, 8, 9, 11], dt)
            check("conv 3x3 bias folded (kdim 72)", dt) { d in g(img8, d).conv2d(g(cw8, d), bias: g(cb, d), options: Conv2dOptions(stride: 1, padding: 1)) }
            // rows of whole 8-pixel vectors: the 8-wide im2col (16-bit), whole and in bands of 2 and 3 rows
            let img16 = rand([2, 64, 13, 16], dt)
            check("conv 3x3 pad 1 8-wide im2col", dt) { d in g(img16, d).conv2d(g(cw, d), bias: g(cb, d), options: Conv2dOptions(stride: 1, padding: 1)) }
            let savedBand = CUDABackend.im2colBandBytes
            for bandRows in [2, 3] {
                CUDABackend.im2colBandBytes = (64 * 9 + 8) * 16 * bandRows * dt.byteSize
                check("conv 3x3 pad 1 8-wide im2col bands of \(bandRows)", dt) { d in
                    g(img16, d).conv2d(g(cw, d), bias: g(cb, d), options: Conv2dOptions(stride: 1, padding: 1))
                }
            }
            CUDABackend.im2colBandBytes = savedBand
            CUDABackend.fuseVAEOps = false
            check("conv 3x3 pad 1 bias filled (unfused)", dt) { d in g(img, d).conv2d(g(cw, d), bias: g(cb, d), options: Conv2dOptions(stride: 1, padding: 1)) }
            check("conv 1x1 + bias (unfused)", dt) { d in g(img, d).conv2d(g(pw, d), bias: g(pb, d)) }
            CUDABackend.fuseVAEOps = true
            check("conv 3x3 stride 2 asym", dt) { d in g(img, d).conv2d(g(cw, d), bias: g(cb, d), options: .downsampleAsymmetric) }
            // im2col in bands of output rows: bands of 1 row (stride 1, 9 wide) and 2 rows (stride 2,
            // asymmetric pad, 4 wide; the last band short), two images in the batch
            let img2 = rand([2, 64, 11, 9], dt)
            let saved = CUDABackend.im2colBandBytes
            CUDABackend.im2colBandBytes = 64 * 9 * 4 * 2 * dt.byteSize
            check("conv 3x3 pad 1 banded", dt) { d in g(img2, d).conv2d(g(cw, d), bias: g(cb, d), options: Conv2dOptions(stride: 1, padding: 1)) }
            check("conv 3x3 stride 2 asym banded", dt) { d in g(img2, d).conv2d(g(cw, d), bias: g(cb, d), options: .downsampleAsymmetric) }
            CUDABackend.im2colBandBytes = saved
            check("upsample nearest 2x", dt) { d in g(img, d).upsampleNearest2x() }
        }

        // classifier-free guidance with renorm: the host's branch and Double norms on the CPU, device
        // work only on the GPU (CFGCombine.renormOnDevice); renorm 1 rescales, 100 leaves v alone
        for dt in [DType.f32, .bf16] {
            let c = rand([2, 16, 12, 10]).to(dt), u = rand([2, 16, 12, 10], scale: 0.5).to(dt)
            for renorm: Float in [1, 100] {
                check("CFG combine renorm \(Int(renorm))", dt) { d in
                    do { return try CFGCombine.combine(cond: c.to(device: d), uncond: u.to(device: d), scale: 4.5, renorm: renorm, dtype: dt) }
                    catch { return Tensor.full([1], value: .nan) }
                }
            }
        }

        // fast paths of the fused ops (rows of whole 16-byte vectors) beside the generic ones above
        for dt in [DType.bf16, .f16] {
            let g = { (t: Tensor, d: Device) in t.to(device: d) }
            let xs = rand([2, 37, 136], dt), ys = rand([2, 37, 136], dt), sc = rand([2, 136], dt), nw = rand([136], dt)
            // both row layouts of the norm kernels (a warp per row, a block per row), each on rows of
            // 136 and of 2304 (the DiT's width)
            let xw = rand([2, 19, 2304], dt), yw = rand([2, 19, 2304], dt), scw = rand([2, 2304], dt), nww = rand([2304], dt)
            let defaultLayout = cuda.normRowsPerBlock
            for perBlock in [false, true] {
                cuda.normRowsPerBlock = perBlock
                let layout = perBlock ? "block per row" : "warp per row"
                for (x, y, s, n) in [(xs, ys, sc, nw), (xw, yw, scw, nww)] {
                    let w = " (\(layout), d \(x.shape[2]))"
                    check("fast rmsNorm+modulate" + w, dt) { d in g(x, d).rmsNormModulate(weight: g(n, d), eps: 1e-5, scale: g(s, d)) }
                    check("fast rmsNorm (no scale)" + w, dt) { d in g(x, d).rmsNormModulate(weight: g(n, d), eps: 1e-5, scale: nil) }
                    check("fast rmsNorm+gate+residual" + w, dt) { d in g(x, d).rmsNormGatedResidual(g(y, d), weight: g(n, d), eps: 1e-5, gate: g(s, d)) }
                    check("fast rmsNorm+residual" + w, dt) { d in g(x, d).rmsNormGatedResidual(g(y, d), weight: g(n, d), eps: 1e-5, gate: nil) }
                }
            }
            cuda.normRowsPerBlock = defaultLayout
            check("fast swiglu", dt) { d in g(xs, d).swiglu(g(ys, d)) }
            let qkvIn = rand([2, 37, 10 * 96], dt), qn = rand([96], dt), kn = rand([96], dt)
            let cosT = rand([1, 37, 48]), sinT = rand([1, 37, 48])
            for (i, name) in ["q", "k", "v"].enumerated() {
                check("fast qkv norm rope \(name) d96", dt) { d in
                    let r = g(qkvIn, d).qkvNormRope(heads: 6, kvHeads: 2, qNorm: g(qn, d), kNorm: g(kn, d), eps: 1e-5,
                                                    cos: g(cosT, d), sin: g(sinT, d), layout: .interleaved)
                    return [r.q, r.k, r.v][i]
                }
            }
        }
        // bit for bit: error = elements whose bits differ (a NaN anywhere counts as one), limit 0
        func exact(_ name: String, _ dt: DType, _ body: (Device) -> Tensor) {
            let cpu = body(.cpu).to(.f32).contiguous().toFloats()
            let gpu = body(.cuda(0)).to(device: .cpu).to(.f32).contiguous().toFloats()
            let differing = cpu.count != gpu.count ? Double.infinity
                : Double(zip(cpu, gpu).filter { $0.bitPattern != $1.bitPattern || $0.isNaN || $1.isNaN }.count)
            rows.append(Row(name: name, dtype: dt.rawValue, error: differing, limit: 0))
        }
        checkQuantized(cuda: cuda, rand: { shape, dt, scale in rand(shape, dt, scale: scale) }, check: check) { name, dt, err, limit in
            rows.append(Row(name: name, dtype: dt.rawValue, error: err, limit: limit))
        }
        checkBlockFormats(rand: { shape, dt, scale in rand(shape, dt, scale: scale) }, randomBytes: { n in
            (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        }, check: check, exact: exact)
        do {
            try checkModels(log: log) { name, dt, err, limit in
                rows.append(Row(name: name, dtype: dt, error: err, limit: limit ?? (dt == "fp32" || dt == "f32" ? 1e-5 : 1e-2)))
            }
        } catch {
            log("models: FAIL (\(error))")
            rows.append(Row(name: "models: \(error)", dtype: "-", error: .infinity, limit: 0))
        }
        return rows
    }

    /// The tiny random NewBie (written to a temporary folder) through each stage on the CPU and on
    /// the GPU: Gemma hidden states, the Jina pooled vector, DiT velocities, the latent after two
    /// guided midpoint steps (four DiT calls) and the decoded image; then mixed policies.
    func checkModels(log: (String) -> Void, report: (String, String, Double, Double?) -> Void) throws {
        guard let toks = TinyModel.defaultTokenizers() else {
            log("models: SKIP (the tokenizers in Tests/Fixtures were not found; run from the repository root)")
            return
        }
        let dir = NSTemporaryDirectory() + "newbie-gpu-check-\(getpid())"
        try TinyModel.write(to: dir, seed: seed, gemmaTokenizer: toks.gemma, jinaTokenizer: toks.jina)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let paths = try ModelPaths.resolve(root: dir)
        let settings = SamplingSettings(width: 64, height: 48, steps: 3, sampler: .midpoint, shift: 6,
                                        cfg: CFGOptions(scale: 4.5, renorm: 0), seed: seed, rng: .torch)
        let prompt = "<character_1><n>girl</n><hair>silver</hair></character_1> a quiet street at dusk"
        let system = "You are an assistant designed to generate anime images."
        func err(_ a: Tensor, _ b: Tensor) -> Double {
            a.shape == b.shape ? Numerics.relativeL2(a.to(device: .cpu).toFloats(), b.to(device: .cpu).toFloats()) : .infinity
        }
        let noise = settings.noise(channels: 16)
        // The conditioning every DiT check uses: the fp32 CPU encoding, so DiT rows see one input.
        let truthText = try TextStage(paths: paths, options: StageOptions(dtype: .f32, device: .cpu))
            .encode(prompt: prompt, negativePrompt: "blurry", systemPrompt: system)
        let truthDiT = try DenoiseStage(paths: paths, options: StageOptions(dtype: .f32, device: .cpu))
        let guided = CFGOptions(scale: 4.5, renorm: 0), plain = CFGOptions(scale: 1, renorm: 0)
        let truthGuided = try truthDiT.dit.guidedVelocity(noise, t: 0.3, cond: truthText.cond, uncond: truthText.uncond, options: guided)

        for dt in [DType.f32, .bf16] {
            let cpu = StageOptions(dtype: dt, device: .cpu), gpu = StageOptions(dtype: dt, device: .cuda(0))
            let name = dt == .f32 ? "fp32" : "bf16"
            // each model gets the same inputs on both devices: the text encoders the prompt, the DiT
            // the CPU's conditioning and noise, the VAE the CPU's latent
            let ce = try TextStage(paths: paths, options: cpu).encode(prompt: prompt, negativePrompt: "blurry", systemPrompt: system)
            let ge = try TextStage(paths: paths, options: gpu).encode(prompt: prompt, negativePrompt: "blurry", systemPrompt: system)
            report("model gemma hidden (cond)", name, err(ge.cond.capFeats, ce.cond.capFeats), nil)
            report("model gemma hidden (uncond)", name, err(ge.uncond.capFeats, ce.uncond.capFeats), nil)
            if let g = ge.cond.clipPooled, let c = ce.cond.clipPooled { report("model jina pooled", name, err(g, c), nil) }
            let cd = try DenoiseStage(paths: paths, options: cpu), gd = try DenoiseStage(paths: paths, options: gpu)
            gd.dit.useRecordedSteps = false
            // one DiT call per branch, unguided: both devices' roundings at the model's own size
            for (branch, c) in [("cond", ce.cond), ("uncond", ce.uncond)] {
                let cv = try cd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
                let gv = try gd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
                report("model dit velocity (\(branch))", name, err(gv, cv), nil)
            }
            let cv = try cd.dit.guidedVelocity(noise, t: 0.3, cond: ce.cond, uncond: ce.uncond, options: guided)
            let gv = try gd.dit.guidedVelocity(noise, t: 0.3, cond: ce.cond, uncond: ce.uncond, options: guided)
            if dt == .f32 {
                report("model dit guided velocity", name, err(gv, cv), nil)
            } else {
                // Guidance scales the cond-uncond difference by 4.5, and with it each device's
                // rounding of either branch, so GPU-vs-CPU error here is several times the
                // per-branch error. Both are held against the fp32 velocity instead: the GPU's
                // bf16 must be as close to it as the CPU's bf16 (within 1.5x).
                let (ec, eg) = (err(cv, truthGuided), err(gv, truthGuided))
                log(String(format: "models: bf16 guided velocity: GPU vs CPU %.2e; vs fp32: CPU %.2e, GPU %.2e", err(gv, cv), ec, eg))
                report("model dit guided vs fp32 (GPU/CPU)", name, eg / ec, 1.5)
            }
            // a short sampling run: on the GPU the second and later guided steps are CUDA graph
            // replays, which must give what eager steps give, bit for bit
            let cl = try cd.run(ce, settings: settings, noise: noise)
            let eager = try gd.run(ce, settings: settings, noise: noise)
            gd.dit.useRecordedSteps = true
            let gl = try gd.run(ce, settings: settings, noise: noise)
            report("model dit 2 midpoint steps: graphs vs eager", name, err(gl, eager), 0)
            if gd.dit.recordedReplays < 2 {
                log("models: FAIL (the GPU sampling run replayed \(gd.dit.recordedReplays) recorded steps)")
                report("dit graph replays", name, .infinity, nil)
            }
            if dt == .f32 {
                report("model dit 2 midpoint steps (graphs)", name, err(gl, cl), nil)
            } else {
                // In bf16 the two devices' roundings compound over steps and guidance, so both
                // latents are held against the fp32 run from the same conditioning: the GPU's
                // must be as close to it as the CPU's (within 1.5x).
                let truth = try truthDiT.run(ce, settings: settings, noise: noise)
                let (ec, eg) = (err(cl, truth), err(gl, truth))
                log(String(format: "models: bf16 latent after 2 midpoint steps (4 guided calls, %d graph replays): GPU vs CPU %.2e; vs fp32: CPU %.2e, GPU %.2e",
                           gd.dit.recordedReplays, err(gl, cl), ec, eg))
                report("model dit 2 midpoint steps vs fp32 (GPU/CPU)", name, eg / ec, 1.5)
            }
            let latent = cl.to(dt)
            let ci = try DecodeStage(paths: paths, options: cpu).vae.decode(latent)
            let gi = try DecodeStage(paths: paths, options: gpu).vae.decode(latent)
            if dt == .f32 {
                report("model vae decode", name, err(gi, ci), nil)
            } else {
                // Through the decoder's ~20 bf16 layers the two devices' roundings part by about the
                // bf16 noise of the model itself, so here both are held against the fp32 decode of the
                // same latent: the GPU's bf16 must be as close to it as the CPU's bf16 (within 1.5x).
                let truth = try DecodeStage(paths: paths, options: StageOptions(dtype: .f32, device: .cpu)).vae.decode(latent.to(.f32))
                let (ec, eg) = (err(ci, truth), err(gi, truth))
                log(String(format: "models: bf16 VAE decode: GPU vs CPU %.2e; vs the fp32 decode: CPU %.2e, GPU %.2e", err(gi, ci), ec, eg))
                report("model vae decode vs fp32 (GPU/CPU error)", name, eg / ec, 1.5)
            }
        }

        // Mixed policies: the seed's recipes, same spec on both devices.
        let latent = try truthDiT.run(truthText, settings: settings, noise: noise)
        for spec in ["bf16,vae=fp32", "fp16,dit.layers.*.attention=fp32,dit.final_layer=fp32", "fp16,vae.decoder.conv_out=fp32,vae.decoder.mid_block=fp32"] {
            let cpu = StageOptions(placement: try PlacementPolicy.parse(precision: spec, device: "cpu"))
            let gpu = StageOptions(placement: try PlacementPolicy.parse(precision: spec, device: "cuda"))
            let cd = try DenoiseStage(paths: paths, options: cpu), gd = try DenoiseStage(paths: paths, options: gpu)
            gd.dit.useRecordedSteps = false
            let c = truthText.cond
            let cv = try cd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
            let gv = try gd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
            report("mixed dit velocity", spec, err(gv, cv), 1e-2)
            let vaeDType = cpu.placement.precision(.vae).base
            let ci = try DecodeStage(paths: paths, options: cpu).vae.decode(latent.to(vaeDType))
            let gi = try DecodeStage(paths: paths, options: gpu).vae.decode(latent.to(vaeDType))
            report("mixed vae decode", spec, err(gi, ci), vaeDType == .f32 ? 1e-5 : 1e-2)
        }
        // fp8 DiT (per-channel weight scales, per-token activation scales; on the GPU the fused
        // producers feed the FP8 GEMM, on the CPU the emulation): bf16 compute on both; the GPU's
        // velocity must be as close to the fp32 one as the CPU's (within 1.5x)
        do {
            let cpu = StageOptions(placement: try PlacementPolicy.parse(precision: "bf16", device: "cpu", quantize: "dit=fp8"))
            let gpu = StageOptions(placement: try PlacementPolicy.parse(precision: "bf16", device: "cuda", quantize: "dit=fp8"))
            let cd = try DenoiseStage(paths: paths, options: cpu), gd = try DenoiseStage(paths: paths, options: gpu)
            gd.dit.useRecordedSteps = false
            let c = truthText.cond
            let truth = try truthDiT.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
            let cv = try cd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
            let gv = try gd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
            let (ec, eg) = (err(cv, truth), err(gv, truth))
            log(String(format: "models: fp8 DiT velocity: GPU vs CPU emulation %.2e; vs fp32: CPU %.2e, GPU %.2e", err(gv, cv), ec, eg))
            report("fp8 dit velocity vs fp32 (GPU/CPU error)", "bf16+dit=fp8", eg / ec, 1.5)
        }
        try checkOffload(paths: paths, text: truthText, noise: noise, settings: settings, log: log, report: report)
        try checkStepCache(paths: paths, text: truthText, noise: noise, settings: settings, log: log, report: report)
    }
}
