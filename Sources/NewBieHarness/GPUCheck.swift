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
            for warps in ["w4", "w8"] where dt != .f32 {
                cuda.flashVariant = warps
                // the flash kernel (head dims 64/96/128) against the CPU, past one 64-row tile and one 64-key tile
                let q2 = rand([2, 150, 6, 96], dt), k2 = rand([2, 200, 2, 96], dt), v2 = rand([2, 200, 2, 96], dt)
                let m2 = Tensor((0..<400).map { Float(($0 % 200) < ($0 < 200 ? 200 : 77) ? 1 : 0) }, shape: [2, 200])
                let b2 = rand([2, 1, 150, 200])
                check("flash \(warps) d96 gqa mask", dt) { d in g(q2, d).attention(k: g(k2, d), v: g(v2, d), options: AttentionOptions(keyPaddingMask: g(m2, d))) }
                check("flash \(warps) d96 bias", dt) { d in g(q2, d).attention(k: g(k2, d), v: g(v2, d), options: AttentionOptions(bias: g(b2, d))) }
                check("flash \(warps) d96 causal win", dt) { d in g(q2, d).attention(k: g(k2, d), v: g(v2, d), options: AttentionOptions(causal: true, slidingWindow: 70)) }
                for hd in [64, 128] {
                    let q3 = rand([1, 130, 4, hd], dt), k3 = rand([1, 97, 4, hd], dt), v3 = rand([1, 97, 4, hd], dt)
                    check("flash \(warps) d\(hd)", dt) { d in g(q3, d).attention(k: g(k3, d), v: g(v3, d)) }
                }
                let q4 = rand([1, 1, 8, 96], dt), k4 = rand([1, 300, 8, 96], dt), v4 = rand([1, 300, 8, 96], dt)
                check("flash \(warps) Lq=1", dt) { d in g(q4, d).attention(k: g(k4, d), v: g(v4, d)) }
            }
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
            cuda.flashVariant = "w4"
            let table = rand([50, 24], dt)
            let ids = Tensor(ints: [3, 0, 49, 7, 7, 12], shape: [2, 3])
            check("embedding", dt) { d in g(table, d).embedding(g(ids, d)) }
            let cw = rand([16, 64, 3, 3], dt, scale: 0.1), cb = rand([16], dt)
            check("conv 3x3 pad 1", dt) { d in g(img, d).conv2d(g(cw, d), bias: g(cb, d), options: Conv2dOptions(stride: 1, padding: 1)) }
            let pw = rand([16, 64, 1, 1], dt, scale: 0.1)
            check("conv 1x1", dt) { d in g(img, d).conv2d(g(pw, d), bias: nil) }
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

        // fast paths of the fused ops (rows of whole 16-byte vectors) beside the generic ones above
        for dt in [DType.bf16, .f16] {
            let g = { (t: Tensor, d: Device) in t.to(device: d) }
            let xs = rand([2, 37, 136], dt), ys = rand([2, 37, 136], dt), sc = rand([2, 136], dt), nw = rand([136], dt)
            check("fast rmsNorm+modulate", dt) { d in g(xs, d).rmsNormModulate(weight: g(nw, d), eps: 1e-5, scale: g(sc, d)) }
            check("fast rmsNorm (no scale)", dt) { d in g(xs, d).rmsNormModulate(weight: g(nw, d), eps: 1e-5, scale: nil) }
            check("fast rmsNorm+gate+residual", dt) { d in g(xs, d).rmsNormGatedResidual(g(ys, d), weight: g(nw, d), eps: 1e-5, gate: g(sc, d)) }
            check("fast rmsNorm+residual", dt) { d in g(xs, d).rmsNormGatedResidual(g(ys, d), weight: g(nw, d), eps: 1e-5, gate: nil) }
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
        checkQuantized(cuda: cuda, rand: { shape, dt, scale in rand(shape, dt, scale: scale) }, check: check)
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
        try checkOffload(paths: paths, text: truthText, noise: noise, settings: settings, log: log, report: report)
    }
}
