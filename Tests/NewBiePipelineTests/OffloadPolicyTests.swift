import XCTest
@testable import NewBiePipeline
import NewBieTensor
import NewBieWeights

/// `--offload` in the placement policy: which models stream, what their placements carry, and the
/// refusal on the CPU (no GPU needed: devices are parsed, not opened).
final class OffloadPolicyTests: XCTestCase {
    func testOffloadStreamsTheDiTAndGemmaOnTheGPU() throws {
        let p = try PlacementPolicy.parse(precision: "auto", device: "cuda", offload: true)
        XCTAssertEqual(p.offloadedSlots, [.dit, .gemma])
        XCTAssertTrue(p.placement(.dit).offload)
        XCTAssertTrue(p.placement(.gemma).offload)
        XCTAssertFalse(p.placement(.jina).offload)
        XCTAssertFalse(p.placement(.vae).offload)
        XCTAssertTrue(p.description.hasSuffix(", offload dit,gemma"), p.description)
        XCTAssertNotEqual(p, try PlacementPolicy.parse(precision: "auto", device: "cuda"))
    }

    func testOnlyModelsOnAGPUStream() throws {
        let p = try PlacementPolicy.parse(precision: "auto", device: "cuda,gemma=cpu", offload: true)
        XCTAssertEqual(p.offloadedSlots, [.dit])
        XCTAssertFalse(p.placement(.gemma).offload, "Gemma on the CPU computes from host memory already")
    }

    func testWithoutTheFlagNothingStreams() throws {
        let p = try PlacementPolicy.parse(precision: "auto", device: "cuda")
        XCTAssertEqual(p.offloadedSlots, [])
        XCTAssertFalse(ModelSlot.allCases.contains { p.placement($0).offload })
        XCTAssertFalse(p.description.contains("offload"))
    }

    func testOffloadOnTheCPUIsRefusedNamingTheFlag() {
        for device in ["cpu", "cuda,dit=cpu,gemma=cpu"] {
            XCTAssertThrowsError(try PlacementPolicy.parse(precision: "auto", device: device, offload: true)) { e in
                let m = "\(e)"
                XCTAssertTrue(m.hasPrefix("--offload:"), m)
                XCTAssertTrue(m.contains("dit, gemma"), m)
                XCTAssertTrue(m.contains("--device \(device)"), m)
            }
        }
    }
}
