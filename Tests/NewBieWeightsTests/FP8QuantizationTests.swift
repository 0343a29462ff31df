import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

/// fp8 e4m3 W8A8 against torch's float8_e4m3fn casts (tools/reference/make_fp8_fixtures.py).
final class FP8QuantizationTests: XCTestCase {
    func reference() throws -> SafeTensorsFile { try SafeTensorsFile(path: Fixtures.path("quant/fp8.safetensors")) }

    func testEncodeAndDecodeAreExactAgainstTorchIncludingTiesSubnormalsAndOverflow() throws {
        let f = try reference()
        let x = try f.tensor("cast.x").toFloats()
        let codes = try f.tensor("cast.code").toInts()
        let back = try f.tensor("cast.back").toFloats()
        XCTAssertGreaterThan(x.count, 1000)
        var mismatches = 0
        for i in x.indices {
            let c = FloatE4M3.encode(x[i])
            if Int(c) != codes[i] { mismatches += 1; if mismatches < 5 { XCTFail("encode(\(x[i])) = \(c), torch \(codes[i])") } }
            let d = FloatE4M3.decode(UInt8(codes[i]))
            if back[i].isNaN { XCTAssertTrue(d.isNaN, "decode(\(codes[i]))") } else { XCTAssertEqual(d.bitPattern, back[i].bitPattern, "decode(\(codes[i]))") }
        }
        XCTAssertEqual(mismatches, 0)
        // the ends of the format: 448 is the largest finite value; past it the cast saturates
        XCTAssertEqual(FloatE4M3.decode(FloatE4M3.encode(448)), 448)
        XCTAssertEqual(FloatE4M3.decode(FloatE4M3.encode(464)), 448)
        XCTAssertEqual(FloatE4M3.decode(FloatE4M3.encode(470)), 448)
        XCTAssertEqual(FloatE4M3.decode(FloatE4M3.encode(-.infinity)), -448)
        XCTAssertTrue(FloatE4M3.decode(FloatE4M3.encode(.nan)).isNaN)
        XCTAssertEqual(FloatE4M3.decode(FloatE4M3.encode(0x1p-9)), 0x1p-9)
    }

    func testWeightQuantizationMatchesTorchPerOutputChannel() throws {
        let f = try reference()
        let q = QuantizedWeight.quantize(try f.tensor("lin.w"), scheme: .fp8)
        XCTAssertEqual(q.q.dtype, .u8)
        XCTAssertEqual(q.q.toInts(), try f.tensor("lin.wq").toInts())
        XCTAssertEqual(q.scales.shape, [48, 1])
        XCTAssertEqual(q.scales.toFloats().map(\.bitPattern), try f.tensor("lin.sw").toFloats().map(\.bitPattern))
        XCTAssertEqual(q.scales.toFloats()[9], 1, "an all-zero channel has scale 1")
        XCTAssertEqual(q.byteCount, 48 * 64 + 48 * 4)
        // an all-zero weight: scale 1, codes 0, no NaN
        let z = QuantizedWeight.quantize(Tensor.zeros([4, 16]), scheme: .fp8)
        XCTAssertEqual(z.scales.toFloats(), [1, 1, 1, 1])
        XCTAssertEqual(z.dequantized().toFloats(), [Float](repeating: 0, count: 64))
        // a per-tensor scale (older fp8 weights) broadcasts over the rows
        let one = QuantizedWeight(scheme: .fp8, q: q.q, scales: Tensor([0.5], shape: [1, 1]))
        XCTAssertEqual(one.dequantized().toFloats(), q.q.toInts().map { FloatE4M3.decode(UInt8($0)) * 0.5 })
    }

    func testActivationRowQuantizationMatchesTorch() throws {
        let f = try reference()
        let x = try f.tensor("rows.x")
        let rows = x.quantizedRowsE4M3()
        XCTAssertEqual(rows.codes.shape, [8, 96])
        XCTAssertEqual(rows.scales.shape, [8])
        XCTAssertEqual(rows.codes.toInts(), try f.tensor("rows.code").toInts())
        XCTAssertEqual(rows.scales.toFloats().map(\.bitPattern), try f.tensor("rows.scale").toFloats().map(\.bitPattern))
        XCTAssertEqual(rows.scales.toFloats()[3], 1, "the all-zero row")
        // the same rows from bf16 storage quantize the bf16 values (read exactly in fp32)
        let xb = x.to(.bf16)
        XCTAssertEqual(xb.quantizedRowsE4M3().codes.toInts(), xb.to(.f32).quantizedRowsE4M3().codes.toInts())
        // each value is within half an e4m3 step (2^-4 relative) of its code's, or below the subnormal step
        let back = rows.decoded().toFloats(), v = x.toFloats(), s = rows.scales.toFloats()
        for i in v.indices where v[i] != 0 {
            XCTAssertLessThanOrEqual(Swift.abs(back[i] - v[i]), Swift.max(Swift.abs(v[i]) * 0x1p-4, s[i / 96] * 0x1p-10), "value \(i)")
        }
    }

    func testFusedProducersEqualTheirComposition() {
        var rng = SplitMix(seed: 15)
        func rand(_ shape: [Int], _ scale: Float) -> Tensor {
            Tensor((0..<shape.reduce(1, *)).map { _ in rng.uniform() * scale }, shape: shape)
        }
        for dt in [DType.bf16, .f16, .f32] {
            let x = rand([2, 5, 48], 2).to(dt), w = rand([48], 1).to(dt), mod = rand([2, 48], 0.5).to(dt)
            for scale in [mod, nil] {
                let fused = x.rmsNormModulateE4M3(weight: w, eps: 1e-6, scale: scale)
                let plain = x.rmsNormModulate(weight: w, eps: 1e-6, scale: scale).quantizedRowsE4M3()
                XCTAssertEqual(fused.codes.toInts(), plain.codes.toInts(), "\(dt)")
                XCTAssertEqual(fused.scales.toFloats(), plain.scales.toFloats(), "\(dt)")
                XCTAssertEqual(fused.codes.shape, [2, 5, 48])
            }
            let a = rand([3, 64], 3).to(dt), b = rand([3, 64], 1).to(dt)
            let fused = a.swigluE4M3(b), plain = a.swiglu(b).quantizedRowsE4M3()
            XCTAssertEqual(fused.codes.toInts(), plain.codes.toInts(), "\(dt)")
            XCTAssertEqual(fused.scales.toFloats(), plain.scales.toFloats(), "\(dt)")
        }
    }

    /// A product handed on before its scales means round(raw * (row * column)) in raw's dtype, and
    /// every reader of one gives what it gives for that value; the CPU's fp8 layers hand on scaled
    /// products equal to their ordinary output.
    func testUnscaledProductsMeanTheirScaledValueToEveryReader() {
        var rng = SplitMix(seed: 16)
        func rand(_ shape: [Int], _ scale: Float, _ offset: Float = 0) -> Tensor {
            Tensor((0..<shape.reduce(1, *)).map { _ in rng.uniform() * scale + offset }, shape: shape)
        }
        let raw = rand([2, 3, 32], 400).to(.bf16), rows = rand([6], 0.004, 0.005), cols = rand([32], 0.002, 0.003)
        let p = ScaledProduct(raw: raw, rowScales: rows, columnScales: cols)
        XCTAssertFalse(p.isScaled)
        let r = raw.toFloats(), rs = rows.toFloats(), cs = cols.toFloats()
        let expected = (0..<192).map { i in Tensor([r[i] * (rs[i / 32] * cs[i % 32])], shape: [1]).to(.bf16).toFloats()[0] }
        XCTAssertEqual(p.scaled().toFloats(), expected)
        XCTAssertEqual(p.scaled().dtype, .bf16)
        let value = p.scaled(), x = rand([2, 3, 32], 1).to(.bf16), w = rand([32], 1).to(.bf16), gate = rand([2, 32], 1).to(.bf16)
        XCTAssertEqual(x.rmsNormGatedResidual(p, weight: w, eps: 1e-6, gate: gate).toFloats(),
                       x.rmsNormGatedResidual(value, weight: w, eps: 1e-6, gate: gate).toFloats())
        let q = ScaledProduct(raw: rand([2, 3, 32], 400).to(.bf16), rowScales: rows, columnScales: cols)
        XCTAssertEqual(p.swigluE4M3(q).codes.toInts(), value.swigluE4M3(q.scaled()).codes.toInts())
        let (cosT, sinT) = (rand([1, 3, 4], 1), rand([1, 3, 4], 1))
        let nq = rand([8], 1).to(.bf16), nk = rand([8], 1).to(.bf16)
        let a = p.qkvNormRope(heads: 2, kvHeads: 1, qNorm: nq, kNorm: nk, eps: 1e-5, cos: cosT, sin: sinT, layout: .interleaved)
        let b = value.qkvNormRope(heads: 2, kvHeads: 1, qNorm: nq, kNorm: nk, eps: 1e-5, cos: cosT, sin: sinT, layout: .interleaved)
        XCTAssertEqual([a.q, a.k, a.v].map { $0.toFloats() }, [b.q, b.k, b.v].map { $0.toFloats() })

        let layer = Linear(quantized: .quantize(rand([32, 48], 0.2), scheme: .fp8), bias: nil, dtype: .bf16, device: .cpu)
        let codes = rand([2, 3, 48], 1).to(.bf16).quantizedRowsE4M3()
        let product = layer.product(codes)
        XCTAssertTrue(product.isScaled, "the CPU's fp8 product is scaled by the emulation itself")
        XCTAssertEqual(product.scaled().toFloats(), layer(codes).toFloats())
    }

    func testEmulatedW8A8LinearMatchesTorchAndStaysNearTheFloatLayer() throws {
        let f = try reference()
        let x = try f.tensor("lin.x"), w = try f.tensor("lin.w"), b = try f.tensor("lin.b")
        let layer = Linear(quantized: .quantize(w, scheme: .fp8), bias: b, dtype: .f32, device: .cpu)
        let y = layer(x)
        XCTAssertEqual(y.shape, [3, 5, 48])
        let ref = try f.tensor("lin.y")
        // the same codes and scales; only the fp32 summation order differs from torch's
        XCTAssertLessThan(relativeL2(y, ref), 1e-6)
        // the same product from codes made ahead (a fused producer's output)
        XCTAssertEqual(layer(x.quantizedRowsE4M3()).toFloats(), y.toFloats())
        XCTAssertTrue(layer.takesE4M3Rows)
        XCTAssertFalse(Linear(weight: w, bias: b, dtype: .f32).takesE4M3Rows)
        XCTAssertTrue(y.toFloats().allSatisfy(\.isFinite))
        // e4m3 keeps 3 mantissa bits: a few percent from the float layer, not more
        let plain = Linear(weight: w, bias: b, dtype: .f32)(x)
        let err = relativeL2(y, plain)
        XCTAssertGreaterThan(err, 1e-4)
        XCTAssertLessThan(err, 0.06)
        // bf16 compute: the output is rounded once to bf16
        let bf = Linear(quantized: .quantize(w, scheme: .fp8), bias: b.to(.bf16), dtype: .bf16, device: .cpu)
        let yb = bf(x.to(.bf16))
        XCTAssertEqual(yb.dtype, .bf16)
        // against torch's emulation from the bf16-rounded input (its codes differ from fp32's: that
        // alone is 1.1% from lin.y), so only the output's one bf16 rounding is left
        XCTAssertLessThan(relativeL2(yb.to(.f32), try f.tensor("lin.yb")), 0x1p-8)
    }

    func testANaNActivationMakesItsTokensOutputNaNOnly() {
        let w = QuantizedWeight.quantize(Tensor([1, 2, 3, 4], shape: [2, 2]), scheme: .fp8)
        let y = Linear(quantized: w, bias: nil, dtype: .f32, device: .cpu)(Tensor([.nan, 1, 1, 2], shape: [2, 2])).toFloats()
        XCTAssertTrue(y[0..<2].allSatisfy(\.isNaN))
        XCTAssertTrue(y[2..<4].allSatisfy(\.isFinite))
    }
}
