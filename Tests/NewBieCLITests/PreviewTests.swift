import Foundation
import XCTest
import NewBieImage
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// `generate --preview FILE`: the live preview rewritten as sampling goes (atomically), ending as
/// the map's picture of the last sampler step's latent.
final class PreviewTests: XCTestCase {
    var model: String { CLI.tinyModel }

    /// A map whose output is known from the latent: red = channel 0, green always 0 (bias -1),
    /// blue always 255 (bias 1).
    func writeMap(_ dir: String) throws -> String {
        let c = 16
        var red = [Double](repeating: 0, count: c)
        red[0] = 1
        let map: [String: Any] = ["weights": [red, [Double](repeating: 0, count: c), [Double](repeating: 0, count: c)], "bias": [0, -1, 1]]
        let path = dir + "/map.json"
        try JSONSerialization.data(withJSONObject: map).write(to: URL(fileURLWithPath: path))
        return path
    }

    func testPreviewIsTheMapOfTheLastStep() throws {
        let dir = CLI.tempDir("preview")
        let map = try writeMap(dir)
        let r = CLI.run(["generate", "--model", model, "1girl", "--width", "64", "--height", "32", "--steps", "4", "--quiet",
                         "-o", "x.png", "--save-steps", "steps", "--preview", "live.png", "--preview-map", map, "--preview-every", "1"], cwd: dir)
        XCTAssertEqual(r.status, 0, r.all)
        let png = try PNG.read(dir + "/live.png")
        XCTAssertEqual(png.image.width, 8)
        XCTAssertEqual(png.image.height, 4)
        let steps = try FileManager.default.contentsOfDirectory(atPath: dir + "/steps").filter { $0.hasPrefix("step_") }.sorted()
        XCTAssertGreaterThan(steps.count, 1)
        XCTAssertEqual(png.textValue("newbie:preview-step"), "\(steps.count)/\(steps.count)", "the last sampler step")
        let last = try SafeTensorsFile(path: dir + "/steps/" + steps.last!).tensor("x").to(.f32, device: .cpu).contiguous()
        XCTAssertEqual(last.shape, [1, 16, 4, 8])
        let x = last.toFloats()
        let px = png.image.pixels
        for i in 0..<(4 * 8) {
            let expected = UInt8(max(0, min(255, ((x[i] + 1) / 2 * 255).rounded())))
            XCTAssertEqual(Int(px[i * 3]), Int(expected), accuracy: 1, "red at \(i) from latent channel 0 (\(x[i]))")
            XCTAssertEqual(px[i * 3 + 1], 0)
            XCTAssertEqual(px[i * 3 + 2], 255)
        }
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix(".") }
        XCTAssertEqual(left, [], "no temporary files")
    }

    func testPreviewOptionsAreCheckedBeforeLoading() throws {
        let dir = CLI.tempDir("preview-bad")
        let map = try writeMap(dir)
        func refused(_ extra: [String], _ part: String, line: UInt = #line) {
            let r = CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["-o", "x.png"] + extra, cwd: dir)
            XCTAssertNotEqual(r.status, 0, line: line)
            XCTAssertTrue(r.stderr.contains(part), r.stderr, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.png"), "nothing generated", line: line)
        }
        refused(["--preview", "p.png"], "--preview needs --preview-map")
        refused(["--preview-map", map], "--preview-map needs --preview FILE")
        refused(["--preview", "p.png", "--preview-map", dir + "/missing.json"], "--preview-map \(dir)/missing.json")
        refused(["--preview", "x.png", "--preview-map", map], "is also an output image")
        refused(["--preview", "no/such/p.png", "--preview-map", map], "the folder no/such does not exist")
        refused(["--preview", "p.png", "--preview-map", map, "--preview-every", "0"], "--preview-every 0")
    }
}
