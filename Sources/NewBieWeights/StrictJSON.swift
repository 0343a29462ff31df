import Foundation

/// A small, strict JSON reader for safetensors headers, shard indexes and tokenizer files.
///
/// Foundation's `JSONSerialization` silently keeps one of two duplicate keys, cannot tell `2` from
/// `2.0`, and recurses without a limit, so hostile headers are parsed here instead:
/// - objects keep their key order and reject duplicate keys, comparing keys byte for byte (Swift
///   strings compare by canonical equivalence, which would merge the vocabulary entries "é" and
///   "e\u{301}" of a tokenizer; the real Gemma 3 vocabulary has 434 such groups);
/// - integers that fit in `Int` are kept apart from other numbers (fractions, exponents, huge values);
/// - nesting deeper than `maxDepth` is an error, not a stack overflow;
/// - strings must be valid UTF-8 without raw control characters; `\u` escapes must pair surrogates;
/// - only whitespace may follow the top-level value.
public enum JSONValue: Equatable {
    case object([(key: String, value: JSONValue)])
    case array([JSONValue])
    case string(String)
    /// An integral literal (no fraction, no exponent) that fits in `Int`.
    case integer(Int)
    /// Any other number literal, as written.
    case number(String)
    case bool(Bool)
    case null

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case let (.object(x), .object(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        case let (.array(x), .array(y)): return x == y
        case let (.string(x), .string(y)): return x == y
        case let (.integer(x), .integer(y)): return x == y
        case let (.number(x), .number(y)): return x == y
        case let (.bool(x), .bool(y)): return x == y
        case (.null, .null): return true
        default: return false
        }
    }

    /// Parses a whole document (surrounding whitespace allowed).
    public static func parse(_ data: Data) throws -> JSONValue {
        try data.withUnsafeBytes { try JSONParser.parse($0) }
    }

    /// The member `key` of an object, matched byte for byte (nil for other kinds or a missing key).
    public subscript(_ key: String) -> JSONValue? {
        guard case .object(let kv) = self else { return nil }
        let k = Array(key.utf8)
        return kv.first { $0.key.utf8.elementsEqual(k) }?.value
    }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var int: Int? { if case .integer(let i) = self { return i }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: [JSONValue]? { if case .array(let a) = self { return a }; return nil }
    public var object: [(key: String, value: JSONValue)]? { if case .object(let o) = self { return o }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }

    /// A short name of the value's kind, for error messages.
    var kindName: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .integer, .number: return "a number"
        case .bool: return "a boolean"
        case .null: return "null"
        }
    }

    /// The value rendered back as compact JSON-ish text (for messages and for non-string metadata).
    var text: String {
        switch self {
        case .object(let kv): return "{" + kv.map { "\(JSONWriter.quote($0.key)):\($0.value.text)" }.joined(separator: ",") + "}"
        case .array(let a): return "[" + a.map(\.text).joined(separator: ",") + "]"
        case .string(let s): return JSONWriter.quote(s)
        case .integer(let i): return String(i)
        case .number(let s): return s
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        }
    }
}

public struct JSONSyntaxError: Error, CustomStringConvertible {
    public let message: String
    public let offset: Int
    public var description: String { "\(message) at byte \(offset)" }
}

struct JSONParser {
    static let maxDepth = 128

    private let bytes: UnsafeRawBufferPointer
    private var i = 0

    private init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Parses one JSON value filling `bytes` (surrounding whitespace allowed).
    static func parse(_ bytes: UnsafeRawBufferPointer) throws -> JSONValue {
        var p = JSONParser(bytes)
        p.skipWhitespace()
        let v = try p.value(depth: 0)
        p.skipWhitespace()
        guard p.i == bytes.count else { throw p.fail("unexpected text after the JSON value") }
        return v
    }

    static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try bytes.withUnsafeBytes { try parse($0) }
    }

    private func fail(_ message: String) -> JSONSyntaxError { JSONSyntaxError(message: message, offset: i) }

    private var atEnd: Bool { i >= bytes.count }
    private func peek() -> UInt8? { i < bytes.count ? bytes[i] : nil }

    private mutating func skipWhitespace() {
        while i < bytes.count {
            switch bytes[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    private mutating func expect(_ c: UInt8, _ what: String) throws {
        guard peek() == c else { throw fail(atEnd ? "unexpected end of JSON, expected \(what)" : "expected \(what)") }
        i += 1
    }

    private mutating func value(depth: Int) throws -> JSONValue {
        guard let c = peek() else { throw fail("unexpected end of JSON") }
        switch c {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("unexpected character \(Self.show(c))")
        }
    }

    private static func show(_ c: UInt8) -> String {
        (0x21...0x7E).contains(c) ? "'\(Character(Unicode.Scalar(c)))'" : "byte 0x\(String(c, radix: 16))"
    }

    private mutating func literal(_ word: String) throws {
        for w in word.utf8 {
            guard peek() == w else { throw fail("invalid literal (expected \(word))") }
            i += 1
        }
    }

    private mutating func object(depth: Int) throws -> JSONValue {
        guard depth <= JSONParser.maxDepth else { throw fail("JSON nested deeper than \(JSONParser.maxDepth) levels") }
        i += 1  // {
        var out: [(key: String, value: JSONValue)] = []
        var seen = Set<[UInt8]>()
        skipWhitespace()
        if peek() == UInt8(ascii: "}") { i += 1; return .object(out) }
        while true {
            skipWhitespace()
            guard peek() == UInt8(ascii: "\"") else { throw fail(atEnd ? "unexpected end of JSON in an object" : "expected a string key") }
            let keyStart = i
            let key = try string()
            guard seen.insert(Array(key.utf8)).inserted else {
                throw JSONSyntaxError(message: "duplicate key \(JSONWriter.quote(key))", offset: keyStart)
            }
            skipWhitespace()
            try expect(UInt8(ascii: ":"), "':' after a key")
            skipWhitespace()
            let v = try value(depth: depth)
            out.append((key, v))
            skipWhitespace()
            guard let c = peek() else { throw fail("unexpected end of JSON in an object") }
            i += 1
            if c == UInt8(ascii: "}") { return .object(out) }
            guard c == UInt8(ascii: ",") else { i -= 1; throw fail("expected ',' or '}' in an object") }
        }
    }

    private mutating func array(depth: Int) throws -> JSONValue {
        guard depth <= JSONParser.maxDepth else { throw fail("JSON nested deeper than \(JSONParser.maxDepth) levels") }
        i += 1  // [
        var out: [JSONValue] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "]") { i += 1; return .array(out) }
        while true {
            skipWhitespace()
            out.append(try value(depth: depth))
            skipWhitespace()
            guard let c = peek() else { throw fail("unexpected end of JSON in an array") }
            i += 1
            if c == UInt8(ascii: "]") { return .array(out) }
            guard c == UInt8(ascii: ",") else { i -= 1; throw fail("expected ',' or ']' in an array") }
        }
    }

    private mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count else { throw fail("unexpected end of JSON in a \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[i]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("invalid hex digit in a \\u escape")
            }
            v = v * 16 + d
            i += 1
        }
        return v
    }

    private mutating func string() throws -> String {
        let start = i
        i += 1  // opening quote
        var out: [UInt8] = []
        var runStart = i
        while true {
            guard i < bytes.count else { throw JSONSyntaxError(message: "unterminated string", offset: start) }
            let c = bytes[i]
            if c == UInt8(ascii: "\"") {
                out.append(contentsOf: bytes[runStart..<i])
                i += 1
                break
            }
            if c < 0x20 { throw fail("raw control character \(Self.show(c)) in a string") }
            if c != UInt8(ascii: "\\") { i += 1; continue }
            out.append(contentsOf: bytes[runStart..<i])
            i += 1
            guard let e = peek() else { throw fail("unexpected end of JSON in an escape") }
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5C)
            case UInt8(ascii: "/"): out.append(0x2F)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard peek() == UInt8(ascii: "\\"), i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired surrogate in a \\u escape")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw fail("unpaired surrogate in a \\u escape") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw fail("unpaired surrogate in a \\u escape")
                }
                out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
            default:
                i -= 1
                throw fail("invalid escape \\\(Self.show(e))")
            }
            runStart = i
        }
        guard isValidUTF8(out) else {
            throw JSONSyntaxError(message: "string is not valid UTF-8", offset: start)
        }
        return String(decoding: out, as: UTF8.self)
    }

    private mutating func number() throws -> JSONValue {
        let start = i
        var integral = true
        if peek() == UInt8(ascii: "-") { i += 1 }
        guard let first = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else { throw fail("invalid number") }
        if first == UInt8(ascii: "0") {
            i += 1
        } else {
            while let c = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) { i += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard let c = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) else { throw fail("invalid number (digit expected after '.')") }
            while let c = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) { i += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            integral = false
            i += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { i += 1 }
            guard let c = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) else { throw fail("invalid number (digit expected in exponent)") }
            while let c = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) { i += 1 }
        }
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        if integral, let v = Int(text) { return .integer(v) }
        return .number(text)
    }
}

/// True when `bytes` are well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF).
func isValidUTF8<S: Sequence>(_ bytes: S) -> Bool where S.Element == UInt8 {
    var it = bytes.makeIterator()
    var decoder = UTF8()
    while true {
        switch decoder.decode(&it) {
        case .scalarValue: continue
        case .emptyInput: return true
        case .error: return false
        }
    }
}

/// Writes JSON text (strings escaped so that any Swift string round-trips).
public enum JSONWriter {
    public static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 {
                    let h = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}

/// Numbers for JSON files we write.
public enum JSONNumber {
    /// A Float as the decimal it prints as (1e-06, 0.3611), not its binary expansion
    /// (9.99999997e-07), so config files read the same to every reader.
    public static func decimal(_ f: Float) -> Double { Double("\(f)") ?? Double(f) }

    private static let booleanType = ObjectIdentifier(type(of: NSNumber(value: true) as Any))

    /// Whether a JSONSerialization value is `true`/`false`. `value is Bool` cannot tell: it holds
    /// for the numbers 0 and 1 too, so a config's `"shift_factor": 0` or a seed of 1 would be
    /// taken for a boolean.
    public static func isBoolean(_ value: Any) -> Bool { ObjectIdentifier(type(of: value)) == booleanType }
}
