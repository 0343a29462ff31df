import Foundation
import XCTest
import NewBieImage
import NewBieTestSupport
import NewBieWeights

/// The command line's surface: version, option names, help, steps, --save-steps, inspect.
final class CommandTests: XCTestCase {
    var model: String { CLI.tinyModel }

    func testVersion() {
        let r = CLI.run(["--version"])
        XCTAssertEqual(r.status, 0, r.all)
        XCTAssertTrue(r.out.hasPrefix("newbie "), r.out)
        for key in ["commit:", "built:", "backends: cpu", "cuda"] { XCTAssertTrue(r.out.contains(key), "\(key): \(r.out)") }
    }

    /// -o, --output and --out are one option on every command that writes.
    func testOutputAndOutAreOneOption() throws {
        let dir = CLI.tempDir("out")
        XCTAssertEqual(CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["--out", "g.png"], cwd: dir).status, 0)
        XCTAssertEqual(CLI.run(["encode", "--model", model, "1girl", "--out", "c.safetensors"], cwd: dir).status, 0)
        XCTAssertEqual(CLI.run(["denoise", "--cond", "c.safetensors", "--model", model, "--width", "32", "--height", "32", "--steps", "2", "--quiet", "--out", "l.safetensors"], cwd: dir).status, 0)
        XCTAssertEqual(CLI.run(["decode", "--latent", "l.safetensors", "--model", model, "--out", "d.png"], cwd: dir).status, 0)
        let v = CLI.run(["vae-decode", "--vae", model + "/vae", "--latent", "l.safetensors", "--output", "v.png"], cwd: dir)
        XCTAssertEqual(v.status, 0, v.all)
        let e = CLI.run(["vae-encode", "--vae", model + "/vae", "--image", "v.png", "--output", "e.safetensors"], cwd: dir)
        XCTAssertEqual(e.status, 0, e.all)
        for f in ["g.png", "c.safetensors", "l.safetensors", "d.png", "v.png", "e.safetensors"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/" + f), f)
        }
    }

    /// Each stage command lists only the model slots it uses.
    func testStageHelpListsOnlyItsSlots() {
        let decode = CLI.run(["decode", "--help"]).out
        XCTAssertTrue(decode.contains("--vae"), decode)
        for other in ["--dit", "--gemma", "--jina"] { XCTAssertFalse(decode.contains(other), "decode --help lists \(other)") }
        let denoise = CLI.run(["denoise", "--help"]).out
        XCTAssertTrue(denoise.contains("--dit"))
        for other in ["--vae", "--gemma", "--jina"] { XCTAssertFalse(denoise.contains(other + " "), "denoise --help lists \(other)") }
        let encode = CLI.run(["encode", "--help"]).out
        XCTAssertTrue(encode.contains("--gemma") && encode.contains("--jina"))
        for other in ["--vae ", "--dit "] { XCTAssertFalse(encode.contains(other), "encode --help lists \(other)") }
    }

    /// Help texts stand alone: no citations of documents that are not in the repository.
    func testHelpTextsCiteNothingOutside() {
        for cmd in [["generate"], ["encode-text"], ["bench-pipeline"], ["encode"], ["denoise"], ["decode"], ["inspect"], []] {
            let h = CLI.run(cmd + ["--help"]).out
            XCTAssertFalse(h.contains("spec ") || h.contains("spec§") || h.contains("shared/"), "\(cmd): \(h)")
        }
    }

    /// Progress shows the --steps the user gave (grid points) beside the sampler's steps.
    func testProgressShowsTheStepsAsked() {
        let r = CLI.run(["generate", "--model", model, "1girl", "--width", "32", "--height", "32", "--steps", "4", "-o", CLI.tempDir("steps") + "/x.png"])
        XCTAssertEqual(r.status, 0, r.all)
        XCTAssertTrue(r.stderr.contains("grid point 4/4"), r.stderr)
        XCTAssertTrue(r.stderr.contains("3/3 steps"), r.stderr)
    }

    /// --save-steps works on generate as on denoise (one sub-folder per image when several).
    func testSaveStepsOnGenerate() throws {
        let dir = CLI.tempDir("save")
        let r = CLI.run(["generate", "--model", model, "1girl", "--count", "2"] + CLI.quick + ["-o", "x-{index}.png", "--save-steps", "steps"], cwd: dir)
        XCTAssertEqual(r.status, 0, r.all)
        for i in 0..<2 {
            let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/steps/image-\(i)").sorted()
            XCTAssertEqual(files, ["eval_000.safetensors", "eval_001.safetensors", "step_000.safetensors"], "\(files)")
            let f = try SafeTensorsFile(path: dir + "/steps/image-\(i)/eval_000.safetensors")
            XCTAssertEqual(f.names, ["velocity", "x"])
        }
    }

    /// inspect on a model root lists its parts.
    func testInspectModelRoot() {
        let r = CLI.run(["inspect", model])
        XCTAssertEqual(r.status, 0, r.all)
        for part in ["transformer/ (--dit)", "text_encoder/ (--gemma)", "clip_model/ (--jina)", "vae/ (--vae)"] {
            XCTAssertTrue(r.out.contains(part), "\(part): \(r.out)")
        }
        let j = CLI.run(["inspect", model, "--json"])
        XCTAssertEqual(j.status, 0, j.all)
        XCTAssertTrue(j.out.contains("\"parts\""), j.out)
    }
}

/// What a PNG records: a command that makes it again; long prompts are reported when cut.
final class MetadataTests: XCTestCase {
    var model: String { CLI.tinyModel }

    /// newbie:command, run as written from another folder, makes the same image at the same path.
    func testCommandInPNGReproducesTheImage() throws {
        let dir = CLI.tempDir("repro")
        let r = CLI.run(["generate", "--model", model, "1girl, it's \"quoted\"", "--negative-prompt", "bad hands", "--seed", "42",
                         "--cfg", "3.5", "--sampler", "euler"] + CLI.quick + ["-o", "sub/out-{seed}.png"], cwd: dir)
        XCTAssertEqual(r.status, 0, r.all)
        let path = dir + "/sub/out-42.png"
        let first = try PNG.read(path)
        let command = try XCTUnwrap(first.textValue("newbie:command"))
        XCTAssertTrue(command.contains(path), command)
        XCTAssertNil(first.textValue("newbie:prompt"), "the prompt is stored once, in the command")
        try FileManager.default.moveItem(atPath: path, toPath: dir + "/first.png")
        XCTAssertEqual(CLI.pngPrompt(dir + "/first.png"), "1girl, it's \"quoted\"")
        let binDir = URL(fileURLWithPath: CLI.binary).deletingLastPathComponent().path
        let other = CLI.tempDir("repro-elsewhere")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command]
        p.currentDirectoryURL = URL(fileURLWithPath: other)
        var env = ProcessInfo.processInfo.environment
        env["PATH"] = binDir + ":" + (env["PATH"] ?? "/usr/bin:/bin")
        p.environment = env
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, command)
        let again = try PNG.read(path)
        XCTAssertEqual(again.image, first.image, "the command made a different image: \(command)")
        XCTAssertEqual(again.textValue("newbie:command"), command)
    }

    /// A prompt longer than the encoders' limits is cut with a warning giving the counts.
    func testLongPromptWarns() throws {
        let long = Array(repeating: "1girl, red eyes, long hair", count: 150).joined(separator: ", ")
        let r = CLI.run(["generate", "--model", model, long, "--width", "32", "--height", "32", "--steps", "2", "-o", CLI.tempDir("long") + "/x.png"])
        XCTAssertEqual(r.status, 0, r.all)
        XCTAssertTrue(r.stderr.contains("Gemma's limit: 512 of"), r.stderr)
        XCTAssertTrue(r.stderr.contains("dropped"), r.stderr)
        let short = CLI.run(["generate", "--model", model, "1girl", "--width", "32", "--height", "32", "--steps", "2", "-o", CLI.tempDir("short") + "/x.png"])
        XCTAssertFalse(short.stderr.contains("warning"), short.stderr)
    }
}
