import Foundation

/// A SentencePiece Unigram tokenizer read from a HF `tokenizer.json` (XLM-RoBERTa, Jina CLIP v2),
/// reproducing the `tokenizers` pipeline: special (added) tokens split out of the raw text,
/// normalizer (Precompiled charsmap, Replace, Strip, NFKC, ...), pre-tokenizer (WhitespaceSplit,
/// Metaspace), Unigram Viterbi segmentation with the unknown token (consecutive unknowns fused),
/// then the post-processor's template (`<s> $A </s>`), truncation and padding.
///
/// The ids are the tokenizer.json ids, i.e. already in the fairseq layout (<s>=0, <pad>=1, </s>=2,
/// <unk>=3, SentencePiece piece i at i+1); raw SentencePiece ids are never used.
public final class UnigramTokenizer: @unchecked Sendable {
    public struct Piece: Sendable { public let text: String; public let score: Double }

    public let pieces: [Piece]
    public let unkId: Int
    public let padId: Int
    public let padToken: String
    let minScore: Double
    let lookup: [UInt64: [Int32]]
    let pieceBytes: [[UInt8]]
    let maxPieceBytes: Int
    /// Byte-exact text -> id (Swift String equality is canonical equivalence, "パ" == "ハ\u{309A}",
    /// while tokenizers compares bytes).
    let tokenToId: [[UInt8]: Int]
    let normalizers: [Normalizer]
    let preTokenizers: [PreTokenizer]
    let added: [AddedToken]
    let template: [TemplateItem]

    /// sentencepiece's kUnkPenalty: an unknown character scores `minScore - 10`.
    static let unkPenalty = 10.0

    struct AddedToken { let content: String; let id: Int; let lstrip: Bool; let rstrip: Bool; let singleWord: Bool }
    enum TemplateItem { case special(Int); case sequence }

    enum Normalizer {
        case precompiled(PrecompiledCharsmap)
        case replace(pattern: String, isRegex: Bool, regex: NSRegularExpression?, content: String)
        case strip(left: Bool, right: Bool)
        case nfkc, nfc, nfd, nfkd, lowercase
        case prepend(String)
    }

    enum PreTokenizer {
        case whitespaceSplit
        case metaspace(replacement: String, prepend: PrependScheme, split: Bool)
    }

    enum PrependScheme { case always, first, never }

    // MARK: - loading

    public convenience init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw UnigramTokenizerError("\(path): cannot read the tokenizer file")
        }
        try self.init(json: data, source: path)
    }

    public init(json data: Data, source: String = "tokenizer.json") throws {
        func fail(_ s: String) -> UnigramTokenizerError { UnigramTokenizerError("\(source): \(s)") }
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw fail("not a JSON object")
        }
        guard let model = root["model"] as? [String: Any] else { throw fail("no \"model\"") }
        guard (model["type"] as? String) == "Unigram" else {
            throw fail("model type \(model["type"] ?? "nil") is not Unigram")
        }
        if (model["byte_fallback"] as? Bool) == true { throw fail("Unigram byte_fallback is not supported") }
        guard let vocab = model["vocab"] as? [[Any]], !vocab.isEmpty else { throw fail("model.vocab is missing or empty") }
        var pieces: [Piece] = []
        pieces.reserveCapacity(vocab.count)
        for (i, e) in vocab.enumerated() {
            guard e.count == 2, let t = e[0] as? String, let s = (e[1] as? NSNumber)?.doubleValue else {
                throw fail("model.vocab[\(i)] is not [piece, score]")
            }
            pieces.append(Piece(text: t, score: s))
        }
        self.pieces = pieces
        guard let unk = (model["unk_id"] as? NSNumber)?.intValue, unk >= 0, unk < pieces.count else {
            throw fail("model.unk_id is missing or out of range (the tokenizer needs an unknown token)")
        }
        unkId = unk
        minScore = pieces.map(\.score).min() ?? 0

        var t2i: [[UInt8]: Int] = [:]
        var table: [UInt64: [Int32]] = [:]
        var pb: [[UInt8]] = []
        pb.reserveCapacity(pieces.count)
        var maxLen = 0
        for (i, p) in pieces.enumerated() {
            let b = Array(p.text.utf8)
            t2i[b] = i   // tokenizers' token_to_ids: a later duplicate wins
            pb.append(b)
            maxLen = max(maxLen, b.count)
            table[UnigramTokenizer.hash(b[...]), default: []].append(Int32(i))
        }
        pieceBytes = pb
        maxPieceBytes = maxLen
        lookup = table

        var added: [AddedToken] = []
        for a in (root["added_tokens"] as? [[String: Any]]) ?? [] {
            guard let c = a["content"] as? String, let id = (a["id"] as? NSNumber)?.intValue else { throw fail("added_tokens entry without content/id") }
            added.append(AddedToken(content: c, id: id, lstrip: (a["lstrip"] as? Bool) ?? false,
                                    rstrip: (a["rstrip"] as? Bool) ?? false, singleWord: (a["single_word"] as? Bool) ?? false))
            if t2i[Array(c.utf8)] == nil { t2i[Array(c.utf8)] = id }
        }
        self.added = added.sorted { $0.content.utf8.count > $1.content.utf8.count }
        tokenToId = t2i
        padToken = (root["padding"] as? [String: Any])?["pad_token"] as? String ?? "<pad>"
        padId = t2i[Array(padToken.utf8)] ?? 1

        normalizers = try UnigramTokenizer.parseNormalizer(root["normalizer"], fail)
        preTokenizers = try UnigramTokenizer.parsePreTokenizer(root["pre_tokenizer"], fail)
        template = try UnigramTokenizer.parsePostProcessor(root["post_processor"], tokenToId: t2i, fail)
    }

    static func parseNormalizer(_ any: Any?, _ fail: (String) -> UnigramTokenizerError) throws -> [Normalizer] {
        guard let n = any as? [String: Any] else { return [] }
        let type = n["type"] as? String ?? "?"
        switch type {
        case "Sequence":
            return try ((n["normalizers"] as? [Any]) ?? []).flatMap { try parseNormalizer($0, fail) }
        case "Precompiled":
            guard let s = n["precompiled_charsmap"] as? String else {
                if n["precompiled_charsmap"] is NSNull { return [] }
                throw fail("Precompiled normalizer without precompiled_charsmap")
            }
            do { return [.precompiled(try PrecompiledCharsmap(base64: s))] }
            catch let e as UnigramTokenizerError { throw fail(e.message) }
        case "Replace":
            guard let pat = n["pattern"] as? [String: Any], let content = n["content"] as? String else { throw fail("Replace normalizer without pattern/content") }
            if let s = pat["String"] as? String { return [.replace(pattern: s, isRegex: false, regex: nil, content: content)] }
            if let r = pat["Regex"] as? String {
                guard let re = try? NSRegularExpression(pattern: r) else { throw fail("Replace normalizer: regex \(r) does not compile") }
                return [.replace(pattern: r, isRegex: true, regex: re, content: content)]
            }
            throw fail("Replace normalizer: unknown pattern \(pat)")
        case "Strip": return [.strip(left: (n["strip_left"] as? Bool) ?? true, right: (n["strip_right"] as? Bool) ?? true)]
        case "NFKC": return [.nfkc]
        case "NFC": return [.nfc]
        case "NFD": return [.nfd]
        case "NFKD": return [.nfkd]
        case "Lowercase": return [.lowercase]
        case "Prepend": return [.prepend(n["prepend"] as? String ?? "")]
        default: throw fail("normalizer type \(type) is not supported")
        }
    }

    static func parsePreTokenizer(_ any: Any?, _ fail: (String) -> UnigramTokenizerError) throws -> [PreTokenizer] {
        guard let p = any as? [String: Any] else { return [] }
        let type = p["type"] as? String ?? "?"
        switch type {
        case "Sequence": return try ((p["pretokenizers"] as? [Any]) ?? []).flatMap { try parsePreTokenizer($0, fail) }
        case "WhitespaceSplit": return [.whitespaceSplit]
        case "Metaspace":
            let rep = p["replacement"] as? String ?? "\u{2581}"
            var scheme = PrependScheme.always
            if let s = p["prepend_scheme"] as? String {
                switch s {
                case "always": scheme = .always
                case "first": scheme = .first
                case "never": scheme = .never
                default: throw fail("Metaspace prepend_scheme \(s) is not supported")
                }
            } else if let a = p["add_prefix_space"] as? Bool {
                scheme = a ? .always : .never
            }
            return [.metaspace(replacement: rep, prepend: scheme, split: (p["split"] as? Bool) ?? true)]
        default: throw fail("pre-tokenizer type \(type) is not supported")
        }
    }

    static func parsePostProcessor(_ any: Any?, tokenToId: [[UInt8]: Int], _ fail: (String) -> UnigramTokenizerError) throws -> [TemplateItem] {
        guard let p = any as? [String: Any] else { return [.sequence] }
        switch p["type"] as? String ?? "?" {
        case "TemplateProcessing":
            let specials = p["special_tokens"] as? [String: Any] ?? [:]
            var items: [TemplateItem] = []
            for piece in (p["single"] as? [[String: Any]]) ?? [] {
                if let s = piece["SpecialToken"] as? [String: Any], let name = s["id"] as? String {
                    if let def = specials[name] as? [String: Any], let ids = def["ids"] as? [NSNumber] {
                        items += ids.map { .special($0.intValue) }
                    } else if let id = tokenToId[Array(name.utf8)] {
                        items.append(.special(id))
                    } else { throw fail("post-processor special token \(name) has no id") }
                } else if piece["Sequence"] != nil {
                    items.append(.sequence)
                }
            }
            guard items.contains(where: { if case .sequence = $0 { return true } else { return false } }) else {
                throw fail("post-processor template has no $A")
            }
            return items
        case "RobertaProcessing", "BertProcessing":
            guard let cls = p["cls"] as? [Any], cls.count == 2, let c = (cls[1] as? NSNumber)?.intValue,
                  let sep = p["sep"] as? [Any], sep.count == 2, let s = (sep[1] as? NSNumber)?.intValue else {
                throw fail("post-processor without cls/sep")
            }
            return [.special(c), .sequence, .special(s)]
        default:
            throw fail("post-processor type \(p["type"] ?? "nil") is not supported")
        }
    }

    // MARK: - encoding

    /// Special tokens the template adds around the text.
    public var addedSpecialCount: Int {
        template.reduce(0) { if case .special = $1 { return $0 + 1 } else { return $0 } }
    }

    /// Token ids of one text with the template's specials; with `maxLength` the text part is cut so
    /// that the whole sequence has at most `maxLength` ids (HF `truncation=True`).
    public func encode(_ text: String, maxLength: Int? = nil) -> [Int] {
        var body = encodeWithoutSpecials(text)
        if let m = maxLength { body = Array(body.prefix(max(0, m - addedSpecialCount))) }
        var out: [Int] = []
        for item in template {
            switch item {
            case .special(let id): out.append(id)
            case .sequence: out += body
            }
        }
        return out
    }

    /// A batch padded on the right to its longest sequence with the pad id (HF `padding=True`);
    /// the mask is 1 for real tokens.
    public func encodeBatch(_ texts: [String], maxLength: Int? = nil) -> (ids: [[Int]], mask: [[Int]]) {
        let seqs = texts.map { encode($0, maxLength: maxLength) }
        let n = seqs.map(\.count).max() ?? 0
        return (seqs.map { $0 + [Int](repeating: padId, count: n - $0.count) },
                seqs.map { [Int](repeating: 1, count: $0.count) + [Int](repeating: 0, count: n - $0.count) })
    }

    /// The pieces of the text without template specials (tokens as strings, for debugging).
    public func tokens(_ text: String) -> [String] {
        encodeWithoutSpecials(text).map { $0 >= 0 && $0 < pieces.count ? pieces[$0].text : "<\($0)>" }
    }

    public func encodeWithoutSpecials(_ text: String) -> [Int] {
        var ids: [Int] = []
        for seg in splitAddedTokens(text) {
            switch seg {
            case .token(let id): ids.append(id)
            case .text(let s, let atStart):
                let normalized = normalize(s)
                for word in preTokenize(normalized, atStart: atStart) {
                    ids += segment(word)
                }
            }
        }
        return ids
    }

    enum Segment { case text(String, atStart: Bool); case token(Int) }

    /// Splits the raw text on added tokens (leftmost, then longest), honouring lstrip/rstrip.
    func splitAddedTokens(_ text: String) -> [Segment] {
        if added.isEmpty { return text.isEmpty ? [] : [.text(text, atStart: true)] }
        let scalars = Array(text.unicodeScalars)
        let addedScalars = added.map { Array($0.content.unicodeScalars) }
        var out: [Segment] = []
        var textStart = 0, i = 0
        func isWS(_ s: Unicode.Scalar) -> Bool { s.properties.isWhitespace }
        func isWordChar(_ s: Unicode.Scalar) -> Bool { s.properties.isAlphabetic || s.properties.numericType != nil || s == "_" }
        while i < scalars.count {
            var matched: Int? = nil
            for (k, a) in addedScalars.enumerated() where !a.isEmpty && i + a.count <= scalars.count {
                if scalars[i] == a[0] && Array(scalars[i..<(i + a.count)]) == a {
                    if added[k].singleWord {
                        let before = i > 0 ? scalars[i - 1] : nil, after = i + a.count < scalars.count ? scalars[i + a.count] : nil
                        if let b = before, isWordChar(b) { continue }
                        if let f = after, isWordChar(f) { continue }
                    }
                    matched = k; break   // `added` is sorted longest first
                }
            }
            guard let k = matched else { i += 1; continue }
            var start = i, end = i + addedScalars[k].count
            if added[k].lstrip { while start > textStart && isWS(scalars[start - 1]) { start -= 1 } }
            if added[k].rstrip { while end < scalars.count && isWS(scalars[end]) { end += 1 } }
            if start > textStart {
                var s = String.UnicodeScalarView(); s.append(contentsOf: scalars[textStart..<start])
                out.append(.text(String(s), atStart: textStart == 0))
            }
            out.append(.token(added[k].id))
            textStart = end; i = end
        }
        if textStart < scalars.count {
            var s = String.UnicodeScalarView(); s.append(contentsOf: scalars[textStart...])
            out.append(.text(String(s), atStart: textStart == 0))
        }
        return out
    }

    func normalize(_ text: String) -> String {
        var s = text
        for n in normalizers {
            switch n {
            case .precompiled(let map): s = map.normalize(s, mode: .huggingFace)
            case .replace(let pattern, let isRegex, let regex, let content):
                if isRegex, let re = regex {
                    s = re.stringByReplacingMatches(in: s, range: NSRange(s.startIndex..., in: s), withTemplate: NSRegularExpression.escapedTemplate(for: content))
                } else if !pattern.isEmpty {
                    s = s.replacingOccurrences(of: pattern, with: content, options: .literal)
                }
            case .strip(let l, let r):
                var sc = Array(s.unicodeScalars)
                if r { while let last = sc.last, last.properties.isWhitespace { sc.removeLast() } }
                if l { while let first = sc.first, first.properties.isWhitespace { sc.removeFirst() } }
                var v = String.UnicodeScalarView(); v.append(contentsOf: sc); s = String(v)
            case .nfkc: s = s.precomposedStringWithCompatibilityMapping
            case .nfc: s = s.precomposedStringWithCanonicalMapping
            case .nfd: s = s.decomposedStringWithCanonicalMapping
            case .nfkd: s = s.decomposedStringWithCompatibilityMapping
            case .lowercase: s = s.lowercased()
            case .prepend(let p): if !s.isEmpty { s = p + s }
            }
        }
        return s
    }

    /// Applies the pre-tokenizers in order, each to every piece the previous one produced.
    func preTokenize(_ text: String, atStart: Bool) -> [String] {
        var words: [(String, Bool)] = [(text, atStart)]   // (piece, begins at offset 0 of the input)
        for p in preTokenizers {
            var next: [(String, Bool)] = []
            for (w, first) in words {
                switch p {
                case .whitespaceSplit:
                    var cur = String.UnicodeScalarView()
                    var begins = first
                    for sc in w.unicodeScalars {
                        if sc.properties.isWhitespace {
                            if !cur.isEmpty { next.append((String(cur), begins)); cur = String.UnicodeScalarView() }
                            begins = false
                        } else { cur.append(sc) }
                    }
                    if !cur.isEmpty { next.append((String(cur), begins)) }
                case .metaspace(let rep, let scheme, let split):
                    let repScalars = Array(rep.unicodeScalars)
                    var sc: [Unicode.Scalar] = []
                    for x in w.unicodeScalars { if x == " " { sc += repScalars } else { sc.append(x) } }
                    let prepend: Bool
                    switch scheme {
                    case .always: prepend = true
                    case .first: prepend = first
                    case .never: prepend = false
                    }
                    let startsWithRep = sc.count >= repScalars.count && Array(sc[0..<repScalars.count]) == repScalars
                    if prepend && !startsWithRep { sc = repScalars + sc }
                    func str(_ a: ArraySlice<Unicode.Scalar>) -> String { var v = String.UnicodeScalarView(); v.append(contentsOf: a); return String(v) }
                    if !split || repScalars.isEmpty { next.append((str(sc[...]), first)); continue }
                    // split on the replacement, which starts the next piece (MergedWithNext)
                    var pieceStart = 0, i = 0
                    var isFirst = first
                    while i < sc.count {
                        if i + repScalars.count <= sc.count && Array(sc[i..<(i + repScalars.count)]) == repScalars {
                            if i > pieceStart { next.append((str(sc[pieceStart..<i]), isFirst)); isFirst = false }
                            pieceStart = i
                            i += repScalars.count
                        } else { i += 1 }
                    }
                    if pieceStart < sc.count { next.append((str(sc[pieceStart...]), isFirst)) }
                }
            }
            words = next
        }
        return words.map(\.0).filter { !$0.isEmpty }
    }

    @inline(__always) static func hash(_ b: ArraySlice<UInt8>) -> UInt64 {
        var h: UInt64 = 0xcbf29ce484222325
        for x in b { h = (h ^ UInt64(x)) &* 0x100000001b3 }
        return h
    }

    /// Viterbi over the UTF-8 bytes of one pre-token, as `tokenizers`' Unigram `encode_optimized`:
    /// candidates are visited by start position, then by length; a later candidate replaces the
    /// best path into a position only with a strictly higher score. A character no piece covers
    /// alone gets the unknown token (score minScore - 10); runs of unknowns are fused.
    func segment(_ word: String) -> [Int] {
        let bytes = Array(word.utf8)
        let n = bytes.count
        if n == 0 { return [] }
        var bestScore = [Double](repeating: 0, count: n + 1)
        var bestStart = [Int](repeating: -1, count: n + 1)
        var bestId = [Int](repeating: -1, count: n + 1)
        let unkScore = minScore - UnigramTokenizer.unkPenalty
        var start = 0
        while start < n {
            let here = bestScore[start]
            let lead = bytes[start]
            let charLen = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
            var hasSingle = false
            var h: UInt64 = 0xcbf29ce484222325
            var end = start
            while end < n && end - start < maxPieceBytes {
                h = (h ^ UInt64(bytes[end])) &* 0x100000001b3
                end += 1
                guard let ids = lookup[h] else { continue }
                for id32 in ids {
                    let id = Int(id32)
                    let pbytes = pieceBytes[id]
                    guard pbytes.count == end - start, pbytes.elementsEqual(bytes[start..<end]) else { continue }
                    // the first vocab entry with this text is the one tokenizers' token_to_ids holds
                    guard tokenToId[pbytes] == id else { continue }
                    let cand = pieces[id].score + here
                    if bestStart[end] < 0 || cand > bestScore[end] {
                        bestScore[end] = cand; bestStart[end] = start; bestId[end] = id
                    }
                    if end - start == charLen { hasSingle = true }
                }
            }
            if !hasSingle {
                let e = min(n, start + charLen)
                let cand = unkScore + here
                if bestStart[e] < 0 || cand > bestScore[e] {
                    bestScore[e] = cand; bestStart[e] = start; bestId[e] = unkId
                }
            }
            start += charLen
        }
        // backtrack, fusing runs of unknown tokens (fuse_unk)
        var out: [Int] = []
        var unkRun: [UInt8]? = nil
        var e = n
        var rev: [(Int, Int, Int)] = []  // (start, end, id)
        while e > 0 {
            let s = bestStart[e]
            if s < 0 { return [unkId] }   // unreachable: every character has a node
            rev.append((s, e, bestId[e]))
            e = s
        }
        for (s, e, id) in rev.reversed() {
            if id == unkId {
                unkRun = (unkRun ?? []) + bytes[s..<e]
            } else {
                if let run = unkRun { out.append(tokenToId[run] ?? unkId); unkRun = nil }
                out.append(id)
            }
        }
        if let run = unkRun { out.append(tokenToId[run] ?? unkId) }
        return out
    }

    /// Joins pieces back into text (Metaspace decoding): ▁ becomes a space, the leading one is dropped.
    public func decode(_ ids: [Int], skipSpecial: Bool = true) -> String {
        let specials = Set(added.map(\.id))
        var s = ""
        for id in ids where id >= 0 && id < pieces.count {
            if skipSpecial && specials.contains(id) { continue }
            s += pieces[id].text
        }
        s = s.replacingOccurrences(of: "\u{2581}", with: " ")
        if s.hasPrefix(" ") { s.removeFirst() }
        return s
    }
}
