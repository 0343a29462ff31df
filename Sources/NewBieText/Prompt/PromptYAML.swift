import Foundation
import Yams

extension PromptBuilder {
    /// Builds a prompt from a YAML description with the same structure as the JSON one:
    ///
    ///     characters:
    ///       - gender: 1girl
    ///         appearance: [red_eyes, blue_hair]
    ///     general_tags:
    ///       count: 1girl, solo
    ///
    /// Every scalar is taken as the text written (`no`, `1.5`, `2` stay strings, unlike YAML's
    /// usual typing); an empty value, `~` or `null` (unquoted) is null.
    public static func build(yaml text: String, layout: PromptLayout = PromptLayout()) throws -> String {
        try build(description: description(yaml: text), layout: layout)
    }

    /// A YAML description as the plain values `build(description:)` takes.
    public static func description(yaml text: String) throws -> Any {
        // the YAML reader recurses once per nesting level: a few thousand brackets overflowed the
        // stack (found by fuzzing); a description needs about 4 levels
        let depth = yamlNestingBound(text)
        guard depth <= maxYAMLDepth else {
            throw PromptError("the YAML description nests \(depth) levels deep (at most \(maxYAMLDepth); a prompt description needs about 4)")
        }
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw PromptError("the description is not valid YAML: \(error)")
        }
        guard let node else { throw PromptError("the YAML description is empty") }
        var budget = maxYAMLValues
        return try plain(node, path: "", budget: &budget)
    }

    /// Deepest nesting a YAML description may have.
    static let maxYAMLDepth = 64
    /// Most values a YAML description may expand to (aliases repeat what they name, so a small
    /// file could otherwise expand to billions of values).
    static let maxYAMLValues = 100_000

    /// An upper bound of the nesting depth of YAML text, without parsing it: the deepest flow
    /// nesting ([ and { outside quotes) plus, per line, the block levels open (indentation stack)
    /// and the compact sequence dashes ("- - x").
    static func yamlNestingBound(_ text: String) -> Int {
        var maxDepth = 0, flow = 0
        var indents: [Int] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            let chars = Array(line.utf8)
            var i = 0
            while i < chars.count && chars[i] == UInt8(ascii: " ") { i += 1 }
            if i == chars.count || chars[i] == UInt8(ascii: "#") { continue }
            if flow == 0 {
                while let last = indents.last, last >= i { indents.removeLast() }
                indents.append(i)
            }
            var dashes = 0, j = i
            while j + 1 < chars.count && chars[j] == UInt8(ascii: "-") && chars[j + 1] == UInt8(ascii: " ") {
                dashes += 1; j += 2
                while j < chars.count && chars[j] == UInt8(ascii: " ") { j += 1 }
            }
            var quote: UInt8? = nil
            for c in chars[j...] {
                if let q = quote { if c == q { quote = nil }; continue }
                switch c {
                case UInt8(ascii: "\""), UInt8(ascii: "'"): quote = c
                case UInt8(ascii: "["), UInt8(ascii: "{"): flow += 1; maxDepth = max(maxDepth, indents.count + dashes + flow)
                case UInt8(ascii: "]"), UInt8(ascii: "}"): flow = max(0, flow - 1)
                case UInt8(ascii: "#") where quote == nil: break
                default: break
                }
            }
            maxDepth = max(maxDepth, indents.count + dashes + flow)
        }
        return maxDepth
    }

    /// A YAML node as the plain values `build(description:)` takes.
    static func plain(_ node: Node, path: String, budget: inout Int) throws -> Any {
        budget -= 1
        guard budget >= 0 else {
            throw PromptError("the YAML description expands to more than \(maxYAMLValues) values (aliases repeat what they name)")
        }
        if let scalar = node.scalar {
            if scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string) { return NSNull() }
            return scalar.string
        }
        if let seq = node.sequence {
            var out: [Any] = []
            for (i, e) in seq.enumerated() { out.append(try plain(e, path: "\(path)[\(i)]", budget: &budget)) }
            return out
        }
        if let map = node.mapping {
            var out: [String: Any] = [:]
            for (k, v) in map {
                guard let key = k.scalar?.string else {
                    throw PromptError("a key in \(path.isEmpty ? "the top level" : path) is not a plain string (line \(k.mark?.line ?? 0))")
                }
                let sub = path.isEmpty ? key : "\(path).\(key)"
                if out[key] != nil { throw PromptError("\(sub) is given twice (line \(k.mark?.line ?? 0))") }
                out[key] = try plain(v, path: sub, budget: &budget)
            }
            return out
        }
        throw PromptError("\(path.isEmpty ? "the description" : path): unsupported YAML node")
    }
}
