import Foundation
import XCTest
import NewBieImage
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

final class PNGTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = URL(fileURLWithPath: TestScratch.path("newbie-png-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: dir)
    }

    static let text: [(key: String, value: String)] = [
        ("prompt", "<character>1girl</character> & \"quotes\"\nsecond line"),
        ("seed", "1234"),
        ("comment", "unicode: caf\u{e9} \u{732b}"),
    ]

    func randomImage(width: Int, height: Int, seed: UInt64) -> RGBImage {
        var rng = TestRandom(seed: seed)
        var px = (0..<(width * height * 3)).map { _ in UInt8(truncatingIfNeeded: rng.next() >> 56) }
        px[0] = 0; px[1] = 255  // the extremes are there
        return RGBImage(width: width, height: height, pixels: px)
    }

    /// A PNG written by PIL (tools/reference/make_vae_fixtures.py) reads back to PIL's pixels and text.
    func testReadsPILWrittenPNG() throws {
        let decoded = try PNG.read(Fixtures.path("vae/pil.png"))
        let ref = try SafeTensorsFile(path: Fixtures.path("vae/pil_pixels.safetensors"))
        let px = try ref.tensor("pixels")
        XCTAssertEqual(px.shape, [13, 21, 3])
        XCTAssertEqual(decoded.image.width, 21)
        XCTAssertEqual(decoded.image.height, 13)
        XCTAssertEqual(decoded.image.pixels.map(Int.init), px.toInts())
        for key in ["prompt", "seed", "comment"] {
            XCTAssertEqual(decoded.textValue(key), ref.metadata[key], key)
        }
        XCTAssertNotNil(ref.metadata["comment"]?.unicodeScalars.first { $0.value > 127 }, "the fixture has a non-ASCII text")
    }

    func testRoundTripKeepsPixelsAndText() throws {
        let img = randomImage(width: 37, height: 23, seed: 7)
        let path = dir.appendingPathComponent("round.png").path
        try PNG.write(img, to: path, text: Self.text)
        let back = try PNG.read(path)
        XCTAssertEqual(back.image, img)
        XCTAssertEqual(back.sourceBitDepth, 8)
        XCTAssertEqual(back.sourceColorType, 2)  // RGB
        XCTAssertEqual(back.text.map { $0.key }, Self.text.map { $0.key })
        XCTAssertEqual(back.text.map { $0.value }, Self.text.map { $0.value })
        // no temporary file is left beside the image
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["round.png"])
    }

    /// pngcheck (an independent reader) validates the structure, CRCs and zlib stream of a PNG we
    /// wrote, and shows our text chunks.
    func testPngcheckAcceptsOurPNG() throws {
        guard let pngcheck = ["/usr/bin/pngcheck", "/usr/local/bin/pngcheck"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw XCTSkip("pngcheck is not installed (apt-get install pngcheck); skipping the independent PNG check")
        }
        let path = dir.appendingPathComponent("check.png").path
        try PNG.write(randomImage(width: 64, height: 48, seed: 3), to: path, text: Self.text)
        let (status, output) = run(pngcheck, ["-vt", path])
        print("[PNG] pngcheck:\n\(output)")
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(output.contains("No errors detected"), output)
        XCTAssertTrue(output.contains("64 x 48 image, 24-bit RGB, non-interlaced"), output)
        XCTAssertTrue(output.contains("keyword: prompt") && output.contains("keyword: seed") && output.contains("keyword: comment"), output)
        XCTAssertTrue(output.contains("1234"), output)
    }

    /// When a Python with Pillow is available (NEWBIE_REFERENCE_PYTHON, default python3), PIL reads
    /// our PNG back with identical pixels and text.
    func testPILReadsOurPNG() throws {
        let python = ProcessInfo.processInfo.environment["NEWBIE_REFERENCE_PYTHON"] ?? "/usr/bin/python3"
        guard FileManager.default.isExecutableFile(atPath: python), run(python, ["-c", "import PIL"]).0 == 0 else {
            throw XCTSkip("no Python with Pillow at \(python) (set NEWBIE_REFERENCE_PYTHON); skipping the PIL cross-check")
        }
        let img = randomImage(width: 19, height: 11, seed: 11)
        let path = dir.appendingPathComponent("pil.png").path
        try PNG.write(img, to: path, text: Self.text)
        let script = """
        import json, sys
        from PIL import Image
        im = Image.open(sys.argv[1])
        print(json.dumps({"mode": im.mode, "size": im.size, "text": dict(im.text), "pixels": list(im.tobytes())}))
        """
        let (status, out) = run(python, ["-c", script, path])
        XCTAssertEqual(status, 0, out)
        let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
        XCTAssertEqual(obj["mode"] as? String, "RGB")
        XCTAssertEqual(obj["size"] as? [Int], [19, 11])
        XCTAssertEqual((obj["pixels"] as? [Int])?.map { UInt8($0) }, img.pixels)
        let text = try XCTUnwrap(obj["text"] as? [String: String])
        for (k, v) in Self.text { XCTAssertEqual(text[k], v, k) }
    }

    func testRejectsCorruptPNGs() throws {
        let good = try Data(contentsOf: Fixtures.url("vae/pil.png"))
        func expectError(_ data: Data, _ fragment: String, _ what: String) throws {
            let path = dir.appendingPathComponent("bad.png").path
            try data.write(to: URL(fileURLWithPath: path))
            XCTAssertThrowsError(try PNG.read(path), what) { error in
                let m = "\(error)"
                print("[PNG] \(what): \(m)")
                XCTAssertTrue(m.contains(path) && m.lowercased().contains(fragment.lowercased()), "\(what): \(m)")
            }
        }
        try expectError(Data("definitely not a png".utf8), "signature", "not a PNG")
        try expectError(good.prefix(good.count / 2), "not a valid PNG", "truncated")
        var flipped = good
        let idat = try XCTUnwrap(good.range(of: Data("IDAT".utf8)))
        flipped[idat.upperBound + 10] ^= 0x40
        try expectError(flipped, "not a valid PNG", "flipped byte in IDAT")
        var text = good
        let seed = try XCTUnwrap(good.range(of: Data("seed".utf8)))
        text[seed.upperBound + 1] ^= 0x01  // inside the tEXt value: only the CRC can tell
        try expectError(text, "CRC", "flipped byte in a tEXt chunk")
        var badHeader = good
        badHeader[16 + 3] = 0  // width 21 -> 0 (the IHDR CRC no longer matches either)
        try expectError(badHeader, "not a valid PNG", "zero width")
        XCTAssertThrowsError(try PNG.read(dir.appendingPathComponent("missing.png").path)) {
            XCTAssertTrue("\($0)".contains("cannot open"), "\($0)")
        }
    }

    /// Found by fuzzing: a 96-byte PNG whose tEXt chunk declares 1.6 GB made libpng allocate the
    /// declared length before reading (11 s, 1.6 GB). A chunk running past the end of the file
    /// is now refused before libpng sees it.
    func testChunkLongerThanTheFileIsRefusedCheaply() throws {
        let bytes = Data(base64Encoded: "iVBORw0KGgoAAAANSUhEUgAAAAQAAAADCAIAAAA7ljmRZGIAE3RFWHRuZXdiaWU6cHJvbXB0ADFnaXJsdqWNegAAABhJREFUeJxlYGBkYmbg5OJmwEkBAA2PSUSuQmCC")!
        let path = dir.appendingPathComponent("long-chunk.png").path
        FileManager.default.createFile(atPath: path, contents: bytes)
        let start = Date()
        XCTAssertThrowsError(try PNG.read(path)) {
            XCTAssertTrue("\($0)".contains("chunk tEXt") && "\($0)".contains("1684144147"), "\($0)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.0)
    }

    func testWriteIsAtomic() throws {
        let path = dir.appendingPathComponent("out.png").path
        try PNG.write(randomImage(width: 8, height: 8, seed: 1), to: path)
        let second = randomImage(width: 9, height: 5, seed: 2)
        try PNG.write(second, to: path, text: [("seed", "2")])
        XCTAssertEqual(try PNG.read(path).image, second)
        // A failing write (bad key) leaves the old image in place and no temporary file.
        XCTAssertThrowsError(try PNG.write(second, to: path, text: [(" bad", "x")]))
        XCTAssertThrowsError(try PNG.write(second, to: dir.appendingPathComponent("no/such/dir/x.png").path)) {
            XCTAssertTrue("\($0)".contains("cannot create"), "\($0)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["out.png"])
        XCTAssertEqual(try PNG.read(path).image, second)
    }

    func testTensorImageConversion() {
        // [-1, 1] -> (x+1)/2 -> *255, clamped, then truncated (default: the official demo and
        // ComfyUI) or rounded half to even (diffusers); NaN -> 0
        let t = Tensor([-1, 0, 1, 2, -3, Float.nan,
                        0.5, -0.5, 1 / 255 - 1, 0, 0, 0,
                        0, 0, 0, 0, 0, 0], shape: [1, 3, 2, 3])
        let img = RGBImage(tensor: t, rounding: .round)
        XCTAssertEqual(img.width, 3)
        XCTAssertEqual(img.height, 2)
        // pixel (0,0) = R -1, G 0.5, B 0
        XCTAssertEqual(Array(img.pixels[0..<3]), [0, 191, 128])
        XCTAssertEqual(Array(img.pixels[3..<6]), [128, 64, 128])
        XCTAssertEqual(Array(img.pixels[6..<9]), [255, 0, 128])
        XCTAssertEqual(img.pixels[9], 255)   // 2 clamps to 1
        XCTAssertEqual(img.pixels[12], 0)    // -3 clamps to 0
        XCTAssertEqual(img.pixels[15], 0)    // NaN
        // truncation: 127.5 -> 127, 63.75 -> 63, 191.25 -> 191, 0.5 -> 0
        let tr = RGBImage(tensor: t)
        XCTAssertEqual(tr, RGBImage(tensor: t, rounding: .truncate))
        XCTAssertEqual(Array(tr.pixels[0..<3]), [0, 191, 127])
        XCTAssertEqual(Array(tr.pixels[3..<6]), [127, 63, 127])
        XCTAssertEqual(Array(tr.pixels[6..<9]), [255, 0, 127])
        XCTAssertEqual([tr.pixels[9], tr.pixels[12], tr.pixels[15]], [255, 0, 0])
        // pixels -> tensor -> pixels is exact when rounding; truncation can lose a level where
        // p / 255 * 2 - 1 comes back a hair below p / 255
        let rnd = randomImage(width: 5, height: 4, seed: 9)
        let back = RGBImage(tensor: rnd.tensor(), rounding: .round)
        XCTAssertEqual(back, rnd)
        let backT = RGBImage(tensor: rnd.tensor())
        XCTAssertTrue(zip(backT.pixels, rnd.pixels).allSatisfy { $0 == $1 || $0 + 1 == $1 })
        XCTAssertEqual(rnd.tensor().shape, [1, 3, 4, 5])
        XCTAssertEqual(PixelRounding.parse("Round"), .round)
        XCTAssertNil(PixelRounding.parse("nearest"))
    }

    func run(_ exe: String, _ args: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        do { try p.run() } catch { return (-1, "\(error)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }
}
