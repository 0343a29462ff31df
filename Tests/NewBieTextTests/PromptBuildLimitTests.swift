import Foundation
import XCTest
@testable import NewBieText

/// Found by fuzzing `PromptBuilder`: deeply nested YAML overflowed the stack in the YAML reader,
/// and aliases can expand a small file to billions of values.
final class PromptBuildLimitTests: XCTestCase {
    func testDeepYAMLIsRefusedBeforeParsing() {
        for text in [String(repeating: "[", count: 20_000), String(repeating: "{a: ", count: 5_000),
                     (0..<200).map { String(repeating: " ", count: $0) + "k\($0):" }.joined(separator: "\n"),
                     String(repeating: "- ", count: 500) + "x"] {
            XCTAssertThrowsError(try PromptBuilder.build(yaml: text)) {
                XCTAssertTrue("\($0)".contains("levels deep"), "\($0)")
            }
        }
        // ordinary descriptions are far below the limit
        XCTAssertNoThrow(try PromptBuilder.build(yaml: "characters:\n  - name: miku\n    appearance: [long hair, twintails]\ngeneral_tags:\n  style: anime\n"))
        XCTAssertLessThan(PromptBuilder.yamlNestingBound("characters:\n  - name: miku\n    appearance: [long hair]\n"), 8)
    }

    func testAliasExpansionIsBounded() {
        var yaml = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1..<9 { yaml += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
        let start = Date()
        XCTAssertThrowsError(try PromptBuilder.build(yaml: yaml)) {
            XCTAssertTrue("\($0)".contains("more than 100000 values"), "\($0)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
    }
}
