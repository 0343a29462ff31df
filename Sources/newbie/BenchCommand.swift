import ArgumentParser
import Foundation
import NewBieCUDA
import NewBieDiffusion
import NewBieHarness
import NewBiePipeline
import NewBieTensor
import NewBieWeights
#if canImport(Glibc)
import Glibc
#endif

/// `newbie bench`: CPU backend throughput at the sizes the models use, each beside the raw BLAS
/// GEMM rate measured in the same run (the machine's practical ceiling).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark the CPU backend (GEMM, linear, attention, conv) against the raw BLAS GEMM rate.")

    @Option(help: "Comma-separated benchmarks: gemm, linear, attention, conv, unary.")
    var only: String = "gemm,linear,attention,conv,unary"

    @Option(help: "Timed repetitions per benchmark (the median is reported).")
    var repeats: Int = 5

    @Option(help: "Tokens for the attention benchmark (NewBie 1024x1024: 4096 image + 256 caption).")
    var tokens: Int = 4352

    @Flag(help: "Small sizes, for a quick smoke run.")
    var quick = false

    @Option(help: "cpu or cuda.")
    var device: String = "cpu"

    @Flag(help: "With --device cuda: time the full-size NewBie DiT forward (random weights) instead of single ops.")
    var dit = false

    @Option(help: "With --dit or --vae: image side in pixels (latent side = size / 8); --width/--height override it.")
    var size: Int = 1024

    @Option(help: "With --dit: image width in pixels (default --size; a multiple of 16).")
    var width: Int?

    @Option(help: "With --dit: image height in pixels (default --size; a multiple of 16).")
    var height: Int?

    @Option(help: "With --dit: several image sizes timed with one model, comma-separated WIDTHxHEIGHT in pixels (e.g. 512x512,1024x1024,1024x1536); replaces --width/--height.")
    var shapes: String?

    @Option(name: .customLong("step-cache-runs"), help: "With --dit: after the forward and step timings, sample --sample-steps guided Euler steps at the (first) shape once per entry of this list, in this process: eager, graphs (uncached), teacache[:X], fbcache[:X]. The first entry is the baseline for times and latents; threshold 0 checks but never skips (must equal eager exactly), a huge one skips every call after the first (the speed of a hit).")
    var stepCacheRuns: String?

    @Option(name: .customLong("sample-steps"), help: "With --step-cache-runs: Euler steps (guided DiT calls) per run.")
    var sampleSteps: Int = 28

    @Option(help: "With --dit: caption tokens per sample.")
    var cap: Int = 256

    @Option(help: "With --dit: compute dtype (bf16, fp16, fp32).")
    var dtype: String = "bf16"

    @Option(help: "With --dit: quantize the DiT's linear layers at load: int8, int8-g128, fp8, or a GGUF block type q8_0, q6_k, q5_k, q5_0, q4_k, q4_0 (the layers `--quantize dit=TYPE` quantizes); default none.")
    var quantize: String?

    @Flag(help: "With --dit: stream the DiT's blocks from pinned host memory (--offload), to time the step against resident weights.")
    var offload = false

    @Option(help: "With --device cuda: time the VAE decoder of this model (folder or file) at --size x --size instead of single ops.")
    var vae: String?

    @Flag(help: "With --dit --dtype fp32: TF32 tensor-core GEMMs (PyTorch's allow_tf32) instead of strict fp32.")
    var tf32 = false

    @Option(name: .customLong("flash"), help: "With --device cuda: flash-attention kernel for --dit and --vae: auto (wgmma on Hopper, mma.sync elsewhere), mma (= w4) or w8.")
    var flash = DeviceOptions.env["NEWBIE_FLASH"] ?? "auto"

    /// The GPU with the chosen flash kernel (`--flash`, checked before the device opens).
    func openCUDA() throws -> CUDABackend {
        guard CUDAOptions.flashVariants.contains(flash) else {
            throw ValidationError("--flash \(flash) (or NEWBIE_FLASH): use \(CUDAOptions.flashVariants.joined(separator: ", "))")
        }
        return try DeviceSupport.openCUDA(0, cuda: CUDAOptions(flashVariant: flash))
    }

    func run() throws {
        if device != "cpu" { return try runCUDA() }
        let which = Set(only.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        guard let blas = BLAS.shared else { throw PipelineError(BLAS.loadError) }
        print("CPU backend benchmark: \(ProcessInfo.processInfo.activeProcessorCount) cores, BLAS \(blas.libraryPath) (\(blas.threads) threads)")
        print(pad("work", 52) + pad("median", 12, left: true) + pad("GFLOP/s", 10, left: true) + pad("of BLAS", 9, left: true))

        let (m, n, k) = quick ? (512, 512, 512) : (4096, 2304, 2304)
        // Raw BLAS GEMM on plain arrays: the ceiling every other row is compared with.
        var ceiling = 0.0
        do {
            var a = [Float](repeating: 0, count: m * k), b = [Float](repeating: 0, count: n * k), c = [Float](repeating: 0, count: m * n)
            var rng = SplitMix(seed: 1)
            for i in a.indices { a[i] = rng.uniform() }
            for i in b.indices { b[i] = rng.uniform() }
            let t = median(repeats) {
                a.withUnsafeBufferPointer { ap in b.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                    blas.sgemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: ap.baseAddress!, lda: k,
                               b: bp.baseAddress!, ldb: k, beta: 0, c: cp.baseAddress!, ldc: n)
                } } }
            }
            ceiling = 2.0 * Double(m * n * k) / t / 1e9
            report("raw sgemm \(m)x\(n)x\(k) (ceiling)", t, ceiling, ceiling)
        }

        if which.contains("linear") {
            let x = randomTensor([m, k], seed: 2)
            for wdt in [DType.f32, .bf16] {
                let w = randomTensor([n, k], seed: 3, dtype: wdt), bias = randomTensor([n], seed: 4)
                let t = median(repeats) { _ = x.linear(w, bias: bias) }
                report("linear \(m)x\(k) -> \(n), \(wdt) weight, f32 act", t, 2.0 * Double(m * n * k) / t / 1e9, ceiling)
            }
            let xb = x.to(.bf16), wb = randomTensor([n, k], seed: 3, dtype: .bf16)
            let t = median(repeats) { _ = xb.linear(wb) }
            report("linear \(m)x\(k) -> \(n), bf16 weight+act", t, 2.0 * Double(m * n * k) / t / 1e9, ceiling)
        }

        if which.contains("attention") {
            let heads = 24, kvHeads = 8, d = 96
            let l = quick ? 512 : tokens
            let q = randomTensor([1, l, heads, d], seed: 5)
            let kk = randomTensor([1, l, kvHeads, d], seed: 6), v = randomTensor([1, l, kvHeads, d], seed: 7)
            let backend = CPUBackend.shared
            let outputBytes = l * heads * d * 4
            let before = backend.memoryStats.currentBytes
            backend.resetPeakMemory()
            let rssBefore = PipelineBench.peakRSS()
            let t = median(Swift.max(1, repeats / 2)) { _ = q.attention(k: kk, v: v) }
            let peakExtra = backend.memoryStats.peakBytes - before - outputBytes
            let flops = 4.0 * Double(l) * Double(l) * Double(d) * Double(heads)
            report("attention 1x\(heads)h(\(kvHeads)kv)x\(d), L=\(l), f32", t, flops / t / 1e9, ceiling)
            let lxl = l * l * 4
            print("  attention working memory: peak \(formatBytes(peakExtra)) above inputs and output (one LxL f32 score matrix per head would be \(formatBytes(lxl)), all heads \(formatBytes(lxl * heads))); process peak RSS \(formatBytes(rssBefore)) -> \(formatBytes(PipelineBench.peakRSS()))")
        }

        if which.contains("unary") {
            // activations over a DiT/Jina-sized hidden tensor: nanoseconds per element
            let x = randomTensor(quick ? [64, 1024] : [4096, 9216], seed: 14, scale: 4)
            for (name, op) in [("affine (baseline: memory)", UnaryOp.affine(2, 1)), ("silu", .silu), ("gelu tanh", .geluTanh), ("gelu erf", .geluErf)] {
                let t = median(repeats) { _ = x.apply(op) }
                print(pad("unary \(name) over \(x.shape), f32", 52) + pad(String(format: "%.1f ms", t * 1000), 12, left: true)
                      + pad(String(format: "%.2f ns/element", t * 1e9 / Double(x.count)), 20, left: true))
            }
        }

        if which.contains("conv") {
            let cases: [(Int, Int, Int, Int)] = quick ? [(64, 64, 32, 3)] : [(512, 512, 64, 3), (256, 256, 256, 3), (128, 128, 256, 3), (512, 256, 256, 1)]
            for (cin, cout, hw, ks) in cases {
                let x = randomTensor([1, cin, hw, hw], seed: 8)
                let w = randomTensor([cout, cin, ks, ks], seed: 9, scale: 0.05), b = randomTensor([cout], seed: 10)
                let opts = Conv2dOptions(stride: 1, padding: ks / 2)
                let t = median(repeats) { _ = x.conv2d(w, bias: b, options: opts) }
                report("conv \(ks)x\(ks) \(cin)->\(cout) at \(hw)x\(hw), f32", t, 2.0 * Double(cin * cout * ks * ks * hw * hw) / t / 1e9, ceiling)
            }
        }
    }

    /// GPU: the DiT's GEMM shapes and attention at 1024x1024 (batch 2), timed with CUDA events.
    func runCUDA() throws {
        if dit { return try runCUDADiT() }
        if let v = vae { return try runCUDAVAE(v) }
        let cuda = try openCUDA()
        let dev = Device.cuda(0)
        print("CUDA benchmark on \(cuda.name) (sm_\(cuda.computeCapability)), median of \(repeats) runs")
        print(pad("work", 60) + pad("median", 12, left: true) + pad("TFLOP/s", 10, left: true))
        let tokens = 2 * 4352
        for dt in [DType.bf16, .f16, .f32] {
            // (in, out) of the DiT block's linears: qkv, out, w1/w3 (fused as one 2x9216 here: separate), w2
            for (k, n, label) in [(2304, 3840, "qkv"), (2304, 2304, "out"), (2304, 9216, "w1/w3"), (9216, 2304, "w2"), (1024, 9216, "adaLN")] {
                let m = label == "adaLN" ? 2 : tokens
                let x = randomTensor([m, k], seed: 1, dtype: dt).to(device: dev)
                let w = randomTensor([n, k], seed: 2, dtype: dt, scale: 0.02).to(device: dev)
                let ms = cuda.time(runs: repeats) { _ = x.linear(w) }
                print(pad("linear \(label) \(m)x\(k) -> \(n) \(dt)", 60) + pad(String(format: "%.3f ms", ms), 12, left: true)
                      + pad(String(format: "%.1f", 2.0 * Double(m * n * k) / ms / 1e9), 10, left: true))
            }
            if dt == .f32 { continue }
            let q = randomTensor([2, 4352, 24, 96], seed: 3, dtype: dt).to(device: dev)
            let kk = randomTensor([2, 4352, 8, 96], seed: 4, dtype: dt).to(device: dev)
            let v = randomTensor([2, 4352, 8, 96], seed: 5, dtype: dt).to(device: dev)
            let chosen = cuda.flashVariant
            for w in ["auto", "w4", "w8"] {
                cuda.flashVariant = w
                let ms = cuda.time(runs: repeats) { _ = q.attention(k: kk, v: v) }
                let flops = 2 * 4.0 * 4352 * 4352 * 96 * 24
                let kernel = (cuda.lastFlashKernel ?? "?").replacingOccurrences(of: "nb_flash_", with: "")
                print(pad("attention 2x4352x24h(8kv)x96 \(dt), flash \(w) (\(kernel))", 60) + pad(String(format: "%.3f ms", ms), 12, left: true)
                      + pad(String(format: "%.1f", flops / ms / 1e9), 10, left: true))
            }
            cuda.flashVariant = chosen
        }
        print("device memory: \(cuda.memoryStats)")
    }

    /// The full-size DiT (3.49 B parameters, random weights) on the GPU: batch 2 (cond + uncond),
    /// `size` x `size` pixels, `cap` caption tokens, timed with CUDA events.
    func runCUDADiT() throws {
        let sizes = try ditShapes()
        let cacheVariants = try stepCacheRuns.map { try StepCacheBench.parse($0, flag: "--step-cache-runs") }
        guard sampleSteps >= 1 else { throw ValidationError("--sample-steps \(sampleSteps): at least 1") }
        let cuda = try openCUDA()
        guard let dt = DType(userName: dtype) else { throw ValidationError("unknown dtype \(dtype)") }
        cuda.allowTF32 = tf32
        let config = NextDiTConfig.newBieExp01
        let t0 = DispatchTime.now().uptimeNanoseconds
        var precision = ModulePrecision.uniform(dt)
        if let q = quantize {
            guard let scheme = QuantScheme(userName: q.lowercased()) else {
                throw ValidationError("--quantize \(q): use \(QuantScheme.userNames)")
            }
            precision.quantization = ModuleQuantization(rules: scheme == .none ? [] : [QuantRule(pattern: "", scheme: scheme)])
        }
        let tensor = try randomDiTWeights(config, seed: 7)
        let specs = try NextDiT.plan(config).requested
        let weights = try ModelWeights(source: ClosureWeightSource(specs: specs, tensor: tensor), expected: specs, naming: .identity())
        let model = try NextDiT(weights: weights, config: config, placement: ModelPlacement(name: "dit", device: .cuda(0), precision: precision,
                                                                                                  offload: offload))
        cuda.synchronize()
        let loadS = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        let weightsBytes = cuda.memoryStats.currentBytes
        for (index, (imageW, imageH)) in sizes.enumerated() {
            // the step cache runs at the first shape only (whole sampling runs are the long part)
            let cacheVariants = index == 0 ? cacheVariants : nil
            let (latH, latW) = (imageH / 8, imageW / 8)
            let x = randomTensor([2, 16, latH, latW], seed: 11).to(device: .cuda(0))
            let capFeats = randomTensor([2, cap, config.capFeatDim], seed: 12, dtype: dt).to(device: .cuda(0))
            let capMask = Tensor([Float](repeating: 1, count: 2 * cap), shape: [2, cap])
            let clip = randomTensor([2, config.clipTextDim ?? 1024], seed: 13).to(device: .cuda(0))
            cuda.resetPeakMemory()
            var failure: Error? = nil
            let ms = cuda.time(runs: repeats) {
                do { _ = try model.forward(x, t: [0.3, 0.3], capFeats: capFeats, capMask: capMask, clipPooled: clip) }
                catch { failure = error }
            }
            if let e = failure { throw e }
            cuda.profiling = true
            let out = try model.forward(x, t: [0.3, 0.3], capFeats: capFeats, capMask: capMask, clipPooled: clip).toFloats()
            cuda.profiling = false
            let prof = cuda.profileReport()
            let total = prof.reduce(0) { $0 + $1.ms }
            print("  one forward, device time by kernel (events around each launch; total \(String(format: "%.1f", total)) ms):")
            for p in prof.prefix(20) { print(String(format: "    %-28@ %8.2f ms %6d launches", p.name as NSString, p.ms, p.count)) }
            let finite = out.allSatisfy { $0.isFinite }
            let flops = config.forwardFLOPs(capLens: [cap, cap], capPadded: cap, rows: latH / 2, cols: latW / 2)
            let peak = cuda.memoryStats.peakBytes
            print("NewBie DiT on \(cuda.name): \(dt)\(tf32 ? " (TF32 GEMMs)" : "")\(quantize.map { ", DiT quantized \($0)" } ?? "")\(offload ? ", blocks streamed (--offload)" : ""), batch 2, \(imageW)x\(imageH) (\(latH / 2 * latW / 2) image tokens), \(cap) caption tokens, flash kernel \(cuda.lastFlashKernel ?? "none") (--flash \(flash))")
            print(String(format: "  forward: %.1f ms (median of %d), %.1f TFLOP/s; weights on device %@ (load %.1f s); peak during forward %@; output finite: %@",
                         ms, repeats, flops / ms / 1e9, formatBytes(weightsBytes), loadS, formatBytes(peak), finite ? "yes" : "NO"))

            // A sampler's guided step as the pipeline calls it (state on the CPU, cond + uncond batch,
            // CFG combination), eager and replayed as a CUDA graph; the two must agree exactly.
            let state = randomTensor([1, 16, latH, latW], seed: 14)
            let cond = DiTConditioning(capFeats: capFeats.narrow(0, start: 0, length: 1).contiguous(), capMask: capMask.narrow(0, start: 0, length: 1),
                                       clipPooled: clip.narrow(0, start: 0, length: 1).contiguous())
            let uncond = DiTConditioning(capFeats: capFeats.narrow(0, start: 1, length: 1).contiguous(), capMask: capMask.narrow(0, start: 1, length: 1),
                                         clipPooled: clip.narrow(0, start: 1, length: 1).contiguous())
            let cfg = CFGOptions(scale: 5, truncation: 100, renorm: 0)
            var results: [Bool: [Float]] = [:]
            var stepMs: [Bool: Double] = [:]
            for graphs in [false, true] {
                model.useRecordedSteps = graphs
                cuda.resetPeakMemory()
                for _ in 0..<2 { _ = try model.guidedVelocity(state, t: 0.3, cond: cond, uncond: uncond, options: cfg) }
                stepMs[graphs] = cuda.time(runs: repeats) {
                    do { _ = try model.guidedVelocity(state, t: 0.3, cond: cond, uncond: uncond, options: cfg) } catch { failure = error }
                }
                if let e = failure { throw e }
                results[graphs] = try model.guidedVelocity(state, t: 0.35, cond: cond, uncond: uncond, options: cfg).toFloats()
                print(String(format: "  guided step (batch 2 forward + CFG), %@: %.1f ms (median of %d); peak %@", graphs ? "CUDA graph replay" : "eager",
                             stepMs[graphs]!, repeats, formatBytes(cuda.memoryStats.peakBytes)))
            }
            let same = results[false]! == results[true]!
            print(String(format: "  CUDA graph / eager: %.3f; replays: %d; graph output identical to eager: %@",
                         stepMs[true]! / stepMs[false]!, model.recordedReplays, same ? "yes" : "NO"))

            if let variants = cacheVariants {
                // whole sampling runs: the step cache's check overhead and hit speed on this device
                var settings = SamplingSettings(width: imageW, height: imageH, steps: sampleSteps + 1, sampler: .euler, shift: 6,
                                                cfg: cfg, seed: 1, rng: .torch)
                settings.stepCache = nil
                print("  sampling \(sampleSteps) Euler steps (shift 6, CFG 5 on every step), one run per variant, same noise and conditioning:")
                let runs = try StepCacheBench.run(dit: model, cond: cond, uncond: uncond, settings: settings, variants: variants,
                                                  finish: { cuda.synchronize(); try Backends.check(.cuda(0)) }, log: { print($0) })
                print("  step cache runs: \(runs.count); any non-finite: \(runs.contains { !$0.finite } ? "YES" : "no"); peak \(formatBytes(cuda.memoryStats.peakBytes))")
            }
        }
    }

    /// The shapes `--dit` times: --shapes, else --width/--height (default --size), as (width, height).
    func ditShapes() throws -> [(Int, Int)] {
        var out: [(Int, Int)] = []
        if let list = shapes {
            guard width == nil && height == nil else { throw ValidationError("--shapes replaces --width/--height: give one or the other") }
            for item in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) where !item.isEmpty {
                let parts = item.split(separator: "x")
                guard parts.count == 2, let w = Int(parts[0]), let h = Int(parts[1]) else {
                    throw ValidationError("--shapes \(list): \"\(item)\" is not WIDTHxHEIGHT (e.g. 1024x1536)")
                }
                out.append((w, h))
            }
            guard !out.isEmpty else { throw ValidationError("--shapes \"\(list)\": give at least one WIDTHxHEIGHT") }
        } else {
            out = [(width ?? size, height ?? size)]
        }
        for (w, h) in out where w <= 0 || h <= 0 || w % 16 != 0 || h % 16 != 0 {
            throw ValidationError("\(w)x\(h) (--shapes, --width/--height or --size): width and height must be positive multiples of 16 (latent / 8, then 2 x 2 patches)")
        }
        return out
    }

    /// The VAE decoder on the GPU: one `size` x `size` image from a random latent, timed with CUDA
    /// events, then one decode profiled by kernel.
    func runCUDAVAE(_ path: String) throws {
        let cuda = try openCUDA()
        guard let dt = DType(userName: dtype) else { throw ValidationError("unknown dtype \(dtype)") }
        cuda.allowTF32 = tf32
        let model = try AutoencoderKL.load(path: path, dtype: dt, device: .cuda(0), parts: .decoder)
        let z = randomTensor([1, model.config.latentChannels, size / 8, size / 8], seed: 21).to(dt, device: .cuda(0))
        cuda.resetPeakMemory()
        let ms = cuda.time(runs: repeats) { _ = model.decode(z) }
        let peak = cuda.memoryStats.peakBytes
        cuda.profiling = true
        let img = model.decode(z).toFloats()
        cuda.profiling = false
        let prof = cuda.profileReport()
        let total = prof.reduce(0) { $0 + $1.ms }
        print("  one decode, device time by kernel (events around each launch; total \(String(format: "%.1f", total)) ms):")
        for p in prof.prefix(20) { print(String(format: "    %-28@ %8.2f ms %6d launches", p.name as NSString, p.ms, p.count)) }
        print(String(format: "VAE decode on %@: %@, %dx%d: %.1f ms (median of %d); peak %@; output finite: %@", cuda.name, dt.description, size, size,
                     ms, repeats, formatBytes(peak), img.allSatisfy { $0.isFinite } ? "yes" : "NO"))
    }

    func report(_ name: String, _ seconds: Double, _ gflops: Double, _ ceiling: Double) {
        print(pad(name, 52) + pad(String(format: "%.1f ms", seconds * 1000), 12, left: true)
              + pad(String(format: "%.1f", gflops), 10, left: true) + pad(String(format: "%.0f%%", 100 * gflops / ceiling), 9, left: true))
    }
}

func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
    s.count >= n ? s + " " : (left ? String(repeating: " ", count: n - s.count) + s : s + String(repeating: " ", count: n - s.count))
}

/// Median wall time of `runs` calls, after one warm-up call (shared by the bench commands).
func median(_ runs: Int, _ body: () -> Void) -> Double {
    body()
    var times: [Double] = []
    for _ in 0..<Swift.max(1, runs) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }
    times.sort()
    return times[times.count / 2]
}

func randomTensor(_ shape: [Int], seed: UInt64, dtype: DType = .f32, scale: Float = 1) -> Tensor {
    var rng = SplitMix(seed: seed)
    let n = shape.reduce(1, *)
    return Tensor((0..<n).map { _ in rng.uniform() * scale }, shape: shape, dtype: dtype)
}
