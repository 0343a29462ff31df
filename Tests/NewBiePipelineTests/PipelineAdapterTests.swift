import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBieImage
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// `--lora` through the pipeline on the tiny model: the denoise stage applies the adapter (merged
/// or unmerged, same latent), strength 0 changes nothing, the PNG records the adapters, and a bad
/// adapter fails before the text encoders run.
final class PipelineAdapterTests: XCTestCase {
    static let dir: String = try! TinyFixture.write("tiny-lora", seed: 0)
    static var paths: ModelPaths { try! ModelPaths.resolve(root: dir) }
    static func settings() -> SamplingSettings {
        SamplingSettings(width: 32, height: 48, steps: 3, sampler: .midpoint, shift: 6,
                         cfg: CFGOptions(scale: 4, truncation: 100, renorm: 1), seed: 7, rng: .torch)
    }

    /// A kohya-style LoRA (rank 2, alpha 1) on every qkv and w2 of the tiny DiT.
    static let lora: String = {
        let (source, json) = try! NextDiT.openCheckpoint(path: paths.dit!, configPath: nil)
        let (_, config) = try! NextDiT.checkedWeights(source: source, json: json)
        let linears = try! NextDiT.plan(config).linears
        var rng = TestRandom(seed: 16)
        var tensors: [(String, Tensor)] = []
        for (path, shape) in linears.sorted(by: { $0.key < $1.key }) where path.hasSuffix("attention.qkv") || path.hasSuffix("feed_forward.w2") {
            let key = "lora_unet_" + path.replacingOccurrences(of: ".", with: "_")
            tensors.append((key + ".lora_down.weight", Tensor(rng.floats(2 * shape[1]).map { $0 * 0.5 }, shape: [2, shape[1]])))
            tensors.append((key + ".lora_up.weight", Tensor(rng.floats(shape[0] * 2).map { $0 * 0.5 }, shape: [shape[0], 2])))
            tensors.append((key + ".alpha", Tensor([1], shape: [])))
        }
        let p = dir + "/tiny-lora.safetensors"
        try! SafeTensorsWriter.write(tensors, metadata: [:], to: URL(fileURLWithPath: p))
        return p
    }()

    func latent(_ adapters: AdapterOptions) throws -> (Tensor, [String]) {
        var options = StageOptions()
        options.adapters = adapters
        let text = try TextStage(paths: PipelineAdapterTests.paths, options: options)
        let enc = try text.encode(prompt: "1girl", negativePrompt: "", systemPrompt: SystemPrompt.text)
        let stage = try DenoiseStage(paths: PipelineAdapterTests.paths, options: options)
        return (try stage.run(enc, settings: PipelineAdapterTests.settings()), stage.adapterNotes)
    }

    func testDenoiseWithAdapter() throws {
        let lora = PipelineAdapterTests.lora
        let (base, noNotes) = try latent(AdapterOptions())
        XCTAssertTrue(noNotes.isEmpty)
        let (merged, notes) = try latent(AdapterOptions(specs: [AdapterSpec(path: lora)]))
        XCTAssertTrue(notes.contains { $0.contains("kohya") && $0.contains("alpha/rank 0.5") }, "\(notes)")
        let (unmerged, _) = try latent(AdapterOptions(specs: [AdapterSpec(path: lora)], mode: .unmerged))
        XCTAssertGreaterThan(relativeL2(merged, base), 1e-3)
        XCTAssertLessThanOrEqual(relativeL2(merged, unmerged), 1e-5)
        let (zero, _) = try latent(AdapterOptions(specs: [AdapterSpec(path: lora, strength: 0)]))
        XCTAssertEqual(zero.toFloats(), base.toFloats())

        // unmerged: the stage's adapters change strength between runs without reloading
        var options = StageOptions()
        options.adapters = AdapterOptions(specs: [AdapterSpec(path: lora)], mode: .unmerged)
        let text = try TextStage(paths: PipelineAdapterTests.paths, options: options)
        let enc = try text.encode(prompt: "1girl", negativePrompt: "", systemPrompt: SystemPrompt.text)
        let stage = try DenoiseStage(paths: PipelineAdapterTests.paths, options: options)
        XCTAssertLessThanOrEqual(relativeL2(try stage.run(enc, settings: PipelineAdapterTests.settings()), merged), 1e-5)
        stage.adapters!.strengths[0].value = 0
        XCTAssertEqual(try stage.run(enc, settings: PipelineAdapterTests.settings()).toFloats(), base.toFloats())
    }

    func testGenerateRecordsAdaptersAndChecksThemFirst() throws {
        let out = TestScratch.path("newbie-lora-png-\(getpid())")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        var options = StageOptions()
        options.adapters = AdapterOptions(specs: [AdapterSpec(path: PipelineAdapterTests.lora, strength: 0.8)], mode: .unmerged)
        var notes: [String] = []
        _ = try Pipeline.generate([GenerationRequest(prompt: "1girl", settings: PipelineAdapterTests.settings(), output: out + "/a.png")],
                                  paths: PipelineAdapterTests.paths, options: options, events: PipelineEvents(note: { notes.append($0) }))
        let png = try PNG.read(out + "/a.png")
        XCTAssertEqual(png.textValue(MetadataKey.lora), "\(PipelineAdapterTests.lora):0.8")
        XCTAssertEqual(png.textValue(MetadataKey.loraMode), "unmerged")
        XCTAssertEqual(png.textValue(MetadataKey.pixelRounding), "truncate")
        XCTAssertFalse(notes.isEmpty)

        // an adapter for another model fails before anything is encoded
        var stages: [String] = []
        options.adapters = AdapterOptions(specs: [AdapterSpec(path: Fixtures.path("lora/kohya.safetensors"))])
        XCTAssertThrowsError(try Pipeline.generate([GenerationRequest(prompt: "1girl", settings: PipelineAdapterTests.settings(), output: out + "/b.png")],
                                                   paths: PipelineAdapterTests.paths, options: options,
                                                   events: PipelineEvents(stageEnded: { s, _ in stages.append(s) }))) { e in
            XCTAssertTrue("\(e)".contains("kohya.safetensors"), "\(e)")
        }
        XCTAssertEqual(stages, [])
    }

    /// `--pixel-rounding`: truncation by default, rounding on request; at most one level apart,
    /// and recorded in the PNG.
    func testPixelRounding() throws {
        let out = TestScratch.path("newbie-rounding-\(getpid())")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        var images: [PixelRounding: RGBImage] = [:]
        for r in PixelRounding.allCases {
            var options = StageOptions()
            options.pixelRounding = r
            _ = try Pipeline.generate([GenerationRequest(prompt: "1girl", settings: PipelineAdapterTests.settings(), output: out + "/\(r).png")],
                                      paths: PipelineAdapterTests.paths, options: options)
            let png = try PNG.read(out + "/\(r).png")
            XCTAssertEqual(png.textValue(MetadataKey.pixelRounding), r.rawValue)
            images[r] = png.image
        }
        let t = images[.truncate]!.pixels, n = images[.round]!.pixels
        XCTAssertTrue(zip(t, n).allSatisfy { $0 == $1 || $0 + 1 == $1 })
        let differ = zip(t, n).filter { $0 != $1 }.count
        print("pixel rounding: \(differ) of \(t.count) values differ by one level")
        XCTAssertGreaterThan(differ, t.count / 4)
    }
}
