import Foundation
import XCTest
import NewBieImage
import NewBieTestSupport

/// Bad input stops the run early with a message naming what is at fault.
final class InputTests: XCTestCase {
    var model: String { CLI.tinyModel }

    /// An invalid XML prompt used to print "error:" and still make an image with exit 0.
    func testInvalidXMLStopsTheRun() throws {
        let dir = CLI.tempDir("xml")
        let bad = "<character_1><n>miku</character_1>"
        let r = CLI.run(["generate", "--model", model, bad] + CLI.quick + ["-o", "bad.png"], cwd: dir)
        XCTAssertEqual(r.status, 1, r.all)
        XCTAssertTrue(r.stderr.contains("1:") && r.stderr.contains("--allow-invalid-xml"), r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.png"))
        // errors are shown even with --quiet (they stop the run)
        XCTAssertTrue(r.stderr.contains("error"), r.stderr)
        // on purpose
        let ok = CLI.run(["generate", "--model", model, bad, "--allow-invalid-xml"] + CLI.quick + ["-o", "bad.png"], cwd: dir)
        XCTAssertEqual(ok.status, 0, ok.all)
        XCTAssertTrue(CLI.isPNG(dir + "/bad.png"))
        // warnings do not stop it
        let warn = CLI.run(["generate", "--model", model, "<character_2><n>miku</n></character_2>"] + CLI.quick + ["-o", "warn.png"], cwd: dir)
        XCTAssertEqual(warn.status, 0, warn.all)
    }

    /// A size beyond the model's position tables used to run for minutes and be killed by the kernel.
    func testSizeBeyondTheModelIsRefusedAtOnce() throws {
        let start = Date()
        let r = CLI.run(["generate", "--model", model, "1girl", "--width", "100000", "--height", "100000", "-o", TestScratch.path("never.png")], timeout: 60)
        XCTAssertLessThan(Date().timeIntervalSince(start), 30)
        XCTAssertEqual(r.status, 1, r.all)
        XCTAssertTrue(r.stderr.contains("--width 100000") && r.stderr.contains("8192"), r.stderr)
        let c = CLI.run(["generate", "--model", model, "1girl", "--count", "1000000"] + CLI.quick, timeout: 60)
        XCTAssertEqual(c.status, 1, c.all)
        XCTAssertTrue(c.stderr.contains("--count"), c.stderr)
        let s = CLI.run(["generate", "--model", model, "1girl", "--steps", "100000", "-o", TestScratch.path("never.png")], timeout: 60)
        XCTAssertEqual(s.status, 1, s.all)
        XCTAssertTrue(s.stderr.contains("--steps"), s.stderr)
    }

    /// I/O errors: exit 1 with a message naming the file, not a usage line (exit 64) or an NSError dump.
    func testIOErrorsAreNamedAndNotUsageErrors() throws {
        let dir = CLI.tempDir("io")
        let p = CLI.run(["generate", "--model", model, "--prompt-file", dir + "/missing.txt"] + CLI.quick)
        XCTAssertEqual(p.status, 1, p.all)
        XCTAssertTrue(p.stderr.contains("missing.txt: no such file"), p.stderr)
        let latin1 = dir + "/latin1.txt"
        FileManager.default.createFile(atPath: latin1, contents: Data([0x63, 0x61, 0x66, 0xE9, 0x0A]))
        let l = CLI.run(["generate", "--model", model, "--prompt-file", latin1] + CLI.quick)
        XCTAssertEqual(l.status, 1, l.all)
        XCTAssertTrue(l.stderr.contains("not UTF-8") && l.stderr.contains("offset 3"), l.stderr)

        let b = CLI.run(["prompt", "build", dir + "/missing.json"])
        XCTAssertEqual(b.status, 1, b.all)
        XCTAssertFalse(b.all.contains("Usage:"), b.all)
        XCTAssertTrue(b.stderr.contains("missing.json: no such file"), b.stderr)

        // make-tiny-model into a path below a file, and into a folder holding other files
        let file = dir + "/plain"
        FileManager.default.createFile(atPath: file, contents: Data("x".utf8))
        let t = CLI.run(["make-tiny-model", file + "/model", "--fixtures", Fixtures.root.path])
        XCTAssertEqual(t.status, 1, t.all)
        XCTAssertFalse(t.stderr.contains("NSCocoaErrorDomain") || t.stderr.contains("Domain="), t.stderr)
        XCTAssertTrue(t.stderr.contains("is a file"), t.stderr)
        let t2 = CLI.run(["make-tiny-model", dir, "--fixtures", Fixtures.root.path])
        XCTAssertEqual(t2.status, 1, t2.all)
        XCTAssertTrue(t2.stderr.contains("not empty"), t2.stderr)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["latin1.txt", "plain"])
    }

    /// A .gguf that is not GGUF used to be reported as a bad safetensors header.
    func testRandomBytesGGUFIsReportedAsGGUF() throws {
        let dir = CLI.tempDir("gguf")
        var rng = TestRandom(seed: 5)
        let bytes = (0..<256).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        FileManager.default.createFile(atPath: dir + "/model.gguf", contents: Data(bytes))
        let r = CLI.run(["inspect", dir + "/model.gguf"])
        XCTAssertEqual(r.status, 1, r.all)
        XCTAssertTrue(r.stderr.contains("GGUF"), r.stderr)
        XCTAssertFalse(r.stderr.contains("safetensors"), r.stderr)
    }

    /// gpu-check on a machine without a GPU exits 3 (not 0), so scripts can tell.
    func testGPUCheckWithoutGPUExits3() throws {
        if FileManager.default.fileExists(atPath: "/dev/nvidia0") { throw XCTSkip("this machine has an NVIDIA GPU") }
        let r = CLI.run(["gpu-check"], timeout: 120)
        XCTAssertEqual(r.status, 3, r.all)
        XCTAssertTrue(r.all.contains("no usable CUDA device"), r.all)
    }

    /// `--width -1` is taken for an option by the parser: the error says to write --width=-1.
    func testNegativeNumberHint() throws {
        let r = CLI.run(["generate", "--model", model, "1girl", "--width", "-1"])
        XCTAssertEqual(r.status, 64, r.all)
        XCTAssertTrue(r.stderr.contains("--width=-1"), r.stderr)
        let v = CLI.run(["generate", "--model", model, "1girl", "--width=-1"])
        XCTAssertEqual(v.status, 1, v.all)
        XCTAssertTrue(v.stderr.contains("--width -1"), v.stderr)
    }
}

/// Inputs found by fuzzing, run through the binary.
final class FuzzRegressionTests: XCTestCase {
    /// 20,000 nested brackets in a YAML prompt description crashed `prompt build` (stack overflow).
    func testDeeplyNestedYAMLDescription() {
        let dir = CLI.tempDir("deep")
        FileManager.default.createFile(atPath: dir + "/deep.yaml", contents: Data(String(repeating: "[", count: 20_000).utf8))
        let r = CLI.run(["prompt", "build", dir + "/deep.yaml"])
        XCTAssertTrue(r.exited, "crashed: \(r.stderr.prefix(300))")
        XCTAssertEqual(r.status, 1, r.all)
        XCTAssertTrue(r.stderr.contains("levels deep"), r.stderr)
    }
}
