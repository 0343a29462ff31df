import Foundation
import NewBieTensor

/// A SentencePiece-style BPE tokenizer with byte fallback (Gemma's), following the pipeline of the
/// Hugging Face `tokenizers` library: added tokens are cut out of the raw text first, each piece
/// between them is normalized (spaces become "▁"), pre-tokenized (Gemma's split on " " is a no-op
/// after that normalization, but is honoured), and run through BPE; `<bos>` is prepended.
///
/// Built from a `tokenizer.json` (explicit merges) or from GGUF metadata (merges implied by the
/// vocabulary order, as transformers rebuilds them). Strings are compared and hashed by their
/// UTF-8 bytes, never by Swift's canonical equivalence, so "é" and "e\u{301}" stay distinct tokens.
public final class SentencePieceBPETokenizer: @unchecked Sendable {
    /// Token strings by id, as the model spells them.
    public let vocab: [String]
    let ids: [ByteKey: Int]
    let merges: Merges
    let byteFallback: Bool
    let ignoreMerges: Bool
    let byteIds: [Int]?
    let normalizers: [SentencePieceBPENormalizer]
    let split: SentencePieceBPESplit?
    let added: AddedTokenTrie
    /// Ids of added tokens marked special (dropped by `decode(skipSpecialTokens: true)`).
    public let specialIds: Set<Int>
    /// Strings of added tokens by id (they may be absent from `vocab`'s tail).
    let addedContent: [Int: String]

    public let bosId: Int?
    public let eosId: Int?
    public let padId: Int
    public let unkId: Int?
    public let addBOS: Bool
    public let addEOS: Bool

    /// How merges are ranked.
    enum Merges {
        /// From tokenizer.json: (left id, right id) -> (rank, merged id).
        case explicit([UInt64: (rank: Int, id: Int)])
        /// Implied by the vocabulary (GGUF): a pair merges when the concatenation is a token; the
        /// earlier that token is in the vocabulary the sooner, ties broken by the longer left
        /// piece (transformers' `generate_merges` with Gemma's position scores).
        case byVocabOrder
    }

    init(vocab: [String], merges: Merges, byteFallback: Bool, ignoreMerges: Bool, unkId: Int?,
         normalizers: [SentencePieceBPENormalizer], split: SentencePieceBPESplit?,
         addedTokens: [(content: String, id: Int, special: Bool)],
         bosId: Int?, eosId: Int?, padId: Int, addBOS: Bool, addEOS: Bool) {
        self.vocab = vocab
        var ids: [ByteKey: Int] = [:]
        ids.reserveCapacity(vocab.count)
        for (i, t) in vocab.enumerated() { ids[ByteKey(t)] = i }  // a repeated spelling maps to its last id
        self.ids = ids
        self.merges = merges
        self.byteFallback = byteFallback
        self.ignoreMerges = ignoreMerges
        self.unkId = unkId
        var bytes: [Int] = []
        for b in 0..<256 {
            guard let id = ids[ByteKey(SentencePieceBPETokenizer.byteToken(UInt8(b)))] else { break }
            bytes.append(id)
        }
        byteIds = bytes.count == 256 ? bytes : nil
        self.normalizers = normalizers
        self.split = split
        added = AddedTokenTrie(addedTokens.map { ($0.content, $0.id) })
        specialIds = Set(addedTokens.filter(\.special).map(\.id))
        var content: [Int: String] = [:]
        for t in addedTokens { content[t.id] = t.content }
        addedContent = content
        self.bosId = bosId; self.eosId = eosId; self.padId = padId
        self.addBOS = addBOS; self.addEOS = addEOS
    }

    public var vocabSize: Int { Swift.max(vocab.count, (addedContent.keys.max() ?? -1) + 1) }

    /// "<0x0A>": the spelling of byte-fallback tokens.
    static func byteToken(_ b: UInt8) -> String {
        let hex = Array("0123456789ABCDEF")
        return "<0x\(hex[Int(b >> 4)])\(hex[Int(b & 15)])>"
    }

    public func id(of token: String) -> Int? { ids[ByteKey(token)] }

    /// The string of a token id (added tokens included).
    public func token(_ id: Int) -> String? {
        if let a = addedContent[id] { return a }
        return id >= 0 && id < vocab.count ? vocab[id] : nil
    }

    // MARK: - encoding

    /// Token ids of `text`; with `addSpecialTokens`, `<bos>` first (and `<eos>` last if configured).
    public func encode(_ text: String, addSpecialTokens: Bool = true) -> [Int] {
        var out: [Int] = []
        if addSpecialTokens && addBOS, let b = bosId { out.append(b) }
        for segment in added.split(text) {
            switch segment {
            case .added(let id): out.append(id)
            case .text(let s): encodeOrdinary(s, into: &out)
            }
        }
        if addSpecialTokens && addEOS, let e = eosId { out.append(e) }
        return out
    }

    /// Number of special tokens `encode` adds around the text.
    public var addedSpecialCount: Int { (addBOS && bosId != nil ? 1 : 0) + (addEOS && eosId != nil ? 1 : 0) }

    func encodeOrdinary(_ text: String, into out: inout [Int]) {
        if text.isEmpty { return }
        var s = text
        for n in normalizers { s = n.apply(s) }
        let words = split.map { $0.apply(s) } ?? [s]
        for w in words where !w.isEmpty { bpe(w, into: &out) }
    }

    struct Symbol { var id: Int; var prev: Int; var next: Int; var alive: Bool }

    /// The pair's rank and merged id, or nil when the pair does not merge.
    @inline(__always) func merge(_ a: Int, _ b: Int) -> (rank: Int, id: Int)? {
        switch merges {
        case .explicit(let table):
            return table[UInt64(a) << 32 | UInt64(b)]
        case .byVocabOrder:
            guard let sa = token(a), let sb = token(b) else { return nil }
            var key = Array(sa.utf8)
            key.append(contentsOf: sb.utf8)
            guard let m = ids[ByteKey(bytes: key)] else { return nil }
            let leftLength = Swift.min(sa.unicodeScalars.count, 1023)
            return (m * 1024 + (1023 - leftLength), m)
        }
    }

    func bpe(_ word: String, into out: inout [Int]) {
        if ignoreMerges, let id = ids[ByteKey(word)] { out.append(id); return }
        var symbols: [Symbol] = []
        var lastWasUnk = false
        for scalar in word.unicodeScalars {
            let s = String(scalar)
            if let id = ids[ByteKey(s)] {
                symbols.append(Symbol(id: id, prev: symbols.count - 1, next: symbols.count + 1, alive: true))
                lastWasUnk = false
            } else if byteFallback, let bytes = byteIds {
                for b in s.utf8 {
                    symbols.append(Symbol(id: bytes[Int(b)], prev: symbols.count - 1, next: symbols.count + 1, alive: true))
                }
                lastWasUnk = false
            } else if let u = unkId {
                if !lastWasUnk { symbols.append(Symbol(id: u, prev: symbols.count - 1, next: symbols.count + 1, alive: true)) }
                lastWasUnk = true  // fuse_unk
            }
        }
        if symbols.isEmpty { return }
        symbols[symbols.count - 1].next = -1
        // lazy priority queue: lowest rank first, then leftmost position
        var heap = MergeHeap()
        for i in 0..<(symbols.count - 1) {
            if let m = merge(symbols[i].id, symbols[i + 1].id) { heap.push(.init(rank: m.rank, pos: i, id: m.id)) }
        }
        while let top = heap.pop() {
            let p = top.pos
            guard symbols[p].alive, symbols[p].next >= 0 else { continue }
            let n = symbols[p].next
            guard let m = merge(symbols[p].id, symbols[n].id), m.id == top.id else { continue }
            symbols[p].id = top.id
            symbols[n].alive = false
            let nn = symbols[n].next
            symbols[p].next = nn
            if nn >= 0 { symbols[nn].prev = p }
            let pp = symbols[p].prev
            if pp >= 0, let m2 = merge(symbols[pp].id, symbols[p].id) { heap.push(.init(rank: m2.rank, pos: pp, id: m2.id)) }
            if nn >= 0, let m3 = merge(symbols[p].id, symbols[nn].id) { heap.push(.init(rank: m3.rank, pos: p, id: m3.id)) }
        }
        var i = 0
        while i >= 0 && i < symbols.count {
            out.append(symbols[i].id)
            i = symbols[i].next
        }
    }

    // MARK: - batches

    /// Encodes several texts the way NewBie calls Gemma: `<bos>` + text, truncated to `maxLength`
    /// tokens (special tokens included), right-padded with `padId` to the longest sequence rounded
    /// up to a multiple of `padToMultipleOf`; mask 1 for real tokens, 0 for padding.
    public func encodeBatch(_ texts: [String], maxLength: Int? = 512, padToMultipleOf: Int? = 8) -> SentencePieceBPEBatch {
        var seqs: [[Int]] = texts.map { text in
            var body = encode(text, addSpecialTokens: false)
            if let m = maxLength { body = Array(body.prefix(Swift.max(0, m - addedSpecialCount))) }
            var ids: [Int] = []
            if addBOS, let b = bosId { ids.append(b) }
            ids += body
            if addEOS, let e = eosId { ids.append(e) }
            return ids
        }
        var length = seqs.map(\.count).max() ?? 0
        if let k = padToMultipleOf, k > 1, length % k != 0 { length += k - length % k }
        var mask: [[Int]] = []
        for i in seqs.indices {
            let n = seqs[i].count
            mask.append([Int](repeating: 1, count: n) + [Int](repeating: 0, count: length - n))
            seqs[i] += [Int](repeating: padId, count: length - n)
        }
        return SentencePieceBPEBatch(ids: seqs, mask: mask)
    }

    // MARK: - decoding

    /// Text of `ids` (Gemma's decoder: "▁" -> " ", `<0xXX>` runs -> UTF-8, invalid bytes -> U+FFFD each).
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var out = ""
        var pending: [UInt8] = []
        func flush() {
            if pending.isEmpty { return }
            if let s = String(validating: pending, as: UTF8.self) { out += s }
            else { out += String(repeating: "\u{FFFD}", count: pending.count) }
            pending.removeAll()
        }
        for id in ids {
            if skipSpecialTokens && specialIds.contains(id) { continue }
            guard let t = token(id) else { continue }
            if let b = SentencePieceBPETokenizer.parseByteToken(t) { pending.append(b); continue }
            flush()
            out += t.replacingOccurrences(of: "\u{2581}", with: " ")
        }
        flush()
        return out
    }

    static func parseByteToken(_ t: String) -> UInt8? {
        let u = Array(t.utf8)
        guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x41...0x46: return c - 0x41 + 10
            case 0x61...0x66: return c - 0x61 + 10
            default: return nil
            }
        }
        guard let h = hex(u[3]), let l = hex(u[4]) else { return nil }
        return h << 4 | l
    }
}

/// A batch of token ids with its attention mask, both [batch][length].
public struct SentencePieceBPEBatch: Sendable, Equatable {
    public let ids: [[Int]]
    public let mask: [[Int]]
    public var batch: Int { ids.count }
    public var length: Int { ids.first?.count ?? 0 }
    /// Ids as an i32 tensor [B, L].
    public func idsTensor(device: Device = .cpu) -> Tensor {
        Tensor(ints: ids.flatMap { $0.map { Int32($0) } }, shape: [batch, length], device: device)
    }
    /// Mask as an i32 tensor [B, L] (1 = real token).
    public func maskTensor(device: Device = .cpu) -> Tensor {
        Tensor(ints: mask.flatMap { $0.map { Int32($0) } }, shape: [batch, length], device: device)
    }
}

/// A string hashed and compared by its UTF-8 bytes (Swift's `String` equality is canonical
/// equivalence, which would merge distinct vocabulary entries).
struct ByteKey: Hashable {
    let bytes: [UInt8]
    init(_ s: String) { bytes = Array(s.utf8) }
    init(bytes: [UInt8]) { self.bytes = bytes }
}

/// Normalizers of the tokenizer.json kinds Gemma uses.
enum SentencePieceBPENormalizer {
    case replace(String, String)
    case prepend(String)

    func apply(_ s: String) -> String {
        switch self {
        case .replace(let a, let b):
            // byte-wise replacement (no canonical-equivalence matching)
            let from = Array(a.utf8), to = Array(b.utf8)
            let u = Array(s.utf8)
            guard !from.isEmpty, u.count >= from.count else { return s }
            var out: [UInt8] = []
            out.reserveCapacity(u.count)
            var i = 0
            while i < u.count {
                if i + from.count <= u.count && u[i] == from[0] && Array(u[i..<(i + from.count)]) == from {
                    out += to; i += from.count
                } else { out.append(u[i]); i += 1 }
            }
            return String(decoding: out, as: UTF8.self)
        case .prepend(let p):
            return s.isEmpty ? s : p + s
        }
    }
}

/// tokenizers' `Split` pre-tokenizer with a plain string pattern.
struct SentencePieceBPESplit {
    enum Behavior: String { case removed, isolated, mergedWithPrevious, mergedWithNext, contiguous }
    let pattern: [UInt8]
    let behavior: Behavior

    func apply(_ s: String) -> [String] {
        let u = Array(s.utf8)
        guard !pattern.isEmpty else { return [s] }
        // (range, isMatch) pieces
        var pieces: [(Range<Int>, Bool)] = []
        var start = 0, i = 0
        while i + pattern.count <= u.count {
            if Array(u[i..<(i + pattern.count)]) == pattern {
                if start < i { pieces.append((start..<i, false)) }
                pieces.append((i..<(i + pattern.count), true))
                i += pattern.count; start = i
            } else { i += 1 }
        }
        if start < u.count { pieces.append((start..<u.count, false)) }
        var out: [Range<Int>] = []
        switch behavior {
        case .removed: out = pieces.filter { !$0.1 }.map(\.0)
        case .isolated: out = pieces.map(\.0)
        case .mergedWithPrevious:
            var prevWasText = false
            for (r, m) in pieces {
                if m && prevWasText, let last = out.last { out[out.count - 1] = last.lowerBound..<r.upperBound }
                else { out.append(r) }
                prevWasText = !m
            }
        case .mergedWithNext:
            var pendingMatch: Range<Int>? = nil
            for (r, m) in pieces {
                if m {
                    if let p = pendingMatch { out.append(p) }
                    pendingMatch = r
                } else if let p = pendingMatch { out.append(p.lowerBound..<r.upperBound); pendingMatch = nil }
                else { out.append(r) }
            }
            if let p = pendingMatch { out.append(p) }
        case .contiguous:
            var prevWasMatch = false
            for (r, m) in pieces {
                if m && prevWasMatch, let last = out.last { out[out.count - 1] = last.lowerBound..<r.upperBound }
                else { out.append(r) }
                prevWasMatch = m
            }
        }
        return out.map { String(decoding: u[$0], as: UTF8.self) }
    }
}

/// Added tokens matched in raw text, leftmost first and longest at that position (the
/// `tokenizers` AddedVocabulary for non-normalized tokens).
struct AddedTokenTrie {
    enum Segment: Equatable { case text(String), added(Int) }
    private var children: [[UInt8: Int]] = [[:]]
    private var terminal: [Int?] = [nil]

    init(_ tokens: [(String, Int)]) {
        for (content, id) in tokens where !content.isEmpty {
            var node = 0
            for b in content.utf8 {
                if let c = children[node][b] { node = c } else {
                    children.append([:]); terminal.append(nil)
                    children[node][b] = children.count - 1
                    node = children.count - 1
                }
            }
            terminal[node] = id
        }
    }

    var isEmpty: Bool { children[0].isEmpty }

    func split(_ text: String) -> [Segment] {
        if isEmpty { return text.isEmpty ? [] : [.text(text)] }
        let u = Array(text.utf8)
        var out: [Segment] = []
        var textStart = 0, i = 0
        while i < u.count {
            var node = 0, j = i
            var best: (end: Int, id: Int)? = nil
            while j < u.count, let c = children[node][u[j]] {
                node = c; j += 1
                if let id = terminal[node] { best = (j, id) }
            }
            if let b = best {
                if textStart < i { out.append(.text(String(decoding: u[textStart..<i], as: UTF8.self))) }
                out.append(.added(b.id))
                i = b.end; textStart = i
            } else { i += 1 }
        }
        if textStart < u.count { out.append(.text(String(decoding: u[textStart..<u.count], as: UTF8.self))) }
        return out
    }
}

/// A binary min-heap of candidate merges ordered by (rank, position).
struct MergeHeap {
    struct Item { let rank: Int; let pos: Int; let id: Int }
    private var items: [Item] = []

    @inline(__always) private func less(_ a: Item, _ b: Item) -> Bool {
        a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos
    }

    mutating func push(_ x: Item) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if less(items[i], items[p]) { items.swapAt(i, p); i = p } else { break }
        }
    }

    mutating func pop() -> Item? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < items.count && less(items[l], items[m]) { m = l }
                if r < items.count && less(items[r], items[m]) { m = r }
                if m == i { break }
                items.swapAt(i, m); i = m
            }
        }
        return top
    }
}
