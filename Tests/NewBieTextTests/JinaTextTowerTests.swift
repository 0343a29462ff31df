import Foundation
import XCTest
@testable import NewBieText
import NewBieTensor
@testable import NewBieWeights
import NewBieTestSupport

/// The tiny Jina text tower against the PyTorch reference (transformers JinaEmbeddingsV3Model with
/// the LoRA merged as Jina's LoRAParametrization does; tools/reference/make_jina_fixtures.py).
final class JinaTextTowerTests: XCTestCase {
    static let tiny = JinaConfig(vocabSize: 306, hidden: 64, layers: 2, heads: 4, intermediate: 128)

    func reference() throws -> (ids: [[Int]], fp32: [Float], bf16: [Float], loraEffect: Float, texts: [String]) {
        let f = try SafeTensorsFile(path: Fixtures.path("jina/tower_cases.safetensors"))
        let ids = try f.tensor("input_ids")
        let l = ids.shape[1]
        let flat = ids.toInts()
        let rows = (0..<ids.shape[0]).map { Array(flat[($0 * l)..<(($0 + 1) * l)]) }
        let texts = try JSONSerialization.jsonObject(with: Data(f.metadata["texts"]!.utf8)) as! [String]
        return (rows, try f.tensor("pooled_fp32").toFloats(), try f.tensor("pooled_bf16").toFloats(),
                try f.tensor("pooled_nolora_diff").toFloats()[0], texts)
    }

    func testFixtureBatchIsPaddedAndLoRAMatters() throws {
        let r = try reference()
        XCTAssertEqual(r.ids.count, 2)
        XCTAssertTrue(r.ids[1].contains(1), "second sample should be padded")
        XCTAssertFalse(r.ids[0].contains(1))
        XCTAssertGreaterThan(r.loraEffect, 0.05, "the reference LoRA must change the output")
    }

    func testOfficialLayoutFP32() throws {
        let r = try reference()
        let tower = try JinaTextTower(path: Fixtures.path("jina/tower_official.safetensors"), config: Self.tiny, dtype: .f32)
        XCTAssertEqual(tower.layout, .official)
        let out = tower.pooled(ids: r.ids)
        XCTAssertEqual(out.shape, [2, 64])
        let err = relativeL2(out.toFloats(), r.fp32)
        print("Jina tiny tower, official layout, fp32: relative L2 \(err)")
        XCTAssertLessThanOrEqual(err, 1e-4, "fp32 relative L2 \(err)")
    }

    /// The LoRA merge in blocks of rows (as for the 250k-row word table) gives the same weights.
    func testBlockwiseLoRAMerge() throws {
        let r = try reference()
        JinaTextTower.mergeRowBlock = 100   // word table 306 rows -> 4 blocks; Wqkv 192 rows -> 2
        defer { JinaTextTower.mergeRowBlock = 8192 }
        let tower = try JinaTextTower(path: Fixtures.path("jina/tower_official.safetensors"), config: Self.tiny)
        XCTAssertLessThanOrEqual(relativeL2(tower.pooled(ids: r.ids).toFloats(), r.fp32), 1e-4)
    }

    func testInferredConfigMatchesAndLoads() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("jina/tower_official.safetensors"))
        var c = try JinaLayout.official.inferConfig(f, headDim: 16)
        XCTAssertEqual(c, Self.tiny)
        c.loraTask = 0
        let r = try reference()
        let tower = try JinaTextTower(source: f, config: c)
        XCTAssertLessThanOrEqual(relativeL2(tower.pooled(ids: r.ids).toFloats(), r.fp32), 1e-4)
    }

    func testOfficialLayoutBF16() throws {
        let r = try reference()
        let tower = try JinaTextTower(path: Fixtures.path("jina/tower_official_bf16.safetensors"), config: Self.tiny, dtype: .bf16)
        let out = tower.pooled(ids: r.ids)
        XCTAssertEqual(out.dtype, .bf16)
        let err = relativeL2(out.toFloats(), r.bf16)
        print("Jina tiny tower, bf16 checkpoint, bf16 compute: relative L2 \(err) (vs bf16 reference), \(relativeL2(out.toFloats(), r.fp32)) (vs fp32)")
        XCTAssertLessThanOrEqual(err, 2e-2, "bf16 relative L2 \(err)")
    }

    func testFP16RunsClean() throws {
        let r = try reference()
        let tower = try JinaTextTower(path: Fixtures.path("jina/tower_official.safetensors"), config: Self.tiny, dtype: .f16)
        let err = relativeL2(tower.pooled(ids: r.ids).toFloats(), r.fp32)
        print("Jina tiny tower, fp16 compute: relative L2 \(err) (vs fp32 reference)")
        XCTAssertLessThanOrEqual(err, 2e-2, "fp16 relative L2 \(err)")
    }

    func testComfyLayout() throws {
        let r = try reference()
        let tower = try JinaTextTower(path: Fixtures.path("jina/tower_comfy.safetensors"), config: Self.tiny)
        XCTAssertEqual(tower.layout, .comfy)
        let err = relativeL2(tower.pooled(ids: r.ids).toFloats(), r.fp32)
        print("Jina tiny tower, ComfyUI layout, fp32: relative L2 \(err)")
        XCTAssertLessThanOrEqual(err, 1e-4, "comfy fp32 relative L2 \(err)")
    }

    func testPaddingDoesNotLeakIntoPooling() throws {
        let r = try reference()
        let tower = try JinaTextTower(path: Fixtures.path("jina/tower_official.safetensors"), config: Self.tiny)
        let batch = tower.pooled(ids: r.ids).toFloats()
        let short = r.ids[1].filter { $0 != 1 }
        let alone = tower.pooled(ids: [short]).toFloats()
        XCTAssertLessThanOrEqual(relativeL2(Array(batch[64...]), alone), 1e-5)
    }

    func testTokenizerFeedsTower() throws {
        let r = try reference()
        let tok = try UnigramTokenizer(path: Fixtures.path("jina/tokenizer.json"))
        XCTAssertEqual(tok.encodeBatch(r.texts).ids, r.ids)
        let tower = try JinaTextTower(path: Fixtures.path("jina/tower_official.safetensors"), config: Self.tiny)
        XCTAssertLessThanOrEqual(relativeL2(tower.encode(r.texts, tokenizer: tok).toFloats(), r.fp32), 1e-4)
    }

    /// The full jina-clip-v2 tower: every expected tensor and its published name (spec §5.6).
    func testFullSizeNamings() throws {
        let c = JinaConfig.clipV2
        let official = try JinaLayout.official.expected(c)
        XCTAssertEqual(official.count, 2 * 3 + 2 + 24 * (4 * 4 + 4))
        let byName = Dictionary(uniqueKeysWithValues: official.map { (JinaLayout.publishedName($0.name, layout: .official), $0.shape) })
        let p = "text_model.transformer.roberta."
        XCTAssertEqual(byName[p + "embeddings.word_embeddings.parametrizations.weight.original"], [250_002, 1024])
        XCTAssertEqual(byName[p + "embeddings.word_embeddings.parametrizations.weight.0.lora_A"], [1, 250_002, 4])
        XCTAssertEqual(byName[p + "embeddings.word_embeddings.parametrizations.weight.0.lora_B"], [1, 4, 1024])
        XCTAssertEqual(byName[p + "embeddings.token_type_embeddings.parametrizations.weight.original"], [1, 1024])
        XCTAssertEqual(byName[p + "emb_ln.weight"], [1024])
        XCTAssertEqual(byName[p + "encoder.layers.23.mixer.Wqkv.parametrizations.weight.original"], [3072, 1024])
        XCTAssertEqual(byName[p + "encoder.layers.23.mixer.Wqkv.parametrizations.weight.0.lora_A"], [1, 4, 1024])
        XCTAssertEqual(byName[p + "encoder.layers.23.mixer.Wqkv.parametrizations.weight.0.lora_B"], [1, 3072, 4])
        XCTAssertEqual(byName[p + "encoder.layers.0.mixer.Wqkv.bias"], [3072])
        XCTAssertEqual(byName[p + "encoder.layers.5.mlp.fc1.parametrizations.weight.original"], [4096, 1024])
        XCTAssertEqual(byName[p + "encoder.layers.5.mlp.fc2.parametrizations.weight.0.lora_A"], [1, 4, 4096])
        XCTAssertEqual(byName[p + "encoder.layers.7.norm2.bias"], [1024])
        let comfy = try JinaLayout.comfy.expected(c)
        XCTAssertEqual(comfy.count, 2 + 2 + 24 * (4 * 2 + 4))
        let comfyNames = Set(comfy.map { JinaLayout.publishedName($0.name, layout: .comfy) })
        XCTAssertTrue(comfyNames.contains("model.embeddings.word_embeddings.weight"))
        XCTAssertTrue(comfyNames.contains("model.encoder.layers.11.mixer.out_proj.bias"))
        XCTAssertTrue(comfyNames.contains("model.emb_ln.bias"))
        XCTAssertFalse(comfyNames.contains { $0.contains("lora") || $0.contains("parametrizations") })
        let naming = JinaLayout.official.naming
        XCTAssertTrue(naming.ignored("vision_model.blocks.0.attn.qkv.weight"))
        XCTAssertTrue(naming.ignored("logit_scale"))
        XCTAssertFalse(naming.ignored(p + "emb_ln.weight"))
    }

    /// A checkpoint with a tensor missing and one of the wrong shape fails with one error naming
    /// both, while the vision tower and logit_scale are ignored.
    func testMissingAndMisshapedTensorsGiveOneError() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("jina/tower_official.safetensors"))
        let hidden = JinaLayout.officialPrefix + "encoder.layers.1.norm2.bias"
        let reshaped = JinaLayout.officialPrefix + "encoder.layers.0.mlp.fc1.parametrizations.weight.0.lora_A"
        let src = JinaFilteredSource(base: f, hide: [hidden], reshape: [reshaped: [1, 2, 64]])
        XCTAssertThrowsError(try JinaTextTower(source: src, config: Self.tiny)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("missing (1)") && m.contains(hidden), m)
            XCTAssertTrue(m.contains("wrong shape (1)") && m.contains(reshaped), m)
            XCTAssertFalse(m.contains("vision_model") || m.contains("logit_scale"), m)
        }
        XCTAssertThrowsError(try JinaTextTower(source: JinaFilteredSource(base: f, hide: [JinaLayout.official.anchor]), config: Self.tiny)) { e in
            XCTAssertTrue("\(e)".contains("not a Jina CLIP v2 text tower"), "\(e)")
        }
    }
}

/// A weight source that hides some tensors of another and reports other shapes for some.
private final class JinaFilteredSource: WeightSource, @unchecked Sendable {
    let base: WeightSource
    let hide: Set<String>
    let reshape: [String: [Int]]
    init(base: WeightSource, hide: Set<String>, reshape: [String: [Int]] = [:]) {
        self.base = base; self.hide = hide; self.reshape = reshape
    }
    var sourceDescription: String { "filtered " + base.sourceDescription }
    var tensorNames: [String] { base.tensorNames.filter { !hide.contains($0) } }
    func tensorInfo(_ name: String) -> TensorInfo? {
        guard !hide.contains(name), let i = base.tensorInfo(name) else { return nil }
        guard let s = reshape[name] else { return i }
        return TensorInfo(name: i.name, dtype: i.dtype, shape: s, dataBegin: i.dataBegin, dataEnd: i.dataEnd)
    }
    func loadTensor(_ name: String) throws -> Tensor { try base.loadTensor(name) }
}
