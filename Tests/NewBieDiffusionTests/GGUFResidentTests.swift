import Foundation
import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// GGUF block weights held resident by the linear layers (widened per layer at each call) against
/// the same file dequantised once at load: the same values through the same products, so the
/// forwards must agree exactly (docs/QUANTIZATION.md, "GGUF blocks").
final class GGUFResidentTests: XCTestCase {
    func fixture(_ name: String) -> String { Fixtures.path("quantfiles/" + name) }

    func dit(_ file: String, resident: Bool, dtype: DType) throws -> NextDiT {
        let (source, json) = try NextDiT.openCheckpoint(path: fixture(file), configPath: nil)
        let gguf = try XCTUnwrap(source as? GGUFFile)
        gguf.keepsBlocksResident = resident
        let (weights, config) = try NextDiT.checkedWeights(source: gguf, json: json)
        return try NextDiT(weights: weights, config: config, dtype: dtype)
    }

    func testResidentBlocksGiveTheWidenedAtLoadForwardExactly() throws {
        for file in ["dit.q8_0.gguf", "dit.q5_0.gguf", "dit.q4_0.gguf", "dit.mixed.gguf"] {
            for dtype in [DType.f32, .bf16] {
                let resident = try dit(file, resident: true, dtype: dtype)
                let widened = try dit(file, resident: false, dtype: dtype)
                // the resident model really holds blocks: fewer weight bytes than the widened one
                let qkvResident = resident.layers[0].qkv, qkvWidened = widened.layers[0].qkv
                if file != "dit.mixed.gguf" {
                    XCTAssertNotNil(qkvResident.quantized?.scheme.blockFormat, file)
                    XCTAssertLessThan(qkvResident.weightBytes, qkvWidened.weightBytes, file)
                }
                XCTAssertNil(qkvWidened.quantized, file)
                let a = try tinyDiTForward(resident).to(.f32).toFloats()
                let b = try tinyDiTForward(widened).to(.f32).toFloats()
                XCTAssertFalse(a.contains { !$0.isFinite }, file)
                XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "\(file) \(dtype)")
            }
        }
    }

    /// Each block format's widening on the CPU backend is the GGUF reader's dequantisation (the
    /// gguf package's values, checked in GGUFTests), in fp32 and rounded once to bf16/f16.
    func testBackendWideningIsTheReadersDequantisation() throws {
        let gguf = try GGUFFile(path: Fixtures.path("gguf/quants.gguf"))
        var seen = Set<String>()
        for name in gguf.tensorOrder {
            guard let info = gguf.tensors[name], let format = info.type.blockFormat, info.ne.count == 2 else { continue }
            let q = try XCTUnwrap(try gguf.quantizedWeight(name))
            XCTAssertEqual(q.shape, info.shape)
            let want = try gguf.tensor(name)
            for dt in [DType.f32, .bf16, .f16] {
                XCTAssertEqual(q.dequantized(dt).toFloats().map(\.bitPattern), want.to(dt).toFloats().map(\.bitPattern), "\(name) \(dt)")
            }
            seen.insert(format.description)
        }
        XCTAssertEqual(seen, Set(BlockFormat.allCases.map(\.description)))
    }
}
