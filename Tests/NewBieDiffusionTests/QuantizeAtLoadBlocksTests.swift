import XCTest
import Foundation
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// `--quantize dit=q8_0|q6_k|q5_k|q5_0|q4_k|q4_0`: GGML blocks made at load from the float
/// weights must be the layers a GGUF written by `newbie quantize` (QuantizedFileWriter) gives,
/// byte for byte, and the forwards must agree bit for bit.
final class QuantizeAtLoadBlocksTests: XCTestCase {
    /// A folder with a tiny DiT whose linear layers take rows of 256 values (whole K-quant blocks):
    /// dim 256, ffn 256, one layer and one refiner of each kind; cap and CLIP inputs of 32 as
    /// `tinyDiTForward` feeds. Weights are deterministic, about 1/sqrt(fan_in).
    func blockDiT() throws -> String {
        let dir = TestScratch.path("newbie-qal-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let json = """
        {"model_type": "nextdit_clip", "patch_size": 2, "dim": 256, "n_layers": 1, "n_refiner_layers": 1, "n_heads": 2,
         "n_kv_heads": 1, "in_channels": 16, "axes_dims": [32, 48, 48], "axes_lens": [64, 32, 32], "cap_feat_dim": 32,
         "clip_text_dim": 32, "clip_img_dim": 32}
        """
        try json.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        var cfg = NextDiTConfig()
        cfg.dim = 256; cfg.nLayers = 1; cfg.nNoiseRefiner = 1; cfg.nContextRefiner = 1; cfg.nHeads = 2; cfg.nKVHeads = 1
        cfg.ffnHidden = 256; cfg.capFeatDim = 32; cfg.clipTextDim = 32; cfg.adaLNDim = 256
        cfg.axesDims = [32, 48, 48]; cfg.axesLens = [64, 32, 32]
        var tensors: [(String, Tensor)] = []
        for (k, spec) in try cfg.expectedTensors().enumerated() {
            let n = spec.shape.reduce(1, *)
            let isNorm = spec.shape.count == 1 && !spec.name.hasSuffix(".bias")
            let scale: Float = spec.shape.count == 2 ? 1 / Float(spec.shape[1]).squareRoot() : 0.1
            let v = (0..<n).map { i -> Float in
                let s = sin(Float(i) * 0.6180339 + Float(k) * 1.37)
                return isNorm ? 1 + 0.1 * s : scale * s * (i % 17 == 0 ? 3 : 1)  // a few larger values per block
            }
            tensors.append((spec.name, Tensor(v, shape: spec.shape)))
        }
        try SafeTensorsWriter.write(tensors, toPath: dir + "/dit.safetensors")
        return dir
    }

    func atLoad(_ path: String, _ scheme: QuantScheme, dtype: DType = .f32) throws -> NextDiT {
        let precision = ModulePrecision(base: dtype, quantization: ModuleQuantization(rules: [QuantRule(pattern: "", scheme: scheme)]))
        return try NextDiT.load(path: path, placement: ModelPlacement(device: .cpu, precision: precision))
    }

    func layers(_ m: NextDiT) -> [(String, Linear)] {
        let b = m.layers[0]
        return [("qkv", b.qkv), ("out", b.out), ("w1", b.w1), ("w2", b.w2), ("w3", b.w3)]
    }

    func testEveryBlockTypeAtLoadIsTheQuantizedFileBitForBit() throws {
        let dir = try blockDiT()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = dir + "/dit.safetensors"
        let float = try NextDiT.load(path: source, dtype: .f32)
        let reference = try tinyDiTForward(float).toFloats()
        let pairs: [(QuantizedFileTarget, QuantScheme)] = [(.q8_0, .q8_0), (.q6_K, .q6_K), (.q5_K, .q5_K), (.q5_0, .q5_0), (.q4_K, .q4_K), (.q4_0, .q4_0)]
        for (target, scheme) in pairs {
            let file = dir + "/dit-\(target.rawValue).gguf"
            let report = try QuantizedFileWriter(target: target, architecture: "lumina2").write(try openWeights(path: source), to: file)
            XCTAssertTrue(report.quantized.contains("layers.0.feed_forward.w2.weight"), target.rawValue)
            let fromFile = try NextDiT.load(path: file, dtype: .f32)
            let fromFlag = try atLoad(source, scheme)
            for ((name, a), (_, b)) in zip(layers(fromFile), layers(fromFlag)) {
                let qa = try XCTUnwrap(a.quantized, "\(target.rawValue) \(name) from the file")
                let qb = try XCTUnwrap(b.quantized, "\(target.rawValue) \(name) at load")
                XCTAssertEqual(qb.scheme, scheme)
                XCTAssertEqual(qa.scheme, qb.scheme)
                XCTAssertEqual(qa.shape, qb.shape)
                XCTAssertEqual(qa.q.shape, qb.q.shape)
                XCTAssertEqual(Data(bytes: qa.q.contiguous().hostPointer, count: qa.q.byteCount),
                               Data(bytes: qb.q.contiguous().hostPointer, count: qb.q.byteCount), "\(target.rawValue) \(name)")
                // blocks are held, not a widened copy: fewer bytes than the fp32 weight
                XCTAssertLessThan(qb.byteCount, qb.shape.reduce(1, *) * 4)
            }
            // the layers kept in 16 bits by default stay float on both sides
            XCTAssertNil(fromFlag.finalLinear.quantized)
            XCTAssertNil(fromFlag.noiseRefiner[0].qkv.quantized)
            let a = try tinyDiTForward(fromFile).toFloats(), b = try tinyDiTForward(fromFlag).toFloats()
            XCTAssertFalse(b.contains { !$0.isFinite }, target.rawValue)
            XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), target.rawValue)
            // and it is quantized: not the float model's output
            XCTAssertNotEqual(b.map(\.bitPattern), reference.map(\.bitPattern), target.rawValue)
        }
    }

    /// bf16 compute: the same blocks widened to bf16 per call, still equal to the file's.
    func testBF16ComputeAgreesWithTheFile() throws {
        let dir = try blockDiT()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/dit.gguf"
        _ = try QuantizedFileWriter(target: .q4_K, architecture: "lumina2").write(try openWeights(path: dir + "/dit.safetensors"), to: file)
        let a = try tinyDiTForward(try NextDiT.load(path: file, dtype: .bf16)).to(.f32).toFloats()
        let b = try tinyDiTForward(try atLoad(dir + "/dit.safetensors", .q4_K, dtype: .bf16)).to(.f32).toFloats()
        XCTAssertFalse(b.contains { !$0.isFinite })
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern))
    }

    /// Rows that are not whole blocks: an error naming the flag, the type and the layer, before any
    /// weight is quantized; 32-value types accept the 64-wide fixture DiT.
    func testRowsThatAreNotWholeBlocksNameTheFlagAndLayer() throws {
        let fixture = Fixtures.path("quantfiles/dit.safetensors")
        XCTAssertThrowsError(try atLoad(fixture, .q4_K)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("--quantize q4_k") && m.contains("layers.0.") && m.contains("256-value Q4_K blocks"), m)
        }
        let q8 = try atLoad(fixture, .q8_0)
        XCTAssertEqual(q8.layers[0].qkv.quantized?.scheme, .q8_0)
        XCTAssertFalse(try tinyDiTForward(q8).toFloats().contains { !$0.isFinite })
    }

    /// `--offload` streams blocks made at load as it streams a file's: identical forwards.
    func testOffloadedBlocksAtLoadAreIdenticalToResident() throws {
        let fixture = Fixtures.path("quantfiles/dit.safetensors")
        func load(offload: Bool) throws -> NextDiT {
            let precision = ModulePrecision(base: .f32, quantization: ModuleQuantization(rules: [QuantRule(pattern: "", scheme: .q8_0)]))
            return try NextDiT.load(path: fixture, placement: ModelPlacement(name: "dit", device: .cpu, precision: precision, offload: offload))
        }
        let streamed = try load(offload: true)
        XCTAssertNotNil(streamed.streamedBlocks)
        XCTAssertEqual(streamed.layers[0].qkv.quantized?.scheme, .q8_0)
        let a = try tinyDiTForward(streamed).toFloats(), b = try tinyDiTForward(try load(offload: false)).toFloats()
        XCTAssertFalse(b.contains { !$0.isFinite })
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern))
    }

    func testSchemeAtLoadFollowsTheWriter() throws {
        XCTAssertEqual(try QuantScheme.q8_0.atLoad(shape: [32, 32], path: "a"), .none)      // 1024 values: left as stored
        XCTAssertEqual(try QuantScheme.q8_0.atLoad(shape: [33, 32], path: "a"), .q8_0)
        XCTAssertEqual(try QuantScheme.int8.atLoad(shape: [3, 5], path: "a"), .int8)      // not a block type: unchanged
        XCTAssertThrowsError(try QuantScheme.q6_K.atLoad(shape: [64, 96], path: "layers.3.x", flag: "--quantize")) { e in
            XCTAssertTrue("\(e)".contains("--quantize q6_k") && "\(e)".contains("layers.3.x") && "\(e)".contains("rows of 96"), "\(e)")
        }
        XCTAssertEqual(QuantScheme(userName: "q4_k"), .q4_K)
        XCTAssertEqual(QuantScheme(userName: "q5_0"), .q5_0)
        XCTAssertNil(QuantScheme(userName: "q3_k"))
    }
}
