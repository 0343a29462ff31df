import Foundation

/// Errors of `PromptFormatter` and `PromptBuilder`.
public struct PromptError: Error, CustomStringConvertible {
    public let message: String
    /// The checker's findings when the error is "the prompt is not valid".
    public let issues: [PromptIssue]
    public init(_ message: String, issues: [PromptIssue] = []) { self.message = message; self.issues = issues }
    public var description: String {
        issues.isEmpty ? message : ([message] + issues.map(\.description)).joined(separator: "\n")
    }
}

/// Layout of formatted and built prompts.
public struct PromptLayout: Sendable {
    /// Spaces before each field line (and before blocks inside `<image>`). The official README
    /// example uses none.
    public var indent: Int
    /// An empty line between blocks (the README example has one).
    public var blankLineBetweenBlocks: Bool
    public init(indent: Int = 0, blankLineBetweenBlocks: Bool = true) {
        self.indent = indent; self.blankLineBetweenBlocks = blankLineBetweenBlocks
    }
}

/// Rewrites a valid prompt in one layout: one field per line, block tags on their own lines,
/// field text trimmed with inner runs of whitespace (newlines included) made one space. Element
/// order and every field's words are kept. This changes the text the encoders read, so it only
/// runs when asked (`newbie prompt format`), never as part of generation.
public enum PromptFormatter {
    public static func format(_ text: String, layout: PromptLayout = PromptLayout()) throws -> String {
        let doc = PromptDocument(parsing: text)
        guard doc.isValid else { throw PromptError("the prompt has errors; fix them before formatting", issues: doc.errors) }
        if doc.isPlainText { return normalize(text) }
        var out: [String] = []
        for e in doc.elements {
            if e.name == "image" {
                var inner = e.children.map { render($0, depth: 1, layout: layout) }
                if layout.blankLineBetweenBlocks { inner = interleave(inner) }
                out.append((["<image>"] + inner + ["</image>"]).joined(separator: "\n"))
            } else {
                out.append(render(e, depth: 0, layout: layout))
            }
        }
        return (layout.blankLineBetweenBlocks ? interleave(out) : out).joined(separator: "\n")
    }

    static func interleave(_ parts: [String]) -> [String] {
        var r: [String] = []
        for (k, p) in parts.enumerated() {
            if k > 0 { r.append("") }
            r.append(p)
        }
        return r
    }

    /// Trims and turns every run of whitespace into one space.
    public static func normalize(_ text: String) -> String {
        text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" || $0 == "\r\n" })
            .joined(separator: " ")
    }

    static func render(_ e: PromptElement, depth: Int, layout: PromptLayout) -> String {
        let pad = String(repeating: " ", count: layout.indent * depth)
        if e.children.isEmpty && (e.characterNumber == nil && e.name != "general_tags") {
            return "\(pad)<\(e.name)>\(normalize(e.text))</\(e.name)>"
        }
        let fieldPad = String(repeating: " ", count: layout.indent * (depth + 1))
        let lines = e.children.map { "\(fieldPad)<\($0.name)>\(normalize($0.text))</\($0.name)>" }
        return ([pad + "<\(e.name)>"] + lines + [pad + "</\(e.name)>"]).joined(separator: "\n")
    }
}

/// Builds a prompt from a JSON (or YAML, see PromptYAML.swift) description:
///
///     {"characters": [{"name": "...", "gender": "1girl", "appearance": ["red_eyes", "long_hair"], ...}],
///      "general_tags": {"count": "1girl, solo", "style": "anime_style", ...},
///      "caption": "natural language, optional"}
///
/// A value is a string or a list of strings (joined with ", "). Empty values are left out, except
/// the name: a character without "name" gets the placeholder `$character_N$` (as in the README),
/// one with "name": "" an empty `<n></n>`. Fields are written in the format's order (see
/// `PromptVocabulary`), the caption last. The result is checked before it is returned.
public enum PromptBuilder {
    public static func build(json data: Data, layout: PromptLayout = PromptLayout()) throws -> String {
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw PromptError("the description is not valid JSON: \((error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)")")
        }
        return try build(description: any, layout: layout)
    }

    /// Builds from an already decoded description: dictionaries [String: Any], lists [Any],
    /// strings, and NSNull for null (what JSONSerialization gives; `build(yaml:)` converts to the same).
    public static func build(description any: Any, layout: PromptLayout = PromptLayout()) throws -> String {
        guard let top = any as? [String: Any] else { throw PromptError("the description must be an object (a mapping) with \"characters\", \"general_tags\" and/or \"caption\"") }
        let known: Set<String> = ["characters", "general_tags", "caption"]
        for k in top.keys.sorted() where !known.contains(k) {
            throw PromptError("unknown key \"\(k)\" at the top level; expected \"characters\", \"general_tags\" or \"caption\"")
        }
        var blocks: [String] = []
        let pad = String(repeating: " ", count: layout.indent)
        if let chars = top["characters"] {
            guard let list = chars as? [Any] else { throw PromptError("\"characters\" must be a list of objects") }
            for (k, item) in list.enumerated() {
                let path = "characters[\(k)]"
                guard let obj = item as? [String: Any] else { throw PromptError("\(path) must be an object") }
                var fields: [String: String] = [:]
                for (key, value) in obj {
                    let field = key == "name" ? "n" : key
                    guard PromptVocabulary.characterFields.contains(field) else {
                        throw PromptError("unknown key \"\(key)\" in \(path); expected name, " +
                                          PromptVocabulary.characterFields.dropFirst().joined(separator: ", "))
                    }
                    if fields[field] != nil { throw PromptError("\(path) gives the name twice (\"name\" and \"n\")") }
                    fields[field] = try text(value, path: "\(path).\(key)", allowNull: field == "n")
                }
                if obj["name"] == nil && obj["n"] == nil || (obj["name"] ?? obj["n"]) is NSNull {
                    fields["n"] = "$character_\(k + 1)$"
                }
                var lines = ["<character_\(k + 1)>"]
                for f in PromptVocabulary.characterFields {
                    guard let v = fields[f], !(v.isEmpty && f != "n") else { continue }
                    lines.append("\(pad)<\(f)>\(v)</\(f)>")
                }
                lines.append("</character_\(k + 1)>")
                blocks.append(lines.joined(separator: "\n"))
            }
        }
        if let general = top["general_tags"] {
            guard let obj = general as? [String: Any] else { throw PromptError("\"general_tags\" must be an object") }
            var fields: [String: String] = [:]
            for (key, value) in obj {
                guard PromptVocabulary.generalFields.contains(key) else {
                    throw PromptError("unknown key \"\(key)\" in general_tags; expected " + PromptVocabulary.generalFields.joined(separator: ", "))
                }
                fields[key] = try text(value, path: "general_tags.\(key)", allowNull: false)
            }
            var lines = ["<general_tags>"]
            for f in PromptVocabulary.generalFields {
                guard let v = fields[f], !v.isEmpty else { continue }
                lines.append("\(pad)<\(f)>\(v)</\(f)>")
            }
            lines.append("</general_tags>")
            blocks.append(lines.joined(separator: "\n"))
        }
        if let caption = top["caption"] {
            let v = try text(caption, path: "caption", allowNull: false)
            if !v.isEmpty { blocks.append("<caption>\(v)</caption>") }
        }
        guard !blocks.isEmpty else { throw PromptError("the description has no characters, general_tags or caption") }
        let result = (layout.blankLineBetweenBlocks ? PromptFormatter.interleave(blocks) : blocks).joined(separator: "\n")
        let doc = PromptDocument(parsing: result)
        guard doc.isValid else { throw PromptError("the built prompt does not check", issues: doc.errors) }
        return result
    }

    /// A string or a list of strings (joined with ", "), trimmed; no '<' (it would open a tag).
    static func text(_ value: Any, path: String, allowNull: Bool) throws -> String {
        let s: String
        if let str = value as? String {
            s = str.trimmingCharacters(in: .whitespacesAndNewlines)
        } else if let list = value as? [Any] {
            s = try list.enumerated().map { (i, v) -> String in
                guard let t = v as? String else { throw PromptError("\(path)[\(i)] must be a string") }
                return t.trimmingCharacters(in: .whitespacesAndNewlines)
            }.filter { !$0.isEmpty }.joined(separator: ", ")
        } else if value is NSNull && allowNull {
            return ""
        } else {
            throw PromptError("\(path) must be a string or a list of strings")
        }
        if s.contains("<") || s.contains(">") {
            throw PromptError("\(path) contains '<' or '>', which would read as a tag")
        }
        return s
    }
}
