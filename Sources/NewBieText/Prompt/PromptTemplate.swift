import Foundation
import NewBieWeights

/// The prompt of ComfyUI's official NewBie template (`image_newbieimage_exp0_1-t2i.json` in the
/// PyPI package comfyui-workflow-templates-json): a JSON-shaped object around the XML prompt, with a
/// natural-language caption and a bounding box per character, put together there by string
/// replacement (so the XML sits inside a string with raw line breaks):
///
///     {
///     "character_1": {
///     "bbox": [
///     0,
///     0,
///     1000,
///     1000
///     ],
///     "name": "$character_1$"
///     },
///     "image": {
///     "tags": "
///     <character_1>...</character_1>...
///     ",
///     "caption": "An anime illustration of ..."
///     }
///     }
///
/// The template sends `systemPrompt` + that text to the text encoders. The encoders read the text
/// as written; this type checks it (line and column), renders it in the template's layout and
/// builds it.
public struct TemplatePrompt: Equatable, Sendable {
    public struct Character: Equatable, Sendable {
        /// N of `character_N`.
        public var number: Int
        public var name: String
        /// [x0, y0, x1, y1] on a 0...1000 grid (the template: [0, 0, 1000, 1000]).
        public var bbox: [Int]
        public init(number: Int, name: String, bbox: [Int] = [0, 0, 1000, 1000]) {
            self.number = number; self.name = name; self.bbox = bbox
        }
    }
    public var characters: [Character]
    /// The XML prompt (`image.tags`), without the line breaks the template puts around it.
    public var tags: String
    /// The natural-language caption (`image.caption`).
    public var caption: String

    public init(characters: [Character], tags: String, caption: String) {
        self.characters = characters; self.tags = tags; self.caption = caption
    }

    /// The template's positive system prompt (it ends the line; the object starts on the next).
    public static let systemPrompt = "You are an assistant designed to generate high-quality anime images with the highest degree of image-text alignment based on xml format textual prompts. <Prompt Start>\n"
    /// The template's negative prompt (the whole text of its negative CLIPTextEncode).
    public static let negativePrompt = "You are an assistant designed to generate low-quality images based on textual prompts. <Prompt Start>"

    /// Whether `text` has this form: after white space (and an optional system prompt ending in
    /// `<Prompt Start>`), an object that mentions `"image"`.
    public static func looksLikeTemplate(_ text: String) -> Bool {
        let body = split(text).body
        return body.drop(while: { $0.isWhitespace }).hasPrefix("{") && body.contains("\"image\"")
    }

    /// A leading system prompt (through `<Prompt Start>` and the line break after it) and the rest.
    public static func split(_ text: String) -> (system: String, body: String) {
        guard let r = text.range(of: "<Prompt Start>"), !text[..<r.lowerBound].contains("{") else { return ("", text) }
        var end = r.upperBound
        if end < text.endIndex, text[end] == "\n" { end = text.index(after: end) }
        return (String(text[..<end]), String(text[end...]))
    }

    // MARK: rendering

    /// The text in the template's layout (one token per line, the XML on its own lines inside
    /// `tags`). Quotes and backslashes in names and the caption are escaped; the XML is written raw,
    /// as the template's string replacement does.
    public func render() -> String {
        var lines = ["{"]
        for c in characters {
            lines.append("\"character_\(c.number)\": {")
            lines.append("\"bbox\": [")
            lines += c.bbox.enumerated().map { i, v in "\(v)" + (i + 1 < c.bbox.count ? "," : "") }
            lines.append("],")
            lines.append("\"name\": \(TemplatePrompt.quote(c.name))")
            lines.append("},")
        }
        lines.append("\"image\": {")
        lines.append("\"tags\": \"")
        lines.append(tags)
        lines.append("\",")
        lines.append("\"caption\": \(TemplatePrompt.quote(caption))")
        lines.append("}")
        lines.append("}")
        return lines.joined(separator: "\n")
    }

    static func quote(_ s: String) -> String { JSONWriter.quote(s) }

    // MARK: parsing and checking

    /// What `parse` found: the prompt (nil when the text is not the template's object), the issues
    /// with line and column in `text` (the XML's own issues included), and the system prompt the
    /// text starts with, if any.
    public struct Parsed {
        public let prompt: TemplatePrompt?
        public let issues: [PromptIssue]
        public let systemPrompt: String
        /// The XML's own check (nil without `tags`).
        public let document: PromptDocument?
        public var errors: [PromptIssue] { issues.filter { $0.severity == .error } }
        public var warnings: [PromptIssue] { issues.filter { $0.severity == .warning } }
        public var isValid: Bool { prompt != nil && errors.isEmpty }
    }

    public static func parse(_ text: String) -> Parsed {
        let (system, body) = split(text)
        let systemLines = system.reduce(0) { $0 + ($1 == "\n" ? 1 : 0) }
        var issues: [PromptIssue] = []
        func shift(_ p: PromptPosition) -> PromptPosition { PromptPosition(line: p.line + systemLines, column: p.column) }
        func err(_ kind: PromptIssue.Kind, _ p: PromptPosition, _ m: String) { issues.append(PromptIssue(.error, kind, shift(p), m)) }
        func warn(_ kind: PromptIssue.Kind, _ p: PromptPosition, _ m: String) { issues.append(PromptIssue(.warning, kind, shift(p), m)) }
        var scanner = LooseJSON(body)
        let root: LooseJSON.Value
        do { root = try scanner.parseDocument() } catch let e as LooseJSON.Failure {
            err(.malformedTag, e.position, "not the template's JSON object: \(e.message)")
            return Parsed(prompt: nil, issues: issues, systemPrompt: system, document: nil)
        } catch {
            return Parsed(prompt: nil, issues: issues, systemPrompt: system, document: nil)
        }
        guard case .object(let top) = root.kind else {
            err(.malformedTag, root.position, "the template's prompt is a JSON object ({...})")
            return Parsed(prompt: nil, issues: issues, systemPrompt: system, document: nil)
        }
        var characters: [Character] = []
        var tags: String? = nil, caption: String? = nil
        var tagsPosition = root.position
        var seen: Set<String> = []
        for (key, value, keyPos) in top {
            if seen.contains(key) { err(.duplicateBlock, keyPos, "\"\(key)\" appears twice") }
            seen.insert(key)
            if let n = PromptDocument.characterNumber(key) {
                guard case .object(let fields) = value.kind else { err(.malformedTag, value.position, "\"\(key)\" must be an object with \"bbox\" and \"name\""); continue }
                var c = Character(number: n, name: "", bbox: [0, 0, 1000, 1000])
                var hasName = false, hasBox = false
                for (fk, fv, fp) in fields {
                    switch fk {
                    case "name":
                        guard case .string(let s) = fv.kind else { err(.malformedTag, fv.position, "\(key).name must be a string"); continue }
                        c.name = s; hasName = true
                    case "bbox":
                        hasBox = true
                        guard case .array(let items) = fv.kind, items.count == 4 else {
                            err(.malformedTag, fv.position, "\(key).bbox must be [x0, y0, x1, y1]"); continue
                        }
                        var box: [Int] = []
                        for it in items {
                            guard case .number(let d) = it.kind, d == d.rounded(), d >= 0, d <= 1000 else {
                                err(.malformedTag, it.position, "\(key).bbox values are whole numbers from 0 to 1000"); break
                            }
                            box.append(Int(d))
                        }
                        guard box.count == 4 else { continue }
                        if !(box[0] < box[2] && box[1] < box[3]) {
                            err(.malformedTag, fv.position, "\(key).bbox \(box) is empty: need x0 < x1 and y0 < y1")
                        }
                        c.bbox = box
                    default:
                        warn(.unknownTag, fp, "unknown key \"\(fk)\" in \(key) (the template has \"bbox\" and \"name\")")
                    }
                }
                if !hasName { warn(.missingCharacterNumber, keyPos, "\(key) has no \"name\"") }
                if !hasBox { warn(.malformedTag, keyPos, "\(key) has no \"bbox\" (the template gives [0, 0, 1000, 1000])") }
                if characters.contains(where: { $0.number == n }) { err(.duplicateCharacter, keyPos, "\(key) appears twice") }
                characters.append(c)
            } else if key == "image" {
                guard case .object(let fields) = value.kind else { err(.malformedTag, value.position, "\"image\" must be an object with \"tags\" and \"caption\""); continue }
                for (fk, fv, fp) in fields {
                    switch fk {
                    case "tags":
                        guard case .string(let s) = fv.kind else { err(.malformedTag, fv.position, "image.tags must be a string (the XML prompt)"); continue }
                        tags = s; tagsPosition = fv.contentPosition
                    case "caption":
                        guard case .string(let s) = fv.kind else { err(.malformedTag, fv.position, "image.caption must be a string"); continue }
                        caption = s
                    default:
                        warn(.unknownTag, fp, "unknown key \"\(fk)\" in image (the template has \"tags\" and \"caption\")")
                    }
                }
            } else {
                warn(.unknownTag, keyPos, "unknown key \"\(key)\" (the template has character_N and image)")
            }
        }
        guard seen.contains("image") else {
            err(.malformedTag, root.position, "no \"image\" object (with the XML in \"tags\" and the caption)")
            return Parsed(prompt: nil, issues: issues, systemPrompt: system, document: nil)
        }
        if tags == nil { err(.emptyPrompt, root.position, "image has no \"tags\" (the XML prompt)") }
        if (caption ?? "").trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            warn(.emptyPrompt, root.position, "image.caption is empty or missing (the template fills it with a natural-language description)")
        }
        var document: PromptDocument? = nil
        if let t = tags {
            let doc = PromptDocument(parsing: t)
            document = doc
            // the XML's issues, placed in the file (and the positions their messages name)
            func place(_ q: PromptPosition) -> PromptPosition {
                shift(q.line == 1 ? PromptPosition(line: tagsPosition.line, column: tagsPosition.column + q.column - 1)
                                  : PromptPosition(line: tagsPosition.line + q.line - 1, column: q.column))
            }
            for i in doc.issues {
                var message = i.message
                if let re = try? NSRegularExpression(pattern: "line (\\d+), column (\\d+)") {
                    let ns = message as NSString
                    for m in re.matches(in: message, range: NSRange(location: 0, length: ns.length)).reversed() {
                        guard let l = Int(ns.substring(with: m.range(at: 1))), let c = Int(ns.substring(with: m.range(at: 2))) else { continue }
                        let q = place(PromptPosition(line: l, column: c))
                        message = (message as NSString).replacingCharacters(in: m.range, with: "line \(q.line), column \(q.column)")
                    }
                }
                issues.append(PromptIssue(i.severity, i.kind, place(i.position), "in image.tags: " + message))
            }
            let xmlNumbers = Set(doc.characters.compactMap(\.characterNumber))
            for c in characters where !xmlNumbers.contains(c.number) && !doc.isPlainText {
                warn(.unknownPlaceholder, root.position, "character_\(c.number) has a bbox but no <character_\(c.number)> block in image.tags")
            }
            for e in doc.characters {
                guard let n = e.characterNumber, let c = characters.first(where: { $0.number == n }) else { continue }
                if let nameField = e.children.first(where: { $0.name == "n" }),
                   nameField.text.trimmingCharacters(in: .whitespacesAndNewlines) != c.name.trimmingCharacters(in: .whitespacesAndNewlines) {
                    warn(.badPlaceholder, root.position, "character_\(n).name \"\(c.name)\" differs from <n>\(nameField.text)</n> in image.tags")
                }
            }
        }
        let trimmedTags = (tags ?? "").trimmingCharacters(in: .newlines)
        let prompt = TemplatePrompt(characters: characters.sorted { $0.number < $1.number }, tags: trimmedTags, caption: caption ?? "")
        return Parsed(prompt: prompt, issues: issues.sorted { $0.position < $1.position }, systemPrompt: system, document: document)
    }

    // MARK: building

    /// From a `newbie prompt build` description whose characters may carry `bbox`: the XML is
    /// built from the characters and general_tags (as `PromptBuilder`), the caption goes to
    /// `image.caption`.
    public static func build(description any: Any, layout: PromptLayout = PromptLayout()) throws -> TemplatePrompt {
        guard var top = any as? [String: Any] else { throw PromptError("the description must be an object (a mapping) with \"characters\", \"general_tags\" and/or \"caption\"") }
        var boxes: [[Int]] = []
        var names: [String] = []
        if let list = top["characters"] as? [Any] {
            var stripped: [Any] = []
            for (k, item) in list.enumerated() {
                guard var obj = item as? [String: Any] else { throw PromptError("characters[\(k)] must be an object") }
                var box = [0, 0, 1000, 1000]
                if let b = obj.removeValue(forKey: "bbox") {
                    let nums = (b as? [Any])?.compactMap { v -> Int? in
                        if let n = v as? NSNumber, n.doubleValue == n.doubleValue.rounded() { return n.intValue }
                        if let s = v as? String { return Int(s) }
                        return nil
                    } ?? []
                    guard nums.count == 4, nums.allSatisfy({ $0 >= 0 && $0 <= 1000 }), nums[0] < nums[2], nums[1] < nums[3] else {
                        throw PromptError("characters[\(k)].bbox must be [x0, y0, x1, y1], whole numbers from 0 to 1000 with x0 < x1 and y0 < y1")
                    }
                    box = nums
                }
                boxes.append(box)
                let n = (obj["name"] ?? obj["n"]) as? String
                names.append(n.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) } ?? "$character_\(k + 1)$")
                stripped.append(obj)
            }
            top["characters"] = stripped
        }
        let caption = try (top.removeValue(forKey: "caption")).map { try PromptBuilder.text($0, path: "caption", allowNull: true) } ?? ""
        let xml = try PromptBuilder.build(description: top, layout: layout)
        let chars = boxes.enumerated().map { Character(number: $0.offset + 1, name: names[$0.offset], bbox: $0.element) }
        return TemplatePrompt(characters: chars, tags: xml, caption: caption)
    }
}

/// A JSON reader that keeps positions and, as the template's text needs, accepts raw line breaks
/// and tabs inside strings.
struct LooseJSON {
    struct Failure: Error { let position: PromptPosition; let message: String }
    indirect enum Kind {
        case object([(String, Value, PromptPosition)])
        case array([Value])
        case string(String)
        case number(Double)
        case bool(Bool)
        case null
    }
    struct Value {
        let kind: Kind
        let position: PromptPosition
        /// For strings: where the first character after the opening quote is.
        let contentPosition: PromptPosition
    }

    let s: [Unicode.Scalar]
    var i = 0, line = 1, column = 1

    init(_ text: String) { s = Array(text.unicodeScalars) }

    var position: PromptPosition { PromptPosition(line: line, column: column) }

    mutating func advance() {
        if s[i] == "\n" { line += 1; column = 1 } else { column += 1 }
        i += 1
    }

    mutating func skipSpace() {
        while i < s.count, [" ", "\t", "\n", "\r"].contains(s[i]) { advance() }
    }

    func fail(_ m: String) -> Failure { Failure(position: position, message: m) }

    mutating func parseDocument() throws -> Value {
        skipSpace()
        let v = try parseValue()
        skipSpace()
        guard i == s.count else { throw fail("text after the closing brace") }
        return v
    }

    mutating func parseValue() throws -> Value {
        skipSpace()
        guard i < s.count else { throw fail("unexpected end of the text") }
        let start = position
        switch s[i] {
        case "{":
            advance()
            var members: [(String, Value, PromptPosition)] = []
            skipSpace()
            if i < s.count, s[i] == "}" { advance(); return Value(kind: .object(members), position: start, contentPosition: start) }
            while true {
                skipSpace()
                let keyPos = position
                guard i < s.count, s[i] == "\"" else { throw fail("expected a key in quotes") }
                guard case .string(let key) = try parseValue().kind else { throw fail("expected a key") }
                skipSpace()
                guard i < s.count, s[i] == ":" else { throw fail("expected ':' after \"\(key)\"") }
                advance()
                let v = try parseValue()
                members.append((key, v, keyPos))
                skipSpace()
                guard i < s.count else { throw fail("unexpected end of the text: an object is not closed") }
                if s[i] == "," { advance(); continue }
                if s[i] == "}" { advance(); break }
                throw fail("expected ',' or '}'")
            }
            return Value(kind: .object(members), position: start, contentPosition: start)
        case "[":
            advance()
            var items: [Value] = []
            skipSpace()
            if i < s.count, s[i] == "]" { advance(); return Value(kind: .array(items), position: start, contentPosition: start) }
            while true {
                items.append(try parseValue())
                skipSpace()
                guard i < s.count else { throw fail("unexpected end of the text: a list is not closed") }
                if s[i] == "," { advance(); continue }
                if s[i] == "]" { advance(); break }
                throw fail("expected ',' or ']'")
            }
            return Value(kind: .array(items), position: start, contentPosition: start)
        case "\"":
            advance()
            let content = position
            var out = String.UnicodeScalarView()
            while true {
                guard i < s.count else { throw Failure(position: start, message: "a string is not closed (a '\"' inside the XML or caption ends it early; write \\\" there)") }
                let c = s[i]
                if c == "\"" { advance(); break }
                if c == "\\" {
                    advance()
                    guard i < s.count else { throw fail("unfinished escape") }
                    let e = s[i]
                    switch e {
                    case "\"", "\\", "/": out.append(e)
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    case "r": out.append("\r")
                    case "b": out.append("\u{08}")
                    case "f": out.append("\u{0C}")
                    case "u":
                        var hex = ""
                        for _ in 0..<4 {
                            advance()
                            guard i < s.count else { throw fail("unfinished \\u escape") }
                            hex.unicodeScalars.append(s[i])
                        }
                        guard let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) else { throw fail("bad \\u escape") }
                        out.append(u)
                    default: throw fail("unknown escape \\\(e)")
                    }
                    advance()
                    continue
                }
                out.append(c)
                advance()
            }
            return Value(kind: .string(String(out)), position: start, contentPosition: content)
        case "t", "f", "n":
            for (word, kind) in [("true", Kind.bool(true)), ("false", Kind.bool(false)), ("null", Kind.null)] {
                let w = Array(word.unicodeScalars)
                if i + w.count <= s.count, Array(s[i..<(i + w.count)]) == w {
                    for _ in w { advance() }
                    return Value(kind: kind, position: start, contentPosition: start)
                }
            }
            throw fail("unexpected text")
        default:
            var t = ""
            while i < s.count, "+-0123456789.eE".unicodeScalars.contains(s[i]) { t.unicodeScalars.append(s[i]); advance() }
            guard !t.isEmpty, let d = Double(t) else { throw Failure(position: start, message: "unexpected text") }
            return Value(kind: .number(d), position: start, contentPosition: start)
        }
    }
}
