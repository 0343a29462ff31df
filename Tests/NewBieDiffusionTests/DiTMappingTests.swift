import XCTest
import NewBieTensor
@testable import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// Names and shapes only (no data): enough for naming detection, config inference and validation.
final class ShapeOnlySource: WeightSource, @unchecked Sendable {
    let shapes: [String: [Int]]
    init(_ list: [(String, [Int])]) {
        var d: [String: [Int]] = [:]
        for (n, s) in list { d[n] = s }
        shapes = d
    }
    var sourceDescription: String { "shape-only test source" }
    var tensorNames: [String] { shapes.keys.sorted() }
    func tensorInfo(_ name: String) -> TensorInfo? {
        guard let s = shapes[name] else { return nil }
        let bytes = s.reduce(1, *) * 2
        return TensorInfo(name: name, dtype: .bf16, shape: s, dataBegin: 0, dataEnd: bytes)
    }
    func loadTensor(_ name: String) throws -> Tensor { throw WeightsError("shape-only source has no data for \(name)") }
}

/// The full-size NewBie DiT checkpoint (535 tensors), written from the spec tables (sections 2.2
/// and 2.4), independently of the model code's expected-tensor list.
enum NewBieSpecCheckpoint {
    /// Spec 2.2, official names.
    static func official() -> [(String, [Int])] {
        var l: [(String, [Int])] = []
        func block(_ p: String, adaLN: Bool) {
            l.append(("\(p).attention.qkv.weight", [3840, 2304]))
            l.append(("\(p).attention.out.weight", [2304, 2304]))
            l.append(("\(p).attention.q_norm.weight", [96]))
            l.append(("\(p).attention.k_norm.weight", [96]))
            l.append(("\(p).feed_forward.w1.weight", [9216, 2304]))
            l.append(("\(p).feed_forward.w2.weight", [2304, 9216]))
            l.append(("\(p).feed_forward.w3.weight", [9216, 2304]))
            l.append(("\(p).attention_norm1.weight", [2304]))
            l.append(("\(p).attention_norm2.weight", [2304]))
            l.append(("\(p).ffn_norm1.weight", [2304]))
            l.append(("\(p).ffn_norm2.weight", [2304]))
            if adaLN {
                l.append(("\(p).adaLN_modulation.1.weight", [9216, 1024]))
                l.append(("\(p).adaLN_modulation.1.bias", [9216]))
            }
        }
        for i in 0..<36 { block("layers.\(i)", adaLN: true) }
        for j in 0..<2 { block("noise_refiner.\(j)", adaLN: true) }
        for j in 0..<2 { block("context_refiner.\(j)", adaLN: false) }
        l += [
            ("x_embedder.weight", [2304, 64]), ("x_embedder.bias", [2304]),
            ("t_embedder.mlp.0.weight", [1024, 256]), ("t_embedder.mlp.0.bias", [1024]),
            ("t_embedder.mlp.2.weight", [1024, 1024]), ("t_embedder.mlp.2.bias", [1024]),
            ("cap_embedder.0.weight", [2560]),
            ("cap_embedder.1.weight", [2304, 2560]), ("cap_embedder.1.bias", [2304]),
            ("clip_text_pooled_proj.0.weight", [1024]),
            ("clip_text_pooled_proj.1.weight", [1024, 1024]), ("clip_text_pooled_proj.1.bias", [1024]),
            ("time_text_embed.1.weight", [1024, 2048]), ("time_text_embed.1.bias", [1024]),
            ("norm_final.weight", [2304]),
            ("final_layer.linear.weight", [64, 2304]), ("final_layer.linear.bias", [64]),
            ("final_layer.adaLN_modulation.1.weight", [2304, 1024]), ("final_layer.adaLN_modulation.1.bias", [2304]),
        ]
        return l
    }

    /// Spec 2.4 table: official -> diffusers (norm_final dropped, qkv split 2304/768/768).
    static func diffusers() -> [(String, [Int])] {
        var l: [(String, [Int])] = []
        let global: [String: String] = [
            "t_embedder.mlp.0.": "time_caption_embed.timestep_embedder.linear_1.",
            "t_embedder.mlp.2.": "time_caption_embed.timestep_embedder.linear_2.",
            "cap_embedder.": "time_caption_embed.caption_embedder.",
            "clip_text_pooled_proj.": "time_caption_embed.clip_text_pooled_proj.",
            "time_text_embed.": "time_caption_embed.time_text_embed.",
            "final_layer.adaLN_modulation.1.": "norm_out.linear_1.",
            "final_layer.linear.": "norm_out.linear_2.",
        ]
        for (name, shape) in official() {
            if name == "norm_final.weight" { continue }
            if let (from, to) = global.first(where: { name.hasPrefix($0.key) }) {
                l.append((to + name.dropFirst(from.count), shape)); continue
            }
            if name.hasPrefix("x_embedder.") { l.append((name, shape)); continue }
            let comps = name.split(separator: ".")
            let p = "\(comps[0]).\(comps[1])", rest = comps[2...].joined(separator: ".")
            let isContext = comps[0] == "context_refiner"
            switch rest {
            case "attention.qkv.weight":
                l.append(("\(p).attn.to_q.weight", [2304, 2304]))
                l.append(("\(p).attn.to_k.weight", [768, 2304]))
                l.append(("\(p).attn.to_v.weight", [768, 2304]))
            case "attention.out.weight": l.append(("\(p).attn.to_out.0.weight", shape))
            case "attention.q_norm.weight": l.append(("\(p).attn.norm_q.weight", shape))
            case "attention.k_norm.weight": l.append(("\(p).attn.norm_k.weight", shape))
            case "feed_forward.w1.weight": l.append(("\(p).feed_forward.linear_1.weight", shape))
            case "feed_forward.w2.weight": l.append(("\(p).feed_forward.linear_2.weight", shape))
            case "feed_forward.w3.weight": l.append(("\(p).feed_forward.linear_3.weight", shape))
            case "attention_norm1.weight": l.append((isContext ? "\(p).norm1.weight" : "\(p).norm1.norm.weight", shape))
            case "attention_norm2.weight": l.append(("\(p).norm2.weight", shape))
            case "adaLN_modulation.1.weight": l.append(("\(p).norm1.linear.weight", shape))
            case "adaLN_modulation.1.bias": l.append(("\(p).norm1.linear.bias", shape))
            default: l.append((name, shape))  // ffn_norm1/2
            }
        }
        return l
    }
}

final class DiTMappingTests: XCTestCase {
    let specTotal = 3_486_636_096

    func testSpecListItself() {
        let l = NewBieSpecCheckpoint.official()
        XCTAssertEqual(l.count, 535)
        XCTAssertEqual(Set(l.map(\.0)).count, 535)
        XCTAssertEqual(l.reduce(0) { $0 + $1.1.reduce(1, *) }, specTotal)
    }

    func testFullSizeOfficialMapping() throws {
        for prefix in ["", "model.diffusion_model.", "inner_model."] {
            let src = ShapeOnlySource(NewBieSpecCheckpoint.official().map { (prefix + $0.0, $0.1) })
            let (naming, p) = try XCTUnwrap(NextDiTNaming.detect(src))
            XCTAssertEqual(naming, .official); XCTAssertEqual(p, prefix)
            let (weights, config) = try NextDiT.checkedWeights(source: src, json: nil)
            XCTAssertEqual(config, NextDiTConfig.newBieExp01)
            XCTAssertEqual(weights.prefix, prefix)
            // everything but norm_final is used; norm_final is accepted
            XCTAssertEqual(try config.expectedTensors().count, 534)
            XCTAssertEqual(config.parameterCount + 2304, specTotal)
            XCTAssertEqual(config.parameterCount, 3_486_633_792)
        }
    }

    func testFullSizeOfficialMappingWithConfigJSON() throws {
        // spec 2.1: the keys the official transformer/config.json carries
        let json: [String: Any] = ["model_type": "nextdit_clip", "patch_size": 2, "dim": 2304, "n_layers": 36, "n_heads": 24,
                                   "n_kv_heads": 8, "in_channels": 16, "axes_dims": [32, 32, 32], "axes_lens": [1024, 512, 512],
                                   "clip_text_dim": 1024, "clip_img_dim": 1024]
        let src = ShapeOnlySource(NewBieSpecCheckpoint.official())
        let (_, config) = try NextDiT.checkedWeights(source: src, json: json)
        XCTAssertEqual(config, NextDiTConfig.newBieExp01)
    }

    func testFullSizeDiffusersMapping() throws {
        let l = NewBieSpecCheckpoint.diffusers()
        XCTAssertEqual(l.count, 534 + 2 * 40)  // no norm_final; 40 fused qkv split into 3
        XCTAssertEqual(l.reduce(0) { $0 + $1.1.reduce(1, *) }, specTotal - 2304)
        let src = ShapeOnlySource(l)
        let (naming, _) = try XCTUnwrap(NextDiTNaming.detect(src))
        XCTAssertEqual(naming, .diffusers)
        let (_, config) = try NextDiT.checkedWeights(source: src, json: nil)
        XCTAssertEqual(config, NextDiTConfig.newBieExp01)
    }

    /// One error lists every missing, mis-shaped and unexpected tensor.
    func testOneErrorListsEverything() throws {
        var l = NewBieSpecCheckpoint.official().filter { $0.0 != "layers.7.attention.out.weight" && $0.0 != "noise_refiner.1.ffn_norm2.weight" }
        l = l.map { $0.0 == "layers.3.feed_forward.w1.weight" ? ($0.0, [9216, 2305]) : $0 }
        l.append(("some_extra.weight", [3]))
        XCTAssertThrowsError(try NextDiT.checkedWeights(source: ShapeOnlySource(l), json: nil)) { e in
            let msg = "\(e)"
            XCTAssertTrue(msg.contains("layers.7.attention.out.weight"), msg)
            XCTAssertTrue(msg.contains("noise_refiner.1.ffn_norm2.weight"), msg)
            XCTAssertTrue(msg.contains("layers.3.feed_forward.w1.weight"), msg)
            XCTAssertTrue(msg.contains("some_extra.weight"), msg)
            XCTAssertFalse(msg.contains("norm_final"), msg)
        }
        // a config.json that contradicts the shapes is reported as wrong shapes, not silently followed
        let json: [String: Any] = ["n_kv_heads": 4]
        XCTAssertThrowsError(try NextDiT.checkedWeights(source: ShapeOnlySource(NewBieSpecCheckpoint.official()), json: json)) { e in
            XCTAssertTrue("\(e)".contains("wrong shape"), "\(e)")
        }
    }

    func testNotANextDiT() {
        XCTAssertThrowsError(try NextDiT.checkedWeights(source: ShapeOnlySource([("foo.weight", [2])]), json: nil))
    }

    /// RoPE tables against hand-computed angles (axes [2,4,6], theta 10000).
    func testRoPETables() throws {
        let r = RoPE3D(axesDims: [2, 4, 6], axesLens: [64, 32, 32], theta: 10000)
        let (c, s) = try r.tables([[[3, 1, 2], nil]])
        XCTAssertEqual(c.shape, [1, 2, 6])
        let cv = c.toFloats(), sv = s.toFloats()
        let angles: [Double] = [3, 1, 1 * pow(10000, -2.0 / 4), 2, 2 * pow(10000, -2.0 / 6), 2 * pow(10000, -4.0 / 6)]
        for (m, a) in angles.enumerated() {
            XCTAssertEqual(Double(cv[m]), cos(a), accuracy: 1e-6)
            XCTAssertEqual(Double(sv[m]), sin(a), accuracy: 1e-6)
        }
        XCTAssertEqual(Array(cv[6...]), [Float](repeating: 0, count: 6))
        XCTAssertThrowsError(try r.tables([[[64, 0, 0]]]))
        let layout = DiTSequenceLayout(capLens: [2, 1], capPadded: 2, rows: 2, cols: 3)
        XCTAssertEqual(layout.maxSeq, 8)
        let j = layout.jointPositions()
        XCTAssertEqual(j[1][0]!, [0, 0, 0]); XCTAssertEqual(j[1][1]!, [1, 0, 0]); XCTAssertEqual(j[1][5]!, [1, 1, 1])
        XCTAssertEqual(j[0][2]!, [2, 0, 0]); XCTAssertEqual(j[0][7]!, [2, 1, 2]); XCTAssertEqual(j[1][7]!, [0, 0, 0])
    }

    /// Batch-2 1024x1024 step, 256 caption tokens each, counted by hand from the spec shapes:
    /// per token, a block's matrices hold qkv 8,847,360 + out 5,308,416 + FFN 63,700,992 weights;
    /// attention is 4 L^2 x 2304 per block and sample; adaLN runs once per sample.
    /// (PERF.md's rough 7.3e13 counts all 3.48e9 parameters for every token; the exact count is lower.)
    func testForwardFLOPs() {
        let perToken = 2.0 * 77_856_768
        func blocks(_ n: Double, _ l: Double) -> Double { n * (perToken * l * 2 + 4 * l * l * 2304 * 2) }
        var want = blocks(36, 4352) + blocks(2, 4096) + blocks(2, 256)
        want += 2 * 8192 * 64 * 2304 + 2 * 512 * 2560 * 2304 + 2 * 8704 * 2304 * 64   // x, cap, final linears
        want += 38 * 2 * 2 * 1024 * 9216 + 2 * 2 * 1024 * 2304                        // adaLN
        want += 2 * 2 * (256 * 1024 + 1024 * 1024 + 1024 * 1024 + 2048 * 1024)         // t, clip, time_text
        let f = NextDiTConfig.newBieExp01.forwardFLOPs(capLens: [256, 256], capPadded: 256, rows: 64, cols: 64)
        XCTAssertEqual(f / want, 1, accuracy: 1e-9)
        XCTAssertEqual(f, 6.47e13, accuracy: 0.01e13)
    }
}
