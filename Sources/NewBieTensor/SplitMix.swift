/// A small seeded generator (SplitMix64) for check, test and benchmark inputs: uniform floats in
/// [-1, 1). Not the noise of a generation (that is `torch.randn`-exact, in NewBieDiffusion).
public struct SplitMix: RandomNumberGenerator, Sendable {
    public var state: UInt64
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
