import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBiePipeline
import NewBieTensor

/// NewBie-mini (models/newbie-mini, trained by tools/mini) makes pictures that follow their
/// prompts: generated on the CPU at its trained size and read back by colour where each
/// character was asked to stand.
final class MiniModelTests: XCTestCase {
    static let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("models/newbie-mini").path

    func testPicturesShowTheAskedColoursWhereAsked() throws {
        var rng = SplitMix(seed: 2026)
        let scenes = (1...2).flatMap { n in (0..<5).map { _ in MiniScene.random(count: n, rng: &rng) } }
        let settings = SamplingSettings(width: MiniScene.size, height: MiniScene.size, steps: MiniModel.steps, sampler: .midpoint,
                                        shift: 6, cfg: CFGOptions(scale: MiniModel.cfg, truncation: MiniModel.cfgTruncation, renorm: 0),
                                        seed: 1, rng: .torch)
        let scores = try MiniEval.run(model: Self.model, scenes: scenes, forms: [.xml], settings: settings)
        for n in 1...2 {
            let s = scores[.xml]?[n] ?? MiniEval.Score()
            print(String(format: "NewBie-mini, %d character(s), XML prompts: %.1f%% of the asked colours shown (%d/%d)",
                         n, 100 * s.accuracy, s.correct, s.asked))
            XCTAssertEqual(s.asked, 10 * n)
            XCTAssertGreaterThanOrEqual(s.accuracy, 0.9, "\(n) character(s): \(s.correct)/\(s.asked)")
        }
    }

    /// The reader itself: a drawn scene with known colours is read back exactly (no model).
    func testColourReaderReadsADrawnScene() throws {
        var rng = SplitMix(seed: 3)
        let scene = MiniScene.random(count: 3, rng: &rng)
        let image = MiniScene.draw(scene)
        XCTAssertEqual(scene.score(image).correct, 6)
        var other = scene
        other.characters[0].hair = MiniScene.palette.map(\.0).first { $0 != scene.characters[0].hair && !scene.characters.map(\.hair).contains($0) }!
        XCTAssertEqual(other.score(image).correct, 5, "a wrong hair colour is seen as wrong")
    }
}
