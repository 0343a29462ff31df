import Foundation
import XCTest
import NewBieTestSupport

/// `newbie quantize`: writes a file the loaders read, never replaces one without --force, and
/// bad --to values list the choices.
final class QuantizeFileCLITests: XCTestCase {
    func testWritesAGGUFThatGenerateAndInspectRead() throws {
        let dir = CLI.tempDir("quantize-file")
        try? FileManager.default.copyItem(atPath: Fixtures.path("quantfiles/config.json"), toPath: dir + "/config.json")
        let input = Fixtures.path("quantfiles/dit.safetensors")
        let r = CLI.run(["quantize", input, "--to", "q8_0", "-o", "dit.gguf"], cwd: dir)
        XCTAssertEqual(r.status, 0, r.all)
        XCTAssertTrue(r.out.contains("weights quantized to q8_0"), r.all)
        let inspect = CLI.run(["inspect", "dit.gguf"], cwd: dir)
        XCTAssertEqual(inspect.status, 0, inspect.all)
        XCTAssertTrue(inspect.out.contains("architecture lumina2") && inspect.out.contains("q8_0") && inspect.out.contains("DiT"), inspect.all)
        XCTAssertTrue(inspect.out.contains("blocks of 32, one fp16 scale each"), inspect.all)
    }

    func testRefusesToOverwriteWithoutForce() throws {
        let dir = CLI.tempDir("quantize-overwrite")
        let input = Fixtures.path("quantfiles/dit.safetensors")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: dir + "/out.safetensors"))
        let r = CLI.run(["quantize", input, "--to", "int8", "-o", "out.safetensors"], cwd: dir)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.all.contains("--force"), r.all)
        XCTAssertEqual(try String(contentsOfFile: dir + "/out.safetensors", encoding: .utf8), "keep me")
        let f = CLI.run(["quantize", input, "--to", "int8", "-o", "out.safetensors", "--force"], cwd: dir)
        XCTAssertEqual(f.status, 0, f.all)
        XCTAssertNotEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/out.safetensors")), Data("keep me".utf8))
    }

    func testBadTargetsListTheChoices() {
        let dir = CLI.tempDir("quantize-bad")
        let input = Fixtures.path("quantfiles/dit.safetensors")
        let r = CLI.run(["quantize", input, "--to", "int3", "-o", "x.safetensors"], cwd: dir)
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.all.contains("int8, int8-g128, fp8, q8_0, q6_k, q5_k, q5_0, q4_k, q4_0"), r.all)
        let ext = CLI.run(["quantize", input, "--to", "q8_0", "-o", "x.safetensors"], cwd: dir)
        XCTAssertTrue(ext.all.contains(".gguf"), ext.all)
        let keep = CLI.run(["quantize", input, "--to", "int8", "--keep", "nolayer.*", "-o", "x.safetensors"], cwd: dir)
        XCTAssertNotEqual(keep.status, 0)
        XCTAssertTrue(keep.all.contains("nolayer.*"), keep.all)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.safetensors") || FileManager.default.fileExists(atPath: dir + "/x.gguf"))
    }

    /// The tiny model's DiT quantized to each file type runs through `generate --dit`, and
    /// `inspect` shows each file's quantization.
    func testQuantizedDiTFilesGenerate() throws {
        let dir = CLI.tempDir("quantize-generate")
        for (to, file, layout) in [("q8_0", "dit.gguf", "blocks of 32, one fp16 scale each"),
                                   ("int8-g128", "dit-int8.safetensors", "int8, one fp32 scale per 128 inputs of each row"),
                                   ("fp8", "dit-fp8.safetensors", "fp8 e4m3, one fp32 scale per tensor")] {
            let q = CLI.run(["quantize", CLI.tinyModel + "/transformer", "--to", to, "-o", file], cwd: dir)
            XCTAssertEqual(q.status, 0, q.all)
            let inspect = CLI.run(["inspect", file], cwd: dir)
            XCTAssertTrue(inspect.out.contains(layout) && inspect.out.contains("quantized:"), inspect.all)
            let g = CLI.run(["generate", "--model", CLI.tinyModel, "--dit", file, "1girl"] + CLI.quick + ["-o", to + ".png"], cwd: dir)
            XCTAssertEqual(g.status, 0, g.all)
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + to + ".png"), to)
        }
    }
}
