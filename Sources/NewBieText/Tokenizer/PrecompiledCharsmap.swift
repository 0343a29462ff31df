import Foundation

/// Errors while reading or running a tokenizer. The message names the file or the field at fault.
public struct UnigramTokenizerError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// SentencePiece's `precompiled_charsmap`: a Darts-clone double-array trie ("XCDA") over UTF-8 byte
/// strings whose values are byte offsets into a blob of NUL-terminated replacement strings.
///
/// Layout: `u32 LE trieBytes`, then `trieBytes / 4` little-endian u32 units, then the replacement
/// blob. Each unit packs: bit 8 = has a leaf, bits 0-7 (+ bit 31) = label, offset =
/// `(unit >> 10) << ((unit & (1 << 9)) >> 6)`; a leaf unit's low 31 bits are the value.
public struct PrecompiledCharsmap: Sendable {
    public let units: [UInt32]
    public let replacements: [UInt8]

    public init(bytes: [UInt8]) throws {
        guard bytes.count >= 4 else { throw UnigramTokenizerError("precompiled_charsmap: \(bytes.count) bytes, too short for its header") }
        let trieBytes = Int(UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24)
        guard trieBytes % 4 == 0, trieBytes > 0, 4 + trieBytes <= bytes.count else {
            throw UnigramTokenizerError("precompiled_charsmap: trie size \(trieBytes) does not fit the \(bytes.count)-byte blob")
        }
        var u = [UInt32](repeating: 0, count: trieBytes / 4)
        for i in 0..<u.count {
            let p = 4 + 4 * i
            u[i] = UInt32(bytes[p]) | UInt32(bytes[p + 1]) << 8 | UInt32(bytes[p + 2]) << 16 | UInt32(bytes[p + 3]) << 24
        }
        units = u
        replacements = Array(bytes[(4 + trieBytes)...])
        // every value must point inside the replacement blob
        if String(decoding: replacements, as: UTF8.self).utf8.count != replacements.count {
            throw UnigramTokenizerError("precompiled_charsmap: the replacement strings are not valid UTF-8")
        }
    }

    public init(base64: String) throws {
        guard let d = Data(base64Encoded: base64) else { throw UnigramTokenizerError("precompiled_charsmap is not valid base64") }
        try self.init(bytes: [UInt8](d))
    }

    @inline(__always) static func hasLeaf(_ u: UInt32) -> Bool { (u >> 8) & 1 == 1 }
    @inline(__always) static func value(_ u: UInt32) -> Int { Int(u & ((1 << 31) - 1)) }
    @inline(__always) static func label(_ u: UInt32) -> UInt32 { u & ((1 << 31) | 0xFF) }
    @inline(__always) static func offset(_ u: UInt32) -> Int { Int((u >> 10) << ((u & (1 << 9)) >> 6)) }

    /// Every key of the trie that is a prefix of `key`, shortest first, as (length in bytes, value).
    public func prefixMatches<C: Collection>(_ key: C) -> [(length: Int, value: Int)] where C.Element == UInt8 {
        var out: [(Int, Int)] = []
        walk(key) { out.append(($0, $1)) }
        return out
    }

    /// The longest key of the trie that is a prefix of `key`.
    public func longestMatch<C: Collection>(_ key: C) -> (length: Int, value: Int)? where C.Element == UInt8 {
        var best: (Int, Int)? = nil
        walk(key) { best = ($0, $1) }
        return best
    }

    /// The shortest key of the trie that is a prefix of `key`.
    public func shortestMatch<C: Collection>(_ key: C) -> (length: Int, value: Int)? where C.Element == UInt8 {
        var best: (Int, Int)? = nil
        walk(key) { if best == nil { best = ($0, $1) } }
        return best
    }

    private func walk<C: Collection>(_ key: C, _ found: (Int, Int) -> Void) where C.Element == UInt8 {
        guard !units.isEmpty else { return }
        var pos = PrecompiledCharsmap.offset(units[0])
        var n = 0
        for c in key {
            if c == 0 { return }
            n += 1
            pos ^= Int(c)
            guard pos >= 0 && pos < units.count else { return }
            let unit = units[pos]
            if PrecompiledCharsmap.label(unit) != UInt32(c) { return }
            pos ^= PrecompiledCharsmap.offset(unit)
            guard pos >= 0 && pos < units.count else { return }
            if PrecompiledCharsmap.hasLeaf(unit) { found(n, PrecompiledCharsmap.value(units[pos])) }
        }
    }

    /// The NUL-terminated replacement string starting at byte `value` of the blob.
    public func replacement(at value: Int) -> [UInt8] {
        guard value >= 0 && value <= replacements.count else { return [] }
        var end = value
        while end < replacements.count && replacements[end] != 0 { end += 1 }
        return Array(replacements[value..<end])
    }

    /// How a string is rewritten with the charsmap.
    public enum Mode: Sendable {
        /// HF `tokenizers` (0.23): per extended grapheme cluster; a cluster under 6 bytes with any
        /// match is replaced as a whole by the replacement of its *shortest* matching prefix,
        /// otherwise each code point is looked up alone. This is what a tokenizer.json pipeline does.
        case huggingFace
        /// SentencePiece's own normalizer: at each position the longest matching key is replaced and
        /// only its bytes are consumed; without a match one UTF-8 character is copied.
        case sentencePiece
    }

    public func normalize(_ text: String, mode: Mode = .huggingFace) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        switch mode {
        case .huggingFace:
            for ch in text {
                let bytes = Array(String(ch).utf8)
                if bytes.count < 6, let m = shortestMatch(bytes) {
                    out += replacement(at: m.value)
                    continue
                }
                for scalar in String(ch).unicodeScalars {
                    let sb = Array(String(scalar).utf8)
                    if let m = longestMatch(sb), m.length == sb.count {
                        out += replacement(at: m.value)
                    } else {
                        out += sb
                    }
                }
            }
        case .sentencePiece:
            let bytes = Array(text.utf8)
            var i = 0
            while i < bytes.count {
                if let m = longestMatch(bytes[i...]) {
                    out += replacement(at: m.value)
                    i += m.length
                } else {
                    var n = 1
                    let b = bytes[i]
                    if b >= 0xF0 { n = 4 } else if b >= 0xE0 { n = 3 } else if b >= 0xC0 { n = 2 }
                    n = min(n, bytes.count - i)
                    out += bytes[i..<(i + n)]
                    i += n
                }
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
