import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport

final class PipelineTraceTests: XCTestCase {
    static let dir: String = try! TinyFixture.write("tiny-trace", seed: 1)
    let settings = SamplingSettings(width: 32, height: 32, steps: 3, sampler: .euler, shift: 6,
                                    cfg: CFGOptions(scale: 5, truncation: 0.25, renorm: 0), seed: 3, rng: .torch)

    func testSummary() {
        let s = TensorSummary(Tensor([1, -2, .nan, 3, .infinity, -.infinity], shape: [2, 3]))
        XCTAssertEqual(s.shape, [2, 3])
        XCTAssertEqual(s.min, -2); XCTAssertEqual(s.max, 3); XCTAssertEqual(s.mean, 2.0 / 3, accuracy: 1e-12)
        XCTAssertEqual(s.nanCount, 1); XCTAssertEqual(s.infCount, 2)
        XCTAssertFalse(s.isFinite)
        XCTAssertTrue(TensorSummary(Tensor([0, 1], shape: [2])).isFinite)
    }

    func testTraceSeesEveryStageAndStep() throws {
        var lines: [String] = []
        let tracer = PipelineTracer(trace: true, detectOverflow: true, computeDType: .f32, sink: { lines.append($0) })
        let out = TestScratch.path("newbie-trace-\(getpid()).png")
        _ = try Pipeline.generate([GenerationRequest(prompt: "1girl", settings: settings, output: out)],
                                  paths: try ModelPaths.resolve(root: Self.dir), options: StageOptions(), tracer: tracer)
        let modules = ["dit.cap_embedder", "dit.x_embedder", "dit.context_refiner.0", "dit.noise_refiner.0", "dit.layers.0",
                       "dit.layers.1", "dit.final_layer"]
        let perCall = ["dit.input"] + modules + ["dit.velocity"]
        let paths = tracer.records.map(\.path)
        // the tiny model: Gemma with 3 layers (hidden_states[-2] runs 2 of them, no final norm),
        // Jina with 2, a VAE with 4 up levels
        let text = ["gemma.embed_tokens", "gemma.layers.0", "gemma.layers.1", "jina.embeddings", "jina.layers.0", "jina.layers.1",
                    "gemma.hidden_states[-2]", "jina.pooled"]
        let vae = ["vae.decoder.conv_in", "vae.decoder.mid_block"] + (0..<4).map { "vae.decoder.up_blocks.\($0)" }
            + ["vae.decoder.conv_norm_out", "vae.decoder.conv_out", "vae.decoder"]
        XCTAssertEqual(paths, text + perCall + perCall + vae)
        XCTAssertEqual(tracer.records.map(\.step), [Int?](repeating: nil, count: text.count) + Array(repeating: 0, count: perCall.count)
                       + Array(repeating: 1, count: perCall.count) + [Int?](repeating: nil, count: vae.count))
        XCTAssertTrue(tracer.records.allSatisfy { $0.summary.isFinite })
        // step 0 (t = 0 < 0.25) runs the guided batch of 2, step 1 (t = 0.14) too; 4x4 latent = 4 tokens of 48
        let firstDiT = text.count + 1  // dit.cap_embedder of step 0
        XCTAssertEqual(tracer.records[firstDiT].summary.shape.first, 2)
        XCTAssertEqual(tracer.records[firstDiT].summary.shape.last, 48)
        let velocity = tracer.records.firstIndex { $0.path == "dit.velocity" }!
        XCTAssertEqual(tracer.records[velocity].summary.shape, [1, 16, 4, 4])
        XCTAssertEqual(lines.count, paths.count)
        XCTAssertTrue(lines[velocity].hasPrefix("trace dit.velocity step 0 t=0.0000: [1, 16, 4, 4] min "), lines[velocity])
        XCTAssertTrue(lines[firstDiT + 1].hasPrefix("trace dit.x_embedder (computes in fp32) step 0 t=0.0000: [2, 4, 48]"), lines[firstDiT + 1])
        XCTAssertTrue(lines[1].hasPrefix("trace gemma.layers.0 (computes in fp32): [2, "), lines[1])
    }

    func testDetectOverflowNamesPathStepAndDType() throws {
        let paths = try ModelPaths.resolve(root: Self.dir)
        let text = try TextStage(paths: paths, options: StageOptions())
        let e = try text.encode(prompt: "1girl", systemPrompt: "")
        let stage = try DenoiseStage(paths: paths, options: StageOptions())
        var noise = settings.noise(channels: 16).toFloats()
        noise[5] = .nan
        stage.tracer = PipelineTracer(trace: false, detectOverflow: true, computeDType: .f32, sink: { _ in })
        do {
            _ = try stage.run(e, settings: settings, noise: Tensor(noise, shape: [1, 16, 4, 4]))
            XCTFail("a NaN in the state must stop the run")
        } catch let o as OverflowError {
            XCTAssertEqual(o.path, "dit.input")
            XCTAssertEqual(o.step, 0)
            XCTAssertEqual(o.computeDType, .f32)
            XCTAssertEqual(o.summary.nanCount, 1)
            XCTAssertTrue(o.description.contains("dit.input at step 0"), o.description)
        }
        XCTAssertNil(stage.dit.moduleHook, "the DiT hook is removed after the run")
        // without the detector the NaN runs through and the decoder refuses the result
        stage.tracer = nil
        let latent = try stage.run(e, settings: settings, noise: Tensor(noise, shape: [1, 16, 4, 4]))
        let dec = try DecodeStage(paths: paths, options: StageOptions())
        XCTAssertThrowsError(try dec.run(latent)) { XCTAssertTrue("\($0)".contains("non-finite"), "\($0)") }
    }
}
