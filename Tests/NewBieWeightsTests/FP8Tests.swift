import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

/// float8_e4m3fn <-> float32 against torch's casts (tools/reference/make_quantfile_fixtures.py).
final class FP8Tests: XCTestCase {
    let cases = try! SafeTensorsFile(path: Fixtures.path("quantfiles/fp8_cases.safetensors"))

    func testDecodingEveryBitPatternMatchesTorch() throws {
        let want = try cases.tensor("all_bits").toFloats()
        XCTAssertEqual(want.count, 256)
        for b in 0..<256 {
            let got = FP8E4M3.toFloat(UInt8(b))
            if want[b].isNaN { XCTAssertTrue(got.isNaN, "byte \(b)") }
            else { XCTAssertEqual(got.bitPattern, want[b].bitPattern, "byte \(b)") }
        }
    }

    func testEncodingMatchesTorchRoundingAndSaturation() throws {
        let input = try cases.tensor("from_f32/in").toFloats()
        let want = try cases.tensor("from_f32/out")
        let bytes = Array(UnsafeBufferPointer(start: want.hostPointer.assumingMemoryBound(to: UInt8.self), count: want.count))
        XCTAssertEqual(input.count, bytes.count)
        var mismatches = 0
        for (x, b) in zip(input, bytes) where FP8E4M3.fromFloat(x) != b {
            if mismatches < 10 { XCTFail("\(x) (\(String(x.bitPattern, radix: 16))): got \(FP8E4M3.fromFloat(x)), torch \(b)") }
            mismatches += 1
        }
        XCTAssertEqual(mismatches, 0)
    }
}

/// int8-g128 rows whose length is not a multiple of 128: the last group is shorter, and
/// dequantization must use groups of 128 too (not in / groups).
final class ShortLastGroupTests: XCTestCase {
    func testDequantizationUsesGroupsOf128() {
        let inF = 200
        // the two groups of a row have different ranges, so their scales differ
        let w = Tensor((0..<(2 * inF)).map { k in (Float((k * 37) % 101) / 50 - 1) * (k % inF < 128 ? 1 : 3) }, shape: [2, inF])
        let q = QuantizedWeight.quantize(w, scheme: .int8g128)
        XCTAssertEqual(q.scales.shape, [2, 2])
        XCTAssertNotEqual(q.scales.toFloats()[0], q.scales.toFloats()[1])
        let qs = q.q.toFloats(), s = q.scales.toFloats()
        let want = (0..<(2 * inF)).map { k in qs[k] * s[(k / inF) * 2 + (k % inF) / 128] }
        XCTAssertEqual(q.dequantized().toFloats(), want)
    }
}
