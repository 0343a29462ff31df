import Foundation
import NewBieTensor

/// Paths of committed reference fixtures (written by the scripts in tools/reference/).
public enum Fixtures {
    /// The repository's `Tests/Fixtures` folder.
    public static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    public static func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }
    public static func path(_ relative: String) -> String { url(relative).path }
}

/// Relative L2 error ||a - b|| / ||b||, accumulated in Double. Any NaN, infinity mismatch or
/// length mismatch gives +infinity, so a comparison with a tolerance can never pass on NaN.
public func relativeL2(_ a: [Float], _ b: [Float]) -> Double {
    guard a.count == b.count else { return .infinity }
    var num = 0.0, den = 0.0
    for i in 0..<a.count {
        let x = Double(a[i]), y = Double(b[i])
        if x.isNaN || y.isNaN { return .infinity }
        if x.isInfinite || y.isInfinite {
            if x == y { continue }
            return .infinity
        }
        num += (x - y) * (x - y)
        den += y * y
    }
    if den == 0 { return num == 0 ? 0 : .infinity }
    return (num / den).squareRoot()
}

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

/// Deterministic pseudo-random floats (SplitMix64 -> uniform in [-1, 1)) for tests that need
/// fresh non-zero inputs without a fixture.
public struct TestRandom {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    public mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) * 2 - 1 }
    public mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in uniform() } }
}
