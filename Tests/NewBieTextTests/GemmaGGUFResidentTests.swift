import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieText

/// A Gemma GGUF whose linear weights are Q8_0 (tools/reference/make_gemma_q8_gguf.py): the encoder
/// holds those blocks resident and gives exactly the hidden states of the same file widened at load.
final class GemmaGGUFResidentTests: XCTestCase {
    func encoder(resident: Bool, dtype: DType) throws -> GemmaTextEncoder {
        let g = try GGUFFile(path: Fixtures.path("quantfiles/gemma_tiny_b.q8_0.gguf"))
        g.keepsBlocksResident = resident
        return try GemmaTextEncoder(weights: g, config: try Gemma3TextConfig(gguf: g), dtype: dtype)
    }

    func testResidentQ8BlocksGiveTheWidenedAtLoadHiddenStatesExactly() throws {
        let cases = try SafeTensorsFile(path: Fixtures.path("gemma/gemma_expected.safetensors"))
        let ids = try cases.tensor("tiny_b/ids"), mask = try cases.tensor("tiny_b/mask")
        for dtype in [DType.f32, .bf16] {
            let resident = try encoder(resident: true, dtype: dtype), widened = try encoder(resident: false, dtype: dtype)
            XCTAssertEqual(resident.layers[0].o.quantized?.scheme, .q8_0)
            XCTAssertEqual(resident.layers[0].down.quantized?.scheme, .q8_0)
            XCTAssertNil(resident.layers[0].q.quantized)   // rows of 48: not whole blocks, stored F32
            XCTAssertNil(widened.layers[0].o.quantized)
            let a = try resident(ids: ids, mask: mask).to(.f32).toFloats()
            let b = try widened(ids: ids, mask: mask).to(.f32).toFloats()
            XCTAssertFalse(a.contains { !$0.isFinite })
            XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "\(dtype)")
            // and the Q8_0 file stays near the float fixture's expected states
            if dtype == .f32 {
                let want = try cases.tensor("tiny_b/hidden_gguf_fp32")
                let h = want.shape[2], w = want.toFloats()
                var got: [Float] = [], ref: [Float] = []
                for (i, m) in mask.toInts().enumerated() where m != 0 {
                    got += a[(i * h)..<((i + 1) * h)]; ref += w[(i * h)..<((i + 1) * h)]
                }
                let err = relativeL2(got, ref)
                print("Gemma tiny_b from Q8_0 GGUF vs float GGUF: relative L2 \(err)")
                XCTAssertTrue(err > 0 && err < 5e-2, "Q8_0 Gemma vs float: \(err)")
            }
        }
    }
}
