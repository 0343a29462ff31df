import XCTest

final class PlaceholderImageTests: XCTestCase {
    func testModuleLoads() { XCTAssertTrue(true) }
}
