import XCTest
@testable import NewBiePipeline
import NewBieText

final class PromptListTests: XCTestCase {
    func testJSONLines() throws {
        let e = try PromptList.parse("{\"prompt\": \"1girl\", \"seed\": 5}\n\n{\"prompt\": \"1boy\", \"negative_prompt\": \"lowres\"}\n",
                                     source: "p.jsonl", negativePrompt: "default")
        XCTAssertEqual(e, [.init(prompt: "1girl", negativePrompt: "default", seed: 5), .init(prompt: "1boy", negativePrompt: "lowres")])
    }

    func testPlainLinesAndXML() throws {
        XCTAssertEqual(try PromptList.parse("a\n\nb\n", source: "p.txt", negativePrompt: "").map(\.prompt), ["a", "b"])
        let xml = "<character_1>\n  <gender>1girl</gender>\n</character_1>\n<general_tags>\n  <style>anime</style>\n</general_tags>\n"
        let e = try PromptList.parse(xml, source: "p.xml", negativePrompt: "")
        XCTAssertEqual(e.count, 1)
        XCTAssertEqual(e[0].prompt, xml.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Seeds 0 and 1 are numbers, not booleans (JSONSerialization on Linux bridges both to Bool).
    func testSeedsZeroAndOneAreSeedsAndTrueIsNot() throws {
        let e = try PromptList.parse("{\"prompt\": \"a\", \"seed\": 0}\n{\"prompt\": \"b\", \"seed\": 1}", source: "p.jsonl", negativePrompt: "")
        XCTAssertEqual(e.map(\.seed), [0, 1])
        XCTAssertThrowsError(try PromptList.parse("{\"prompt\": \"a\", \"seed\": true}", source: "p.jsonl", negativePrompt: "")) {
            XCTAssertTrue("\($0)".contains("seed"), "\($0)")
        }
    }

    func testBadJSONLines() {
        XCTAssertThrowsError(try PromptList.parse("{\"text\": \"a\"}", source: "p.jsonl", negativePrompt: "")) {
            XCTAssertTrue("\($0)".contains("p.jsonl, line 1") && "\($0)".contains("\"prompt\""), "\($0)")
        }
        XCTAssertThrowsError(try PromptList.parse("{\"prompt\": \"a\"}\n{\"prompt\": \"b\", \"seed\": -3}", source: "p.jsonl", negativePrompt: "")) {
            XCTAssertTrue("\($0)".contains("line 2") && "\($0)".contains("seed"), "\($0)")
        }
        XCTAssertThrowsError(try PromptList.parse("{broken", source: "p.jsonl", negativePrompt: "")) {
            XCTAssertTrue("\($0)".contains("line 1"), "\($0)")
        }
    }
}

final class PromptXMLIssueTests: XCTestCase {
    func testXMLPromptsAreCheckedPlainOnesAreNot() {
        XCTAssertEqual(PromptList.xmlIssues("1girl, <lora> red eyes").count, 0)
        XCTAssertEqual(PromptList.xmlIssues("<character_1>\n<gender>1girl</gender>\n</character_1>").filter { $0.severity == .error }.count, 0)
        let bad = PromptList.xmlIssues("<character_1>\n  <gender>1girl</gender>\n")
        XCTAssertFalse(bad.isEmpty)
        XCTAssertEqual(bad.first?.kind, .unclosedTag)
        XCTAssertEqual(bad.first?.position.line, 1)
    }
}
