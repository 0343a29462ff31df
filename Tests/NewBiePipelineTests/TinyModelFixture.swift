import Foundation
import NewBieTestSupport
import NewBieHarness

/// The tiny random NewBie the pipeline tests run (one temporary folder per name and process).
enum TinyFixture {
    static func write(_ name: String, seed: UInt64) throws -> String { try TinyModel.writeTemporary(name, seed: seed, in: TestScratch.root) }
}
