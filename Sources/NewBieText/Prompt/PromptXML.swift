import Foundation

// The NewBie XML prompt format: a checker that never changes the text, a formatter and a
// builder. The prompt is not real XML to the model: Gemma and Jina read the raw text, so this code
// only checks structure and names, and reports problems with their line and column.

/// A place in the prompt text: 1-based line and column (columns count Unicode characters; a
/// "\r\n" line end counts as one).
public struct PromptPosition: Equatable, Comparable, CustomStringConvertible, Sendable {
    public let line: Int
    public let column: Int
    public init(line: Int, column: Int) { self.line = line; self.column = column }
    public var description: String { "line \(line), column \(column)" }
    public static func < (a: PromptPosition, b: PromptPosition) -> Bool {
        (a.line, a.column) < (b.line, b.column)
    }
}

/// One problem found in a prompt.
public struct PromptIssue: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Severity: String, Sendable { case error, warning }
    public enum Kind: String, Sendable {
        case unclosedTag, mismatchedTag, strayClosingTag, malformedTag, unknownTag, duplicateCharacter,
             duplicateBlock, duplicateField, textOutsideBlocks, nestedField, badCharacterNumber,
             badPlaceholder, unknownPlaceholder, missingCharacterNumber, emptyPrompt
    }
    public let severity: Severity
    public let kind: Kind
    public let position: PromptPosition
    public let message: String

    public init(_ severity: Severity, _ kind: Kind, _ position: PromptPosition, _ message: String) {
        self.severity = severity; self.kind = kind; self.position = position; self.message = message
    }
    public var description: String { "\(position.line):\(position.column): \(severity.rawValue): \(message)" }
}

/// The names the format uses (plus the builder nodes' `extra_tags` and the
/// converter's `resolution`).
public enum PromptVocabulary {
    /// Fields of a `<character_N>` block, in the order the builder writes them.
    public static let characterFields = ["n", "gender", "appearance", "clothing", "body_type", "expression",
                                         "action", "interaction", "position"]
    /// Fields of `<general_tags>`, in the order the builder writes them.
    public static let generalFields = ["count", "artists", "style", "background", "environment", "perspective",
                                       "lighting", "atmosphere", "quality", "objects", "other", "resolution",
                                       "body_type", "extra_tags"]
    /// Blocks allowed at the top (and inside an `<image>` wrapper, except `image` and `style`).
    public static let topLevel = ["character_N", "general_tags", "caption", "image", "style"]
}

/// An element of the parsed prompt.
public final class PromptElement {
    public let name: String
    public let position: PromptPosition
    public internal(set) var children: [PromptElement] = []
    /// Text pieces directly inside this element, with their positions (raw, unchanged).
    public internal(set) var texts: [(text: String, position: PromptPosition)] = []
    public internal(set) var closed = false

    init(name: String, position: PromptPosition) { self.name = name; self.position = position }

    /// The text of a field element (all its direct text, raw).
    public var text: String { texts.map(\.text).joined() }

    /// N for `character_N`, nil otherwise.
    public var characterNumber: Int? { PromptDocument.characterNumber(name) }
}

/// A parsed and checked prompt. `issues` holds every error and warning; the text itself is kept
/// unchanged in `source`.
public struct PromptDocument {
    public let source: String
    /// Top-level elements in order (an `<image>` wrapper appears as one element).
    public let elements: [PromptElement]
    public let issues: [PromptIssue]
    /// True when the text has no tag at all: a plain tag or natural-language prompt, which the
    /// model also accepts; nothing is checked then.
    public let isPlainText: Bool

    public var errors: [PromptIssue] { issues.filter { $0.severity == .error } }
    public var warnings: [PromptIssue] { issues.filter { $0.severity == .warning } }
    public var isValid: Bool { errors.isEmpty }

    /// The blocks, looking through an `<image>` wrapper.
    public var blocks: [PromptElement] {
        elements.flatMap { $0.name == "image" ? $0.children : [$0] }
    }
    public var characters: [PromptElement] { blocks.filter { $0.characterNumber != nil } }
    public var generalTags: PromptElement? { blocks.first { $0.name == "general_tags" } }
    public var caption: PromptElement? { blocks.first { $0.name == "caption" } }

    /// Parses and checks `text`.
    public init(parsing text: String) {
        source = text
        var parser = PromptParser(text)
        let top = parser.parse()
        var issues = parser.issues
        isPlainText = !parser.sawTag
        elements = top.children
        if !isPlainText {
            PromptChecker.check(top: top, issues: &issues)
        } else if text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            issues.append(PromptIssue(.error, .emptyPrompt, PromptPosition(line: 1, column: 1), "the prompt is empty"))
        }
        self.issues = issues.sorted { $0.position < $1.position }
    }

    static func characterNumber(_ name: String) -> Int? {
        guard name.hasPrefix("character_") else { return nil }
        let digits = name.dropFirst("character_".count)
        guard let first = digits.first, first != "0", digits.allSatisfy({ $0.isASCII && $0.isNumber }),
              digits.count <= 6 else { return nil }
        return Int(digits)
    }
}

// MARK: - parser

struct PromptParser {
    let s: [Unicode.Scalar]
    var i = 0
    var line = 1
    var column = 1
    var issues: [PromptIssue] = []
    var sawTag = false

    init(_ text: String) { s = Array(text.unicodeScalars) }

    var position: PromptPosition { PromptPosition(line: line, column: column) }

    mutating func advance() {
        let c = s[i]
        i += 1
        if c == "\n" {
            line += 1; column = 1
        } else if c == "\r" {
            if i < s.count, s[i] == "\n" { return } // "\r\n": the "\n" moves the line
            line += 1; column = 1
        } else {
            column += 1
        }
    }

    static func isNameStart(_ c: Unicode.Scalar) -> Bool {
        (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "_"
    }
    static func isNameChar(_ c: Unicode.Scalar) -> Bool {
        isNameStart(c) || (c >= "0" && c <= "9") || c == "-" || c == "."
    }
    static func isSpace(_ c: Unicode.Scalar) -> Bool { c == " " || c == "\t" || c == "\n" || c == "\r" }

    mutating func error(_ kind: PromptIssue.Kind, _ at: PromptPosition, _ message: String) {
        issues.append(PromptIssue(.error, kind, at, message))
    }

    /// Parses everything; returns a synthetic root whose children are the top-level elements.
    mutating func parse() -> PromptElement {
        let root = PromptElement(name: "", position: PromptPosition(line: 1, column: 1))
        root.closed = true
        var stack: [PromptElement] = [root]
        var text = ""
        var textStart = position
        func flush(_ stack: [PromptElement], _ text: inout String, _ start: PromptPosition) {
            if !text.isEmpty { stack.last!.texts.append((text, start)) }
            text = ""
        }
        while i < s.count {
            let c = s[i]
            if c != "<" {
                if text.isEmpty { textStart = position }
                text.unicodeScalars.append(c)
                advance()
                continue
            }
            let tagStart = position
            flush(stack, &text, textStart)
            let next: Unicode.Scalar? = i + 1 < s.count ? s[i + 1] : nil
            if next == "!" {
                // comments are not part of the format: the encoders would read them as text
                sawTag = true
                error(.malformedTag, tagStart, "comments and declarations (<!...>) are not part of the NewBie format; the encoders would read them as prompt text")
                skipTo(">")
                continue
            }
            if next == "?" {
                sawTag = true
                error(.malformedTag, tagStart, "XML declarations (<?...?>) are not part of the NewBie format; the encoders would read them as prompt text")
                skipTo(">")
                continue
            }
            let closing = next == "/"
            let nameStart = i + (closing ? 2 : 1)
            guard nameStart < s.count, PromptParser.isNameStart(s[nameStart]) else {
                // "<" not followed by a tag name: literal text such as "<3" is not allowed either,
                // because it reads as a broken tag
                sawTag = true
                error(.malformedTag, tagStart, "'<' must start a tag such as <appearance> or </appearance>")
                text.unicodeScalars.append(c)
                textStart = tagStart
                advance()
                continue
            }
            sawTag = true
            advance()
            if closing { advance() }
            var name = ""
            while i < s.count, PromptParser.isNameChar(s[i]) {
                name.unicodeScalars.append(s[i])
                advance()
            }
            while i < s.count, PromptParser.isSpace(s[i]) { advance() }
            var selfClosing = false
            if i < s.count, s[i] == "/", !closing, i + 1 < s.count, s[i + 1] == ">" {
                selfClosing = true
                advance()
            }
            guard i < s.count, s[i] == ">" else {
                if i >= s.count || s[i] == "<" || s[i] == "\n" {
                    error(.malformedTag, tagStart, "tag <\(closing ? "/" : "")\(name) is not closed with '>'")
                } else {
                    error(.malformedTag, position, "unexpected '\(s[i])' in tag <\(closing ? "/" : "")\(name)>; tags have no attributes")
                    skipTo(">")
                }
                continue
            }
            advance() // '>'
            if closing {
                closeElement(name, at: tagStart, stack: &stack)
            } else {
                let e = PromptElement(name: name, position: tagStart)
                stack.last!.children.append(e)
                if selfClosing { e.closed = true } else { stack.append(e) }
            }
            textStart = position
        }
        flush(stack, &text, textStart)
        for open in stack.dropFirst().reversed() {
            error(.unclosedTag, open.position, "<\(open.name)> is never closed (expected </\(open.name)>)")
        }
        return root
    }

    mutating func skipTo(_ end: Unicode.Scalar) {
        while i < s.count, s[i] != end { advance() }
        if i < s.count { advance() }
    }

    mutating func closeElement(_ name: String, at: PromptPosition, stack: inout [PromptElement]) {
        if stack.count > 1, stack.last!.name == name {
            stack.removeLast().closed = true
            return
        }
        if let k = stack.indices.dropFirst().last(where: { stack[$0].name == name }) {
            // closes an outer element: the inner ones were left open
            let inner = stack[stack.count - 1]
            error(.mismatchedTag, at, "</\(name)> closes <\(name)> (\(stack[k].position)) while <\(inner.name)> (\(inner.position)) is still open")
            for open in stack[(k + 1)...] {
                if open !== inner {
                    error(.unclosedTag, open.position, "<\(open.name)> is never closed (expected </\(open.name)>)")
                }
            }
            stack[k].closed = true
            stack.removeSubrange(k...)
            return
        }
        if stack.count > 1 {
            // most likely a misspelt closing tag: take it as closing the innermost element
            let inner = stack.removeLast()
            inner.closed = true
            error(.mismatchedTag, at, "</\(name)> does not match the open <\(inner.name)> (\(inner.position))")
        } else {
            error(.strayClosingTag, at, "</\(name)> closes nothing: no <\(name)> is open")
        }
    }
}

// MARK: - checker

enum PromptChecker {
    static func firstNonSpace(_ text: String, from start: PromptPosition) -> PromptPosition? {
        var line = start.line, column = start.column
        let scalars = Array(text.unicodeScalars)
        var k = 0
        while k < scalars.count {
            let c = scalars[k]
            if !PromptParser.isSpace(c) { return PromptPosition(line: line, column: column) }
            if c == "\n" || (c == "\r" && !(k + 1 < scalars.count && scalars[k + 1] == "\n")) {
                line += 1; column = 1
            } else if c != "\r" {
                column += 1
            }
            k += 1
        }
        return nil
    }

    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var prev = Array(0...b.count)
        for i in 1...a.count {
            var cur = [i] + [Int](repeating: 0, count: b.count)
            for j in 1...b.count {
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            prev = cur
        }
        return prev[b.count]
    }

    static func suggestion(_ name: String, _ allowed: [String]) -> String {
        let aliases = ["name": "n", "names": "n", "sex": "gender", "outfit": "clothing", "clothes": "clothing",
                       "pose": "action", "emotion": "expression", "artist": "artists", "tags": "general_tags",
                       "general": "general_tags", "character": "character_1", "extra": "extra_tags"]
        if let a = aliases[name.lowercased()], allowed.contains(a) { return "; did you mean <\(a)>?" }
        let best = allowed.map { ($0, editDistance(name.lowercased(), $0)) }.min { $0.1 < $1.1 }
        if let (b, d) = best, d <= 2 { return "; did you mean <\(b)>?" }
        return ""
    }

    static func check(top: PromptElement, issues: inout [PromptIssue]) {
        var seenCharacters: [Int: PromptElement] = [:]
        var seenBlocks: [String: PromptElement] = [:]
        checkContainer(top, wrapper: false, seenCharacters: &seenCharacters, seenBlocks: &seenBlocks, issues: &issues)
        if seenCharacters.isEmpty && seenBlocks["general_tags"] == nil && seenBlocks["caption"] == nil
            && issues.allSatisfy({ $0.severity != .error }) {
            issues.append(PromptIssue(.error, .emptyPrompt, top.children.first?.position ?? top.position,
                                      "no <character_N>, <general_tags> or <caption> block"))
        }
        // numbering gaps: a warning (the model has seen character_1.. in order)
        let numbers = seenCharacters.keys.sorted()
        for (k, n) in numbers.enumerated() where n != k + 1 {
            let e = seenCharacters[n]!
            issues.append(PromptIssue(.warning, .missingCharacterNumber, e.position,
                                      "<character_\(n)> without <character_\(k + 1)>: characters are numbered 1, 2, 3... in order"))
            break
        }
        checkPlaceholders(top, characters: Set(numbers), issues: &issues)
    }

    /// The root or an `<image>` wrapper: holds blocks only.
    static func checkContainer(_ c: PromptElement, wrapper: Bool, seenCharacters: inout [Int: PromptElement],
                               seenBlocks: inout [String: PromptElement], issues: inout [PromptIssue]) {
        for (text, at) in c.texts {
            if let p = firstNonSpace(text, from: at) {
                let snippet = text.trimmingCharacters(in: .whitespacesAndNewlines).prefix(30)
                issues.append(PromptIssue(.error, .textOutsideBlocks, p,
                    "text outside blocks (\"\(snippet)\"): put it in a field such as <caption> or a <general_tags> field"))
            }
        }
        for e in c.children {
            if let n = e.characterNumber {
                if let first = seenCharacters[n] {
                    issues.append(PromptIssue(.error, .duplicateCharacter, e.position,
                                              "duplicate <character_\(n)> (first at \(first.position))"))
                } else {
                    seenCharacters[n] = e
                }
                checkBlock(e, fields: PromptVocabulary.characterFields, issues: &issues)
                continue
            }
            switch e.name {
            case "general_tags":
                if let first = seenBlocks[e.name] {
                    issues.append(PromptIssue(.error, .duplicateBlock, e.position, "duplicate <general_tags> (first at \(first.position))"))
                } else { seenBlocks[e.name] = e }
                checkBlock(e, fields: PromptVocabulary.generalFields, issues: &issues)
            case "caption":
                if let first = seenBlocks[e.name] {
                    issues.append(PromptIssue(.error, .duplicateBlock, e.position, "duplicate <caption> (first at \(first.position))"))
                } else { seenBlocks[e.name] = e }
                checkField(e, parent: nil, issues: &issues)
            case "style" where !wrapper:
                // the Comfy assembler's style line before <image>
                if let first = seenBlocks["top-style"] {
                    issues.append(PromptIssue(.error, .duplicateBlock, e.position, "duplicate top-level <style> (first at \(first.position))"))
                } else { seenBlocks["top-style"] = e }
                checkField(e, parent: nil, issues: &issues)
            case "image" where !wrapper:
                if let first = seenBlocks["image"] {
                    issues.append(PromptIssue(.error, .duplicateBlock, e.position, "duplicate <image> (first at \(first.position))"))
                } else { seenBlocks["image"] = e }
                checkContainer(e, wrapper: true, seenCharacters: &seenCharacters, seenBlocks: &seenBlocks, issues: &issues)
            default:
                if e.name.hasPrefix("character") {
                    issues.append(PromptIssue(.error, .badCharacterNumber, e.position,
                        "<\(e.name)> is not a character block name: use <character_1>, <character_2>, ..."))
                } else {
                    let allowed = wrapper ? ["character_1", "general_tags", "caption"]
                                          : ["character_1", "general_tags", "caption", "image", "style"]
                    let fieldHint = (PromptVocabulary.characterFields + PromptVocabulary.generalFields).contains(e.name)
                        ? "; <\(e.name)> is a field and belongs inside a <character_N> or <general_tags> block" : suggestion(e.name, allowed)
                    issues.append(PromptIssue(.error, .unknownTag, e.position,
                        "unknown block <\(e.name)>\(wrapper ? " in <image>" : ""); expected <character_N>, <general_tags> or <caption>\(fieldHint)"))
                }
            }
        }
    }

    static func checkBlock(_ b: PromptElement, fields: [String], issues: inout [PromptIssue]) {
        for (text, at) in b.texts {
            if let p = firstNonSpace(text, from: at) {
                let snippet = text.trimmingCharacters(in: .whitespacesAndNewlines).prefix(30)
                issues.append(PromptIssue(.error, .textOutsideBlocks, p,
                    "text directly inside <\(b.name)> (\"\(snippet)\"): put it in a field such as <\(fields[2])>"))
            }
        }
        var seen: [String: PromptElement] = [:]
        for f in b.children {
            guard fields.contains(f.name) else {
                issues.append(PromptIssue(.error, .unknownTag, f.position,
                    "unknown tag <\(f.name)> in <\(b.name)>; expected one of \(fields.map { "<\($0)>" }.joined(separator: ", "))\(suggestion(f.name, fields))"))
                continue
            }
            if let first = seen[f.name] {
                issues.append(PromptIssue(.error, .duplicateField, f.position,
                                          "duplicate <\(f.name)> in <\(b.name)> (first at \(first.position))"))
            } else { seen[f.name] = f }
            checkField(f, parent: b, issues: &issues)
        }
    }

    static func checkField(_ f: PromptElement, parent: PromptElement?, issues: inout [PromptIssue]) {
        for inner in f.children {
            issues.append(PromptIssue(.error, .nestedField, inner.position,
                "<\(inner.name)> inside <\(f.name)>: fields hold text only\(parent == nil ? "" : " (close <\(f.name)> first?)")"))
        }
    }

    /// `$character_N$` placeholders (the README's name stand-ins) must be well formed and refer to
    /// an existing `<character_N>` block.
    static func checkPlaceholders(_ e: PromptElement, characters: Set<Int>, issues: inout [PromptIssue]) {
        for (text, at) in e.texts { scanPlaceholders(text, from: at, characters: characters, issues: &issues) }
        for c in e.children { checkPlaceholders(c, characters: characters, issues: &issues) }
    }

    static func scanPlaceholders(_ text: String, from start: PromptPosition, characters: Set<Int>, issues: inout [PromptIssue]) {
        let s = Array(text.unicodeScalars)
        var line = start.line, column = start.column
        var k = 0
        let key = Array("$character".unicodeScalars)
        while k < s.count {
            if s[k] == "$", k + key.count <= s.count, Array(s[k..<(k + key.count)]) == key {
                let at = PromptPosition(line: line, column: column)
                var j = k + key.count
                var ok = false
                var number = ""
                if j < s.count, s[j] == "_" {
                    j += 1
                    while j < s.count, s[j] >= "0" && s[j] <= "9" { number.unicodeScalars.append(s[j]); j += 1 }
                    ok = !number.isEmpty && !number.hasPrefix("0") && j < s.count && s[j] == "$"
                }
                if !ok {
                    issues.append(PromptIssue(.error, .badPlaceholder, at,
                        "malformed placeholder: write $character_N$ (N = 1, 2, ...) with a closing '$'"))
                } else if let n = Int(number), !characters.contains(n) {
                    issues.append(PromptIssue(.error, .unknownPlaceholder, at,
                        "placeholder $character_\(number)$ refers to no <character_\(number)> block"))
                }
                if ok { // skip the placeholder, keeping line/column right (no newlines inside)
                    column += j + 1 - k
                    k = j + 1
                    continue
                }
            }
            if s[k] == "\n" || (s[k] == "\r" && !(k + 1 < s.count && s[k + 1] == "\n")) {
                line += 1; column = 1
            } else if s[k] != "\r" {
                column += 1
            }
            k += 1
        }
    }
}
