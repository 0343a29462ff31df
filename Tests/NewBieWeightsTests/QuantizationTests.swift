import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

/// int8 weight-only quantization against the torch reference (tools/reference/make_quant_fixtures.py).
final class QuantizationTests: XCTestCase {
    func reference() throws -> SafeTensorsFile { try SafeTensorsFile(path: Fixtures.path("quant/int8.safetensors")) }

    func testQuantizeAndDequantizeAreExactAgainstTorch() throws {
        let f = try reference()
        for (name, scheme) in [("channel", QuantScheme.int8), ("group128", .int8g128), ("ties", .int8)] {
            let w = try f.tensor("\(name).w")
            let q = QuantizedWeight.quantize(w, scheme: scheme)
            let refQ = try f.tensor("\(name).q")
            XCTAssertEqual(q.q.dtype, .i8)
            XCTAssertEqual(refQ.dtype, .i8)
            XCTAssertEqual(q.q.toFloats(), refQ.toFloats(), name)
            XCTAssertEqual(q.scales.shape, try f.tensor("\(name).scale").shape, name)
            XCTAssertEqual(q.scales.toFloats(), try f.tensor("\(name).scale").toFloats(), name)      // bit for bit
            XCTAssertEqual(q.dequantized().toFloats(), try f.tensor("\(name).deq").toFloats(), name)
        }
    }

    /// Load-time quantization runs split over the cores by rows and reads 16-bit weights row by row:
    /// a weight large enough to be split, given in bf16, must quantize exactly as its fp32 copy, and
    /// each fp8 channel's scale must come from that row's own largest magnitude (here the last row's).
    func testParallelQuantizationOfA16BitWeightEqualsItsFloatCopy() {
        var rng = SplitMix(seed: 7)
        let out = 600, inF = 260
        var v = (0..<(out * inF)).map { _ in Float.random(in: -1...1, using: &rng) }
        v[out * inF - 3] = 9.5
        let w16 = Tensor(v, shape: [out, inF]).to(.bf16)
        let w32 = w16.to(.f32)
        for scheme in [QuantScheme.int8, .int8g128, .fp8] {
            let a = QuantizedWeight.quantize(w16, scheme: scheme), b = QuantizedWeight.quantize(w32, scheme: scheme)
            XCTAssertEqual(a.q.toFloats(), b.q.toFloats(), scheme.rawValue)
            XCTAssertEqual(a.scales.toFloats(), b.scales.toFloats(), scheme.rawValue)
        }
        let f8 = QuantizedWeight.quantize(w16, scheme: .fp8).scales
        XCTAssertEqual(f8.shape, [out, 1])
        XCTAssertEqual(f8.toFloats()[out - 1], 9.5 / 448)
        XCTAssertLessThan(f8.toFloats()[0], 1.01 / 448)
        let g = QuantizedWeight.quantize(w32, scheme: .int8g128)
        XCTAssertEqual(g.scales.shape, [out, 3])      // 128 + 128 + a short group of 4
        XCTAssertEqual(g.scales.toFloats()[3 * (out - 1) + 2], 9.5 / 127)
    }

    func testRoundingIsHalfToEvenAndZeroRowsStayZero() {
        // row max 127 -> scale 1: w / scale is w itself
        let w = Tensor([127, 2.5, 3.5, -2.5, -0.5, 0.5, 1.5, 0, 0, 0, 0, 0, 0, 0], shape: [2, 7])
        let q = QuantizedWeight.quantize(w, scheme: .int8)
        XCTAssertEqual(Array(q.q.toFloats()), [127, 2, 4, -2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(q.scales.toFloats(), [1, 0])
        XCTAssertTrue(q.dequantized().toFloats().allSatisfy(\.isFinite))
    }

    func testQuantizedLinearHoldsAQuarterOfTheBytesAndComputesWithTheDequantizedWeight() {
        var rng = SplitMix(seed: 7)
        let w = Tensor(rng.floats(64 * 256).map { $0 - 0.5 }, shape: [64, 256])
        let x = Tensor(rng.floats(3 * 256).map { $0 - 0.5 }, shape: [3, 256])
        let plain = Linear(weight: w, bias: nil, dtype: .f32)
        let qw = QuantizedWeight.quantize(w, scheme: .int8)
        let quant = Linear(quantized: qw, bias: nil, dtype: .f32, device: .cpu)
        XCTAssertEqual(plain.weightBytes, 64 * 256 * 4)
        XCTAssertEqual(quant.weightBytes, 64 * 256 + 64 * 4)
        let g = Linear(quantized: .quantize(w, scheme: .int8g128), bias: nil, dtype: .f32, device: .cpu)
        XCTAssertEqual(g.weightBytes, 64 * 256 + 64 * 2 * 4)
        // exactly x · deq^T; and close to the float layer (int8: relative error ~ 1/254 per weight)
        XCTAssertEqual(quant(x).toFloats(), x.linear(qw.dequantized()).toFloats())
        XCTAssertLessThan(relativeL2(quant(x), plain(x)), 1e-2)
        XCTAssertLessThan(relativeL2(g(x), plain(x)), 1e-2)
        // the compute dtype is the layer's, not int8
        let bf = Linear(quantized: qw, bias: nil, dtype: .bf16, device: .cpu)
        XCTAssertEqual(bf.effectiveWeight().dtype, .bf16)
        XCTAssertEqual(bf(x).dtype, .f32)
    }

    func testRulesPickTheMostSpecificAndKeepSensitiveLayersIn16BitsByDefault() {
        let whole = ModuleQuantization(rules: [QuantRule(pattern: "", scheme: .int8)])
        XCTAssertEqual(whole.scheme(for: "layers.0.attention.qkv"), .int8)
        for kept in ["x_embedder", "t_embedder.mlp.0", "cap_embedder.1", "time_text_embed.1", "clip_text_pooled_proj.1",
                     "layers.3.adaLN_modulation.1", "final_layer.linear", "final_layer.adaLN_modulation.1",
                     "noise_refiner.1.feed_forward.w2", "context_refiner.0.attention.qkv"] {
            XCTAssertEqual(whole.scheme(for: kept), QuantScheme.none, kept)
        }
        // a rule that names a path quantizes what it names, kept layers included; later equal rules win
        let named = ModuleQuantization(rules: [QuantRule(pattern: "", scheme: .int8), QuantRule(pattern: "final_layer", scheme: .int8g128),
                                               QuantRule(pattern: "layers.*.feed_forward", scheme: .int8g128),
                                               QuantRule(pattern: "layers.1*", scheme: .none)])
        XCTAssertEqual(named.scheme(for: "final_layer.linear"), .int8g128)
        XCTAssertEqual(named.scheme(for: "layers.0.feed_forward.w1"), .int8g128)
        XCTAssertEqual(named.scheme(for: "layers.0.attention.out"), .int8)
        XCTAssertEqual(named.scheme(for: "layers.1.attention.out"), QuantScheme.none)
        XCTAssertEqual(ModuleQuantization.none.scheme(for: "layers.0.attention.qkv"), QuantScheme.none)
        XCTAssertEqual(named.unmatchedRules(modules: ["layers", "layers.0", "layers.1", "layers.0.feed_forward", "final_layer"]), [])
        XCTAssertEqual(ModuleQuantization(rules: [QuantRule(pattern: "layers.*.feed_foward", scheme: .int8)])
                        .unmatchedRules(modules: ["layers.0.feed_forward"]).map(\.pattern), ["layers.*.feed_foward"])
    }
}
