import Foundation

/// A JSON value whose objects keep their keys in order and byte for byte.
///
/// Foundation's `JSONSerialization` returns dictionaries keyed by `String`, and Swift strings
/// compare by canonical equivalence, so a vocabulary holding both "é" (U+00E9) and "e\u{301}"
/// loses one of them (the real Gemma 3 vocabulary has 434 such groups). This parser never hashes keys.
indirect enum TokenizerJSON {
    case object([(key: String, value: TokenizerJSON)])
    case array([TokenizerJSON])
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case null

    subscript(_ key: String) -> TokenizerJSON? {
        guard case .object(let kv) = self else { return nil }
        let k = Array(key.utf8)
        return kv.first { Array($0.key.utf8) == k }?.value
    }
    var string: String? { if case .string(let s) = self { return s }; return nil }
    var int: Int? { if case .int(let i) = self { return i }; return nil }
    var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    var array: [TokenizerJSON]? { if case .array(let a) = self { return a }; return nil }
    var object: [(key: String, value: TokenizerJSON)]? { if case .object(let o) = self { return o }; return nil }
    var isNull: Bool { if case .null = self { return true }; return false }

    struct ParseError: Error { let offset: Int; let message: String }

    static func parse(_ data: Data) throws -> TokenizerJSON {
        let bytes = [UInt8](data)
        return try bytes.withUnsafeBufferPointer { buf in
            var p = Parser(b: buf)
            p.skipSpace()
            let v = try p.value(depth: 0)
            p.skipSpace()
            guard p.i == buf.count else { throw ParseError(offset: p.i, message: "trailing characters") }
            return v
        }
    }

    struct Parser {
        let b: UnsafeBufferPointer<UInt8>
        var i = 0

        mutating func skipSpace() {
            while i < b.count, b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09 { i += 1 }
        }
        func err(_ m: String) -> ParseError { ParseError(offset: i, message: m) }

        mutating func expect(_ c: UInt8) throws {
            skipSpace()
            guard i < b.count, b[i] == c else { throw err("expected \"\(Character(UnicodeScalar(c)))\"") }
            i += 1
        }

        mutating func value(depth: Int) throws -> TokenizerJSON {
            guard depth < 64 else { throw err("nested too deep") }
            skipSpace()
            guard i < b.count else { throw err("unexpected end") }
            switch b[i] {
            case 0x7B: // {
                i += 1
                var kv: [(key: String, value: TokenizerJSON)] = []
                skipSpace()
                if i < b.count, b[i] == 0x7D { i += 1; return .object(kv) }
                while true {
                    skipSpace()
                    guard i < b.count, b[i] == 0x22 else { throw err("expected a key") }
                    let k = try string()
                    try expect(0x3A)
                    kv.append((k, try value(depth: depth + 1)))
                    skipSpace()
                    guard i < b.count else { throw err("unexpected end in object") }
                    if b[i] == 0x2C { i += 1; continue }
                    if b[i] == 0x7D { i += 1; return .object(kv) }
                    throw err("expected , or }")
                }
            case 0x5B: // [
                i += 1
                var a: [TokenizerJSON] = []
                skipSpace()
                if i < b.count, b[i] == 0x5D { i += 1; return .array(a) }
                while true {
                    a.append(try value(depth: depth + 1))
                    skipSpace()
                    guard i < b.count else { throw err("unexpected end in array") }
                    if b[i] == 0x2C { i += 1; continue }
                    if b[i] == 0x5D { i += 1; return .array(a) }
                    throw err("expected , or ]")
                }
            case 0x22: return .string(try string())
            case 0x74: try literal("true"); return .bool(true)
            case 0x66: try literal("false"); return .bool(false)
            case 0x6E: try literal("null"); return .null
            default: return try number()
            }
        }

        mutating func literal(_ s: String) throws {
            for c in s.utf8 {
                guard i < b.count, b[i] == c else { throw err("bad literal") }
                i += 1
            }
        }

        mutating func number() throws -> TokenizerJSON {
            let start = i
            while i < b.count, (0x30...0x39).contains(b[i]) || b[i] == 0x2D || b[i] == 0x2B || b[i] == 0x2E || b[i] == 0x65 || b[i] == 0x45 { i += 1 }
            guard i > start else { throw err("unexpected character") }
            let s = String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
            if let n = Int(s) { return .int(n) }
            if let d = Double(s) { return .double(d) }
            throw ParseError(offset: start, message: "bad number \(s)")
        }

        mutating func hex4() throws -> UInt32 {
            guard i + 4 <= b.count else { throw err("short \\u escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = b[i]; i += 1
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: throw err("bad \\u escape")
                }
                v = v << 4 | d
            }
            return v
        }

        mutating func string() throws -> String {
            i += 1  // opening quote
            var out: [UInt8] = []
            while true {
                guard i < b.count else { throw err("unterminated string") }
                let c = b[i]
                if c == 0x22 { i += 1; break }
                if c != 0x5C { out.append(c); i += 1; continue }
                i += 1
                guard i < b.count else { throw err("unterminated escape") }
                let e = b[i]; i += 1
                switch e {
                case 0x22: out.append(0x22)
                case 0x5C: out.append(0x5C)
                case 0x2F: out.append(0x2F)
                case 0x62: out.append(0x08)
                case 0x66: out.append(0x0C)
                case 0x6E: out.append(0x0A)
                case 0x72: out.append(0x0D)
                case 0x74: out.append(0x09)
                case 0x75:
                    var u = try hex4()
                    if (0xD800..<0xDC00).contains(u) {
                        guard i + 6 <= b.count, b[i] == 0x5C, b[i + 1] == 0x75 else { throw err("lone surrogate") }
                        i += 2
                        let lo = try hex4()
                        guard (0xDC00..<0xE000).contains(lo) else { throw err("bad surrogate pair") }
                        u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    guard let scalar = UnicodeScalar(u) else { throw err("invalid code point") }
                    out += Array(String(Character(scalar)).utf8)
                default: throw err("bad escape")
                }
            }
            guard let s = String(validating: out, as: UTF8.self) else { throw err("string is not UTF-8") }
            return s
        }
    }
}
