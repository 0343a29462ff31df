import Foundation
import NewBieDiffusion
import NewBiePipeline
import NewBieTensor

extension GPUCheck {
    /// `--offload` rows: the tiny model's DiT and Gemma with their blocks streamed from pinned host
    /// memory (copy stream, events, a ring of 3 slots) against the same models resident on the GPU.
    /// Same kernels on the same values, so the outputs must be identical (limit 0): a block used
    /// before its copy landed, or overwritten while read, shows up as a difference.
    func checkOffload(paths: ModelPaths, text: EncodedPrompt, noise: Tensor, settings: SamplingSettings,
                      log: (String) -> Void, report: (String, String, Double, Double?) -> Void) throws {
        let bitsDiffer = GPUCheck.bitsDiffer
        let plain = CFGOptions(scale: 1, renorm: 0)
        for (precision, quantize) in [("bf16", ""), ("fp16", ""), ("bf16", "dit=int8,gemma=int8"), ("bf16", "dit=int8-g128"), ("bf16", "dit=fp8")] {
            let name = precision + (quantize.isEmpty ? "" : "+" + quantize)
            let resident = StageOptions(placement: try PlacementPolicy.parse(precision: precision, device: "cuda", quantize: quantize))
            let streamed = StageOptions(placement: try PlacementPolicy.parse(precision: precision, device: "cuda", quantize: quantize, offload: true))
            let rd = try DenoiseStage(paths: paths, options: resident), sd = try DenoiseStage(paths: paths, options: streamed)
            guard let ring = sd.dit.streamedBlocks else {
                report("offload: the DiT did not stream", name, .infinity, 0)
                continue
            }
            let c = text.cond
            let rv = try rd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
            let sv = try sd.dit.guidedVelocity(noise, t: 0.3, cond: c, uncond: c, options: plain)
            report("offload dit velocity: elements differing from resident", name, bitsDiffer(sv, rv), 0)
            // a sampling run: blocks prefetched across forward passes and guided batches
            let rl = try rd.run(text, settings: settings, noise: noise)
            let sl = try sd.run(text, settings: settings, noise: noise)
            report("offload dit 2 midpoint steps: elements differing from resident", name, bitsDiffer(sl, rl), 0)
            log("offload \(name): \(ring.groupCount) DiT blocks, ring \(formatBytes(ring.deviceBytes)) on the GPU, \(formatBytes(ring.hostBytes)) pinned, \(ring.copies) block copies")
            if quantize.contains("gemma") || quantize.isEmpty {
                let rt = try TextStage(paths: paths, options: resident).encode(prompt: "a quiet street", negativePrompt: "blurry", systemPrompt: "")
                let stage = try TextStage(paths: paths, options: streamed)
                if stage.gemma.streamedLayers == nil { report("offload: Gemma did not stream", name, .infinity, 0) }
                let st = try stage.encode(prompt: "a quiet street", negativePrompt: "blurry", systemPrompt: "")
                report("offload gemma hidden: elements differing from resident", name, bitsDiffer(st.cond.capFeats, rt.cond.capFeats), 0)
            }
        }
    }
}
