import Foundation
import XCTest
@testable import NewBieText
import NewBieTestSupport

/// Parity of the XLM-R Unigram tokenizer with the HF `tokenizers` library on a tokenizer trained by
/// tools/reference/make_jina_fixtures.py (real SentencePiece nmt_nfkc precompiled_charsmap).
final class UnigramTokenizerTests: XCTestCase {
    static func cases() throws -> [String: Any] {
        let data = try Data(contentsOf: Fixtures.url("jina/tokenizer_cases.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func testCorpusMatchesTokenizersLibrary() throws {
        let cases = try Self.cases()
        let corpus = try XCTUnwrap(cases["corpus"] as? [[String: Any]])
        XCTAssertGreaterThan(corpus.count, 20)
        for (file, key) in [("jina/tokenizer.json", "ids"), ("jina/tokenizer_metaspace.json", "ids_metaspace")] {
            let tok = try UnigramTokenizer(path: Fixtures.path(file))
            XCTAssertEqual(tok.pieces.count, cases["vocab_size"] as? Int)
            var mismatches = 0, unknowns = 0
            for c in corpus {
                let text = try XCTUnwrap(c["text"] as? String)
                let want = try XCTUnwrap(c[key] as? [Int])
                let got = tok.encode(text)
                unknowns += got.filter { $0 == tok.unkId }.count
                if got != want {
                    mismatches += 1
                    XCTFail("\(file) \(text.debugDescription):\n  got  \(got)\n  want \(want)\n  tokens \(tok.tokens(text))")
                }
            }
            XCTAssertEqual(mismatches, 0)
            XCTAssertGreaterThan(unknowns, 0, "the corpus should exercise the unknown token")
        }
    }

    func testEmptyCaptionIsBosEos() throws {
        let tok = try UnigramTokenizer(path: Fixtures.path("jina/tokenizer.json"))
        XCTAssertEqual(tok.encode(""), [0, 2])
    }

    func testPaddedAndTruncatedBatches() throws {
        let cases = try Self.cases()
        let tok = try UnigramTokenizer(path: Fixtures.path("jina/tokenizer.json"))
        for (key, maxLen) in [("batch_trunc12", Optional(12)), ("batch_longest", nil)] {
            let b = try XCTUnwrap(cases[key] as? [String: Any])
            let texts = try XCTUnwrap(b["texts"] as? [String])
            let got = tok.encodeBatch(texts, maxLength: maxLen)
            XCTAssertEqual(got.ids, b["ids"] as? [[Int]], key)
            XCTAssertEqual(got.mask, b["attention_mask"] as? [[Int]], key)
        }
    }

    func testPrecompiledMatchesTokenizersNormalizer() throws {
        let cases = try Self.cases()
        let tok = try UnigramTokenizer(path: Fixtures.path("jina/tokenizer.json"))
        guard case .precompiled(let map)? = tok.normalizers.first else { return XCTFail("no Precompiled normalizer") }
        XCTAssertGreaterThan(map.units.count, 10_000, "expected the real nmt_nfkc trie")
        let list = try XCTUnwrap(cases["normalize"] as? [[String: String]])
        var changed = 0
        for c in list {
            let text = c["text"]!, want = c["hf"]!
            let got = map.normalize(text, mode: .huggingFace)
            XCTAssertEqual(got, want, text.debugDescription)
            if got != text { changed += 1 }
        }
        XCTAssertGreaterThan(changed, 8, "the normalizer cases should mostly rewrite their input")
    }

    /// SentencePiece's own normalizer (longest match): compared where the text has no whitespace,
    /// so sentencepiece's whitespace handling (dummy prefix "▁") is the only other difference.
    func testPrecompiledLongestMatchMatchesSentencePiece() throws {
        let cases = try Self.cases()
        let tok = try UnigramTokenizer(path: Fixtures.path("jina/tokenizer.json"))
        guard case .precompiled(let map)? = tok.normalizers.first else { return XCTFail("no Precompiled normalizer") }
        let list = try XCTUnwrap(cases["normalize"] as? [[String: String]])
        var compared = 0
        for c in list {
            let text = c["text"]!, want = c["spm"]!
            let spm = map.normalize(text, mode: .sentencePiece)
            if spm.unicodeScalars.contains(where: { $0.properties.isWhitespace }) || text.unicodeScalars.contains(where: { $0.properties.isWhitespace }) { continue }
            XCTAssertEqual("\u{2581}" + spm, want, text.debugDescription)
            compared += 1
        }
        XCTAssertGreaterThan(compared, 8)
        // the two modes differ where a short grapheme has a shorter and a longer match
        XCTAssertEqual(map.normalize("\u{FF21}\u{0301}", mode: .huggingFace), "A")
        XCTAssertEqual(map.normalize("\u{FF21}\u{0301}", mode: .sentencePiece), "\u{00C1}")
    }

    func testTrieLookups() throws {
        let tok = try UnigramTokenizer(path: Fixtures.path("jina/tokenizer.json"))
        guard case .precompiled(let map)? = tok.normalizers.first else { return XCTFail("no Precompiled normalizer") }
        let m = try XCTUnwrap(map.longestMatch(Array("\u{FF21}".utf8)))   // FULLWIDTH A -> A
        XCTAssertEqual(m.length, 3)
        XCTAssertEqual(map.replacement(at: m.value), Array("A".utf8))
        XCTAssertNil(map.longestMatch(Array("a".utf8)))
        let all = map.prefixMatches(Array("A\u{030A}\u{0323}".utf8))
        XCTAssertFalse(all.isEmpty)
        XCTAssertEqual(all.map(\.length), all.map(\.length).sorted(), "shortest first")
    }

    func testRejectsUnsupportedFiles() throws {
        let bpe = #"{"model": {"type": "BPE", "vocab": {}, "merges": []}}"#
        XCTAssertThrowsError(try UnigramTokenizer(json: Data(bpe.utf8))) { e in
            XCTAssertTrue("\(e)".contains("not Unigram"), "\(e)")
        }
        let noUnk = #"{"model": {"type": "Unigram", "vocab": [["a", -1.0]]}}"#
        XCTAssertThrowsError(try UnigramTokenizer(json: Data(noUnk.utf8)))
        XCTAssertThrowsError(try PrecompiledCharsmap(bytes: [8, 0, 0, 0, 1]))
    }
}
