import Foundation
import XCTest
@testable import NewBieDiffusion
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

/// The FLUX VAE against diffusers `AutoencoderKL` on a tiny FLUX-structured config
/// (tools/reference/make_vae_fixtures.py writes Tests/Fixtures/vae/).
final class VAETests: XCTestCase {
    static let diffusersPath = Fixtures.path("vae/diffusers.safetensors")
    static let aePath = Fixtures.path("vae/ae.safetensors")
    static let configURL = Fixtures.url("vae/config.json")
    static let reference = try! SafeTensorsFile(path: Fixtures.path("vae/reference.safetensors"))

    func ref(_ name: String) throws -> Tensor { try Self.reference.tensor(name) }

    func config() throws -> VAEConfig { try VAEConfig(configJSON: Self.configURL) }

    func loadDiffusers(_ dtype: DType, parts: VAEParts = .all) throws -> AutoencoderKL {
        try AutoencoderKL.load(path: Self.diffusersPath, dtype: dtype, parts: parts)
    }

    func check(_ got: Tensor, _ want: Tensor, tol: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.shape, want.shape, what, file: file, line: line)
        let e = relativeL2(got.to(.f32).toFloats(), want.toFloats())
        print("[VAE] \(what): relative L2 \(String(format: "%.3e", e)) (tolerance \(tol))")
        XCTAssertLessThanOrEqual(e, tol, "\(what): relative L2 \(e)", file: file, line: line)
    }

    // MARK: configuration and naming

    func testConfigJSONIsTheFixtureConfig() throws {
        let c = try config()
        XCTAssertEqual(c.blockOutChannels, [8, 16, 32, 32])
        XCTAssertEqual(c.normNumGroups, 4)
        XCTAssertEqual(c.latentChannels, 16)
        XCTAssertEqual(c.layersPerBlock, 2)
        XCTAssertEqual(c.scalingFactor, 0.3611)
        XCTAssertEqual(c.shiftFactor, 0.1159)
        XCTAssertEqual(c.downscale, 8)
    }

    func testInferredConfigMatchesConfigJSONForBothNamings() throws {
        let want = try config()
        for path in [Self.diffusersPath, Self.aePath] {
            let file = try SafeTensorsFile(path: path)
            let layout = try VAENaming.detect(file)
            XCTAssertEqual(layout.format, path == Self.aePath ? .ae : .diffusers)
            XCTAssertTrue(layout.hasEncoder && layout.hasDecoder)
            let inferred = try VAENaming.inferConfig(file, layout: layout, normGroups: 4)
            XCTAssertEqual(inferred, want, path)
        }
    }

    func testFLUXExpectedTensorCount() {
        // FLUX.1-dev's diffusers VAE has 244 tensors in total (encoder 106, decoder 138).
        XCTAssertEqual(try VAENaming.expectedTensors(.flux1Dev, parts: .encoder).count, 106)
        XCTAssertEqual(try VAENaming.expectedTensors(.flux1Dev, parts: .decoder).count, 138)
        let table = VAENaming.aeTable(levels: 4, layersPerBlock: 2)
        XCTAssertEqual(VAENaming.publishedName("decoder.up_blocks.0.resnets.2.conv1.weight", format: .ae, table: table),
                       "decoder.up.3.block.2.conv1.weight")
        XCTAssertEqual(VAENaming.publishedName("decoder.up_blocks.2.resnets.0.conv_shortcut.bias", format: .ae, table: table),
                       "decoder.up.1.block.0.nin_shortcut.bias")
        XCTAssertEqual(VAENaming.publishedName("decoder.up_blocks.1.upsamplers.0.conv.weight", format: .ae, table: table),
                       "decoder.up.2.upsample.conv.weight")
        XCTAssertEqual(VAENaming.publishedName("encoder.mid_block.attentions.0.to_out.0.weight", format: .ae, table: table),
                       "encoder.mid.attn_1.proj_out.weight")
        XCTAssertEqual(VAENaming.publishedName("encoder.conv_norm_out.bias", format: .ae, table: table), "encoder.norm_out.bias")
    }

    /// A weight source that hides, renames and reshapes tensors of a real file.
    final class Tampered: WeightSource, @unchecked Sendable {
        let base: SafeTensorsFile
        let drop: Set<String>, extra: [String: TensorInfo], reshaped: [String: [Int]]
        init(_ base: SafeTensorsFile, drop: Set<String>, extra: [String: TensorInfo], reshaped: [String: [Int]]) {
            self.base = base; self.drop = drop; self.extra = extra; self.reshaped = reshaped
        }
        var sourceDescription: String { "tampered(\(base.path))" }
        var tensorNames: [String] { base.names.filter { !drop.contains($0) } + extra.keys }
        func tensorInfo(_ name: String) -> TensorInfo? {
            if drop.contains(name) { return nil }
            if let e = extra[name] { return e }
            guard let i = base.info(name) else { return nil }
            if let s = reshaped[name] { return TensorInfo(name: name, dtype: i.dtype, shape: s, dataBegin: i.dataBegin, dataEnd: i.dataEnd) }
            return i
        }
        func loadTensor(_ name: String) throws -> Tensor { try base.tensor(name) }
    }

    func testOneErrorListsEveryProblem() throws {
        for (path, missing, bad, aeNames) in [
            (Self.diffusersPath, "decoder.up_blocks.1.resnets.2.conv2.bias", "decoder.mid_block.attentions.0.to_k.weight", false),
            (Self.aePath, "decoder.up.2.block.2.conv2.bias", "decoder.mid.attn_1.k.weight", true),
        ] {
            let base = try SafeTensorsFile(path: path)
            let info = base.info(bad)!
            let stray = TensorInfo(name: "decoder.stray.weight", dtype: info.dtype, shape: [3], dataBegin: info.dataBegin, dataEnd: info.dataBegin + 6)
            let src = Tampered(base, drop: [missing], extra: ["decoder.stray.weight": stray], reshaped: [bad: [32, 16] + (aeNames ? [1, 1] : [])])
            XCTAssertThrowsError(try AutoencoderKL.load(source: src, config: try config(), parts: .decoder)) { error in
                let m = "\(error)"
                print("[VAE] validation error:\n\(m)")
                XCTAssertTrue(m.contains("missing (1)") && m.contains(missing), m)
                XCTAssertTrue(m.contains("wrong shape (1)") && m.contains(bad), m)
                XCTAssertTrue(m.contains("unexpected (1)") && m.contains("decoder.stray.weight"), m)
                XCTAssertTrue(m.contains(aeNames ? "ae.safetensors" : "diffusers"), m)
            }
        }
    }

    func testWrongConfigIsRefusedBeforeCompute() throws {
        var c = try config()
        c.blockOutChannels = [8, 16, 32, 64]
        XCTAssertThrowsError(try AutoencoderKL.load(source: try SafeTensorsFile(path: Self.diffusersPath), config: c)) { error in
            XCTAssertTrue("\(error)".contains("wrong shape"), "\(error)")
        }
        c = try config()
        c.normNumGroups = 3
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("norm_num_groups"), "\($0)") }
    }

    func testDecoderOnlyIgnoresEncoderAndMissingEncoderIsReported() throws {
        let vae = try loadDiffusers(.f32, parts: .decoder)
        XCTAssertNil(vae.encoder)
        // A file with only the decoder cannot serve the encoder.
        let base = try SafeTensorsFile(path: Self.diffusersPath)
        let decoderOnly = Tampered(base, drop: Set(base.names.filter { $0.hasPrefix("encoder.") }), extra: [:], reshaped: [:])
        XCTAssertThrowsError(try AutoencoderKL.load(source: decoderOnly, config: try config(), parts: .all)) {
            XCTAssertTrue("\($0)".contains("no encoder"), "\($0)")
        }
        XCTAssertNoThrow(try AutoencoderKL.load(source: decoderOnly, config: try config(), parts: .decoder))
    }

    // MARK: numerics against diffusers

    func testDecodeF32MatchesDiffusers() throws {
        let vae = try loadDiffusers(.f32)
        check(vae.decode(try ref("decode.f32/x")), try ref("decode.f32/out"), tol: 1e-4, "decode f32 [16,5,7]")
        check(vae.decodeRaw(try ref("decode_raw.f32/x")), try ref("decode_raw.f32/out"), tol: 1e-4, "decode raw f32 [16,6,4]")
    }

    func testEncodeF32MatchesDiffusers() throws {
        let vae = try loadDiffusers(.f32)
        check(vae.encode(try ref("encode.f32/x")), try ref("encode.f32/out"), tol: 1e-4, "encode f32 [3,40,56]")
        check(vae.encodeMoments(try ref("encode_raw.f32/x")), try ref("encode_raw.f32/out"), tol: 1e-4, "encode moments f32 [3,33,47]")
    }

    func testAENamingGivesTheSameNumbers() throws {
        let ae = try AutoencoderKL.load(path: Self.aePath, dtype: .f32, normGroups: 4)
        XCTAssertEqual(ae.config, try config())
        let d = try loadDiffusers(.f32)
        let x = try ref("decode.f32/x")
        let a = ae.decode(x).toFloats(), b = d.decode(x).toFloats()
        XCTAssertEqual(a, b, "ae.safetensors and diffusers naming must load identical weights")
        check(ae.decode(x), try ref("decode.f32/out"), tol: 1e-4, "decode f32 (ae naming)")
        check(ae.encode(try ref("encode.f32/x")), try ref("encode.f32/out"), tol: 1e-4, "encode f32 (ae naming)")
    }

    func testDecodeBF16MatchesDiffusers() throws {
        let vae = try loadDiffusers(.bf16)
        let out = vae.decode(try ref("decode.bf16/x"))
        XCTAssertEqual(out.dtype, .bf16)
        check(out, try ref("decode.bf16/out"), tol: 2e-2, "decode bf16 vs diffusers bf16")
        check(out, try ref("decode.f32/out"), tol: 2e-2, "decode bf16 vs diffusers f32")
    }

    func testEncodeBF16MatchesDiffusers() throws {
        let vae = try loadDiffusers(.bf16)
        let out = vae.encode(try ref("encode.bf16/x"))
        XCTAssertEqual(out.dtype, .bf16)
        check(out, try ref("encode.bf16/out"), tol: 2e-2, "encode bf16 vs diffusers bf16")
        check(out, try ref("encode.f32/out"), tol: 2e-2, "encode bf16 vs diffusers f32")
    }

    func testF16RunsWithinReducedPrecisionTolerance() throws {
        let vae = try loadDiffusers(.f16)
        let dec = vae.decode(try ref("decode.f32/x"))
        XCTAssertEqual(dec.dtype, .f16)
        check(dec, try ref("decode.f32/out"), tol: 2e-2, "decode f16 vs diffusers f32")
        check(vae.encode(try ref("encode.f32/x")), try ref("encode.f32/out"), tol: 2e-2, "encode f16 vs diffusers f32")
    }

    // MARK: tiled decoding

    func testTileLayoutCoversTheAxisWithOverlap() {
        let t = VAETiling(mode: .always, tileLatent: 12, overlapLatent: 4, blendLatent: 4)
        XCTAssertEqual(t.starts(10), [0])
        XCTAssertEqual(t.starts(12), [0])
        XCTAssertEqual(t.windowLength(13), 9, "two windows of 9 cover 13 with an overlap of 5")
        for n in [13, 20, 24, 31, 128] {
            let s = t.starts(n), len = t.windowLength(n)
            XCTAssertLessThanOrEqual(len, 12)
            XCTAssertEqual(s.first, 0)
            XCTAssertEqual(s.last! + len, n, "last tile must end at the edge for n=\(n)")
            for i in 1..<s.count {
                XCTAssertGreaterThanOrEqual(s[i - 1] + len - s[i], 4, "overlap for n=\(n): \(s)")
                XCTAssertGreaterThan(s[i], s[i - 1])
            }
            // cores partition the axis, each inside its window with half the overlap as context
            let tiles = t.axisTiles(n)
            XCTAssertEqual(tiles.first?.coreStart, 0)
            XCTAssertEqual(tiles.last?.coreEnd, n)
            for i in tiles.indices {
                XCTAssertLessThan(tiles[i].coreStart, tiles[i].coreEnd)
                if i > 0 {
                    XCTAssertEqual(tiles[i].coreStart, tiles[i - 1].coreEnd)
                    XCTAssertGreaterThanOrEqual(tiles[i].coreStart - tiles[i].start, 2)
                    XCTAssertGreaterThanOrEqual(tiles[i - 1].start + tiles[i - 1].length - tiles[i].coreStart, 2)
                }
            }
        }
        // auto tiles for memory only: 1040x1040 (130 cells) decodes untiled, 1600x1536 tiles
        XCTAssertFalse(VAETiling.auto.tiles(latentHeight: 130, latentWidth: 130))
        XCTAssertFalse(VAETiling.auto.tiles(latentHeight: 192, latentWidth: 192))
        XCTAssertTrue(VAETiling.auto.tiles(latentHeight: 200, latentWidth: 192))
        XCTAssertFalse(VAETiling.never.tiles(latentHeight: 512, latentWidth: 512))
        XCTAssertTrue(VAETiling.always.tiles(latentHeight: 129, latentWidth: 8))
        XCTAssertFalse(VAETiling.always.tiles(latentHeight: 128, latentWidth: 8))
    }

    /// A smooth latent (low-frequency waves), as real latents of smooth content are.
    static func smoothLatent(_ c: Int, _ h: Int, _ w: Int) -> Tensor {
        var v = [Float](repeating: 0, count: c * h * w)
        for ch in 0..<c {
            let phase = Float(ch) * 0.7, amp: Float = 0.5 + 0.05 * Float(ch % 5)
            for y in 0..<h {
                for x in 0..<w {
                    let fy = Float(y) / Float(h), fx = Float(x) / Float(w)
                    v[(ch * h + y) * w + x] = amp * Foundation.sin(2.1 * fx + 1.3 * fy + phase) + 0.2 * Foundation.cos(1.7 * fy - 0.9 * fx + phase)
                }
            }
        }
        return Tensor(v, shape: [1, c, h, w])
    }

    /// Tiled decoding with global GroupNorm statistics against the untiled decode, on a smooth
    /// latent. The margin (half the overlap, 8 cells) is below the decoder's receptive field
    /// (about 12 cells), so the tiles are not exact, only close. Small so that debug builds are fast;
    /// `newbie vae-tiling` measures the 1024x1024 case (docs/BENCHMARKS.md, "VAE").
    func testTiledDecodeIsCloseToUntiled() throws {
        let vae = try loadDiffusers(.f32, parts: .decoder)
        let x = Self.smoothLatent(16, 20, 20)
        let untiled = vae.decode(x, tiling: .never)
        let tiled = vae.decode(x, tiling: VAETiling(mode: .always, tileLatent: 18, overlapLatent: 16, blendLatent: 4))
        XCTAssertEqual(tiled.shape, [1, 3, 160, 160])
        let e = relativeL2(tiled.toFloats(), untiled.toFloats())
        print("[VAE] tiled (18/16/4, global GroupNorm statistics) vs untiled, latent 20x20: relative L2 \(String(format: "%.3e", e))")
        XCTAssertLessThanOrEqual(e, 1e-2)
        // A window covering the whole latent is the untiled decode.
        let one = vae.decode(x, tiling: VAETiling(mode: .always, tileLatent: 20, overlapLatent: 4))
        XCTAssertEqual(one.toFloats(), untiled.toFloats())
    }

    /// Exact statistics make one pass over the windows per GroupNorm, then the output pass, and
    /// report each window once.
    func testTiledDecodeReportsProgress() throws {
        let vae = try loadDiffusers(.f32, parts: .decoder)
        let x = Self.smoothLatent(16, 20, 20)
        let layout = VAETiling(mode: .always, tileLatent: 18, overlapLatent: 16, blendLatent: 4)
        var reports: [(Int, Int)] = []
        let out = vae.decode(x, tiling: layout) { reports.append(($0, $1)) }
        XCTAssertFalse(out.toFloats().contains { !$0.isFinite })
        let total = 4 * (vae.requireDecoder().upperGroupNorms + 1)  // 2 x 2 windows
        XCTAssertEqual(layout.passes(groupNorms: vae.requireDecoder().upperGroupNorms) * 4, total)
        XCTAssertEqual(reports.map(\.0), Array(1...total))
        XCTAssertTrue(reports.allSatisfy { $0.1 == total })
        var perWindow = layout
        perWindow.globalNormStatistics = false
        var n = 0
        _ = vae.decode(x, tiling: perWindow) { _, _ in n += 1 }
        XCTAssertEqual(n, 4)
    }

    /// Peak memory of tiled decoding follows the tile, not the image.
    func testTiledDecodePeakMemoryFollowsTheTile() throws {
        let vae = try loadDiffusers(.f32, parts: .decoder)
        let x = Self.smoothLatent(16, 16, 16)
        let backend = Backends.backend(for: .cpu)
        func peak(_ tiling: VAETiling) -> (Int, Tensor) {
            let base = backend.memoryStats.currentBytes
            backend.resetPeakMemory()
            let out = vae.decode(x, tiling: tiling)
            return (backend.memoryStats.peakBytes - base, out)
        }
        let (untiledPeak, untiled) = peak(.never)
        for global in [false, true] {
            let (tiledPeak, tiled) = peak(VAETiling(mode: .always, tileLatent: 6, overlapLatent: 2, blendLatent: 2, globalNormStatistics: global))
            XCTAssertEqual(tiled.shape, untiled.shape)
            XCTAssertLessThan(relativeL2(tiled.toFloats(), untiled.toFloats()), Double.infinity)
            print("[VAE] peak memory, latent 16x16: untiled \(formatBytes(untiledPeak)), tiles of 6 (\(global ? "global" : "per-tile") statistics) \(formatBytes(tiledPeak))")
            XCTAssertLessThan(Double(tiledPeak), 0.5 * Double(untiledPeak))
        }
    }
}
