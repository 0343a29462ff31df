import ArgumentParser
import Foundation
import NewBieDiffusion
import NewBieHarness
import NewBiePipeline
import NewBieTensor

/// `newbie bench-dit`: one NextDiT forward pass of a configurable (by default mid-size) model with
/// random weights on the CPU, reported as achieved GFLOP/s beside the raw BLAS sgemm rate measured
/// in the same run (the machine's practical ceiling).
struct BenchDiTCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-dit",
        abstract: "Benchmark one NextDiT forward pass (random weights) against the raw BLAS GEMM rate.")

    @Option(help: "Hidden size.") var dim: Int = 1152
    @Option(help: "Query heads.") var heads: Int = 12
    @Option(help: "Key/value heads.") var kvHeads: Int = 4
    @Option(help: "Main layers.") var layers: Int = 6
    @Option(help: "Noise-refiner and context-refiner blocks (each).") var refiners: Int = 1
    @Option(help: "Latent height and width (pixels / 8).") var latent: Int = 64
    @Option(help: "Caption tokens.") var caption: Int = 128
    @Option(help: "Batch size.") var batch: Int = 1
    @Option(help: "Compute dtype: fp32, bf16, fp16.") var dtype: String = "fp32"
    @Option(help: "Timed forward passes (the median is reported).") var repeats: Int = 3

    func run() throws {
        guard let dt = DType(userName: dtype), [.f32, .bf16, .f16].contains(dt) else { throw ValidationError("dtype must be fp32, bf16 or fp16") }
        guard let blas = BLAS.shared else { throw PipelineError(BLAS.loadError) }
        guard dim % heads == 0, heads % kvHeads == 0, (dim / heads) % 6 == 0 else {
            throw ValidationError("need dim % heads == 0, heads % kv-heads == 0 and head_dim a multiple of 6 (three even RoPE axes)")
        }
        var cfg = NextDiTConfig()
        cfg.dim = dim; cfg.nHeads = heads; cfg.nKVHeads = kvHeads; cfg.nLayers = layers
        cfg.nNoiseRefiner = refiners; cfg.nContextRefiner = refiners
        cfg.ffnHidden = 4 * dim; cfg.adaLNDim = min(dim, 1024)
        let hd = dim / heads
        cfg.axesDims = [hd / 3, hd / 3, hd / 3]
        let params = cfg.parameterCount
        print("NextDiT forward benchmark: \(ProcessInfo.processInfo.activeProcessorCount) cores, BLAS \(blas.libraryPath) (\(blas.threads) threads)")
        print("  \(cfg)")
        print("  \(String(format: "%.1f", Double(params) / 1e6))M parameters, \(dt) compute, batch \(batch), latent 16x\(latent)x\(latent) (\(latent / 2 * latent / 2) image tokens), caption \(caption) tokens")

        // the ceiling: raw sgemm at a DiT-like size, measured before and after the forward passes
        // (the machines are shared: the two readings show how much the load moved meanwhile)
        let (m, n, k) = (4096, 2304, 2304)
        var rng = SplitMix(seed: 1)
        let a = (0..<(m * k)).map { _ in rng.uniform() }, bm = (0..<(n * k)).map { _ in rng.uniform() }
        var c = [Float](repeating: 0, count: m * n)
        func sgemmRate() -> Double {
            let tg = median(3) {
                a.withUnsafeBufferPointer { ap in bm.withUnsafeBufferPointer { bp in c.withUnsafeMutableBufferPointer { cp in
                    blas.sgemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: ap.baseAddress!, lda: k,
                               b: bp.baseAddress!, ldb: k, beta: 0, c: cp.baseAddress!, ldc: n)
                } } }
            }
            return 2.0 * Double(m * n * k) / tg / 1e9
        }
        let before = sgemmRate()
        print(String(format: "  raw sgemm %dx%dx%d before: %.1f GFLOP/s", m, n, k, before))

        // random weights (norm weights around 1, linear weights ~ 1/sqrt(fan_in))
        let model = try NextDiT(config: cfg, dtype: dt, tensor: try randomDiTWeights(cfg, seed: 2))
        var ir = SplitMix(seed: 3)
        let x = Tensor((0..<(batch * 16 * latent * latent)).map { _ in ir.uniform() }, shape: [batch, 16, latent, latent])
        let cap = Tensor((0..<(batch * caption * cfg.capFeatDim)).map { _ in ir.uniform() }, shape: [batch, caption, cfg.capFeatDim])
        let mask = Tensor([Float](repeating: 1, count: batch * caption), shape: [batch, caption])
        let clip = Tensor((0..<(batch * cfg.clipTextDim!)).map { _ in ir.uniform() }, shape: [batch, cfg.clipTextDim!])
        let t = [Float](repeating: 0.5, count: batch)

        let flops = cfg.forwardFLOPs(capLens: [Int](repeating: caption, count: batch), capPadded: caption,
                                     rows: latent / 2, cols: latent / 2)
        var out: Tensor? = nil
        _ = try model.forward(x, t: t, capFeats: cap, capMask: mask, clipPooled: clip)  // warm-up
        var failure: Error? = nil
        let tf = median(repeats) {
            do { out = try model.forward(x, t: t, capFeats: cap, capMask: mask, clipPooled: clip) } catch { failure = error }
        }
        if let e = failure { throw e }
        let finite = out!.toFloats().allSatisfy { $0.isFinite }
        let rate = flops / tf / 1e9
        let after = sgemmRate()
        let ceiling = (before + after) / 2
        print(String(format: "  raw sgemm %dx%dx%d after: %.1f GFLOP/s; ceiling (mean) %.1f GFLOP/s", m, n, k, after, ceiling))
        print(String(format: "  forward: %.3f s (median of %d), %.1f GFLOP, %.1f GFLOP/s = %.0f%% of the sgemm ceiling%@",
                     tf, repeats, flops / 1e9, rate, 100 * rate / ceiling, finite ? "" : " (NON-FINITE OUTPUT)"))
    }
}

/// Random weights for a NextDiT, by internal name: norm weights around 1, linear weights uniform
/// with scale 1/sqrt(fan_in), other vectors (biases) small. Shared by both DiT benchmarks.
func randomDiTWeights(_ cfg: NextDiTConfig, seed: UInt64) throws -> (String) throws -> Tensor {
    var rng = SplitMix(seed: seed)
    let shapes = Dictionary(uniqueKeysWithValues: try cfg.expectedTensors().map { ($0.name, $0.shape) })
    return { name in
        guard let s = shapes[name] else { throw PipelineError("no tensor \(name) in this NextDiT") }
        let isNorm = s.count == 1 && !name.hasSuffix(".bias")
        let scale: Float = s.count == 2 ? 1 / Float(s[1]).squareRoot() : 0.1
        return Tensor((0..<s.reduce(1, *)).map { _ in isNorm ? 1 + 0.1 * rng.uniform() : scale * rng.uniform() }, shape: s)
    }
}
