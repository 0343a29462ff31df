import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

final class ShardedSafeTensorsTests: XCTestCase {
    var dir: TempDir!
    override func setUpWithError() throws { dir = try TempDir() }
    override func tearDown() { dir.remove() }

    let indexName = "model.safetensors.index.json"
    let shard1 = "model-00001-of-00002.safetensors"
    let shard2 = "model-00002-of-00002.safetensors"

    /// Two shards plus an index mapping a,b -> shard 1 and c -> shard 2.
    @discardableResult
    func makeSharded(index: String? = nil) throws -> String {
        try SafeTensorsWriter.write([("a", Tensor([1, 2], shape: [2])), ("b", Tensor([3], shape: [1], dtype: .bf16))],
                                    to: dir.file(shard1))
        try SafeTensorsWriter.write([("c", Tensor([4, 5, 6, 7], shape: [2, 2], dtype: .f16))], to: dir.file(shard2))
        let text = index ?? """
        {"metadata": {"total_size": 18, "format": "pt"},
         "weight_map": {"a": "\(shard1)", "b": "\(shard1)", "c": "\(shard2)"}}
        """
        try Data(text.utf8).write(to: dir.file(indexName))
        return dir.path(indexName)
    }

    func testOpensIndex() throws {
        let index = try makeSharded()
        let s = try ShardedSafeTensors(indexPath: index)
        XCTAssertEqual(s.tensorNames, ["a", "b", "c"])
        XCTAssertEqual(s.shards.map { URL(fileURLWithPath: $0.path).lastPathComponent }, [shard1, shard2])
        XCTAssertEqual(s.metadata, ["total_size": "18", "format": "pt"])
        XCTAssertEqual(try s.loadTensor("a").toFloats(), [1, 2])
        XCTAssertEqual(try s.loadTensor("b").toFloats(), [3])
        XCTAssertEqual(try s.loadTensor("c").toFloats(), [4, 5, 6, 7])
        XCTAssertEqual(s.tensorInfo("c")?.shape, [2, 2])
        XCTAssertEqual(s.tensorInfo("c")?.dtype, .f16)
        XCTAssertEqual(s.shard(of: "c")?.path, dir.path(shard2))
        XCTAssertEqual(s.unlistedTensorCount, 0)
        assertWeightsError(.tensorNotFound, file: index, tensor: "zzz") { try s.loadTensor("zzz") }
    }

    func testMissingShard() throws {
        let index = try makeSharded()
        try FileManager.default.removeItem(at: dir.file(shard2))
        assertWeightsError(.missingShard, file: dir.path(shard2), tensor: "c", contains: ["missing", index]) {
            try ShardedSafeTensors(indexPath: index)
        }
    }

    func testTensorMissingFromItsShard() throws {
        let index = try makeSharded(index: """
            {"weight_map": {"a": "\(shard1)", "b": "\(shard1)", "c": "\(shard1)"}}
            """)
        assertWeightsError(.shardMismatch, file: dir.path(shard1), tensor: "c", contains: ["does not hold it", index]) {
            try ShardedSafeTensors(indexPath: index)
        }
    }

    func testCorruptShardNamesShard() throws {
        let index = try makeSharded()
        // Truncate shard 2 by 3 bytes.
        let p = dir.path(shard2)
        let data = try Data(contentsOf: URL(fileURLWithPath: p))
        try data.prefix(data.count - 3).write(to: URL(fileURLWithPath: p))
        assertWeightsError(.invalidOffsets, file: p, tensor: "c", contains: ["truncated"]) { try ShardedSafeTensors(indexPath: index) }
    }

    func testMalformedIndexes() throws {
        let cases: [(String, String)] = [
            ("not json", "not valid JSON"),
            ("[]", "not a JSON object"),
            (#"{"metadata": {}}"#, "no weight_map"),
            (#"{"weight_map": []}"#, "weight_map is an array"),
            (#"{"weight_map": {"a": 3}}"#, "not a shard file name"),
            (#"{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}"#, "duplicate key"),
            (#"{"metadata": 5, "weight_map": {}}"#, "metadata is a number"),
        ]
        for (text, msg) in cases {
            let index = try makeSharded(index: text)
            assertWeightsError(.invalidIndex, file: index, contains: [msg]) { try ShardedSafeTensors(indexPath: index) }
        }
    }

    func testShardNamesMustStayInFolder() throws {
        for bad in ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", ""] {
            let index = try makeSharded(index: #"{"weight_map": {"a": "\#(bad)"}}"#)
            assertWeightsError(.invalidIndex, file: index, tensor: "a", contains: ["inside the index's folder"]) {
                try ShardedSafeTensors(indexPath: index)
            }
        }
    }

    func testUnlistedTensorsAreCountedNotExposed() throws {
        let index = try makeSharded(index: #"{"weight_map": {"a": "\#(shard1)", "c": "\#(shard2)"}}"#)
        let s = try ShardedSafeTensors(indexPath: index)
        XCTAssertEqual(s.tensorNames, ["a", "c"])
        XCTAssertEqual(s.unlistedTensorCount, 1)
        XCTAssertNil(s.tensorInfo("b"))
    }

    /// Hugging Face cache snapshots hold symlinks to blobs elsewhere; those must open.
    func testSymlinkedShardsLikeHuggingFaceCache() throws {
        try makeSharded()
        let blobs = dir.file("blobs"), snap = dir.file("snapshots/abc/transformer")
        try FileManager.default.createDirectory(at: blobs, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: snap, withIntermediateDirectories: true)
        for (i, name) in [shard1, shard2, indexName].enumerated() {
            try FileManager.default.moveItem(at: dir.file(name), to: blobs.appendingPathComponent("blob\(i)"))
            try FileManager.default.createSymbolicLink(atPath: snap.appendingPathComponent(name).path,
                                                       withDestinationPath: "../../../blobs/blob\(i)")
        }
        let s = try openWeights(path: snap.path)
        XCTAssertTrue(s is ShardedSafeTensors)
        XCTAssertEqual(s.tensorNames, ["a", "b", "c"])
        XCTAssertEqual(try s.loadTensor("c").toFloats(), [4, 5, 6, 7])
    }

    func testShardsWithoutIndexAndDuplicates() throws {
        try makeSharded()
        let s = try ShardedSafeTensors(shardPaths: [dir.path(shard1), dir.path(shard2)])
        XCTAssertEqual(s.tensorNames, ["a", "b", "c"])
        XCTAssertNil(s.indexPath)
        let dup = dir.path("dup.safetensors")
        try SafeTensorsWriter.write([("c", Tensor([9], shape: [1]))], to: URL(fileURLWithPath: dup))
        assertWeightsError(.shardMismatch, file: dup, tensor: "c", contains: ["also held by", dir.path(shard2)]) {
            try ShardedSafeTensors(shardPaths: [dir.path(shard1), dir.path(shard2), dup])
        }
    }

    // MARK: openWeights

    func testOpenWeightsOnIndexFileAndFolder() throws {
        let index = try makeSharded()
        let viaIndex = try openWeights(path: index)
        XCTAssertTrue(viaIndex is ShardedSafeTensors)
        XCTAssertEqual(viaIndex.tensorNames, ["a", "b", "c"])
        let viaFolder = try openWeights(path: dir.url.path)
        XCTAssertEqual((viaFolder as? ShardedSafeTensors)?.indexPath, index)
        let viaFile = try openWeights(path: dir.path(shard2))
        XCTAssertTrue(viaFile is SafeTensorsFile)
        XCTAssertEqual(viaFile.tensorNames, ["c"])
    }

    func testOpenWeightsFolderWithoutIndex() throws {
        // One file: opened as a single file (hidden temporaries are ignored).
        try SafeTensorsWriter.write([("w", Tensor([1], shape: [1]))], to: dir.file("diffusion_pytorch_model.safetensors"))
        try Data([0]).write(to: dir.file(".diffusion_pytorch_model.safetensors.tmp-abc"))
        let single = try openWeights(path: dir.url.path)
        XCTAssertTrue(single is SafeTensorsFile)
        XCTAssertEqual(single.tensorNames, ["w"])
        // Several files: union of shards.
        try SafeTensorsWriter.write([("v", Tensor([2], shape: [1]))], to: dir.file("extra.safetensors"))
        let union = try openWeights(path: dir.url.path)
        XCTAssertTrue(union is ShardedSafeTensors)
        XCTAssertEqual(union.tensorNames, ["v", "w"])
        XCTAssertEqual(try union.loadTensor("v").toFloats(), [2])
    }

    func testOpenWeightsErrors() throws {
        let missing = dir.path("nothing-here")
        assertWeightsError(.io, file: missing, contains: ["no such file"]) { try openWeights(path: missing) }
        assertWeightsError(.io, file: dir.url.path, contains: ["no .safetensors file"]) { try openWeights(path: dir.url.path) }
        try Data("{}".utf8).write(to: dir.file("a.safetensors.index.json"))
        try Data("{}".utf8).write(to: dir.file("b.safetensors.index.json"))
        assertWeightsError(.invalidArgument, file: dir.url.path, contains: ["several shard indexes"]) { try openWeights(path: dir.url.path) }
        // A file with the GGUF magic goes to the GGUF reader (whose own errors name the file).
        let gguf = dir.path("model.gguf")
        try Data("GGUF\u{3}\0\0\0".utf8).write(to: URL(fileURLWithPath: gguf))
        XCTAssertThrowsError(try openWeights(path: gguf)) { e in
            XCTAssertTrue("\(e)".contains(gguf), "\(e)")
        }
    }

    func testOpenWeightsGGUFFileAndFolder() throws {
        let fixture = Fixtures.path("gguf/quants.gguf")
        let g = try openWeights(path: fixture)
        XCTAssertTrue(g is GGUFFile)
        XCTAssertFalse(g.tensorNames.isEmpty)
        try FileManager.default.copyItem(atPath: fixture, toPath: dir.path("m.gguf"))
        XCTAssertEqual(try openWeights(path: dir.url.path).tensorNames, g.tensorNames)
        try FileManager.default.copyItem(atPath: fixture, toPath: dir.path("n.gguf"))
        assertWeightsError(.invalidArgument, file: dir.url.path, contains: ["several .gguf files"]) { try openWeights(path: dir.url.path) }
    }

    func testNaturalOrder() {
        let names = ["layers.10.w", "layers.2.w", "layers.1.w", "a", "layers.02.w", "model-00010-of-00010", "model-00002-of-00010"]
        XCTAssertEqual(names.sorted(by: naturalLess),
                       ["a", "layers.1.w", "layers.2.w", "layers.02.w", "layers.10.w", "model-00002-of-00010", "model-00010-of-00010"])
        XCTAssertFalse(naturalLess("x", "x"))
        XCTAssertTrue(naturalLess("x", "x1"))
    }
}
