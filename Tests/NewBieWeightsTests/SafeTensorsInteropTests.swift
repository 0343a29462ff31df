import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

/// Files written by PyPI `safetensors` (tools/reference/make_safetensors_fixtures.py) read back
/// bit for bit, compared with the element bits the script stored separately as plain JSON.
final class SafeTensorsInteropTests: XCTestCase {
    struct Expected: Decodable {
        struct Entry: Decodable { let dtype: String; let shape: [Int]; let bits: [Int64] }
        let versions: [String: String]
        let metadata: [String: String]
        let tensors: [String: Entry]
    }

    func loadExpected() throws -> Expected {
        let data = try Data(contentsOf: Fixtures.url("safetensors/interop_expected.json"))
        return try JSONDecoder().decode(Expected.self, from: data)
    }

    func testFixtureWasWrittenByPinnedVersions() throws {
        let e = try loadExpected()
        XCTAssertEqual(e.versions, ["safetensors": "0.8.0", "torch": "2.15.0", "numpy": "2.4.6"])
        let f = try SafeTensorsFile(path: Fixtures.path("safetensors/interop.safetensors"))
        XCTAssertEqual(f.metadata["versions"], #"{"numpy": "2.4.6", "safetensors": "0.8.0", "torch": "2.15.0"}"#)
    }

    func testInteropBitExact() throws {
        let e = try loadExpected()
        let f = try SafeTensorsFile(path: Fixtures.path("safetensors/interop.safetensors"))
        XCTAssertEqual(f.metadata, e.metadata)
        XCTAssertEqual(Set(f.names), Set(e.tensors.keys))
        XCTAssertEqual(Set(e.tensors.values.map(\.dtype)), ["F32", "F16", "BF16", "I64", "U8", "BOOL"])
        for (name, want) in e.tensors {
            let t = try f.tensor(name)
            XCTAssertEqual(t.dtype.safetensorsName, want.dtype, name)
            XCTAssertEqual(t.shape, want.shape, name)
            XCTAssertEqual(t.count, want.bits.count, name)
            let raw = try f.rawBytes(name)
            let size = t.dtype.byteSize
            var got: [Int64] = []
            for i in 0..<t.count {
                var v: UInt64 = 0
                for b in 0..<size { v |= UInt64(raw[i * size + b]) << (8 * UInt64(b)) }
                got.append(size == 8 ? Int64(bitPattern: v) : Int64(v))
            }
            XCTAssertEqual(got, want.bits, "bits differ for \(name)")
            // The tensor view sees the same bytes.
            XCTAssertEqual(tensorBytes(t), Array(raw), name)
        }
    }

    func testInteropValuesThroughTensor() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("safetensors/interop.safetensors"))
        XCTAssertEqual(try f.tensor("scalar.f32").toFloats(), [2.5])
        XCTAssertEqual(try f.tensor("nested/ünïcode 名前").toFloats(), [1, -2])
        XCTAssertEqual(try f.tensor("ids.i64").toInts()[3], Int(Int64.max))
        XCTAssertEqual(try f.tensor("mask.bool").toInts(), [1, 0, 1, 0, 0, 1, 1, 1, 0])
        let f16 = try f.tensor("weights.f16").toFloats()
        XCTAssertEqual(f16[2], .infinity)
        XCTAssertTrue(f16[4].isNaN)
        XCTAssertEqual(f16[6], 65504)
        XCTAssertEqual(try f.tensor("empty.f16").shape, [0, 3])
    }

    /// Rewriting the reference file with our writer (in its file order) keeps every tensor's bytes
    /// and offsets: the layouts agree.
    func testRewriteOfInteropFixtureIsIdentical() throws {
        let f = try SafeTensorsFile(path: Fixtures.path("safetensors/interop.safetensors"))
        let dir = try TempDir()
        defer { dir.remove() }
        let out = dir.file("rewrite.safetensors")
        try SafeTensorsWriter.write(try f.namesInFileOrder.map { ($0, try f.tensor($0)) }, metadata: f.metadata, to: out)
        let g = try SafeTensorsFile(url: out)
        XCTAssertEqual(g.metadata, f.metadata)
        XCTAssertEqual(g.namesInFileOrder, f.namesInFileOrder)
        for n in f.names {
            XCTAssertEqual(Array(try g.rawBytes(n)), Array(try f.rawBytes(n)), n)
            XCTAssertEqual(g.info(n)?.dataBegin, f.info(n)?.dataBegin, n)
        }
    }

    func testExampleCheckpointOpens() throws {
        let src = try openWeights(path: Fixtures.path("safetensors/example.safetensors"))
        XCTAssertTrue(src.tensorNames.contains("layers.1.attention.qkv.weight"))
        XCTAssertEqual(src.tensorInfo("layers.1.attention.qkv.weight")?.shape, [32, 16])
        XCTAssertEqual(src.tensorInfo("x_embedder.weight")?.dtype, .bf16)
        XCTAssertEqual(src.tensorNames.count, 19 + 2 * 13 + 2 * 13 + 2 * 11)
    }
}
