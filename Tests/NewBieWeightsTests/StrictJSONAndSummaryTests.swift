import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

final class StrictJSONTests: XCTestCase {
    func parse(_ s: String) throws -> JSONValue { try JSONParser.parse(Array(s.utf8)) }

    func testValues() throws {
        XCTAssertEqual(try parse(#" {"a": [1, -2, 3.5, 1e3, true, false, null, "x\u00e9\ud83d\ude00\n"]} "#),
                       .object([("a", .array([.integer(1), .integer(-2), .number("3.5"), .number("1e3"),
                                              .bool(true), .bool(false), .null, .string("xé😀\n")]))]))
        XCTAssertEqual(try parse("18446744073709551616"), .number("18446744073709551616"))
        XCTAssertEqual(try parse("-0"), .integer(0))
    }

    func testRejects() {
        for bad in ["", "{", "[1,]", "01", "1.", ".5", "+1", "{\"a\" 1}", "{\"a\":1,}", "tru", "\"\\x\"", "\"\\ud800x\"",
                    "\"\\udc00\"", "{} {}", "\"a\u{0}\"", "[" + String(repeating: "[", count: 200) + String(repeating: "]", count: 201)] {
            XCTAssertThrowsError(try parse(bad), "accepted \(bad.prefix(30))")
        }
    }

    func testDuplicateKeyOffset() {
        XCTAssertThrowsError(try parse(#"{"k":1,"k":2}"#)) { e in
            let j = e as? JSONSyntaxError
            XCTAssertEqual(j?.message, "duplicate key \"k\"")
            XCTAssertEqual(j?.offset, 7)
        }
    }

    func testQuoteRoundTrips() throws {
        for s in ["plain", "q\"b\\s", "ctl\u{1}\u{1f}\t\n\r", "ünï 名前 😀"] {
            XCTAssertEqual(try parse(JSONWriter.quote(s)), .string(s))
        }
    }

    func testUTF8Validation() {
        XCTAssertTrue(isValidUTF8(Array("ünï 名前 😀".utf8)))
        XCTAssertFalse(isValidUTF8([0xC0, 0x80]))        // overlong NUL
        XCTAssertFalse(isValidUTF8([0xED, 0xA0, 0x80]))  // UTF-8 encoded surrogate
        XCTAssertFalse(isValidUTF8([0xE2, 0x82]))        // cut short
    }
}

final class WeightsSummaryTests: XCTestCase {
    func testExampleSummary() throws {
        let path = Fixtures.path("safetensors/example.safetensors")
        let s = WeightsSummary(path: path, source: try openWeights(path: path))
        XCTAssertEqual(s.format, "safetensors")
        XCTAssertEqual(s.files, [path])
        XCTAssertEqual(s.tensorCount, 93)
        XCTAssertEqual(s.dtypes.map(\.dtype), ["bf16"])
        XCTAssertEqual(s.totalBytes, s.parameterCount * 2)
        XCTAssertEqual(s.parameterCount, s.tensors.map(\.parameters).reduce(0, +))
        // Natural order: layers.0 ... before layers.1, noise_refiner after layers.
        let names = s.tensors.map(\.name)
        XCTAssertLessThan(names.firstIndex(of: "layers.0.ffn_norm2.weight")!, names.firstIndex(of: "layers.1.adaLN_modulation.1.bias")!)
        XCTAssertEqual(s.metadata["format"], "pt")
        let text = s.text()
        XCTAssertTrue(text.contains("format:      safetensors, single file"))
        XCTAssertTrue(text.contains("tensors:     93"))
        XCTAssertTrue(text.contains("layers.1.attention.qkv.weight"))
        XCTAssertTrue(text.contains("[32, 16]"))
    }

    func testFilterAndShardedSummaryAndJSON() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try SafeTensorsWriter.write([("layers.10.w", Tensor([1, 2, 3, 4], shape: [2, 2])), ("layers.2.w", Tensor([1], shape: [1], dtype: .bf16))],
                                    to: dir.file("m-1.safetensors"))
        try SafeTensorsWriter.write([("head.b", Tensor(ints: [1, 2, 3], shape: [3]))], to: dir.file("m-2.safetensors"))
        try Data(#"{"metadata":{"total_size":26},"weight_map":{"layers.10.w":"m-1.safetensors","layers.2.w":"m-1.safetensors","head.b":"m-2.safetensors"}}"#.utf8)
            .write(to: dir.file("m.safetensors.index.json"))
        let src = try openWeights(path: dir.url.path)
        let all = WeightsSummary(path: dir.url.path, source: src)
        XCTAssertEqual(all.format, "safetensors-sharded")
        XCTAssertEqual(all.files.count, 3)
        XCTAssertEqual(all.tensorCount, 3)
        XCTAssertEqual(all.parameterCount, 8)
        XCTAssertEqual(all.totalBytes, 16 + 2 + 12)
        XCTAssertEqual(all.dtypes.map(\.dtype), ["f32", "i32", "bf16"])
        XCTAssertEqual(all.tensors.map(\.name), ["head.b", "layers.2.w", "layers.10.w"])
        XCTAssertEqual(all.tensors.map(\.file), ["m-2.safetensors", "m-1.safetensors", "m-1.safetensors"])
        XCTAssertEqual(all.metadata["total_size"], "26")
        XCTAssertTrue(all.text().contains("sharded (2 files, with index"))

        let filtered = WeightsSummary(path: dir.url.path, source: src, filter: "layers")
        XCTAssertEqual(filtered.tensorCount, 2)
        XCTAssertEqual(filtered.parameterCount, 5)
        let json = try filtered.json()
        let back = try JSONDecoder().decode(WeightsSummary.self, from: Data(json.utf8))
        XCTAssertEqual(back, filtered)
    }

    func testGGUFSummaryShowsStorageTypesAndStoredBytes() throws {
        let path = Fixtures.path("gguf/quants.gguf")
        let g = try GGUFFile(path: path)
        let s = WeightsSummary(path: path, source: g)
        XCTAssertEqual(s.format, "gguf")
        XCTAssertEqual(s.tensorCount, g.tensors.count)
        for e in s.tensors {
            let t = try XCTUnwrap(g.tensors[e.name])
            XCTAssertEqual(e.dtype, t.type.name.lowercased(), e.name)
            XCTAssertEqual(e.bytes, t.fileEnd - t.fileBegin, e.name)
            XCTAssertEqual(e.parameters, t.count, e.name)
        }
        XCTAssertTrue(s.dtypes.contains { $0.dtype.hasPrefix("q") }, "fixture should hold quantised tensors: \(s.dtypes)")
        XCTAssertTrue(s.text().contains("format:      GGUF"))
    }

    func testNumberFormatting() {
        XCTAssertEqual(WeightsSummary.grouped(3_512_345_678), "3,512,345,678")
        XCTAssertEqual(WeightsSummary.grouped(12), "12")
        XCTAssertEqual(WeightsSummary.short(6_970_000_000, unit: "B"), "6.97 GB")
        XCTAssertEqual(WeightsSummary.short(512, unit: "B"), "512 B")
    }
}
