import Foundation
import XCTest
import NewBieHarness
import NewBiePipeline
@testable import NewBieQueue
import NewBieTensor

final class ResidencyChoiceTests: XCTestCase {
    let gib = 1 << 30

    /// The published model in bf16 (Gemma 3 4B about 7.2 GiB, Jina CLIP v2's text tower 1.1, the
    /// 3.5B DiT 6.5, the VAE 0.2: 15 GiB) fits one 24 GiB GPU, not a 16 GiB one; split over two
    /// devices, each is judged alone.
    func testDecide() {
        let w: [(slot: ModelSlot, device: Device, bytes: Int)] = [
            (.gemma, .cuda(0), 72 * gib / 10), (.jina, .cuda(0), 11 * gib / 10), (.dit, .cuda(0), 65 * gib / 10), (.vae, .cuda(0), gib / 5)]
        let (fits, why) = ResidencyChoice.decide(weights: w, memory: [.cuda(0): 24 * gib])
        XCTAssertEqual(fits, .all, why)
        XCTAssertTrue(why.contains("<= 80%"), why)
        let (tight, why2) = ResidencyChoice.decide(weights: w, memory: [.cuda(0): 16 * gib])
        XCTAssertEqual(tight, .stage, why2)
        XCTAssertTrue(why2.contains("> 80%"), why2)
        // text encoders on the CPU, the rest on a 12 GiB GPU: 6.7 GiB <= 9.6 GiB
        var split = w
        split[0].device = .cpu; split[1].device = .cpu
        XCTAssertEqual(ResidencyChoice.decide(weights: split, memory: [.cuda(0): 12 * gib, .cpu: 64 * gib]).0, .all)
        XCTAssertEqual(ResidencyChoice.decide(weights: split, memory: [.cuda(0): 12 * gib, .cpu: 4 * gib]).0, .stage, "the CPU side too")
        XCTAssertEqual(ResidencyChoice.decide(weights: w, memory: [.cuda(0): nil]).0, .all, "unknown memory: as before (all)")
    }

    /// On the tiny model the headers are read and the sum is what the checkpoints hold.
    func testChooseReadsTheCheckpoints() throws {
        let paths = TinyQueueFixture.pipeline.paths
        var seen: [Device] = []
        let (all, why) = try ResidencyChoice.choose(paths: paths, options: StageOptions()) { seen.append($0); return 1 << 40 }
        XCTAssertEqual(all, .all, why)
        XCTAssertEqual(seen, [.cpu], "one memory question per device")
        let (stage, _) = try ResidencyChoice.choose(paths: paths, options: StageOptions()) { _ in 1000 }
        XCTAssertEqual(stage, .stage, "a device of 1000 bytes holds no model")
    }
}
