import Foundation
import NewBieDiffusion
import NewBiePipeline
import NewBieTensor

extension GPUCheck {
    /// Step cache rows: the tiny model's DiT on the GPU (fp32, eager: the cache turns recorded
    /// steps off) sampling with each cache mode. Threshold 0 checks every call and skips none, so
    /// the latent must equal the uncached GPU run's bit for bit; a huge threshold skips every call
    /// after the first on both devices, so the GPU must make the CPU's decisions and land as close
    /// to the CPU's latent as fp32 roundings allow.
    func checkStepCache(paths: ModelPaths, text: EncodedPrompt, noise: Tensor, settings: SamplingSettings,
                        log: (String) -> Void, report: (String, String, Double, Double?) -> Void) throws {
        let bitsDiffer = GPUCheck.bitsDiffer
        func err(_ a: Tensor, _ b: Tensor) -> Double {
            a.shape == b.shape ? Numerics.relativeL2(a.to(device: .cpu).toFloats(), b.to(device: .cpu).toFloats()) : .infinity
        }
        let cd = try DenoiseStage(paths: paths, options: StageOptions(dtype: .f32, device: .cpu))
        let gd = try DenoiseStage(paths: paths, options: StageOptions(dtype: .f32, device: .cuda(0)))
        gd.dit.useRecordedSteps = false
        let uncachedGPU = try gd.run(text, settings: settings, noise: noise)
        let uncachedCPU = try cd.run(text, settings: settings, noise: noise)
        for mode in StepCacheMode.allCases {
            var checking = settings
            checking.stepCache = try StepCacheOptions(mode: mode, threshold: 0)
            let zero = try gd.run(text, settings: checking, noise: noise)
            report("step cache threshold 0: elements differing from uncached", mode.rawValue, bitsDiffer(zero, uncachedGPU), 0)
            report("step cache threshold 0: calls skipped", mode.rawValue, Double(gd.stepCacheStats?.skipped ?? -1), 0)

            var skipping = settings
            skipping.stepCache = try StepCacheOptions(mode: mode, threshold: 1e9)
            let gl = try gd.run(text, settings: skipping, noise: noise)
            let cl = try cd.run(text, settings: skipping, noise: noise)
            let g = gd.stepCacheStats, c = cd.stepCacheStats
            // the same decisions on both devices, and at least one skip (else the row proves nothing)
            let decisions: Double = (g == nil || g != c || (g?.skipped ?? 0) == 0) ? .infinity : 0
            report("step cache huge threshold: GPU decisions differ from CPU", mode.rawValue, decisions, 0)
            report("step cache huge threshold: latent GPU vs CPU", mode.rawValue, err(gl, cl), 1e-3)
            log(String(format: "step cache %@: GPU skipped %d of %d calls (CPU %d of %d); latent GPU vs CPU %.2e (uncached %.2e); cached vs uncached on the GPU %.2e",
                       mode.rawValue, g?.skipped ?? -1, (g?.computed ?? 0) + (g?.skipped ?? 0), c?.skipped ?? -1, (c?.computed ?? 0) + (c?.skipped ?? 0),
                       err(gl, cl), err(uncachedGPU, uncachedCPU), err(gl, uncachedGPU)))
        }
    }
}
