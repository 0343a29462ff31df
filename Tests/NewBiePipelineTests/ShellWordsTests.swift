import XCTest
import NewBiePipeline

/// Recorded commands are split back the way a POSIX shell splits them, and the PNG keeps its
/// prompts once: in `newbie:command` when there is one.
final class ShellWordsTests: XCTestCase {
    func testQuoteThenSplitIsTheIdentity() throws {
        let words = ["newbie", "generate", "1girl, it's \"quoted\"", "", "<character_1><n>$x</n></character_1>\n<general_tags>a\\b</general_tags>",
                     "plain-word_1.png", "tab\there", "ü 漢字", "'", "--width", "64"]
        let line = words.map(ShellWords.quote).joined(separator: " ")
        XCTAssertEqual(try ShellWords.split(line), words)
    }

    func testShellForms() throws {
        XCTAssertEqual(try ShellWords.split(#"a "b c" 'd e' f\ g "h\"i" "j\k" "#), ["a", "b c", "d e", "f g", "h\"i", "j\\k"])
        XCTAssertEqual(try ShellWords.split("  "), [])
        XCTAssertEqual(try ShellWords.split("x''y \"\""), ["xy", ""])
        XCTAssertThrowsError(try ShellWords.split("a 'b"))
        XCTAssertThrowsError(try ShellWords.split("a \"b"))
        XCTAssertThrowsError(try ShellWords.split("a \\"))
    }

    func testPNGHoldsThePromptOnceAndGivesItBack() throws {
        let prompt = "<character_1><n>miku</n></character_1> it's"
        let command = ["newbie", "generate", prompt, "--negative-prompt", "bad hands", "--system-prompt", "xml", "--seed", "3", "-o", "/tmp/x.png"]
            .map(ShellWords.quote).joined(separator: " ")
        let m = [MetadataKey.prompt: prompt, MetadataKey.negativePrompt: "bad hands", MetadataKey.systemPrompt: "You are ...",
                 MetadataKey.seed: "3", MetadataKey.command: command]
        let text = GenerationMetadata.pngText(m, software: "newbie")
        XCTAssertEqual(text.filter { $0.value.contains("miku") }.map(\.key), [MetadataKey.command], "the prompt is stored once")
        XCTAssertNil(text.first { $0.key == MetadataKey.negativePrompt })
        let back = GenerationMetadata.parameters(png: text)
        XCTAssertEqual(back.first { $0.key == MetadataKey.prompt }?.value, prompt)
        XCTAssertEqual(back.first { $0.key == MetadataKey.negativePrompt }?.value, "bad hands")
        XCTAssertEqual(back.first { $0.key == MetadataKey.systemPrompt }?.value, "xml")
        XCTAssertEqual(back.first?.key, "Software")
        XCTAssertEqual(back.count, text.count + 3)

        // without a command (a staged decode, the server), the prompts stay chunks of their own
        var noCommand = m
        noCommand[MetadataKey.command] = nil
        let t2 = GenerationMetadata.pngText(noCommand, software: "newbie")
        XCTAssertEqual(t2.first { $0.key == MetadataKey.prompt }?.value, prompt)
        XCTAssertEqual(GenerationMetadata.parameters(png: t2).count, t2.count)
        // a command that does not carry the same prompts leaves them too
        var stale = m
        stale[MetadataKey.command] = "newbie generate 'another prompt' --negative-prompt 'bad hands'"
        XCTAssertEqual(GenerationMetadata.pngText(stale, software: "newbie").first { $0.key == MetadataKey.prompt }?.value, prompt)
        // a command that is not newbie generate's leaves them too
        var other = m
        other[MetadataKey.command] = "newbie bench-pipeline (random model)"
        XCTAssertNotNil(GenerationMetadata.pngText(other, software: "newbie").first { $0.key == MetadataKey.prompt })
    }
}
