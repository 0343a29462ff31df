import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBieImage
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// The tiny end-to-end pipeline against the Python reference (tools/reference/make_pipeline_fixtures.py:
/// transformers Gemma 3 and Jina, diffusers Lumina2 + CLIP pathway with the official
/// forward_with_cfg, torchdiffeq, diffusers AutoencoderKL) on the same tiny model, fp32.
final class PipelineReferenceTests: XCTestCase {
    func testTinyPipelineMatchesTheReference() throws {
        let ref = try SafeTensorsFile(path: Fixtures.path("pipeline/reference.safetensors"))
        let md = ref.metadata
        let dir = try TinyFixture.write("tiny-ref", seed: UInt64(md["tiny_model_seed"]!)!)
        let paths = try ModelPaths.resolve(root: dir)
        let prompt = md["prompt"]!, system = md["system_prompt"]!
        XCTAssertEqual(system, SystemPrompt.text)

        // text: Gemma on system + prompt (uncond: <bos> only), Jina on the raw prompt
        let text = try TextStage(paths: paths, options: StageOptions())
        XCTAssertEqual(text.gemmaTokenizer.encode(system + prompt), try ref.tensor("gemma_ids").toInts())
        XCTAssertEqual(text.jinaTokenizer.encode(prompt), try ref.tensor("jina_ids").toInts())
        let e = try text.encode(prompt: prompt, negativePrompt: "", systemPrompt: system)
        let gc = try ref.tensor("gemma_cond"), gu = try ref.tensor("gemma_uncond")
        XCTAssertEqual(e.cond.capFeats.shape, [1] + gc.shape)
        XCTAssertEqual(e.uncond.capFeats.shape, [1] + gu.shape)
        XCTAssertLessThan(relativeL2(e.cond.capFeats.toFloats(), gc.toFloats()), 1e-5)
        XCTAssertLessThan(relativeL2(e.uncond.capFeats.toFloats(), gu.toFloats()), 1e-5)
        XCTAssertLessThan(relativeL2(e.cond.clipPooled!.toFloats(), try ref.tensor("jina_cond").toFloats()), 1e-5)
        XCTAssertLessThan(relativeL2(e.uncond.clipPooled!.toFloats(), try ref.tensor("jina_uncond").toFloats()), 1e-5)

        // denoising and decoding, per case
        let cases = try JSONSerialization.jsonObject(with: Data(md["cases"]!.utf8)) as! [[String: Any]]
        XCTAssertGreaterThanOrEqual(cases.count, 3)
        let den = try DenoiseStage(paths: paths, options: StageOptions())
        let dec = try DecodeStage(paths: paths, options: StageOptions())
        for c in cases {
            let name = c["name"] as! String
            let s = SamplingSettings(width: Int(md["width"]!)!, height: Int(md["height"]!)!, steps: c["steps"] as! Int,
                                     sampler: try SamplerKind.parse(c["sampler"] as! String), shift: 6,
                                     cfg: CFGOptions(scale: Float(c["cfg"] as! Double), truncation: Float(c["cfg_trunc"] as! Double),
                                                     renorm: Float(c["renorm"] as! Double)),
                                     seed: UInt64(md["seed"]!)!, rng: .torch)
            XCTAssertEqual(s.noise(channels: 16).toFloats(), try ref.tensor("noise").toFloats(), "noise")
            var evaluations = 0
            let latent = try den.run(e, settings: s, onEvaluation: { _ in evaluations += 1 })
            XCTAssertEqual(evaluations, c["evaluations"] as! Int, name)
            let refLatent = try ref.tensor(name + "/latent")
            let errLatent = relativeL2(latent.toFloats(), refLatent.toFloats())
            XCTAssertLessThan(errLatent, 1e-3, "\(name) latent")
            let img = dec.vae.decode(latent, tiling: .never).to(.f32)
            let unit = img.toFloats().map { Swift.min(Swift.max(($0 + 1) / 2, 0), 1) }
            let refImage = try ref.tensor(name + "/image")
            XCTAssertEqual(img.shape, refImage.shape)
            let errImage = relativeL2(unit, refImage.toFloats())
            XCTAssertLessThan(errImage, 1e-3, "\(name) image")
            print("[pipeline reference] \(name): latent rel L2 \(errLatent), image rel L2 \(errImage)")
        }
    }
}
