import Foundation
import NewBieText
import NewBieWeights

/// The prompts of a `--prompt-file`: one ComfyUI template prompt (the whole file, a JSON object
/// around the XML, see `TemplatePrompt`); JSON lines (`{"prompt": ..., "negative_prompt": ..., "seed": ...}`)
/// when every non-empty line starts with `{`; one XML prompt (the whole file, newlines kept) when
/// the file starts with `<`; else one prompt per non-empty line.
public enum PromptList {
    public struct Entry: Sendable, Equatable {
        public var prompt: String
        public var negativePrompt: String
        public var seed: UInt64?
        public init(prompt: String, negativePrompt: String, seed: UInt64? = nil) {
            self.prompt = prompt; self.negativePrompt = negativePrompt; self.seed = seed
        }
    }

    public static func parse(_ text: String, source: String, negativePrompt: String) throws -> [Entry] {
        // one ComfyUI template prompt (a multi-line JSON object around the XML)
        if TemplatePrompt.looksLikeTemplate(text) && !text.contains("\"prompt\"") {
            return [Entry(prompt: text.trimmingCharacters(in: .whitespacesAndNewlines), negativePrompt: negativePrompt)]
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            .filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        if !lines.isEmpty && lines.allSatisfy({ $0.trimmingCharacters(in: .whitespaces).hasPrefix("{") }) {
            return try lines.enumerated().map { i, line in
                guard let obj = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                      let p = obj["prompt"] as? String else {
                    throw PipelineError("--prompt-file \(source), line \(i + 1): not a JSON object with a \"prompt\" string")
                }
                var seed: UInt64? = nil
                if let s = obj["seed"] {
                    guard let n = s as? NSNumber, !JSONNumber.isBoolean(s), let v = UInt64(exactly: n.doubleValue) else {
                        throw PipelineError("--prompt-file \(source), line \(i + 1): \"seed\" must be an integer >= 0")
                    }
                    seed = v
                }
                if let n = obj["negative_prompt"], !(n is String) {
                    throw PipelineError("--prompt-file \(source), line \(i + 1): \"negative_prompt\" must be a string")
                }
                return Entry(prompt: p, negativePrompt: obj["negative_prompt"] as? String ?? negativePrompt, seed: seed)
            }
        }
        if text.drop(while: { $0.isWhitespace }).hasPrefix("<") {
            return [Entry(prompt: text.trimmingCharacters(in: .whitespacesAndNewlines), negativePrompt: negativePrompt)]
        }
        return lines.map { Entry(prompt: $0, negativePrompt: negativePrompt) }
    }
}

extension PromptList {
    /// Problems of an XML prompt (one starting with `<`) or a ComfyUI template prompt (a JSON object
    /// around the XML), with line and column; none for plain prompts. The prompt is passed to the
    /// encoders as written either way (raw text).
    public static func xmlIssues(_ prompt: String) -> [PromptIssue] {
        if TemplatePrompt.looksLikeTemplate(prompt) { return TemplatePrompt.parse(prompt).issues }
        guard prompt.drop(while: { $0.isWhitespace }).hasPrefix("<") else { return [] }
        return PromptDocument(parsing: prompt).issues
    }
}
