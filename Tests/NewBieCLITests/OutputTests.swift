import Foundation
import XCTest
import NewBieImage
import NewBieTestSupport
import NewBieWeights

/// Where outputs go: any file name works, nothing but a regular file is replaced, symbolic links
/// are written through, `-` is standard output.
final class OutputTests: XCTestCase {
    var model: String { CLI.tinyModel }

    /// A one-character output name used to crash (SIGILL in the parent-folder code) after all the compute.
    func testOneCharacterOutputNames() throws {
        let dir = CLI.tempDir("short")
        for name in ["a", "b.png", "x/y"] {
            let r = CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["-o", name], cwd: dir)
            XCTAssertTrue(r.exited, "\(name): crashed: \(r.all)")
            XCTAssertEqual(r.status, 0, "\(name): \(r.all)")
            XCTAssertTrue(CLI.isPNG(dir + "/" + name), name)
        }
    }

    /// One-character model file names used the same crashing path code (the folder of --dit,
    /// --gemma, --jina files).
    func testOneCharacterModelFileNames() throws {
        let dir = CLI.tempDir("short-model")
        // (the tiny Gemma and VAE need their config.json beside them, so they are given as folders)
        for (slot, folder, file) in [("d", "transformer", "diffusion_pytorch_model.safetensors"), ("g", "text_encoder", "model.safetensors"),
                                     ("j", "clip_model", "model.safetensors"), ("v", "vae", "diffusion_pytorch_model.safetensors")] {
            try FileManager.default.copyItem(atPath: model + "/" + folder + "/" + file, toPath: dir + "/" + slot)
        }
        let r = CLI.run(["generate", "--dit", "d", "--gemma", model + "/text_encoder", "--gemma-tokenizer", model + "/text_encoder/tokenizer.json",
                         "--jina", "j", "--jina-tokenizer", model + "/clip_model/tokenizer.json", "--vae", model + "/vae", "1girl"] + CLI.quick + ["-o", "o.png"], cwd: dir)
        XCTAssertTrue(r.exited, "crashed: \(r.all)")
        XCTAssertEqual(r.status, 0, r.all)
        XCTAssertTrue(CLI.isPNG(dir + "/o.png"))
        for part in ["d", "g", "j", "v"] {
            let i = CLI.run(["inspect", part], cwd: dir)
            XCTAssertTrue(i.exited, "inspect \(part) crashed: \(i.all)")
        }
    }

    /// A device, a pipe or a folder at the output path is refused before any work and left as it is.
    func testRefusesTargetsThatAreNotRegularFiles() throws {
        let dir = CLI.tempDir("special")
        let fifo = dir + "/pipe.png"
        XCTAssertEqual(mkfifo(fifo, 0o644), 0)
        let folder = dir + "/folder.png"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        for (target, what) in [(fifo, "named pipe"), (folder, "folder")] {
            let r = CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["-o", target], timeout: 60)
            XCTAssertEqual(r.status, 1, r.all)
            XCTAssertTrue(r.stderr.contains(target) && r.stderr.contains(what), r.stderr)
            XCTAssertFalse(r.stderr.contains("step"), "refused only after the work: \(r.stderr)")
        }
        XCTAssertEqual(CLI.fileType(fifo), S_IFIFO)
        XCTAssertEqual(CLI.fileType(folder), S_IFDIR)
        // the stage commands too
        let r = CLI.run(["encode", "--model", model, "1girl", "-o", fifo], timeout: 60)
        XCTAssertEqual(r.status, 1, r.all)
        XCTAssertEqual(CLI.fileType(fifo), S_IFIFO)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["folder.png", "pipe.png"])
    }

    /// A symbolic link at the output path is written through: the link stays, its target gets the image.
    func testWritesThroughSymbolicLinks() throws {
        let dir = CLI.tempDir("link")
        try FileManager.default.createDirectory(atPath: dir + "/real", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link.png", withDestinationPath: "real/target.png")
        let r = CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["-o", "link.png"], cwd: dir)
        XCTAssertEqual(r.status, 0, r.all)
        XCTAssertEqual(CLI.fileType(dir + "/link.png"), S_IFLNK)
        XCTAssertTrue(CLI.isPNG(dir + "/real/target.png"))
        // a replaced file keeps its permissions
        chmod(dir + "/real/target.png", 0o600)
        XCTAssertEqual(CLI.run(["generate", "--model", model, "1boy"] + CLI.quick + ["-o", "link.png"], cwd: dir).status, 0)
        var st = stat()
        XCTAssertEqual(stat(dir + "/real/target.png", &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
        XCTAssertEqual(CLI.pngPrompt(dir + "/link.png"), "1boy")
    }

    /// `-o -` writes to standard output for every command that writes a file; no file named - appears.
    func testDashIsStandardOutput() throws {
        let dir = CLI.tempDir("stdout")
        let g = CLI.run(["generate", "--model", model, "1girl"] + CLI.quick + ["-o", "-"], cwd: dir)
        XCTAssertEqual(g.status, 0, g.stderr)
        XCTAssertEqual(g.stdout.prefix(8), CLI.pngSignature)
        let png = dir + "/g.png"
        FileManager.default.createFile(atPath: png, contents: g.stdout)
        XCTAssertEqual(CLI.pngPrompt(png), "1girl")

        let e = CLI.run(["encode", "--model", model, "1girl", "-o", "-"], cwd: dir)
        XCTAssertEqual(e.status, 0, e.stderr)
        let cond = dir + "/cond.safetensors"
        FileManager.default.createFile(atPath: cond, contents: e.stdout)
        XCTAssertTrue(try SafeTensorsFile(path: cond).names.contains("cap_feats"))

        let d = CLI.run(["denoise", "--cond", cond, "--model", model, "--width", "32", "--height", "32", "--steps", "2", "--quiet", "-o", "lat.safetensors"], cwd: dir)
        XCTAssertEqual(d.status, 0, d.all)
        let dec = CLI.run(["decode", "--latent", "lat.safetensors", "--model", model, "-o", "-"], cwd: dir)
        XCTAssertEqual(dec.status, 0, dec.stderr)
        XCTAssertEqual(dec.stdout.prefix(8), CLI.pngSignature)

        let desc = dir + "/d.json"
        FileManager.default.createFile(atPath: desc, contents: Data(#"{"characters": [{"name": "miku"}]}"#.utf8))
        let b = CLI.run(["prompt", "build", desc, "-o", "-"], cwd: dir)
        XCTAssertEqual(b.status, 0, b.all)
        XCTAssertTrue(b.out.contains("<character_1>"), b.out)

        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/-"))
        // several images cannot share standard output: refused before any work
        let two = CLI.run(["generate", "--model", model, "1girl", "--count", "2"] + CLI.quick + ["-o", "-"], cwd: dir)
        XCTAssertEqual(two.status, 1, two.all)
        XCTAssertTrue(two.stderr.contains("standard output"), two.stderr)
        XCTAssertTrue(two.stdout.isEmpty)
    }

    /// The write leaves no temporary file beside the output, and a failed write leaves the old file.
    func testNoTemporaryFilesLeft() throws {
        let dir = CLI.tempDir("tmp")
        XCTAssertEqual(CLI.run(["generate", "--model", model, "1girl", "--count", "2"] + CLI.quick + ["-o", "img-{index}.png"], cwd: dir).status, 0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["img-0.png", "img-1.png"])
    }
}

/// An interrupt between writing and renaming leaves no hidden temporary file behind.
final class InterruptTests: XCTestCase {
    func testInterruptRemovesTemporaryFile() throws {
        let model = CLI.tinyModel
        for attempt in 0..<6 {
            let dir = CLI.tempDir("sigint-\(attempt)")
            let p = Process()
            p.executableURL = URL(fileURLWithPath: CLI.binary)
            p.arguments = ["generate", "--model", model, "1girl", "--width", "256", "--height", "256", "--steps", "2", "--quiet", "-o", dir + "/out.png"]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            // wait for the temporary file, freeze the process inside the write, then interrupt it
            var caught = false
            while p.isRunning {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
                if names.contains(where: { $0.hasPrefix(".out.png.") }) {
                    kill(p.processIdentifier, SIGSTOP)
                    let still = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).contains { $0.hasPrefix(".out.png.") }
                    kill(p.processIdentifier, SIGINT)
                    kill(p.processIdentifier, SIGCONT)
                    caught = still
                    break
                }
                usleep(200)
            }
            p.waitUntilExit()
            guard caught else { continue }
            XCTAssertEqual(p.terminationReason, .uncaughtSignal)
            let left = try FileManager.default.contentsOfDirectory(atPath: dir)
            XCTAssertFalse(left.contains { $0.contains(".tmp") }, "temporary file left: \(left)")
            XCTAssertFalse(left.contains("out.png"), "a half-written image appeared")
            return
        }
        throw XCTSkip("never caught the process between writing and renaming")
    }
}
