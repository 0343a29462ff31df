import XCTest
@testable import NewBiePipeline
import NewBieText

/// ComfyUI template prompts through the pipeline's prompt handling: `--prompt-file` takes the
/// multi-line object as one prompt, `--system-prompt auto` gives the template's own system prompt
/// (none when the text carries one), and the generate warnings check it.
final class TemplatePromptPipelineTests: XCTestCase {
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
    <character_1>
    <n>$character_1$</n>
    <gender>1girl</gender>
    </character_1>
    ",
    "caption": "A girl."
    }
    }
    """

    func testSystemPromptForTemplatePrompts() {
        let body = TemplatePromptPipelineTests.body
        XCTAssertEqual(SystemPrompt.resolve("auto", prompt: body), TemplatePrompt.systemPrompt)
        XCTAssertEqual(SystemPrompt.resolve("auto", prompt: TemplatePrompt.systemPrompt + body), "")
        XCTAssertEqual(SystemPrompt.resolve("comfyui", prompt: "1girl"), TemplatePrompt.systemPrompt)
        XCTAssertEqual(SystemPrompt.resolve("auto", prompt: "<character_1></character_1>"), SystemPrompt.xml)
        XCTAssertEqual(SystemPrompt.resolve("auto", prompt: "1girl"), SystemPrompt.text)
    }

    func testPromptFileTakesTheObjectAsOnePrompt() throws {
        let body = TemplatePromptPipelineTests.body
        for text in [body + "\n", TemplatePrompt.systemPrompt + body] {
            let entries = try PromptList.parse(text, source: "t.txt", negativePrompt: "")
            XCTAssertEqual(entries.count, 1)
            XCTAssertEqual(entries[0].prompt, text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        // JSON lines still read as JSON lines
        let lines = try PromptList.parse("{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n", source: "l", negativePrompt: "")
        XCTAssertEqual(lines.map(\.prompt), ["a", "b"])
        XCTAssertEqual(PromptList.xmlIssues(body), [])
        XCTAssertFalse(PromptList.xmlIssues(body.replacingOccurrences(of: "</gender>", with: "")).isEmpty)
    }
}
