import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBieImage
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport

final class PipelineImg2ImgTests: XCTestCase {
    static let dir: String = try! TinyFixture.write("tiny-i2i", seed: 2)
    func settings(_ strength: Float, sampler: SamplerKind = .euler) -> SamplingSettings {
        var s = SamplingSettings(width: 32, height: 32, steps: 6, sampler: sampler, shift: 6,
                                 cfg: CFGOptions(scale: 5, truncation: 100, renorm: 0), seed: 11, rng: .torch)
        s.strength = strength
        return s
    }

    func testBadStrength() {
        var s = settings(1.5)
        XCTAssertThrowsError(try s.validate()) { XCTAssertTrue("\($0)".contains("--strength 1.5"), "\($0)") }
        s = settings(0.5, sampler: .dpm)
        XCTAssertThrowsError(try s.validate()) { XCTAssertTrue("\($0)".contains("--sampler dpm"), "\($0)") }
    }

    func testStrengthZeroKeepsTheLatentAndHalfRunsTheRestOfTheGrid() throws {
        let paths = try ModelPaths.resolve(root: Self.dir)
        let e = try TextStage(paths: paths, options: StageOptions()).encode(prompt: "1girl", systemPrompt: "")
        let stage = try DenoiseStage(paths: paths, options: StageOptions())
        var g = TorchGenerator(seed: 99)
        let data = g.randn([1, 16, 4, 4])
        XCTAssertThrowsError(try stage.run(e, settings: settings(0.5))) { XCTAssertTrue("\($0)".contains("--init-image"), "\($0)") }
        XCTAssertEqual(try stage.run(e, settings: settings(0), initLatent: data).toFloats(), data.toFloats())
        var calls: [Float] = []
        let half = try stage.run(e, settings: settings(0.5), initLatent: data, onEvaluation: { calls.append($0.t) })
        let expected = try FlowSchedule.img2imgGrid(points: 6, shift: 6, strength: 0.5)
        XCTAssertEqual(calls, Array(expected.dropLast()))
        XCTAssertEqual(calls.first, 0.5)
        XCTAssertEqual(half.toFloats().filter { !$0.isFinite }.count, 0)
        XCTAssertGreaterThan(relativeL2(half, data), 1e-3)
    }

    func testInitImageThroughThePipeline() throws {
        let out = TestScratch.path("newbie-i2i-\(getpid())")
        let paths = try ModelPaths.resolve(root: Self.dir)
        _ = try Pipeline.generate([GenerationRequest(prompt: "1girl", settings: settings(1), output: out + "/a.png")],
                                  paths: paths, options: StageOptions())
        var r = GenerationRequest(prompt: "1girl", settings: settings(0.4), output: out + "/b.png", initImage: out + "/a.png")
        _ = try Pipeline.generate([r], paths: paths, options: StageOptions())
        let b = try PNG.read(out + "/b.png")
        XCTAssertEqual(b.textValue(MetadataKey.strength), "0.4")
        XCTAssertEqual(b.textValue(MetadataKey.initImage), out + "/a.png")
        // a wrong-sized init image is refused with both sizes named
        r.settings.width = 48
        r.output = out + "/c.png"
        XCTAssertThrowsError(try Pipeline.generate([r], paths: paths, options: StageOptions())) {
            XCTAssertTrue("\($0)".contains("--init-image") && "\($0)".contains("32x32") && "\($0)".contains("48x32"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/c.png"))
    }
}
