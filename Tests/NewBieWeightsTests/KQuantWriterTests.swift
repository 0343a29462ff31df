import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

/// The K-quant writers against ggml's reference quantizers, byte for byte
/// (tools/reference/make_kquant_fixtures.py, ggml-python 0.0.45).
final class KQuantWriterTests: XCTestCase {
    func testKQuantBlocksAreGGMLsBytes() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("quant/kquants.safetensors"))
        let x = try f.tensor("x").contiguous()
        let rows = x.shape[0], cols = x.shape[1]
        let values = x.toFloats()
        XCTAssertFalse(values.contains { !$0.isFinite })
        for (name, type) in [("q6_k", GGMLType.q6_K), ("q5_k", .q5_K), ("q4_k", .q4_K)] {
            let want = try f.tensor(name).contiguous().toInts().map { UInt8($0) }
            XCTAssertEqual(want.count, rows * cols / type.blockSize * type.blockBytes)
            var got = [UInt8](repeating: 0xAA, count: want.count)
            values.withUnsafeBufferPointer { src in
                got.withUnsafeMutableBytes { GGUFQuantize.quantize(type, src.baseAddress!, count: rows * cols, into: $0.baseAddress!) }
            }
            let rowBytes = want.count / rows
            for r in 0..<rows {
                let a = Array(got[r * rowBytes..<(r + 1) * rowBytes]), b = Array(want[r * rowBytes..<(r + 1) * rowBytes])
                if a != b {
                    let first = zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }!.offset
                    XCTFail("\(name) row \(r): first differing byte \(first) (ours \(a[first]), ggml \(b[first]))")
                }
            }
            // and the blocks read back near the input (the quantizer's own error, a sanity bound)
            var back = [Float](repeating: 0, count: rows * cols)
            got.withUnsafeBytes { raw in
                back.withUnsafeMutableBufferPointer { try? GGUFQuant.dequantize(type, raw.baseAddress!, count: rows * cols, into: $0.baseAddress!) }
            }
            let err = relativeL2(Array(back[0..<(4 * cols)]), Array(values[0..<(4 * cols)]))
            XCTAssertTrue(err > 0 && err < 0.1, "\(name): \(err)")
        }
    }
}
