import Foundation
import XCTest
import NewBiePipeline
import NewBieHarness
import NewBieTestSupport
import NewBieWeights

/// `newbie inspect`'s model lines: which model a checkpoint holds, its naming and its config.
final class ModelDescriptionTests: XCTestCase {
    static let dir: String = try! TinyFixture.write("describe", seed: 1)

    func describe(_ sub: String) throws -> String {
        let path = (Self.dir as NSString).appendingPathComponent(sub)
        return ModelDescription.describe(path: path, source: try openWeights(path: path)).joined(separator: "\n")
    }

    func testEachPartIsNamedWithItsConfig() throws {
        let dit = try describe("transformer")
        XCTAssertTrue(dit.contains("model: the NextDiT diffusion transformer"), dit)
        XCTAssertTrue(dit.contains("naming: official"), dit)
        XCTAssertTrue(dit.contains("cap \(TinyModel.gemmaHidden)") && dit.contains("clip \(TinyModel.jinaHidden)"), dit)
        XCTAssertTrue(dit.contains("parameters used by the model: "), dit)

        let gemma = try describe("text_encoder")
        XCTAssertTrue(gemma.contains("model: the Gemma 3 text encoder"), gemma)
        XCTAssertTrue(gemma.contains("hiddenSize: \(TinyModel.gemmaHidden)") && gemma.contains("numHiddenLayers: \(TinyModel.gemmaLayers)"), gemma)

        let jina = try describe("clip_model")
        XCTAssertTrue(jina.contains("model: the Jina CLIP v2 text tower"), jina)
        XCTAssertTrue(jina.contains("hidden: \(TinyModel.jinaHidden)") && jina.contains("layers: \(TinyModel.jinaLayers)"), jina)

        let vae = try describe("vae")
        XCTAssertTrue(vae.contains("model: the FLUX VAE"), vae)
        XCTAssertTrue(vae.contains("latentChannels: 16"), vae)
    }

    func testUnknownCheckpointSaysSo() throws {
        let path = Fixtures.path("safetensors/interop.safetensors")
        let lines = ModelDescription.describe(path: path, source: try openWeights(path: path))
        XCTAssertEqual(lines.count, 1)
        XCTAssertTrue(lines[0].contains("none of NewBie's models"), lines[0])
    }
}
