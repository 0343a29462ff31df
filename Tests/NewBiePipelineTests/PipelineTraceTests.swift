import Foundation
import XCTest
import NewBieDiffusion
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport

final class PipelineTraceTests: XCTestCase {
    static let dir: String = {
        let d = NSTemporaryDirectory() + "newbie-tiny-trace-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        try! TinyModel.write(to: d, seed: 1, gemmaTokenizer: Fixtures.path("gemma/small_tokenizer.json"),
                             jinaTokenizer: Fixtures.path("jina/tokenizer.json"))
        return d
    }()
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
        let out = NSTemporaryDirectory() + "newbie-trace-\(getpid()).png"
        _ = try Pipeline.generate([GenerationRequest(prompt: "1girl", settings: settings, output: out)],
                                  paths: try ModelPaths.resolve(root: Self.dir), options: StageOptions(), tracer: tracer)
        let paths = tracer.records.map(\.path)
        XCTAssertEqual(paths, ["gemma.hidden_states[-2]", "jina.pooled", "dit.input", "dit.velocity", "dit.input", "dit.velocity", "vae.decoder"])
        XCTAssertEqual(tracer.records.map(\.step), [nil, nil, 0, 0, 1, 1, nil])
        XCTAssertTrue(tracer.records.allSatisfy { $0.summary.isFinite })
        XCTAssertEqual(tracer.records[3].summary.shape, [1, 16, 4, 4])
        XCTAssertEqual(lines.count, 7)
        XCTAssertTrue(lines[3].hasPrefix("trace dit.velocity step 0 t=0.0000: [1, 16, 4, 4] min "), lines[3])
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
        // without the detector the NaN runs through and the decoder refuses the result
        stage.tracer = nil
        let latent = try stage.run(e, settings: settings, noise: Tensor(noise, shape: [1, 16, 4, 4]))
        let dec = try DecodeStage(paths: paths, options: StageOptions())
        XCTAssertThrowsError(try dec.run(latent)) { XCTAssertTrue("\($0)".contains("non-finite"), "\($0)") }
    }
}
