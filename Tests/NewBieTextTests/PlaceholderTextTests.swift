import XCTest

final class PlaceholderTextTests: XCTestCase {
    func testModuleLoads() { XCTAssertTrue(true) }
}
