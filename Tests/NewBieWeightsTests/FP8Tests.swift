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
