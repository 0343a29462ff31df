import Foundation
import XCTest
import NewBieDiffusion
@testable import NewBieHarness
import NewBieImage
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport
import NewBieText
import NewBieWeights

private func tempPath(_ name: String) -> String {
    TestScratch.path("newbie-bench-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
}

/// `newbie bench-pipeline`'s library code: the random model writer and the timed generation.
final class PipelineBenchTests: XCTestCase {
    /// The tiny model end to end on the CPU: weights written to a temporary folder, the whole
    /// pipeline run, a PNG of the asked size, every stage and step timed and finite.
    func testTinyBenchEndToEnd() throws {
        let png = tempPath("image") + ".png"
        defer { try? FileManager.default.removeItem(atPath: png) }
        var c = PipelineBenchConfig(spec: RandomModelSpec(scale: .tiny), options: StageOptions(dtype: .f32, device: .cpu),
                                    deviceName: "cpu", output: png)
        c.fixtures = Fixtures.root.path
        c.width = 48; c.height = 64
        c.steps = 3
        c.gemmaTokens = 40
        var lines: [String] = []
        let r = try PipelineBench.run(c, log: { lines.append($0) })

        let image = try PNG.read(png).image
        XCTAssertEqual(image.width, 48)
        XCTAssertEqual(image.height, 64)
        XCTAssertEqual(r.imageWidth, 48)
        XCTAssertEqual(r.imageHeight, 64)

        XCTAssertEqual(r.runs.count, 1)
        let run = r.runs[0]
        XCTAssertEqual(run.stages.map(\.name), ["load text encoders", "encode", "load DiT", "load VAE", "denoise", "decode", "write"])
        for s in run.stages {
            XCTAssertTrue(s.seconds.isFinite && s.seconds >= 0, "\(s.name): \(s.seconds)")
            XCTAssertNil(s.peakDeviceBytes, "no device column on the CPU")
        }
        XCTAssertEqual(run.stepSeconds.count, 3)
        for t in run.stepSeconds { XCTAssertTrue(t.isFinite && t > 0, "\(run.stepSeconds)") }
        for t in [run.textEncodingSeconds, run.denoiseSeconds, run.vaeDecodeSeconds, run.totalSeconds, run.medianStepSeconds] {
            XCTAssertTrue(t.isFinite && t > 0)
        }
        // the steps make up the denoising stage, the stages the whole call
        XCTAssertLessThanOrEqual(run.stepSeconds.reduce(0, +), run.denoiseSeconds + 1e-3)
        XCTAssertLessThanOrEqual(run.stages.map(\.seconds).reduce(0, +), run.totalSeconds + 1e-3)
        XCTAssertGreaterThan(run.peakCPUBytes, 0)
        XCTAssertGreaterThan(r.peakRSSBytes, 0)

        XCTAssertEqual(r.gridPoints, 4)
        XCTAssertEqual(r.tokens.gemmaPrompt, 40)
        XCTAssertEqual(r.tokens.gemmaNegative, 1)
        XCTAssertEqual(r.tokens.jinaNegative, 2)
        XCTAssertTrue(r.weights.written)
        XCTAssertEqual(r.weights.parameters["dit"], RandomModelSpec(scale: .tiny).parameters.dit)
        XCTAssertFalse(FileManager.default.fileExists(atPath: r.weights.dir), "the temporary weights are removed")

        let table = r.table()
        for s in ["text encoding", "denoise (3 steps)", "step 1", "steps 2-3 median", "VAE decode", "write PNG", "total"] {
            XCTAssertTrue(table.contains(s), "\(s) missing from\n\(table)")
        }
        let back = try JSONDecoder().decode(PipelineBenchReport.self, from: r.json())
        XCTAssertEqual(back.runs[0].stepSeconds, run.stepSeconds)
        XCTAssertEqual(back.tokens.gemmaPrompt, 40)
        XCTAssertTrue(lines.contains { $0.contains("step 3/3") })
    }

    /// --check-finite: the run goes through the overflow tracer and reports magnitudes.
    func testTinyBenchFiniteCheck() throws {
        let png = tempPath("finite") + ".png"
        defer { try? FileManager.default.removeItem(atPath: png) }
        var c = PipelineBenchConfig(spec: RandomModelSpec(scale: .tiny), options: StageOptions(dtype: .bf16, device: .cpu),
                                    deviceName: "cpu", output: png)
        c.fixtures = Fixtures.root.path
        c.width = 32; c.height = 32; c.steps = 2; c.checkFinite = true
        let r = try PipelineBench.run(c)
        let m = try XCTUnwrap(r.largestMagnitudes)
        for k in ["gemma.hidden_states[-2]", "jina.pooled", "dit.velocity", "dit.layers.N", "vae.decoder"] {
            let v = try XCTUnwrap(m[k], "\(k) not traced: \(m.keys.sorted())")
            XCTAssertTrue(v.isFinite && v > 0 && v < 1000, "\(k): \(v)")
        }
    }

    /// Writing to a folder: written once, reused, rewritten on request; a folder that is not a
    /// random model is refused untouched.
    func testWriteReuseAndRefuse() throws {
        let dir = tempPath("weights")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let spec = RandomModelSpec(scale: .tiny)
        let fixtures = Fixtures.root.path
        let first = try RandomModel.write(spec, to: dir, seed: 3, fixtures: fixtures)
        XCTAssertTrue(first.written)
        XCTAssertTrue(RandomModel.isWritten(spec, dtype: .bf16, seed: 3, at: dir))
        XCTAssertFalse(RandomModel.isWritten(spec, dtype: .bf16, seed: 4, at: dir))
        XCTAssertFalse(RandomModel.isWritten(spec, dtype: .f32, seed: 3, at: dir))
        XCTAssertFalse(RandomModel.isWritten(spec.cappingDepth(1), dtype: .bf16, seed: 3, at: dir))
        XCTAssertFalse(try RandomModel.write(spec, to: dir, seed: 3, fixtures: fixtures).written)
        XCTAssertTrue(try RandomModel.write(spec, to: dir, seed: 3, rewrite: true, fixtures: fixtures).written)

        // the files are what the loaders and slot checks expect
        let paths = try ModelPaths.resolve(root: dir)
        for slot in ModelSlot.allCases { XCTAssertNoThrow(try paths.require(slot)) }
        let dit = try NextDiT.load(path: paths.dit!, dtype: .f32)
        XCTAssertEqual(dit.config, spec.dit)
        let gemma = try GemmaTextEncoder.load(path: paths.gemma!)
        XCTAssertEqual(gemma.config, spec.gemma)
        XCTAssertEqual(gemma.layersRun, spec.gemma.numHiddenLayers - 1)

        // sharded: the same tensors split over shards with an index, read back identically
        let sharded = tempPath("sharded")
        defer { try? FileManager.default.removeItem(atPath: sharded) }
        try RandomModel.write(spec, to: sharded, seed: 3, shardBytes: 64 << 10, fixtures: fixtures)
        let index = sharded + "/transformer/diffusion_pytorch_model.safetensors.index.json"
        XCTAssertTrue(FileManager.default.fileExists(atPath: index))
        let a = try openWeights(path: dir + "/transformer"), b = try openWeights(path: sharded + "/transformer")
        XCTAssertEqual(Set(a.tensorNames), Set(b.tensorNames))
        for name in ["layers.1.feed_forward.w2.weight", "x_embedder.bias", "norm_final.weight"] {
            XCTAssertEqual(try a.loadTensor(name).toFloats(), try b.loadTensor(name).toFloats(), name)
        }

        // a folder holding anything else is not touched
        let foreign = tempPath("foreign")
        try FileManager.default.createDirectory(atPath: foreign, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: foreign) }
        try Data("keep".utf8).write(to: URL(fileURLWithPath: foreign + "/model.safetensors"))
        XCTAssertThrowsError(try RandomModel.write(spec, to: foreign, fixtures: fixtures)) { e in
            XCTAssertTrue("\(e)".contains("not a random model"), "\(e)")
        }
        XCTAssertEqual(try String(contentsOfFile: foreign + "/model.safetensors", encoding: .utf8), "keep")
    }

    /// The random values: the same for any chunking (any thread count), inside their ranges, with
    /// the intended spread.
    func testRandomWeights() {
        let plan = [RandomModel.PlannedTensor(name: "w", shape: [300, 400], role: .matrix(fanIn: 400)),
                    RandomModel.PlannedTensor(name: "n.weight", shape: [1000], role: .norm(center: 1)),
                    RandomModel.PlannedTensor(name: "g.weight", shape: [1000], role: .norm(center: 0)),
                    RandomModel.PlannedTensor(name: "b.bias", shape: [5000], role: .bias)]
        let a = RandomWeights.make(plan, dtype: .f32, seed: 9, chunk: 1 << 20)
        let b = RandomWeights.make(plan, dtype: .f32, seed: 9, chunk: 777)
        let c = RandomWeights.make(plan, dtype: .f32, seed: 10)
        let h = RandomWeights.make(plan, dtype: .bf16, seed: 9, chunk: 1000)
        for k in plan.indices {
            XCTAssertEqual(a[k].toFloats(), b[k].toFloats(), plan[k].name)
            XCTAssertNotEqual(a[k].toFloats(), c[k].toFloats(), plan[k].name)
            XCTAssertEqual(h[k].dtype, .bf16)
            XCTAssertEqual(h[k].toFloats(), a[k].toFloats().map { Half.round($0, to: .bf16) }, plan[k].name)
            let v = a[k].toFloats(), (center, half) = plan[k].role.range
            XCTAssertTrue(v.allSatisfy { abs($0 - center) <= half }, plan[k].name)
            let mean = v.reduce(0, +) / Float(v.count)
            let std = (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(v.count)).squareRoot()
            XCTAssertEqual(mean, center, accuracy: 0.05 * Swift.max(half, 0.05), plan[k].name)
            XCTAssertEqual(std, half / Float(3).squareRoot(), accuracy: 0.05 * half, plan[k].name)
        }
        // matrices: std 1/sqrt(fan_in)
        XCTAssertEqual(plan[0].role.range.halfWidth / Float(3).squareRoot(), 1 / Float(400).squareRoot(), accuracy: 1e-6)
    }

    /// The full-size configuration is the published one.
    func testFullSpec() throws {
        let s = RandomModelSpec(scale: .full)
        let p = s.parameters
        XCTAssertEqual(p.dit, 3_486_636_096)  // spec 1.2, norm_final included
        XCTAssertEqual(try RandomModel.ditTensors(s).count, 535)  // the checkpoint's tensor count
        XCTAssertEqual(s.gemma, .gemma3_4B)
        XCTAssertEqual(s.gemma.vocabSize, 262_208)
        XCTAssertEqual(p.gemma, 262_208 * 2560 + 34 * 94_382_592 + 2560)  // spec 4.1: 3.88 B
        XCTAssertEqual(s.jina, .clipV2)
        XCTAssertEqual(s.vae, .flux1Dev)
        XCTAssertEqual(s.gemmaTokenizerSize, 262_144)
        XCTAssertEqual(s.jinaTokenizerSize, 250_002)
        let names = try RandomModel.gemmaTensors(s).map(\.name)
        XCTAssertTrue(names.contains("language_model.model.layers.33.mlp.down_proj.weight"))
        XCTAssertTrue(names.contains("language_model.model.norm.weight"))
        XCTAssertEqual(try RandomModel.gemmaTensors(s).first { $0.name.hasSuffix("input_layernorm.weight") }?.role, .norm(center: 0))
        XCTAssertEqual(try RandomModel.ditTensors(s).first { $0.name.hasSuffix("attention_norm1.weight") }?.role, .norm(center: 1))
        XCTAssertTrue(try RandomModel.jinaTensors(s).contains { $0.name.hasSuffix("mixer.Wqkv.parametrizations.weight.0.lora_A") && $0.role == .lora })

        let one = s.cappingDepth(1)
        XCTAssertEqual([one.dit.nLayers, one.dit.nNoiseRefiner, one.dit.nContextRefiner, one.jina.layers], [1, 1, 1, 1])
        XCTAssertEqual(one.gemma.numHiddenLayers, 2)  // one layer runs before hidden_states[-2]
        XCTAssertEqual(one.gemma.layerTypes.count, 2)
        XCTAssertEqual(one.dit.dim, 2304)
    }

    /// The synthetic tokenizers have the real vocabulary sizes and special ids and tokenize like
    /// the small tokenizers they are made from.
    func testSyntheticTokenizers() throws {
        let g = try SentencePieceBPETokenizer(tokenizerJSON: try RandomModel.synthesizeGemmaTokenizer(
            from: Fixtures.path("gemma/small_tokenizer.json"), size: 262_144), source: "synthetic gemma")
        let small = try SentencePieceBPETokenizer.load(Fixtures.path("gemma/small_tokenizer.json"))
        XCTAssertEqual(g.vocabSize, 262_144)
        let text = SystemPrompt.xml + PipelineBench.defaultPrompt
        XCTAssertEqual(g.encode(text), small.encode(text))
        XCTAssertEqual(g.encode("").first, 2)  // <bos>

        let j = try UnigramTokenizer(json: try RandomModel.synthesizeJinaTokenizer(
            from: Fixtures.path("jina/tokenizer.json"), size: 250_002), source: "synthetic jina")
        let smallJ = try UnigramTokenizer(path: Fixtures.path("jina/tokenizer.json"))
        XCTAssertEqual(j.pieces.count, 250_002)
        XCTAssertEqual(j.pieces.last?.text, "<mask>")
        XCTAssertEqual(j.padId, 1)
        XCTAssertEqual(j.encodeBatch([PipelineBench.defaultPrompt, ""]).ids, smallJ.encodeBatch([PipelineBench.defaultPrompt, ""]).ids)
        XCTAssertEqual(j.encodeBatch(["a <mask> b"]).ids[0].filter { $0 == 250_001 }.count, 1)
    }

    /// --gemma-tokens: the prompt is cut or repeated to the asked Gemma length.
    func testFitPrompt() throws {
        let t = try SentencePieceBPETokenizer.load(Fixtures.path("gemma/small_tokenizer.json"))
        for n in [60, 256, 500] {
            let p = try PipelineBench.fitPrompt(PipelineBench.defaultPrompt, systemPrompt: "auto", tokenizer: t, tokens: n)
            let count = t.encodeBatch([SystemPrompt.resolve("auto", prompt: p) + p, ""]).mask[0].reduce(0, +)
            XCTAssertTrue(count <= n && count >= n - 2, "\(n) tokens asked, \(count) made")
        }
        XCTAssertThrowsError(try PipelineBench.fitPrompt("x", systemPrompt: "auto", tokenizer: t, tokens: 600))
        XCTAssertThrowsError(try PipelineBench.fitPrompt("x", systemPrompt: "auto", tokenizer: t, tokens: 3))
    }
}
