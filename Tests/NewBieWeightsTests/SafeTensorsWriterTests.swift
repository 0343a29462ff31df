import Foundation
import XCTest
import NewBieTensor
@testable import NewBieWeights

final class SafeTensorsWriterTests: XCTestCase {
    var dir: TempDir!
    override func setUpWithError() throws { dir = try TempDir() }
    override func tearDown() { dir.remove() }

    /// A tensor of `dtype` filled with pseudo-random bytes (bool: 0/1).
    func randomTensor(_ shape: [Int], _ dtype: DType, seed: UInt64) -> Tensor {
        let t = Tensor.empty(shape, dtype: dtype)
        var r = TestRandomBytes(seed: seed)
        let p = t.hostPointer.assumingMemoryBound(to: UInt8.self)
        for i in 0..<t.byteCount { p[i] = dtype == .bool ? UInt8(r.next() & 1) : UInt8(truncatingIfNeeded: r.next()) }
        return t
    }

    func testRoundTripEveryDType() throws {
        var tensors: [(String, Tensor)] = []
        for (i, dt) in DType.allCases.enumerated() {
            tensors.append(("t.\(dt)", randomTensor([3, i + 1], dt, seed: UInt64(i + 1))))
        }
        tensors.append(("scalar", randomTensor([], .f32, seed: 99)))
        tensors.append(("empty", randomTensor([0, 5], .bf16, seed: 100)))
        let url = dir.file("all.safetensors")
        let meta = ["format": "pt", "quote\"key": "line\nbreak \\ \u{1} ünï 名前"]
        try SafeTensorsWriter.write(tensors, metadata: meta, to: url)

        let f = try SafeTensorsFile(url: url)
        XCTAssertEqual(f.metadata, meta)
        XCTAssertEqual(f.namesInFileOrder, tensors.map(\.0), "tensors must be stored in the order given")
        for (name, t) in tensors {
            let back = try f.tensor(name)
            XCTAssertEqual(back.dtype, t.dtype, name)
            XCTAssertEqual(back.shape, t.shape, name)
            XCTAssertEqual(tensorBytes(back), tensorBytes(t), "bytes differ for \(name)")
        }
        // Contiguous in order: each tensor starts where the previous ended.
        var expected = 0
        for name in f.namesInFileOrder {
            let info = try XCTUnwrap(f.info(name))
            XCTAssertEqual(info.dataBegin, expected, name)
            expected = info.dataEnd
        }
        XCTAssertEqual(8 + (f.dataStart - 8) + expected, f.fileSize)
    }

    func testHeaderPaddedToEightWithSpaces() throws {
        for nameLength in 1...9 {
            let url = dir.file("pad\(nameLength).safetensors")
            try SafeTensorsWriter.write([(String(repeating: "x", count: nameLength), randomTensor([1], .u8, seed: 1))], to: url)
            let bytes = [UInt8](try Data(contentsOf: url))
            let n = Int(bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
            XCTAssertEqual(n % 8, 0, "header length \(n) not a multiple of 8")
            XCTAssertEqual(bytes[8], UInt8(ascii: "{"))
            let text = String(decoding: bytes[8..<(8 + n)], as: UTF8.self)
            let trimmed = text.replacingOccurrences(of: " +$", with: "", options: .regularExpression)
            XCTAssertTrue(trimmed.hasSuffix("}"), text)
            XCTAssertLessThan(text.count - trimmed.count, 8)
            XCTAssertEqual(bytes.count, 8 + n + 1)
        }
    }

    func testNonContiguousTensorWrittenInLogicalOrder() throws {
        let t = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3]).transpose(0, 1)  // [[1,4],[2,5],[3,6]]
        XCTAssertFalse(t.isContiguous)
        let url = dir.file("t.safetensors")
        try SafeTensorsWriter.write([("t", t)], metadata: nil, to: url)
        let back = try SafeTensorsFile(url: url).tensor("t")
        XCTAssertEqual(back.shape, [3, 2])
        XCTAssertEqual(back.toFloats(), [1, 4, 2, 5, 3, 6])
    }

    func testNoMetadataKeyWhenNil() throws {
        let url = dir.file("n.safetensors")
        try SafeTensorsWriter.write([("a", randomTensor([2], .f16, seed: 3))], metadata: nil, to: url)
        let text = String(decoding: try Data(contentsOf: url), as: UTF8.self)
        XCTAssertFalse(text.contains("__metadata__"))
        try SafeTensorsWriter.write([("a", randomTensor([2], .f16, seed: 3))], metadata: [:], to: url)
        XCTAssertEqual(try SafeTensorsFile(url: url).metadata, [:])
    }

    func testOverwriteReplacesFileAndLeavesNoTemporaries() throws {
        let url = dir.file("w.safetensors")
        try SafeTensorsWriter.write([("a", Tensor([1, 2], shape: [2]))], to: url)
        try SafeTensorsWriter.write([("b", Tensor([3], shape: [1]))], to: url)
        let f = try SafeTensorsFile(url: url)
        XCTAssertEqual(f.names, ["b"])
        XCTAssertEqual(try f.tensor("b").toFloats(), [3])
        XCTAssertEqual(dir.listing(), ["w.safetensors"])
    }

    func testInvalidInputKeepsExistingFile() throws {
        let url = dir.file("keep.safetensors")
        try SafeTensorsWriter.write([("good", Tensor([7], shape: [1]))], to: url)
        let before = try Data(contentsOf: url)
        assertWeightsError(.invalidArgument, file: url.path, tensor: "x", contains: ["given twice"]) {
            try SafeTensorsWriter.write([("x", Tensor([1], shape: [1])), ("x", Tensor([2], shape: [1]))], to: url)
        }
        assertWeightsError(.invalidArgument, file: url.path, tensor: "__metadata__", contains: ["reserved"]) {
            try SafeTensorsWriter.write([("__metadata__", Tensor([1], shape: [1]))], to: url)
        }
        XCTAssertEqual(try Data(contentsOf: url), before)
        XCTAssertEqual(dir.listing(), ["keep.safetensors"])
    }

    func testFailedRenameRemovesTemporary() throws {
        // The destination is a non-empty folder: refused before anything is written (only regular
        // files are ever replaced), and no temporary file is left.
        let target = dir.file("occupied")
        try FileManager.default.createDirectory(at: target, withIntermediateDirectories: false)
        try Data([1]).write(to: target.appendingPathComponent("inside"))
        assertWeightsError(.io, file: target.path, contains: ["is a folder", "only regular files"]) {
            try SafeTensorsWriter.write([("a", Tensor([1], shape: [1]))], to: target)
        }
        XCTAssertEqual(dir.listing(), ["occupied"], "the temporary file must be removed")
    }

    func testMissingFolderIsAnError() throws {
        let url = dir.file("no/such/folder/x.safetensors")
        assertWeightsError(.io, file: url.path, contains: ["cannot create it", "does not exist"]) {
            try SafeTensorsWriter.write([("a", Tensor([1], shape: [1]))], to: url)
        }
    }

    func testWrittenFileHeaderSatisfiesReaderRules() throws {
        // Names needing escapes survive the JSON header.
        let names = ["a\"b", "back\\slash", "tab\there", "ctl\u{7}", "ünïcode/名前", "layers.0.attention.qkv.weight"]
        let url = dir.file("names.safetensors")
        try SafeTensorsWriter.write(names.enumerated().map { ($1, Tensor([Float($0)], shape: [1])) }, to: url)
        let f = try SafeTensorsFile(url: url)
        XCTAssertEqual(f.namesInFileOrder, names)
        for (i, n) in names.enumerated() { XCTAssertEqual(try f.tensor(n).toFloats(), [Float(i)]) }
    }
}

/// Seeded bytes for the writer tests (writer bytes, corruption positions).
typealias TestRandomBytes = SplitMix
