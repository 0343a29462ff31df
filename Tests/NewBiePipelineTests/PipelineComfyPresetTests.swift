import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBieImage
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// `--preset comfyui` on the tiny model against the run ComfyUI's template makes, built from
/// ComfyUI's own sampling code (tools/reference/make_comfy_pipeline_fixtures.py): the text both
/// encoders see, the res_multistep / simple trajectory with guidance on the denoised latents, the
/// latent, and SaveImage's truncated 8-bit pixels.
final class PipelineComfyPresetTests: XCTestCase {
    func testComfyPresetMatchesComfyUIsSampling() throws {
        let ref = try SafeTensorsFile(path: Fixtures.path("pipeline/comfy_reference.safetensors"))
        let md = ref.metadata
        let dir = TestScratch.path("newbie-tiny-comfy-\(getpid())")
        try? FileManager.default.removeItem(atPath: dir)
        try TinyModel.write(to: dir, seed: UInt64(md["tiny_model_seed"]!)!, gemmaTokenizer: Fixtures.path("gemma/small_tokenizer.json"),
                            jinaTokenizer: Fixtures.path("jina/tokenizer.json"))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let paths = try ModelPaths.resolve(root: dir)
        let preset = GenerationPreset.comfyui
        XCTAssertEqual(md["system_prompt"], SystemPrompt.resolve(preset.systemPrompt, prompt: md["prompt"]!))
        XCTAssertEqual(md["negative_prompt"], preset.negativePrompt)

        // text: the same system prompt + prompt for Gemma and Jina
        var options = StageOptions()
        options.jinaSeesSystemPrompt = preset.jinaSeesSystemPrompt
        let text = try TextStage(paths: paths, options: options)
        let system = SystemPrompt.resolve(preset.systemPrompt, prompt: md["prompt"]!)
        XCTAssertEqual(text.jinaTokenizer.encode(system + md["prompt"]!), try ref.tensor("jina_ids").toInts())
        let e = try text.encode(prompt: md["prompt"]!, negativePrompt: preset.negativePrompt, systemPrompt: system)
        for (got, name) in [(e.cond.capFeats, "gemma_cond"), (e.uncond.capFeats, "gemma_uncond"),
                            (e.cond.clipPooled!, "jina_cond"), (e.uncond.clipPooled!, "jina_uncond")] {
            let want = try ref.tensor(name)
            XCTAssertEqual(got.count, want.count, name)
            XCTAssertLessThan(relativeL2(got.toFloats(), want.toFloats()), 1e-5, name)
        }

        // the preset's settings (size overridden, as explicit options are)
        var s = preset.settings(seed: UInt64(md["seed"]!)!)
        XCTAssertEqual([s.width, s.height, s.steps], [1024, 1536, 20])
        XCTAssertEqual(s.sampler, .resMultistep); XCTAssertEqual(s.scheduler, .simple); XCTAssertEqual(s.shift, 6)
        XCTAssertEqual(s.cfg, CFGOptions(scale: 5.5, truncation: 100, renorm: 0))
        s.width = Int(md["width"]!)!; s.height = Int(md["height"]!)!
        XCTAssertEqual(s.noise(channels: 16).toFloats(), try ref.tensor("noise").toFloats())

        let den = try DenoiseStage(paths: paths, options: options)
        var states: [Tensor] = []
        let latent = try den.run(e, settings: s, onStep: { states.append($0.x) })
        let want = try ref.tensor("latent")
        let refStates = try ref.tensor("states")
        XCTAssertEqual(states.count, refStates.shape[0])
        let errLatent = relativeL2(latent.toFloats(), want.toFloats())
        let maxErr = maxAbsDiff(latent.toFloats(), want.toFloats())
        print("comfy preset: latent relative L2 \(String(format: "%.2e", errLatent)), max abs \(String(format: "%.2e", maxErr))")
        XCTAssertLessThan(errLatent, 1e-5)

        // decoded and truncated as SaveImage does
        let dec = try DecodeStage(paths: paths, options: options)
        let image = try dec.run(latent)
        let px = try ref.tensor("pixels").toInts()
        XCTAssertEqual(px.count, image.pixels.count)
        let differ = zip(image.pixels, px).filter { Int($0) != $1 }.count
        print("comfy preset: \(differ) of \(px.count) pixel values differ from ComfyUI's")
        XCTAssertEqual(differ, 0)
    }
}
