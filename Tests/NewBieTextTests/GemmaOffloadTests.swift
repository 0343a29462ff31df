import XCTest
import NewBieTensor
@testable import NewBieWeights
import NewBieTestSupport
@testable import NewBieText

/// `--offload` for Gemma on the CPU: every layer's weights packed into the ring (the embedding
/// table left on the host), and the streamed encoder identical to the resident one, bit for bit.
final class GemmaOffloadTests: XCTestCase {
    static let expected: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("gemma/gemma_expected.safetensors"))

    func testStreamedLayersGiveIdenticalHiddenStates() throws {
        let ids = try Self.expected.tensor("tiny_a/ids"), mask = try Self.expected.tensor("tiny_a/mask")
        for precision in [ModulePrecision.uniform(.f32), .uniform(.bf16),
                          ModulePrecision(base: .bf16, quantization: ModuleQuantization(rules: [QuantRule(pattern: "", scheme: .int8)]))] {
            func encoder(_ offload: Bool) throws -> GemmaTextEncoder {
                try GemmaTextEncoder.load(path: Fixtures.path("gemma/tiny_a"),
                                          placement: ModelPlacement(name: "gemma", device: .cpu, precision: precision, offload: offload))
            }
            let resident = try encoder(false), streamed = try encoder(true)
            XCTAssertNil(resident.streamedLayers)
            let ring = try XCTUnwrap(streamed.streamedLayers)
            XCTAssertEqual(ring.groupCount, streamed.layers.count)
            XCTAssertEqual(ring.tensorCount(0), 4 + 7 * (precision.quantization.isEmpty ? 1 : 2) + 2, "norms, 7 projections, q/k norms")
            let want = try resident(ids: ids, mask: mask).toFloats()
            XCTAssertFalse(want.contains { !$0.isFinite })
            for pass in 1...2 {
                let got = try streamed(ids: ids, mask: mask).toFloats()
                XCTAssertEqual(zip(got, want).filter { $0.bitPattern != $1.bitPattern }.count + abs(got.count - want.count), 0,
                               "pass \(pass), \(precision): elements differing from the resident encoder")
            }
        }
    }
}
