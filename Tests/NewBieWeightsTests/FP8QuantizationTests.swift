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

    func testWeightQuantizationMatchesTorch() throws {
        let f = try reference()
        let q = QuantizedWeight.quantize(try f.tensor("lin.w"), scheme: .fp8)
        XCTAssertEqual(q.q.dtype, .u8)
        XCTAssertEqual(q.q.toInts(), try f.tensor("lin.wq").toInts())
        XCTAssertEqual(q.scales.shape, [1, 1])
        XCTAssertEqual(q.scales.toFloats(), try f.tensor("lin.sw").toFloats())
        XCTAssertEqual(q.byteCount, 48 * 64 + 4)
        // an all-zero weight: scale 1, codes 0, no NaN
        let z = QuantizedWeight.quantize(Tensor.zeros([4, 16]), scheme: .fp8)
        XCTAssertEqual(z.scales.toFloats(), [1])
        XCTAssertEqual(z.dequantized().toFloats(), [Float](repeating: 0, count: 64))
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
        XCTAssertLessThan(relativeL2(yb.to(.f32), ref), 1e-2)
    }

    func testANaNActivationMakesTheOutputNaN() {
        let w = QuantizedWeight.quantize(Tensor([1, 2, 3, 4], shape: [2, 2]), scheme: .fp8)
        let y = Linear(quantized: w, bias: nil, dtype: .f32, device: .cpu)(Tensor([.nan, 1], shape: [1, 2])).toFloats()
        XCTAssertTrue(y.allSatisfy(\.isNaN))
    }
}
