import XCTest

final class PlaceholderDiffusionTests: XCTestCase {
    func testModuleLoads() { XCTAssertTrue(true) }
}
