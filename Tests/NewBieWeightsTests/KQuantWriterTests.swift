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

/// `newbie quantize --to q6_k|q5_k|q4_k`: rows of whole 256-value blocks become K-quant blocks
/// (ggml's bytes, as above); other rows and 1-D tensors are copied (float32 sources as F32).
final class KQuantFileTests: XCTestCase {
    func testKQuantFilesHoldKQuantBlocksWhereRowsAreWholeBlocks() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("quant/kquants.safetensors"))
        let x = try f.tensor("x").contiguous()
        let narrow = Tensor((0..<(40 * 64)).map { Float($0 % 7) * 0.25 - 0.5 }, shape: [40, 64])
        let bias = Tensor([Float](repeating: 0.5, count: 15), shape: [15])
        let source = ClosureWeightSource(specs: [TensorSpec("blk.proj.weight", x.shape), TensorSpec("blk.proj.bias", [15]),
                                                 TensorSpec("blk.narrow.weight", [40, 64])]) { name in
            switch name {
            case "blk.proj.weight": return x
            case "blk.proj.bias": return bias
            default: return narrow
            }
        }
        for (target, type) in [(QuantizedFileTarget.q6_K, GGMLType.q6_K), (.q5_K, .q5_K), (.q4_K, .q4_K)] {
            let out = TestScratch.path("newbie-kq-\(UUID().uuidString).gguf")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let report = try QuantizedFileWriter(target: target, architecture: "lumina2").write(source, to: out)
            XCTAssertEqual(report.quantized, ["blk.proj.weight"])
            let g = try GGUFFile(path: out)
            XCTAssertEqual(g.tensors["blk.proj.weight"]?.type, type)
            XCTAssertEqual(g.tensors["blk.narrow.weight"]?.type, .f32)
            XCTAssertEqual(g.tensors["blk.proj.bias"]?.type, .f32)
            let info = g.tensors["blk.proj.weight"]!
            let data = try Data(contentsOf: URL(fileURLWithPath: out)).subdata(in: info.fileBegin..<info.fileEnd)
            let want = try f.tensor(target.rawValue).contiguous().toInts().map { UInt8($0) }
            XCTAssertEqual(Array(data), want, target.rawValue)
        }
    }
}
