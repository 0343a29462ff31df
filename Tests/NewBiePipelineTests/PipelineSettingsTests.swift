import XCTest
@testable import NewBiePipeline
import NewBieDiffusion

final class PipelineSettingsTests: XCTestCase {
    func testDefaultsAreTheOfficialDemo() {
        let d = SamplingSettings.officialDemo
        XCTAssertEqual(d.sampler, .midpoint)
        XCTAssertEqual(d.steps, 18)
        XCTAssertEqual(d.shift, 6)
        XCTAssertEqual(d.cfg, CFGOptions(scale: 5, truncation: 0.25, renorm: 0))
        XCTAssertEqual([d.width, d.height], [1024, 1024])
    }
}
