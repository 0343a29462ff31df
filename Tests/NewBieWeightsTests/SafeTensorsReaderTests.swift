import Foundation
import XCTest
import NewBieTensor
@testable import NewBieWeights

/// Every malformed input gets a clear `WeightsError` naming the file (and tensor); valid edge
/// cases (empty/rank-0 tensors, padding, any header order) are accepted.
final class SafeTensorsReaderTests: XCTestCase {
    var dir: TempDir!
    override func setUpWithError() throws { dir = try TempDir() }
    override func tearDown() { dir.remove() }

    /// Writes a file from a header and data, returns its path.
    func file(_ header: String, data: [UInt8] = [], declaredLength: UInt64? = nil, pad: Bool = true,
              name: String = "t.safetensors") throws -> String {
        let p = dir.path(name)
        try writeBytes(rawSafetensors(header: header, data: data, declaredLength: declaredLength, pad: pad), to: p)
        return p
    }

    let f32x2 = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
    let eightBytes: [UInt8] = [0, 0, 0x80, 0x3F, 0, 0, 0, 0x40]  // 1.0, 2.0

    // MARK: valid files

    func testReadsValidFile() throws {
        let p = try file(f32x2, data: eightBytes)
        let f = try SafeTensorsFile(path: p)
        XCTAssertEqual(f.names, ["a"])
        XCTAssertEqual(f.info("a")?.shape, [2])
        XCTAssertEqual(try f.tensor("a").toFloats(), [1, 2])
        XCTAssertEqual(f.metadata, [:])
    }

    func testTensorIsZeroCopyViewOfMapping() throws {
        let p = try file(f32x2, data: eightBytes)
        let f = try SafeTensorsFile(path: p)
        let t = try f.tensor("a")
        let raw = try f.rawBytes("a")
        XCTAssertEqual(UnsafeRawPointer(t.hostPointer), raw.baseAddress, "aligned data must not be copied")
    }

    func testHeaderOrderIsFreeAndFileOrderIsReported() throws {
        let h = #"{"second":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"first":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}"#
        let f = try SafeTensorsFile(path: try file(h, data: [1, 0, 2, 0, 9, 8]))
        XCTAssertEqual(f.namesInFileOrder, ["first", "second"])
        XCTAssertEqual(try f.tensor("first").toInts(), [1, 2])
        XCTAssertEqual(try f.tensor("second").toInts(), [9, 8])
    }

    func testEmptyAndScalarTensorsAndEmptyHeader() throws {
        let h = #"{"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e2":{"dtype":"BF16","shape":[4,0],"data_offsets":[4,4]}}"#
        let f = try SafeTensorsFile(path: try file(h, data: [0, 0, 0x20, 0x40]))
        XCTAssertEqual(try f.tensor("s").toFloats(), [2.5])
        XCTAssertEqual(try f.tensor("s").shape, [])
        XCTAssertEqual(try f.tensor("e").shape, [0, 3])
        XCTAssertEqual(try f.tensor("e").count, 0)
        XCTAssertEqual(try f.tensor("e2").toFloats(), [])

        let empty = try SafeTensorsFile(path: try file("{}", name: "empty.safetensors"))
        XCTAssertEqual(empty.names, [])
    }

    func testPaddingAndMetadataAccepted() throws {
        // Unpadded header (not a multiple of 8) is still valid; padded with spaces, too.
        let h = #"{"__metadata__":{"k":"v \"q\""},"b":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}"#
        for pad in [false, true] {
            let f = try SafeTensorsFile(path: try file(h, data: [1, 2, 3], pad: pad, name: "p\(pad).safetensors"))
            XCTAssertEqual(f.metadata, ["k": "v \"q\""])
            XCTAssertEqual(try f.tensor("b").toInts(), [1, 2, 3])
        }
        // __metadata__ may be null; unknown extra entry fields are ignored (as the reference does).
        let h2 = #"{"__metadata__":null,"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":[1,{"x":2}]}}"#
        XCTAssertEqual(try SafeTensorsFile(path: try file(h2, data: [7], name: "n.safetensors")).metadata, [:])
    }

    func testMisalignedDataIsCopiedNotMisread() throws {
        // Unpadded header whose length puts the F32 data at a file offset that is 2 mod 4.
        var h = f32x2
        while (8 + h.utf8.count) % 4 != 2 { h += " " }
        let f = try SafeTensorsFile(path: try file(h, data: eightBytes, pad: false))
        let t = try f.tensor("a")
        XCTAssertEqual(Int(bitPattern: t.hostPointer) % 4, 0)
        XCTAssertEqual(t.toFloats(), [1, 2])
    }

    // MARK: truncation and header length

    func testEmptyFile() throws {
        let p = dir.path("zero.safetensors")
        try writeBytes([], to: p)
        assertWeightsError(.truncated, file: p, contains: ["0 bytes"]) { try SafeTensorsFile(path: p) }
    }

    func testFileShorterThanLengthField() throws {
        let p = dir.path("short.safetensors")
        try writeBytes([1, 2, 3], to: p)
        assertWeightsError(.truncated, file: p, contains: ["3 bytes"]) { try SafeTensorsFile(path: p) }
    }

    func testHeaderLengthPastEndOfFile() throws {
        let p = try file(f32x2, data: eightBytes, declaredLength: 4096)
        assertWeightsError(.truncated, file: p, contains: ["4096", "past the end"]) { try SafeTensorsFile(path: p) }
    }

    func testHeaderLengthTooLarge() throws {
        let p = try file(f32x2, data: eightBytes, declaredLength: 100_000_001)
        assertWeightsError(.headerTooLarge, file: p, contains: ["100000001"]) { try SafeTensorsFile(path: p) }
        // A length near UInt64.max must not trap when converted.
        let q = try file(f32x2, data: eightBytes, declaredLength: UInt64.max, name: "max.safetensors")
        assertWeightsError(.headerTooLarge, file: q) { try SafeTensorsFile(path: q) }
    }

    func testTruncatedDataNamesTensor() throws {
        let h = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}}"#
        // 24 data bytes expected, only 13 present (file cut short).
        let p = try file(h, data: Array(repeating: 0, count: 13))
        assertWeightsError(.invalidOffsets, file: p, tensor: "b", contains: ["[8, 24]", "13 bytes", "truncated"]) {
            try SafeTensorsFile(path: p)
        }
    }

    func testTruncatedInsideHeader() throws {
        // A valid file cut in the middle of its header.
        let full = rawSafetensors(header: f32x2, data: eightBytes)
        let p = dir.path("cut.safetensors")
        try writeBytes(Array(full.prefix(30)), to: p)
        assertWeightsError(.truncated, file: p) { try SafeTensorsFile(path: p) }
    }

    // MARK: header text

    func testHeaderNotUTF8() throws {
        var h = Array(#"{"a\#u{00}":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#.utf8)
        h[3] = 0xFF  // replace the NUL inside the name by an invalid UTF-8 byte
        let p = dir.path("utf.safetensors")
        try writeBytes(rawSafetensors(headerBytes: h, data: [1]), to: p)
        assertWeightsError(.invalidHeader, file: p, contains: ["UTF-8"]) { try SafeTensorsFile(path: p) }
    }

    func testHeaderMustStartWithBrace() throws {
        let p = try file(" " + f32x2, data: eightBytes)
        assertWeightsError(.invalidHeader, file: p, contains: ["'{'"]) { try SafeTensorsFile(path: p) }
        let q = try file("[1,2]", name: "arr.safetensors")
        assertWeightsError(.invalidHeader, file: q, contains: ["'{'"]) { try SafeTensorsFile(path: q) }
        let r = try file("", name: "emptyheader.safetensors")
        assertWeightsError(.invalidHeader, file: r, contains: ["empty"]) { try SafeTensorsFile(path: r) }
    }

    func testHeaderNotJSON() throws {
        let cases = [
            "{not json at all}",
            #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#,         // unterminated
            #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} trailing"#,  // text after the object
            #"{"a":{"dtype":"F32","shape":[2,],"data_offsets":[0,8]}}"#,        // trailing comma
            #"{"a":{"dtype":'F32',"shape":[2],"data_offsets":[0,8]}}"#,         // single quotes
            "{\"a\u{01}\":1}",                                                  // raw control char
            #"{"a\ud800":1}"#,                                                  // lone surrogate
        ]
        for (i, h) in cases.enumerated() {
            let p = try file(h, data: eightBytes, name: "nj\(i).safetensors")
            assertWeightsError(.invalidHeader, file: p, contains: ["not valid JSON"]) { try SafeTensorsFile(path: p) }
        }
        // Padding must be whitespace: NUL padding is not JSON.
        var h = Array(f32x2.utf8)
        while h.count % 8 != 0 { h.append(0) }
        h += [0, 0, 0, 0, 0, 0, 0, 0]
        let p = dir.path("nul.safetensors")
        try writeBytes(rawSafetensors(headerBytes: h, data: eightBytes), to: p)
        assertWeightsError(.invalidHeader, file: p, contains: ["not valid JSON"]) { try SafeTensorsFile(path: p) }
    }

    func testDuplicateKeys() throws {
        let h = #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#
        let p = try file(h, data: [1, 2])
        assertWeightsError(.invalidHeader, file: p, contains: ["duplicate key \"a\""]) { try SafeTensorsFile(path: p) }
        let h2 = #"{"a":{"dtype":"U8","dtype":"F32","shape":[1],"data_offsets":[0,1]}}"#
        let q = try file(h2, data: [1], name: "d2.safetensors")
        assertWeightsError(.invalidHeader, file: q, contains: ["duplicate key \"dtype\""]) { try SafeTensorsFile(path: q) }
    }

    func testDeepNestingIsAnErrorNotACrash() throws {
        let depth = 100_000
        let h = #"{"__metadata__":"# + String(repeating: "[", count: depth) + String(repeating: "]", count: depth) + "}"
        let p = try file(h)
        assertWeightsError(.invalidHeader, file: p, contains: ["nested deeper"]) { try SafeTensorsFile(path: p) }
    }

    // MARK: entries

    func testEntryNotAnObject() throws {
        let p = try file(#"{"a":[1,2,3]}"#)
        assertWeightsError(.invalidEntry, file: p, tensor: "a", contains: ["not an object"]) { try SafeTensorsFile(path: p) }
    }

    func testMissingFields() throws {
        let cases: [(String, String)] = [
            (#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#, "missing dtype"),
            (#"{"a":{"dtype":"U8","data_offsets":[0,1]}}"#, "missing shape"),
            (#"{"a":{"dtype":"U8","shape":[1]}}"#, "missing data_offsets"),
            (#"{"a":{"dtype":8,"shape":[1],"data_offsets":[0,1]}}"#, "dtype is a number"),
            (#"{"a":{"dtype":"U8","shape":"1","data_offsets":[0,1]}}"#, "shape is a string"),
        ]
        for (i, (h, msg)) in cases.enumerated() {
            let p = try file(h, data: [1], name: "m\(i).safetensors")
            assertWeightsError(.invalidEntry, file: p, tensor: "a", contains: [msg]) { try SafeTensorsFile(path: p) }
        }
    }

    func testUnknownAndUnsupportedDType() throws {
        let p = try file(#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#, data: [1])
        assertWeightsError(.unknownDType, file: p, tensor: "w", contains: ["unknown dtype \"Q4\""]) { try SafeTensorsFile(path: p) }
        let q = try file(#"{"w":{"dtype":"F8_E5M2","shape":[1],"data_offsets":[0,1]}}"#, data: [1], name: "f8.safetensors")
        assertWeightsError(.unsupportedDType, file: q, tensor: "w", contains: ["F8_E5M2", "not support"]) { try SafeTensorsFile(path: q) }
        // F8_E4M3 is read (decoded to float32); one byte per value, so a 2-byte range is a size error
        let e = try file(#"{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#, data: [0x38, 0xC4], name: "e4m3.safetensors")
        let ef = try SafeTensorsFile(path: e)
        XCTAssertEqual(ef.info("w")?.storedAsFP8E4M3, true)
        XCTAssertEqual(try ef.tensor("w").toFloats(), [1.0, -3.0])
        let bad = try file(#"{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0], name: "e4m3bad.safetensors")
        assertWeightsError(.sizeMismatch, file: bad, tensor: "w", contains: ["needs 2 bytes"]) { try SafeTensorsFile(path: bad) }
        // dtype names are case-sensitive in the format.
        let r = try file(#"{"w":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0], name: "lc.safetensors")
        assertWeightsError(.unknownDType, file: r, tensor: "w") { try SafeTensorsFile(path: r) }
    }

    func testBadShapeValues() throws {
        let shapes = ["[-1]", "[2.0]", "[1e2]", "[\"2\"]", "[true]", "[null]", "[99999999999999999999999]"]
        for (i, s) in shapes.enumerated() {
            let p = try file(#"{"a":{"dtype":"U8","shape":\#(s),"data_offsets":[0,2]}}"#, data: [1, 2], name: "s\(i).safetensors")
            assertWeightsError(.invalidEntry, file: p, tensor: "a", contains: ["non-negative integers"]) { try SafeTensorsFile(path: p) }
        }
    }

    func testHugeShapeOverflows() throws {
        let p = try file(#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,16],"data_offsets":[0,2]}}"#, data: [1, 2])
        assertWeightsError(.shapeOverflow, file: p, tensor: "a", contains: ["overflow"]) { try SafeTensorsFile(path: p) }
        // Elements fit, bytes do not.
        let q = try file(#"{"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,2]}}"#, data: [1, 2], name: "b.safetensors")
        assertWeightsError(.shapeOverflow, file: q, tensor: "a", contains: ["overflow"]) { try SafeTensorsFile(path: q) }
        // A zero dimension makes a huge shape empty (no overflow in the product order given).
        let r = try file(#"{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}"#, name: "z.safetensors")
        XCTAssertEqual(try SafeTensorsFile(path: r).info("a")?.count, 0)
    }

    func testShapeLengthMismatch() throws {
        let p = try file(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: eightBytes)
        assertWeightsError(.sizeMismatch, file: p, tensor: "a", contains: ["needs 12 bytes", "hold 8"]) { try SafeTensorsFile(path: p) }
    }

    func testBadDataOffsets() throws {
        let offs = ["[0]", "[0,8,9]", "[-1,7]", "[0.0,8]", "\"0,8\"", "[0,1e1]"]
        for (i, o) in offs.enumerated() {
            let p = try file(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":\#(o)}}"#, data: eightBytes, name: "o\(i).safetensors")
            assertWeightsError(.invalidEntry, file: p, tensor: "a", contains: ["two non-negative integers"]) { try SafeTensorsFile(path: p) }
        }
        let p = try file(#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,0]}}"#, data: eightBytes, name: "rev.safetensors")
        assertWeightsError(.invalidOffsets, file: p, tensor: "a", contains: ["reversed"]) { try SafeTensorsFile(path: p) }
    }

    func testOverlappingOffsets() throws {
        let h = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        let p = try file(h, data: eightBytes)
        let e = assertWeightsError(.invalidOffsets, file: p, tensor: "b", contains: ["overlap", "\"a\""]) { try SafeTensorsFile(path: p) }
        XCTAssertNotNil(e)
        // Two tensors on the very same bytes.
        let h2 = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#
        let q = try file(h2, data: eightBytes, name: "same.safetensors")
        assertWeightsError(.invalidOffsets, file: q, tensor: "b", contains: ["overlap"]) { try SafeTensorsFile(path: q) }
    }

    func testHoleBetweenTensors() throws {
        let h = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#
        let p = try file(h, data: [1, 2, 3, 4, 5, 6])
        assertWeightsError(.invalidOffsets, file: p, tensor: "b", contains: ["hole of 2 bytes", "contiguous"]) { try SafeTensorsFile(path: p) }
        // Data not starting at 0.
        let q = try file(#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#, data: [0, 1, 2], name: "start.safetensors")
        assertWeightsError(.invalidOffsets, file: q, tensor: "a", contains: ["hole of 1 bytes"]) { try SafeTensorsFile(path: q) }
    }

    func testTrailingBytesNotCovered() throws {
        let p = try file(f32x2, data: eightBytes + [9, 9, 9])
        assertWeightsError(.invalidOffsets, file: p, contains: ["3 bytes at the end", "\"a\""]) { try SafeTensorsFile(path: p) }
        let q = try file("{}", data: [1], name: "notensors.safetensors")
        assertWeightsError(.invalidOffsets, file: q, contains: ["1 bytes at the end", "no tensors"]) { try SafeTensorsFile(path: q) }
    }

    func testBadMetadata() throws {
        let p = try file(#"{"__metadata__":{"epochs":3}}"#)
        assertWeightsError(.invalidMetadata, file: p, contains: ["\"epochs\"", "not a string"]) { try SafeTensorsFile(path: p) }
        let q = try file(#"{"__metadata__":["x"]}"#, name: "m2.safetensors")
        assertWeightsError(.invalidMetadata, file: q, contains: ["not an object"]) { try SafeTensorsFile(path: q) }
    }

    func testMissingTensorNamesFileAndTensor() throws {
        let p = try file(f32x2, data: eightBytes)
        let f = try SafeTensorsFile(path: p)
        assertWeightsError(.tensorNotFound, file: p, tensor: "nope") { try f.tensor("nope") }
        assertWeightsError(.tensorNotFound, file: p, tensor: "nope") { try f.loadTensor("nope") }
    }

    func testNotARegularFile() throws {
        assertWeightsError(.io, file: dir.url.path, contains: ["not a regular file"]) { try SafeTensorsFile(path: dir.url.path) }
        let missing = dir.path("absent.safetensors")
        assertWeightsError(.io, file: missing, contains: ["cannot open"]) { try SafeTensorsFile(path: missing) }
    }

    /// Random corruption of a valid file never crashes: it either still validates or throws.
    func testRandomCorruptionNeverCrashes() throws {
        let h = #"{"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1,1],"data_offsets":[8,16]}}"#
        let good = rawSafetensors(header: h, data: eightBytes + [1, 0, 0, 0, 0, 0, 0, 0])
        var rng = TestRandomBytes(seed: 20261129)  // seeded: a failure reproduces
        var failures = 0
        let p = dir.path("fuzz.safetensors")
        for round in 0..<300 {
            var b = good
            switch round % 3 {
            case 0: b[Int.random(in: 0..<b.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            case 1: b = Array(b.prefix(Int.random(in: 0..<b.count, using: &rng)))
            default:
                for _ in 0..<4 { b[Int.random(in: 8..<(8 + h.utf8.count), using: &rng)] = UInt8.random(in: 0x20...0x7E, using: &rng) }
            }
            try writeBytes(b, to: p)
            do {
                let f = try SafeTensorsFile(path: p)
                for n in f.names { _ = try f.tensor(n); XCTAssertGreaterThanOrEqual(try f.rawBytes(n).map(Int.init).reduce(0, +), 0) }
            } catch let e as WeightsError {
                failures += 1
                XCTAssertTrue(e.message.hasPrefix(p), "error does not start with the file: \(e.message)")
            }
        }
        XCTAssertGreaterThan(failures, 100)
    }
}
