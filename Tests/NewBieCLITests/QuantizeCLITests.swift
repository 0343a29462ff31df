import Foundation
import XCTest
import NewBieImage
import NewBieTestSupport

/// `--quantize` from the command line: recorded in the PNG (and in its replay command), and bad
/// specs fail before anything runs, naming what exists.
final class QuantizeCLITests: XCTestCase {
    var model: String { CLI.tinyModel }

    func testQuantizedGenerateRecordsItInThePNG() throws {
        let dir = CLI.tempDir("quantize")
        let r = CLI.run(["generate", "--model", model, "1girl", "--quantize", "dit=int8,gemma=int8,jina=int8-g128"] + CLI.quick + ["-o", "q.png"], cwd: dir)
        XCTAssertEqual(r.status, 0, r.all)
        let png = try PNG.read(dir + "/q.png")
        XCTAssertEqual(png.textValue("newbie:quantize"), "dit=int8,gemma=int8,jina=int8-g128")
        XCTAssertTrue(png.textValue("newbie:command")?.contains("--quantize dit=int8,gemma=int8,jina=int8-g128") ?? false,
                      png.textValue("newbie:command") ?? "")
        // without --quantize: no record
        let plain = CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["-o", "p.png"], cwd: dir)
        XCTAssertEqual(plain.status, 0, plain.all)
        XCTAssertNil(try PNG.read(dir + "/p.png").textValue("newbie:quantize"))
    }

    func testBadQuantizeSpecsAreErrorsNamingWhatExists() {
        let dir = CLI.tempDir("quantize-bad")
        for (spec, expected) in [("unet=int8", "the models are dit, gemma, jina, vae"), ("dit=int4", "use int8, int8-g128, fp8 or none"),
                                 ("dit.layer.*=int8", "its linear layers are: "), ("gemma.layers.*.mpl=int8", "names no linear layer of the gemma model")] {
            let r = CLI.run(["generate", "--model", model, "1girl", "--quantize", spec] + CLI.quick + ["-o", "x.png"], cwd: dir)
            XCTAssertNotEqual(r.status, 0, spec)
            XCTAssertTrue(r.stderr.contains(expected), "\(spec): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.png"), spec)
        }
    }

    /// precision-report builds its own policies: --quantize there is refused (pointing at the config
    /// form), not silently dropped.
    func testPrecisionReportRefusesQuantize() {
        let r = CLI.run(["precision-report", "--model", model, "--prompt", "1girl", "--quantize", "dit=int8", "-o", CLI.tempDir("quantize-report") + "/r"])
        XCTAssertNotEqual(r.status, 0, r.all)
        XCTAssertTrue(r.stderr.contains("quantization is part of each config") && r.stderr.contains("bf16+dit=int8"), r.stderr)
    }
}
