import Foundation
import NewBieWeights

/// An error building a tokenizer; the message names the file.
public struct TokenizerError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

extension SentencePieceBPETokenizer {
    // MARK: tokenizer.json

    /// Reads a Hugging Face `tokenizer.json` with a BPE model (Gemma's layout: byte fallback,
    /// Replace/Prepend normalizers, an optional string `Split` pre-tokenizer, a TemplateProcessing
    /// post-processor that adds `<bos>`). Anything else is refused with a message saying what.
    public convenience init(tokenizerJSON path: String) throws {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) }
        catch { throw TokenizerError("\(path): cannot read (\(error.localizedDescription))") }
        try self.init(tokenizerJSON: data, source: path)
    }

    public convenience init(tokenizerJSON data: Data, source: String) throws {
        func fail(_ m: String) -> TokenizerError { TokenizerError("\(source): \(m)") }
        let root: JSONValue
        do { root = try JSONValue.parse(data) }
        catch let e as JSONSyntaxError { throw fail("invalid JSON at byte \(e.offset): \(e.message)") }
        guard root.object != nil else { throw fail("not a JSON object") }
        guard let model = root["model"], model.object != nil else { throw fail("no \"model\"") }
        guard model["type"]?.string == "BPE" else {
            throw fail("model type \(model["type"]?.string ?? "none") is not BPE (SentencePieceBPETokenizer reads BPE models only)")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[key], !v.isNull { throw fail("BPE \(key) is not supported") }
        }
        if let d = model["dropout"], !d.isNull { throw fail("BPE dropout is not supported") }
        guard let vocabEntries = model["vocab"]?.object else { throw fail("model has no vocab object") }
        var vocab = [String](repeating: "", count: vocabEntries.count)
        var seen = [Bool](repeating: false, count: vocabEntries.count)
        for (tok, v) in vocabEntries {
            guard let id = v.int, id >= 0, id < vocabEntries.count, !seen[id] else {
                throw fail("vocab id \(v) of \"\(tok)\" is not a unique index below \(vocabEntries.count)")
            }
            vocab[id] = tok; seen[id] = true
        }
        var ids: [ByteKey: Int] = [:]
        for (i, t) in vocab.enumerated() { ids[ByteKey(t)] = i }

        var table: [UInt64: (rank: Int, id: Int)] = [:]
        let mergesList = model["merges"]?.array ?? []
        table.reserveCapacity(mergesList.count)
        for (rank, m) in mergesList.enumerated() {
            let pair: [String]
            if let s = m.string {
                pair = s.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            } else if let a = m.array, a.allSatisfy({ $0.string != nil }) { pair = a.map { $0.string! } }
            else { throw fail("merge \(rank) is neither \"a b\" nor [a, b]") }
            guard pair.count == 2 else { throw fail("merge \(rank) \(pair) does not have two parts") }
            guard let a = ids[ByteKey(pair[0])], let b = ids[ByteKey(pair[1])],
                  let c = ids[ByteKey(pair[0] + pair[1])] else {
                throw fail("merge \(rank) \(pair): a part or the merged token is not in the vocab")
            }
            let key = UInt64(a) << 32 | UInt64(b)
            if table[key] == nil { table[key] = (rank, c) }
        }
        let byteFallback = model["byte_fallback"]?.bool ?? false
        let ignoreMerges = model["ignore_merges"]?.bool ?? false
        var unkId: Int? = nil
        if let u = model["unk_token"]?.string { unkId = ids[ByteKey(u)] }

        var addedTokens: [(content: String, id: Int, special: Bool)] = []
        for a in root["added_tokens"]?.array ?? [] {
            guard let content = a["content"]?.string, let id = a["id"]?.int else { throw fail("an added token lacks content or id") }
            for flag in ["lstrip", "rstrip", "single_word"] where a[flag]?.bool == true {
                throw fail("added token \"\(content)\" has \(flag), which is not supported")
            }
            let special = a["special"]?.bool ?? false
            if a["normalized"]?.bool == true && !special {
                throw fail("added token \"\(content)\" is normalized, which is not supported")
            }
            addedTokens.append((content, id, special))
        }

        let normalizers = try SentencePieceBPETokenizer.parseNormalizer(root["normalizer"], fail: fail)
        let split = try SentencePieceBPETokenizer.parseSplit(root["pre_tokenizer"], fail: fail)
        try SentencePieceBPETokenizer.checkDecoder(root["decoder"], fail: fail)

        // post-processor: which special tokens surround a single sequence
        var addBOS = false, addEOS = false
        var bosId: Int? = ids[ByteKey("<bos>")], eosId: Int? = ids[ByteKey("<eos>")]
        if let pp = root["post_processor"], !pp.isNull {
            guard pp["type"]?.string == "TemplateProcessing", let single = pp["single"]?.array else {
                throw fail("post_processor \(pp["type"]?.string ?? "?") is not supported (TemplateProcessing only)")
            }
            func specialId(_ item: JSONValue) throws -> Int? {
                guard let name = item["SpecialToken"]?["id"]?.string else { return nil }
                if let list = pp["special_tokens"]?[name]?["ids"]?.array, list.count == 1, let i = list[0].int { return i }
                guard let i = ids[ByteKey(name)] ?? addedTokens.first(where: { ByteKey($0.content) == ByteKey(name) })?.id else {
                    throw fail("post_processor special token \"\(name)\" is unknown")
                }
                return i
            }
            guard single.contains(where: { $0["Sequence"] != nil }), single.count <= 3 else {
                throw fail("post_processor single template is not supported")
            }
            if let first = single.first, let id = try specialId(first) { addBOS = true; bosId = id }
            if single.count > 1, let last = single.last, let id = try specialId(last) { addEOS = true; eosId = id }
        }
        let padId = ids[ByteKey("<pad>")] ?? addedTokens.first(where: { ByteKey($0.content) == ByteKey("<pad>") })?.id ?? 0
        self.init(vocab: vocab, merges: .explicit(table), byteFallback: byteFallback, ignoreMerges: ignoreMerges,
                  unkId: unkId, normalizers: normalizers, split: split, addedTokens: addedTokens,
                  bosId: bosId, eosId: eosId, padId: padId, addBOS: addBOS, addEOS: addEOS)
    }

    static func parseNormalizer(_ n: JSONValue?, fail: (String) -> TokenizerError) throws -> [SentencePieceBPENormalizer] {
        guard let n = n, !n.isNull else { return [] }
        switch n["type"]?.string {
        case "Sequence":
            return try (n["normalizers"]?.array ?? []).flatMap { try parseNormalizer($0, fail: fail) }
        case "Replace":
            guard let pat = n["pattern"]?["String"]?.string, let content = n["content"]?.string else {
                throw fail("Replace normalizer needs a string pattern (regex patterns are not supported)")
            }
            return [.replace(pat, content)]
        case "Prepend":
            guard let p = n["prepend"]?.string else { throw fail("Prepend normalizer without \"prepend\"") }
            return [.prepend(p)]
        default:
            throw fail("normalizer \(n["type"]?.string ?? "?") is not supported (Replace, Prepend, Sequence)")
        }
    }

    static func parseSplit(_ p: JSONValue?, fail: (String) -> TokenizerError) throws -> SentencePieceBPESplit? {
        guard let p = p, !p.isNull else { return nil }
        guard p["type"]?.string == "Split" else {
            throw fail("pre_tokenizer \(p["type"]?.string ?? "?") is not supported (Split with a string pattern only)")
        }
        guard let pat = p["pattern"]?["String"]?.string else {
            throw fail("Split pre_tokenizer needs a string pattern (regex patterns are not supported)")
        }
        if p["invert"]?.bool == true { throw fail("inverted Split is not supported") }
        let names: [String: SentencePieceBPESplit.Behavior] = [
            "Removed": .removed, "Isolated": .isolated, "MergedWithPrevious": .mergedWithPrevious,
            "MergedWithNext": .mergedWithNext, "Contiguous": .contiguous]
        guard let bs = p["behavior"]?.string, let b = names[bs] else { throw fail("Split behavior \(p["behavior"]?.string ?? "?") is unknown") }
        return SentencePieceBPESplit(pattern: Array(pat.utf8), behavior: b)
    }

    /// `decode` implements Gemma's decoder; refuse other decoders rather than decode differently.
    static func checkDecoder(_ d: JSONValue?, fail: (String) -> TokenizerError) throws {
        guard let d = d, !d.isNull else { return }
        let steps: [JSONValue] = d["type"]?.string == "Sequence" ? (d["decoders"]?.array ?? []) : [d]
        let types = steps.compactMap { $0["type"]?.string }
        guard types == ["Replace", "ByteFallback", "Fuse"],
              steps[0]["pattern"]?["String"]?.string == "\u{2581}", steps[0]["content"]?.string == " " else {
            throw fail("decoder \(types) is not supported (Gemma's Replace(▁, \" \"), ByteFallback, Fuse)")
        }
    }

    // MARK: GGUF

    /// The tokenizer of a Gemma GGUF file (`tokenizer.ggml.model` "llama" with a gemma
    /// architecture), rebuilt the way transformers does it: multi-space tokens (stored as real
    /// spaces) respelled "▁▁…", merges implied by the token order, control tokens (type 3) as
    /// special added tokens, user-defined tokens (type 4) as added tokens, `<bos>` prepended.
    public convenience init(gguf: GGUFFile) throws {
        let path = gguf.path
        func fail(_ m: String) -> TokenizerError { TokenizerError("\(path): \(m)") }
        let model = gguf.metadata["tokenizer.ggml.model"]?.string
        let arch = gguf.architecture ?? ""
        guard model == "llama", arch.hasPrefix("gemma") else {
            throw fail("tokenizer \(model ?? "none") for architecture \(arch) is not a Gemma SentencePiece vocabulary")
        }
        let tokens: [String], types: [Double]
        do {
            tokens = try gguf.stringArray("tokenizer.ggml.tokens")
            types = try gguf.numberArray("tokenizer.ggml.token_type")
        } catch { throw fail("\(error)") }
        guard types.count == tokens.count else { throw fail("token_type has \(types.count) entries for \(tokens.count) tokens") }
        if gguf.metadata["tokenizer.ggml.merges"] != nil {
            throw fail("explicit tokenizer.ggml.merges in a Gemma file are not supported")
        }
        let vocab = tokens.map { t -> String in
            let scalars = t.unicodeScalars
            if scalars.contains(" ") && scalars.allSatisfy({ $0.properties.isWhitespace }) {
                return String(repeating: "\u{2581}", count: scalars.count)
            }
            return t
        }
        var ids: [ByteKey: Int] = [:]
        for (i, t) in vocab.enumerated() { ids[ByteKey(t)] = i }
        var added: [(content: String, id: Int, special: Bool)] = []
        for (i, t) in tokens.enumerated() where types[i] == 3 { added.append((t, ids[ByteKey(t)] ?? i, true)) }
        for (i, t) in tokens.enumerated() where types[i] == 4 {
            if let id = ids[ByteKey(t)] { added.append((t, id, false)) }
            _ = i
        }
        func idKey(_ k: String) -> Int? { gguf.metadata["tokenizer.ggml.\(k)"]?.int }
        let addBOS = gguf.metadata["tokenizer.ggml.add_bos_token"]?.bool ?? true
        let addEOS = gguf.metadata["tokenizer.ggml.add_eos_token"]?.bool ?? false
        self.init(vocab: vocab, merges: .byVocabOrder, byteFallback: true, ignoreMerges: false,
                  unkId: idKey("unknown_token_id"), normalizers: [.replace(" ", "\u{2581}")],
                  split: SentencePieceBPESplit(pattern: Array(" ".utf8), behavior: .mergedWithPrevious),
                  addedTokens: added, bosId: idKey("bos_token_id"), eosId: idKey("eos_token_id"),
                  padId: idKey("padding_token_id") ?? 0, addBOS: addBOS, addEOS: addEOS)
    }

    /// A tokenizer from a path: a `tokenizer.json`, a folder holding one, or a GGUF file.
    public static func load(_ path: String) throws -> SentencePieceBPETokenizer {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw TokenizerError("\(path): no such file") }
        if isDir.boolValue { return try SentencePieceBPETokenizer(tokenizerJSON: (path as NSString).appendingPathComponent("tokenizer.json")) }
        if path.hasSuffix(".gguf") { return try SentencePieceBPETokenizer(gguf: GGUFFile(path: path)) }
        return try SentencePieceBPETokenizer(tokenizerJSON: path)
    }
}
