import Foundation
import NewBieHarness
import NewBieTestSupport

/// The tiny random NewBie the pipeline tests run, written under a per-process temporary folder
/// with the committed small tokenizers.
enum TinyFixture {
    static func write(_ name: String, seed: UInt64) throws -> String {
        let d = NSTemporaryDirectory() + "newbie-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: d)
        try TinyModel.write(to: d, seed: seed, gemmaTokenizer: Fixtures.path("gemma/small_tokenizer.json"),
                            jinaTokenizer: Fixtures.path("jina/tokenizer.json"))
        return d
    }
}
