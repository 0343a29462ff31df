import Foundation
import XCTest
@testable import NewBieText

/// The XML prompt checker, formatter and builder (docs/PROMPTS.md).
final class PromptTests: XCTestCase {
    /// The official README example (two characters, general_tags), as the model card shows it.
    static let readme = """
        <character_1>
        <n>$character_1$</n>
        <gender>1girl</gender>
        <appearance>chibi, red_eyes, blue_hair, long_hair, hair_between_eyes, head_tilt, tareme, closed_mouth</appearance>
        <clothing>school_uniform, serafuku, white_sailor_collar, white_shirt, short_sleeves, red_neckerchief, bow, blue_skirt</clothing>
        <expression>happy, smile</expression>
        <action>standing, holding, holding_briefcase</action>
        <position>center_left</position>
        </character_1>

        <character_2>
        <n>$character_2$</n>
        <gender>1girl</gender>
        <appearance>chibi, red_eyes, pink_hair, long_hair, very_long_hair, multi-tied_hair, open_mouth</appearance>
        <expression>happy, smile</expression>
        <action>standing, holding, holding_briefcase, waving</action>
        <position>center_right</position>
        </character_2>

        <general_tags>
        <count>2girls, multiple_girls</count>
        <style>anime_style, digital_art</style>
        <background>white_background, simple_background</background>
        <atmosphere>cheerful</atmosphere>
        <quality>high_resolution, detailed</quality>
        <objects>briefcase</objects>
        <other>alternate_costume</other>
        </general_tags>
        """

    func issues(_ text: String) -> [PromptIssue] { PromptDocument(parsing: text).issues }

    /// Exactly one error of `kind` at line:column, whose message contains `contains`.
    func expectError(_ text: String, _ kind: PromptIssue.Kind, _ line: Int, _ column: Int, _ contains: String = "",
                     file: StaticString = #filePath, line testLine: UInt = #line) {
        let doc = PromptDocument(parsing: text)
        XCTAssertFalse(doc.isValid, "no error for \(text.debugDescription)", file: file, line: testLine)
        let hits = doc.errors.filter { $0.kind == kind }
        XCTAssertEqual(hits.count, 1, "errors: \(doc.errors)", file: file, line: testLine)
        guard let e = hits.first else { return }
        XCTAssertEqual(e.position, PromptPosition(line: line, column: column), "\(e)", file: file, line: testLine)
        if !contains.isEmpty {
            XCTAssertTrue(e.message.contains(contains), "\(e.message) lacks \(contains)", file: file, line: testLine)
        }
        XCTAssertTrue(e.description.hasPrefix("\(line):\(column): error: "), e.description, file: file, line: testLine)
    }

    // MARK: valid prompts

    func testReadmeExampleIsValid() {
        let doc = PromptDocument(parsing: Self.readme)
        XCTAssertEqual(doc.issues, [])
        XCTAssertTrue(doc.isValid)
        XCTAssertFalse(doc.isPlainText)
        XCTAssertEqual(doc.characters.map { $0.characterNumber }, [1, 2])
        XCTAssertEqual(doc.generalTags?.children.map(\.name), ["count", "style", "background", "atmosphere", "quality", "objects", "other"])
        XCTAssertEqual(doc.characters[0].children.first?.text, "$character_1$")
        XCTAssertEqual(doc.source, Self.readme) // the checker keeps the text as it is
    }

    func testComfyAssemblerLayoutIsValid() {
        // style line, then an <image> wrapper holding caption, characters and general_tags
        let text = """
            <style>style of mikozin</style>

            <image>
              <caption>a girl reading in a library</caption>
              <character_1>
                <n/>
                <gender>1girl</gender>
                <body_type>petite</body_type>
                <interaction>none</interaction>
              </character_1>
              <general_tags>
                <count>1girl, solo</count>
                <artists>artist:someone</artists>
                <environment>library</environment>
                <perspective>from_side</perspective>
                <lighting>soft_lighting</lighting>
                <resolution>max_high_resolution</resolution>
                <extra_tags>books</extra_tags>
              </general_tags>
            </image>
            """
        let doc = PromptDocument(parsing: text)
        XCTAssertEqual(doc.issues, [])
        XCTAssertEqual(doc.blocks.map(\.name), ["style", "caption", "character_1", "general_tags"])
        XCTAssertEqual(doc.caption?.text, "a girl reading in a library")
    }

    func testPlainTextPromptIsAcceptedAndEmptyIsNot() {
        let doc = PromptDocument(parsing: "1girl, solo, red_eyes, smile")
        XCTAssertTrue(doc.isPlainText)
        XCTAssertTrue(doc.isValid)
        expectError("  \n ", .emptyPrompt, 1, 1)
    }

    // MARK: malformed input: each with line and column

    func testUnclosedTag() {
        expectError("<character_1>\n<n>a</n>\n", .unclosedTag, 1, 1, "<character_1> is never closed")
        let doc = PromptDocument(parsing: "<general_tags>\n  <count>1girl</count>\n  <style>anime\n")
        XCTAssertEqual(doc.errors.map(\.kind), [.unclosedTag, .unclosedTag])
        XCTAssertEqual(doc.errors.map(\.position), [PromptPosition(line: 1, column: 1), PromptPosition(line: 3, column: 3)])
    }

    func testTagWithoutClosingBracket() {
        expectError("<character_1>\n<n>a</n>\n</character_1", .malformedTag, 3, 1, "not closed with '>'")
    }

    func testMismatchedTags() {
        // </clothing> while <appearance> is open
        expectError("<character_1><appearance>a</clothing></character_1>", .mismatchedTag, 1, 27, "</clothing> does not match the open <appearance>")
        // a field left open: the block's closing tag reports it
        expectError("<character_1>\n<n>x\n</character_1>", .mismatchedTag, 3, 1, "<n> (line 2, column 1) is still open")
    }

    func testStrayClosingTag() {
        expectError("<caption>a</caption>\n</general_tags>", .strayClosingTag, 2, 1, "closes nothing")
    }

    func testUnknownTags() {
        expectError("<character_1><name>Rem</name></character_1>", .unknownTag, 1, 14, "did you mean <n>?")
        expectError("<general_tags><colour>red</colour></general_tags>", .unknownTag, 1, 15, "unknown tag <colour> in <general_tags>")
        expectError("<general_tags><qualty>best</qualty></general_tags>", .unknownTag, 1, 15, "did you mean <quality>?")
        expectError("<tags><count>1girl</count></tags>", .unknownTag, 1, 1, "did you mean <general_tags>?")
        expectError("<appearance>red_eyes</appearance>", .unknownTag, 1, 1, "belongs inside a <character_N> or <general_tags> block")
        expectError("<image><style>x</style></image>", .unknownTag, 1, 8, "in <image>")
    }

    func testBadCharacterNumbers() {
        expectError("<character_0><n>a</n></character_0>", .badCharacterNumber, 1, 1, "<character_1>")
        expectError("<character_01><n>a</n></character_01>", .badCharacterNumber, 1, 1)
        expectError("<character><n>a</n></character>", .badCharacterNumber, 1, 1)
    }

    func testDuplicateCharacters() {
        let text = "<character_1>\n<n>a</n>\n</character_1>\n<character_2><n>b</n></character_2>\n  <character_1><n>c</n></character_1>"
        expectError(text, .duplicateCharacter, 5, 3, "duplicate <character_1> (first at line 1, column 1)")
    }

    func testDuplicateBlocksAndFields() {
        expectError("<general_tags><count>1girl</count></general_tags>\n<general_tags></general_tags>", .duplicateBlock, 2, 1, "duplicate <general_tags>")
        expectError("<caption>a</caption><caption>b</caption>", .duplicateBlock, 1, 21, "duplicate <caption>")
        expectError("<character_1><n>a</n>\n<gender>1girl</gender><gender>1boy</gender></character_1>", .duplicateField, 2, 23, "duplicate <gender> in <character_1>")
    }

    func testTextOutsideBlocks() {
        expectError("masterpiece, <general_tags><count>1girl</count></general_tags>", .textOutsideBlocks, 1, 1, "masterpiece")
        expectError("<general_tags><count>1girl</count></general_tags>\n\n   best quality", .textOutsideBlocks, 3, 4, "best quality")
        expectError("<character_1>\n  red_eyes\n  <n>a</n>\n</character_1>", .textOutsideBlocks, 2, 3, "text directly inside <character_1>")
    }

    func testNestedField() {
        expectError("<character_1><appearance>a <clothing>b</clothing></appearance></character_1>", .nestedField, 1, 28, "fields hold text only")
    }

    func testTagSyntaxErrors() {
        expectError("<general_tags weight=\"2\"><count>1girl</count></general_tags>", .malformedTag, 1, 15, "no attributes")
        expectError("<caption>I <3 cats</caption>", .malformedTag, 1, 12, "'<' must start a tag")
        expectError("<!-- note --><caption>x</caption>", .malformedTag, 1, 1, "comments")
        expectError("<?xml version=\"1.0\"?>\n<caption>x</caption>", .malformedTag, 1, 1, "declarations")
    }

    func testPlaceholders() {
        expectError("<character_1>\n<n>$character_2$</n>\n</character_1>", .unknownPlaceholder, 2, 4, "no <character_2> block")
        expectError("<character_1>\n<n>$character_1</n>\n</character_1>", .badPlaceholder, 2, 4, "malformed placeholder")
        expectError("<character_1><n>a</n></character_1><caption>$character_x$ waves</caption>", .badPlaceholder, 1, 45)
        // good ones, anywhere
        XCTAssertEqual(issues("<character_1><n>$character_1$</n></character_1><caption>$character_1$ waves</caption>"), [])
    }

    func testWindowsLineEndsCountOnce() {
        expectError("<character_1>\r\n<n>a</n>\r\n<nme>b</nme>\r\n</character_1>", .unknownTag, 3, 1)
    }

    func testNumberingGapIsAWarning() {
        let doc = PromptDocument(parsing: "<character_2><n>a</n></character_2>")
        XCTAssertTrue(doc.isValid)
        XCTAssertEqual(doc.warnings.map(\.kind), [.missingCharacterNumber])
        XCTAssertEqual(doc.warnings.first?.position, PromptPosition(line: 1, column: 1))
    }

    func testSeveralErrorsAreAllReportedInOrder() {
        let doc = PromptDocument(parsing: "<character_1><nam>a</nam>\n</character_1>\n<character_1></character_1>\nstray")
        XCTAssertEqual(doc.errors.map(\.kind), [.unknownTag, .duplicateCharacter, .textOutsideBlocks])
        XCTAssertEqual(doc.errors.map(\.position.line), [1, 3, 4])
    }

    // MARK: formatter

    func testFormatterLayout() throws {
        let messy = "  <character_1><n>Rem</n>\n   <appearance>blue_hair,\n     short_hair  </appearance></character_1>\n<general_tags>   <count>1girl</count></general_tags>"
        let want = """
            <character_1>
            <n>Rem</n>
            <appearance>blue_hair, short_hair</appearance>
            </character_1>

            <general_tags>
            <count>1girl</count>
            </general_tags>
            """
        let got = try PromptFormatter.format(messy)
        XCTAssertEqual(got, want)
        XCTAssertEqual(try PromptFormatter.format(got), got) // idempotent
        XCTAssertNotEqual(got, messy) // formatting does change the text the encoders read
        let indented = try PromptFormatter.format(messy, layout: PromptLayout(indent: 2, blankLineBetweenBlocks: false))
        XCTAssertEqual(indented, "<character_1>\n  <n>Rem</n>\n  <appearance>blue_hair, short_hair</appearance>\n</character_1>\n<general_tags>\n  <count>1girl</count>\n</general_tags>")
        XCTAssertTrue(PromptDocument(parsing: indented).isValid)
    }

    func testFormatterKeepsTheReadmeExampleAndImageWrapper() throws {
        XCTAssertEqual(try PromptFormatter.format(Self.readme), Self.readme)
        let wrapped = "<style>x</style><image><caption> a  b </caption><character_1><n/></character_1></image>"
        XCTAssertEqual(try PromptFormatter.format(wrapped),
                       "<style>x</style>\n\n<image>\n<caption>a b</caption>\n\n<character_1>\n<n></n>\n</character_1>\n</image>")
    }

    func testFormatterRefusesInvalidPrompts() {
        XCTAssertThrowsError(try PromptFormatter.format("<character_1><n>a</n>")) { error in
            guard let e = error as? PromptError else { return XCTFail("\(error)") }
            XCTAssertEqual(e.issues.map(\.kind), [.unclosedTag])
            XCTAssertTrue(e.description.contains("1:1: error:"))
        }
    }

    // MARK: builder

    func testBuilderFromJSON() throws {
        let json = """
            {"characters": [
               {"gender": "1girl", "appearance": ["red_eyes", " blue_hair "], "clothing": "", "position": "center_left"},
               {"name": "Rem", "gender": "1girl", "expression": "smile"}],
             "general_tags": {"quality": "best quality", "count": ["2girls", "multiple_girls"], "style": "anime_style", "other": []},
             "caption": "two girls waving"}
            """
        let got = try PromptBuilder.build(json: Data(json.utf8))
        let want = """
            <character_1>
            <n>$character_1$</n>
            <gender>1girl</gender>
            <appearance>red_eyes, blue_hair</appearance>
            <position>center_left</position>
            </character_1>

            <character_2>
            <n>Rem</n>
            <gender>1girl</gender>
            <expression>smile</expression>
            </character_2>

            <general_tags>
            <count>2girls, multiple_girls</count>
            <style>anime_style</style>
            <quality>best quality</quality>
            </general_tags>

            <caption>two girls waving</caption>
            """
        XCTAssertEqual(got, want)
        let doc = PromptDocument(parsing: got)
        XCTAssertEqual(doc.issues, [])
        XCTAssertEqual(try PromptFormatter.format(got), got)
        // an explicitly empty name stays empty
        XCTAssertEqual(try PromptBuilder.build(json: Data(#"{"characters": [{"name": ""}]}"#.utf8)),
                       "<character_1>\n<n></n>\n</character_1>")
    }

    func testBuilderFromYAMLMatchesJSON() throws {
        let yaml = """
            # two characters
            characters:
              - gender: 1girl
                appearance: [red_eyes, " blue_hair "]
                clothing: ""
                position: center_left
              - name: Rem
                gender: 1girl
                expression: smile
            general_tags:
              quality: best quality
              count:
                - 2girls
                - multiple_girls
              style: anime_style
              other: []
            caption: two girls waving
            """
        let json = """
            {"characters": [
               {"gender": "1girl", "appearance": ["red_eyes", " blue_hair "], "clothing": "", "position": "center_left"},
               {"name": "Rem", "gender": "1girl", "expression": "smile"}],
             "general_tags": {"quality": "best quality", "count": ["2girls", "multiple_girls"], "style": "anime_style", "other": []},
             "caption": "two girls waving"}
            """
        let fromYAML = try PromptBuilder.build(yaml: yaml)
        XCTAssertEqual(fromYAML, try PromptBuilder.build(json: Data(json.utf8)))
        XCTAssertTrue(fromYAML.contains("<n>$character_1$</n>"))
        // scalars stay the text written; an empty or null name gets the placeholder
        let typed = try PromptBuilder.build(yaml: "characters:\n  - name:\n    gender: no\n    body_type: 1.50\n  - name: ~\n")
        XCTAssertEqual(typed, "<character_1>\n<n>$character_1$</n>\n<gender>no</gender>\n<body_type>1.50</body_type>\n</character_1>\n\n<character_2>\n<n>$character_2$</n>\n</character_2>")
        XCTAssertEqual(try PromptBuilder.build(yaml: "characters:\n  - name: ''\n"), "<character_1>\n<n></n>\n</character_1>")
    }

    func testBuilderYAMLErrors() {
        func expect(_ yaml: String, _ contains: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try PromptBuilder.build(yaml: yaml), file: file, line: line) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(contains), "\(text) lacks \(contains)", file: file, line: line)
            }
        }
        expect("characters: [a, b", "not valid YAML")
        expect("", "empty")
        expect("- a\n- b\n", "must be an object (a mapping)")
        expect("characters:\n  - hair: red\n", "unknown key \"hair\" in characters[0]")
        expect("general_tags:\n  style: a\n  style: b\n", "general_tags.style is given twice")
        expect("general_tags:\n  style: {a: b}\n", "general_tags.style must be a string")
    }

    func testBuilderErrors() {
        func expect(_ json: String, _ contains: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try PromptBuilder.build(json: Data(json.utf8)), file: file, line: line) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(contains), "\(text) lacks \(contains)", file: file, line: line)
            }
        }
        expect("{\"characters\": [", "not valid JSON")
        expect("[1, 2]", "must be an object (a mapping)")
        expect("{\"charcters\": []}", "unknown key \"charcters\"")
        expect("{\"characters\": [{\"hair\": \"red\"}]}", "unknown key \"hair\" in characters[0]")
        expect("{\"characters\": [{\"gender\": 1}]}", "characters[0].gender must be a string")
        expect("{\"characters\": [{\"appearance\": [\"a\", 2]}]}", "characters[0].appearance[1] must be a string")
        expect("{\"general_tags\": {\"lightning\": \"x\"}}", "unknown key \"lightning\" in general_tags")
        expect("{\"general_tags\": {\"style\": \"<b>\"}}", "general_tags.style contains '<'")
        expect("{\"characters\": {}}", "\"characters\" must be a list")
        expect("{}", "has no characters")
    }
}
