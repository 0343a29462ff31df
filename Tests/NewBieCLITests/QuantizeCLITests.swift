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
        for (spec, expected) in [("unet=int8", "the models are dit, gemma, jina, vae"), ("dit=int4", "use int8, int8-g128, fp8, q8_0, q6_k, q5_k, q5_0, q4_k, q4_0 or none"),
                                 ("dit.layer.*=int8", "its linear layers are: "), ("gemma.layers.*.mpl=int8", "names no linear layer of the gemma model")] {
            let r = CLI.run(["generate", "--model", model, "1girl", "--quantize", spec] + CLI.quick + ["-o", "x.png"], cwd: dir)
            XCTAssertNotEqual(r.status, 0, spec)
            XCTAssertTrue(r.stderr.contains(expected), "\(spec): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.png"), spec)
        }
    }

    /// GGUF block types at load: the same image as the GGUF `newbie quantize` writes of the same
    /// layers (the tiny DiT's 48-wide rows are not whole blocks, so only the feed-forward output,
    /// 128 wide, is quantized on both sides), recorded in the PNG; a type whose blocks do not fit the
    /// rows is an error naming the flag and the layer, before anything is written.
    func testGGUFTypesAtLoadGiveTheQuantizedFilesImage() throws {
        let dir = CLI.tempDir("quantize-blocks")
        try FileManager.default.copyItem(atPath: model + "/transformer/config.json", toPath: dir + "/config.json")
        let q = CLI.run(["quantize", model + "/transformer", "--to", "q8_0", "-o", dir + "/dit.gguf",
                         "--keep", "layers.*.attention,layers.*.feed_forward.w1,layers.*.feed_forward.w3"])
        XCTAssertEqual(q.status, 0, q.all)
        XCTAssertTrue(q.out.contains("2 weights quantized to q8_0"), q.all)   // layers.0/1.feed_forward.w2
        let file = CLI.run(["generate", "--model", model, "--dit", dir + "/dit.gguf", "1girl"] + CLI.quick + ["-o", "file.png"], cwd: dir)
        XCTAssertEqual(file.status, 0, file.all)
        let spec = "dit.layers.*.feed_forward.w2=q8_0"
        let flag = CLI.run(["generate", "--model", model, "1girl", "--quantize", spec] + CLI.quick + ["-o", "flag.png"], cwd: dir)
        XCTAssertEqual(flag.status, 0, flag.all)
        let plain = CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["-o", "plain.png"], cwd: dir)
        XCTAssertEqual(plain.status, 0, plain.all)
        let a = try PNG.read(dir + "/file.png"), b = try PNG.read(dir + "/flag.png")
        XCTAssertEqual(a.image.pixels, b.image.pixels)
        // and the blocks did something: the unquantized image differs
        XCTAssertNotEqual(try PNG.read(dir + "/plain.png").image.pixels, b.image.pixels)
        XCTAssertEqual(b.textValue("newbie:quantize"), spec)

        let bad = CLI.run(["generate", "--model", model, "1girl", "--quantize", "dit=q4_k"] + CLI.quick + ["-o", "bad.png"], cwd: dir)
        XCTAssertNotEqual(bad.status, 0, bad.all)
        XCTAssertTrue(bad.stderr.contains("--quantize q4_k") && bad.stderr.contains("not whole 256-value Q4_K blocks")
                      && bad.stderr.contains("layers.0."), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.png"))
    }

    /// precision-report builds its own policies: --quantize there is refused (pointing at the config
    /// form), not silently dropped.
    func testPrecisionReportRefusesQuantize() {
        let r = CLI.run(["precision-report", "--model", model, "--prompt", "1girl", "--quantize", "dit=int8", "-o", CLI.tempDir("quantize-report") + "/r"])
        XCTAssertNotEqual(r.status, 0, r.all)
        XCTAssertTrue(r.stderr.contains("quantization is part of each config") && r.stderr.contains("bf16+dit=int8"), r.stderr)
    }
}
