import XCTest
@testable import NewBieText

/// The prompt of ComfyUI's official NewBie template: a JSON object with a bbox and a name per
/// character and the XML prompt and a caption under "image" (docs/PROMPTS.md).
final class PromptTemplateTests: XCTestCase {
    /// Our own prompt in the template's layout (the layout of its text node after string
    /// replacement: one token per line, the XML on its own lines inside "tags").
    static let xml = """
    <character_1>
    <n>$character_1$</n>
    <gender>1girl</gender>
    <appearance>red eyes, short hair</appearance>
    </character_1>

    <general_tags>
    <count>1girl</count>
    <style>anime style</style>
    </general_tags>
    """
    static let body = """
    {
    "character_1": {
    "bbox": [
    0,
    0,
    1000,
    1000
    ],
    "name": "$character_1$"
    },
    "image": {
    "tags": "
    \(xml)
    ",
    "caption": "A girl with red eyes and short hair, smiling at the viewer."
    }
    }
    """

    func testParseRenderAndRoundTrip() {
        for system in ["", TemplatePrompt.systemPrompt] {
            let text = system + PromptTemplateTests.body
            XCTAssertTrue(TemplatePrompt.looksLikeTemplate(text))
            let parsed = TemplatePrompt.parse(text)
            XCTAssertEqual(parsed.issues, [], "\(parsed.issues)")
            XCTAssertEqual(parsed.systemPrompt, system)
            let p = parsed.prompt!
            XCTAssertEqual(p.characters, [TemplatePrompt.Character(number: 1, name: "$character_1$", bbox: [0, 0, 1000, 1000])])
            XCTAssertEqual(p.tags, PromptTemplateTests.xml)
            XCTAssertEqual(p.caption, "A girl with red eyes and short hair, smiling at the viewer.")
            XCTAssertEqual(p.render(), PromptTemplateTests.body)
            XCTAssertEqual(parsed.document?.characters.count, 1)
        }
        XCTAssertFalse(TemplatePrompt.looksLikeTemplate(PromptTemplateTests.xml))
        XCTAssertFalse(TemplatePrompt.looksLikeTemplate("1girl, red eyes"))
        // escapes in names and captions survive a render
        // (the XML is written raw, as the template's string replacement does: no quotes there)
        let q = TemplatePrompt(characters: [TemplatePrompt.Character(number: 1, name: "A \"B\"")], tags: "<character_1>\n<n>A B</n>\n</character_1>",
                               caption: "line\none \\ two\u{7}")
        XCTAssertTrue(q.render().contains(#"two\u0007""#), "control characters are escaped as JSON requires: \(q.render())")
        XCTAssertEqual(TemplatePrompt.parse(q.render()).prompt, q)
    }

    func testProblemsWithLineAndColumn() {
        func issues(_ text: String) -> [String] { TemplatePrompt.parse(text).issues.map(\.description) }
        // bbox out of range, an empty box
        let badBox = PromptTemplateTests.body.replacingOccurrences(of: "1000,\n1000\n]", with: "2000,\n1000\n]")
        XCTAssertTrue(issues(badBox).contains { $0.hasPrefix("6:1: error") && $0.contains("0 to 1000") }, "\(issues(badBox))")
        let empty = PromptTemplateTests.body.replacingOccurrences(of: "[\n0,\n0,\n1000,\n1000\n]", with: "[500, 0, 400, 1000]")
        XCTAssertTrue(issues(empty).contains { $0.contains("error") && $0.contains("x0 < x1") }, "\(issues(empty))")
        // an XML error is placed in the file: <gender> (line 15) left open, found at line 17
        let openTag = PromptTemplateTests.body.replacingOccurrences(of: "<gender>1girl</gender>", with: "<gender>1girl")
        XCTAssertTrue(issues(openTag).contains { $0.hasPrefix("17:1: error: in image.tags:") }, "\(issues(openTag))")
        XCTAssertTrue(issues(TemplatePrompt.systemPrompt + openTag).contains { $0.hasPrefix("18:1: error: in image.tags:") })
        // the positions inside the message are the file's too (<character_1> on line 13, <gender> on 15)
        XCTAssertTrue(issues(openTag).contains { $0.contains("(line 13, column 1)") && $0.contains("(line 15, column 1)") }, "\(issues(openTag))")
        // a quote inside the XML ends the string early
        let quote = PromptTemplateTests.body.replacingOccurrences(of: "short hair</appearance>", with: "short \"hair</appearance>")
        XCTAssertFalse(TemplatePrompt.parse(quote).isValid)
        // no image, unknown keys, a name that differs from the XML's <n>
        XCTAssertTrue(issues("{\"character_1\": {\"bbox\": [0, 0, 10, 10], \"name\": \"x\"}}").contains { $0.contains("no \"image\"") })
        let odd = PromptTemplateTests.body.replacingOccurrences(of: "\"name\": \"$character_1$\"", with: "\"name\": \"Rem\",\n\"pose\": \"x\"")
        let found = issues(odd)
        XCTAssertTrue(found.contains { $0.contains("warning: unknown key \"pose\"") }, "\(found)")
        XCTAssertTrue(found.contains { $0.contains("warning: character_1.name \"Rem\" differs") }, "\(found)")
        XCTAssertTrue(TemplatePrompt.parse(odd).isValid)   // warnings only
    }

    func testBuildFromADescription() throws {
        let desc: [String: Any] = [
            "characters": [["name": "Rem", "gender": "1girl", "bbox": [0, 0, 500, 1000]], ["gender": "1boy"]],
            "general_tags": ["count": "1girl, 1boy"], "caption": "two people",
        ]
        let p = try TemplatePrompt.build(description: desc)
        XCTAssertEqual(p.characters.map(\.bbox), [[0, 0, 500, 1000], [0, 0, 1000, 1000]])
        XCTAssertEqual(p.characters.map(\.name), ["Rem", "$character_2$"])
        XCTAssertEqual(p.caption, "two people")
        XCTAssertFalse(p.tags.contains("<caption>"))
        let back = TemplatePrompt.parse(p.render())
        XCTAssertEqual(back.issues, [])
        XCTAssertEqual(back.prompt, p)
        XCTAssertThrowsError(try TemplatePrompt.build(description: ["characters": [["gender": "1girl", "bbox": [0, 0, 1001, 5]]]]))
    }
}
