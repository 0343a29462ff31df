import ArgumentParser
import Foundation
import NewBiePipeline
import NewBieTensor
import NewBieText

/// `newbie prompt check | format | build`: the NewBie XML prompt format (docs/PROMPTS.md).
struct PromptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prompt",
        abstract: "Check, format or build NewBie XML prompts and ComfyUI template prompts (JSON around the XML).",
        subcommands: [Check.self, Format.self, Build.self])

    /// Reads a file, or standard input for "-".
    static func read(_ path: String) throws -> Data { try readFile(path, option: "") }

    static func readText(_ path: String) throws -> String { try readTextFile(path, option: "") }

    static func stderr(_ s: String) { FileHandle.standardError.write((s + "\n").data(using: .utf8)!) }

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check a prompt's structure and names; report problems with line and column. Never changes the file.")

        @Argument(help: "The prompt file, or - for standard input.")
        var file: String

        @Flag(help: "Treat warnings as errors.")
        var strict = false

        func run() throws {
            let text = try PromptCommand.readText(file)
            let name = file == "-" ? "<stdin>" : file
            if TemplatePrompt.looksLikeTemplate(text) {
                let parsed = TemplatePrompt.parse(text)
                for issue in parsed.issues { print("\(name):\(issue)") }
                if !parsed.isValid || (strict && !parsed.warnings.isEmpty) {
                    PromptCommand.stderr("\(name): ComfyUI template prompt: \(parsed.errors.count) error(s), \(parsed.warnings.count) warning(s)")
                    throw ExitCode(1)
                }
                let p = parsed.prompt!
                let boxes = p.characters.map { "character_\($0.number) \($0.bbox)" }.joined(separator: ", ")
                print("\(name): OK: ComfyUI template prompt: \(p.characters.count) character(s) with bbox (\(boxes)), "
                      + "tags with \(parsed.document?.characters.count ?? 0) XML character block(s), caption of \(p.caption.count) characters"
                      + (parsed.systemPrompt.isEmpty ? "" : ", its own system prompt") + (parsed.warnings.isEmpty ? "" : ", \(parsed.warnings.count) warning(s)"))
                return
            }
            let doc = PromptDocument(parsing: text)
            for issue in doc.issues { print("\(name):\(issue)") }
            if doc.isPlainText && doc.isValid {
                print("\(name): plain-text prompt (no XML tags); nothing to check")
                return
            }
            let failed = !doc.errors.isEmpty || (strict && !doc.warnings.isEmpty)
            if failed {
                PromptCommand.stderr("\(name): \(doc.errors.count) error(s), \(doc.warnings.count) warning(s)")
                throw ExitCode(1)
            }
            let fields = doc.generalTags?.children.count ?? 0
            print("\(name): OK: \(doc.characters.count) character(s), general_tags with \(fields) field(s)"
                  + (doc.caption != nil ? ", caption" : "") + (doc.warnings.isEmpty ? "" : ", \(doc.warnings.count) warning(s)"))
        }
    }

    struct Format: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the prompt in one layout (one field per line). This changes the text the encoders read.",
            discussion: """
                The encoders read the prompt as raw text, so a formatted prompt gives different tokens and a \
                (slightly) different image than the original. Formatting is never applied by generation; use \
                --write to replace the file.
                """)

        @Argument(help: "The prompt file, or - for standard input.")
        var file: String

        @Option(help: "Spaces before each field (the official README uses 0).")
        var indent = 0

        @Flag(help: "No empty line between blocks.")
        var compact = false

        @Flag(help: "Replace the file with the formatted text instead of printing it.")
        var write = false

        func validate() throws {
            guard indent >= 0 && indent <= 16 else { throw ValidationError("--indent must be between 0 and 16") }
            if write && file == "-" { throw ValidationError("--write needs a file, not standard input") }
        }

        func run() throws {
            let text = try PromptCommand.readText(file)
            let out: String
            do {
                let layout = PromptLayout(indent: indent, blankLineBetweenBlocks: !compact)
                if TemplatePrompt.looksLikeTemplate(text) {
                    let parsed = TemplatePrompt.parse(text)
                    guard parsed.isValid, var p = parsed.prompt else {
                        throw PromptError("the template prompt has errors; fix them before formatting", issues: parsed.errors)
                    }
                    p.tags = try PromptFormatter.format(p.tags, layout: layout)
                    out = parsed.systemPrompt + p.render()
                } else {
                    out = try PromptFormatter.format(text, layout: layout)
                }
            } catch let e as PromptError {
                let name = file == "-" ? "<stdin>" : file
                for issue in e.issues { print("\(name):\(issue)") }
                PromptCommand.stderr("\(name): \(e.message)")
                throw ExitCode(1)
            }
            if write {
                // files keep one final line end
                if out + "\n" == text { PromptCommand.stderr("\(file): already formatted"); return }
                try writeText(out + "\n", to: file, option: "--write")
                PromptCommand.stderr("\(file): formatted (the encoders will see different text than before)")
            } else {
                print(out)
            }
        }
    }

    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write an XML prompt from a JSON or YAML description of characters and tags (docs/PROMPTS.md).")

        enum InputFormat: String, ExpressibleByArgument, CaseIterable { case auto, json, yaml }

        @Argument(help: "The description file (.json, .yaml or .yml), or - for standard input.")
        var file: String

        @Option(help: "json, yaml, or auto: by the file's extension; for other names and standard input, JSON when the text starts with '{', else YAML.")
        var inputFormat: InputFormat = .auto

        @Option(help: "Spaces before each field.")
        var indent = 0

        @Flag(help: "No empty line between blocks.")
        var compact = false

        @Option(name: [.short, .long, .customLong("out")], help: "Write the prompt to this file instead of standard output (- is standard output).")
        var output: String?

        @Flag(help: "Write a ComfyUI template prompt: the JSON object of ComfyUI's NewBie template with each character's bbox (characters may give \"bbox\": [x0, y0, x1, y1] on a 0-1000 grid; default the whole image), the XML in image.tags and the caption in image.caption.")
        var template = false

        func validate() throws {
            guard indent >= 0 && indent <= 16 else { throw ValidationError("--indent must be between 0 and 16") }
        }

        func run() throws {
            if let output { try checkOutput(output, binary: false) }
            let data = try PromptCommand.read(file)
            let layout = PromptLayout(indent: indent, blankLineBetweenBlocks: !compact)
            var format = inputFormat
            if format == .auto {
                let ext = (file as NSString).pathExtension.lowercased()
                if ext == "json" { format = .json } else if ext == "yaml" || ext == "yml" { format = .yaml } else {
                    let first = String(decoding: data.prefix(4096), as: UTF8.self).first { !$0.isWhitespace }
                    format = first == "{" ? .json : .yaml
                }
            }
            let out: String
            do {
                if template {
                    let description: Any
                    if format == .yaml {
                        guard let text = String(data: data, encoding: .utf8) else { throw PipelineError("\(file): not UTF-8 text") }
                        description = try PromptBuilder.description(yaml: text)
                    } else {
                        do { description = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
                            throw PromptError("the description is not valid JSON: \(error)")
                        }
                    }
                    out = try TemplatePrompt.build(description: description, layout: layout).render()
                } else if format == .yaml {
                    guard let text = String(data: data, encoding: .utf8) else { throw PipelineError("\(file): not UTF-8 text") }
                    out = try PromptBuilder.build(yaml: text, layout: layout)
                } else {
                    out = try PromptBuilder.build(json: data, layout: layout)
                }
            } catch let e as PromptError {
                PromptCommand.stderr("\(file == "-" ? "<stdin>" : file): \(e)")
                throw ExitCode(1)
            }
            if let output {
                try writeText(out + "\n", to: output, option: "--output")
            } else {
                print(out)
            }
        }
    }
}
