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
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw PromptError("the description is not valid YAML: \(error)")
        }
        guard let node else { throw PromptError("the YAML description is empty") }
        return try plain(node, path: "")
    }

    /// A YAML node as the plain values `build(description:)` takes.
    static func plain(_ node: Node, path: String) throws -> Any {
        if let scalar = node.scalar {
            if scalar.style == .plain && ["", "~", "null", "Null", "NULL"].contains(scalar.string) { return NSNull() }
            return scalar.string
        }
        if let seq = node.sequence {
            return try seq.enumerated().map { try plain($0.element, path: "\(path)[\($0.offset)]") }
        }
        if let map = node.mapping {
            var out: [String: Any] = [:]
            for (k, v) in map {
                guard let key = k.scalar?.string else {
                    throw PromptError("a key in \(path.isEmpty ? "the top level" : path) is not a plain string (line \(k.mark?.line ?? 0))")
                }
                let sub = path.isEmpty ? key : "\(path).\(key)"
                if out[key] != nil { throw PromptError("\(sub) is given twice (line \(k.mark?.line ?? 0))") }
                out[key] = try plain(v, path: sub)
            }
            return out
        }
        throw PromptError("\(path.isEmpty ? "the description" : path): unsupported YAML node")
    }
}
