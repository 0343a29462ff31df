import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBiePipeline
import NewBieTestSupport
import NewBieText
import NewBieWeights

/// Each model's config.json writer and reader agree: what the tiny and random model writers
/// produce reads back as the configuration they were written from.
final class ConfigFileTests: XCTestCase {
    func json(_ obj: [String: Any]) throws -> Data { try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]) }

    func testGemmaConfigRoundTrips() throws {
        var c = Gemma3TextConfig.gemma3_4B
        c.rmsNormEps = 1e-5; c.queryPreAttnScalar = 144; c.ropeThetaLocal = 20_000
        XCTAssertEqual(try Gemma3TextConfig(configJSON: try json(c.huggingFaceConfigJSON()), source: "test"), c)
        c.ropeScalingLocal = 2   // only the per-layer-type form can carry this
        XCTAssertEqual(try Gemma3TextConfig(configJSON: try json(c.huggingFaceConfigJSON()), source: "test"), c)
        let small = Gemma3TextConfig.gemma3_270M
        XCTAssertEqual(try Gemma3TextConfig(configJSON: try json(small.huggingFaceConfigJSON(extra: ["_note": "x"])), source: "test"), small)
    }

    func testVAEConfigRoundTrips() throws {
        var c = VAEConfig()
        c.blockOutChannels = [32, 64]; c.layersPerBlock = 1; c.normNumGroups = 8; c.latentChannels = 4
        c.midBlockAddAttention = false; c.scalingFactor = 0.18215; c.shiftFactor = 0
        let url = URL(fileURLWithPath: TestScratch.path("newbie-vae-config-\(getpid()).json"))
        defer { try? FileManager.default.removeItem(at: url) }
        try json(c.diffusersConfigJSON()).write(to: url)
        XCTAssertEqual(try VAEConfig(configJSON: url), c)
    }

    func testDiTConfigRoundTripsThroughTheTinyModel() throws {
        let dir = try TinyFixture.write("config-tiny", seed: 1)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (source, json) = try NextDiT.openCheckpoint(path: dir + "/transformer", configPath: nil)
        let (_, config) = try NextDiT.checkedWeights(source: source, json: json)
        XCTAssertEqual(config, TinyModel.ditConfig)
        // the JSON alone says what the shapes say (a checkpoint whose shapes disagree fails validation)
        let written = TinyModel.ditConfig.officialConfigJSON()
        XCTAssertEqual(written["dim"] as? Int, 48)
        XCTAssertEqual(written["clip_text_dim"] as? Int, TinyModel.jinaHidden)
        var plain = TinyModel.ditConfig
        plain.clipTextDim = nil
        XCTAssertNil(plain.officialConfigJSON()["clip_text_dim"], "no CLIP pathway: no key (0 would read back as a width)")
    }
}
