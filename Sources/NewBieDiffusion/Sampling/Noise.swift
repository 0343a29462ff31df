import Foundation
import NewBieTensor

// Initial noise for the sampler: standard normal values that are a pure function of a seed.
//
// Both generators reproduce PyTorch's CPU `torch.manual_seed(seed); torch.randn(shape)` (float32)
// bit for bit; they differ only in which of torch's two CPU code paths they follow for tensors of
// 16 or more elements (see docs/NOISE.md for the whole algorithm):
//
//  - `.torch` (the default): torch on an x86-64 CPU with AVX2 or AVX-512, which is what nearly every
//    PC and server runs. Its Box-Muller uses fixed float32 polynomial approximations of log, sin
//    and cos (torch's `avx_mathfun.h`, Cephes-derived) compiled with fused multiply-adds; this file
//    evaluates the same float32 operations in plain Swift, so the result is the same on every
//    machine (no libm is involved).
//  - `.torchScalar`: torch's non-vectorised path (`ATEN_CPU_CAPABILITY=default`, or a build
//    without AVX2): float32 `logf`, `cosf`, `sinf` from the C library. Exact on Linux/glibc
//    (tested); with another C library the last bit may differ.
//
// Below 16 elements both take torch's element-wise path (double precision Box-Muller with a
// cached second value that later calls on the same generator consume), which uses the C library's
// double `log1p`, `sin` and `cos`.

/// Which randn algorithm to follow.
public enum NoiseRNG: String, Sendable, CaseIterable {
    case torch
    case torchScalar = "torch-scalar"
}

/// MT19937 as PyTorch's `at::mt19937`: seeded with the low 32 bits of the 64-bit seed.
public struct MT19937: Sendable {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624

    public init(seed: UInt64) {
        state[0] = UInt32(truncatingIfNeeded: seed)
        for i in 1..<624 {
            let p = state[i - 1]
            state[i] = 1_812_433_253 &* (p ^ (p >> 30)) &+ UInt32(i)
        }
        index = 624
    }

    private mutating func twist() {
        for i in 0..<624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            var v = state[(i + 397) % 624] ^ (y >> 1)
            if y & 1 != 0 { v ^= 0x9908_B0DF }
            state[i] = v
        }
        index = 0
    }

    /// The next 32-bit output.
    public mutating func next() -> UInt32 {
        if index >= 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }
}

/// PyTorch's CPU generator state: the engine plus the cached second value of the double
/// precision Box-Muller (`next_double_normal_sample`).
public struct TorchGenerator: Sendable {
    public var engine: MT19937
    public var cachedNormal: Double?
    public let mode: NoiseRNG

    /// `torch.manual_seed(seed)`: a fresh engine and an empty cache.
    public init(seed: UInt64, mode: NoiseRNG = .torch) {
        engine = MT19937(seed: seed)
        cachedNormal = nil
        self.mode = mode
    }

    /// uniform_real_distribution<float>(0, 1): 24 random bits / 2^24.
    @inline(__always) mutating func uniformFloat() -> Float {
        Float(engine.next() & 0xFF_FFFF) * (1.0 / 16_777_216.0)
    }

    /// uniform_real_distribution<double>(0, 1): a 64-bit draw (first output high), 53 bits / 2^53.
    @inline(__always) mutating func uniformDouble() -> Double {
        let hi = UInt64(engine.next()), lo = UInt64(engine.next())
        let bits = ((hi << 32) | lo) & ((1 << 53) - 1)
        return Double(bits) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// One value of torch's element-wise normal_distribution<double> (used below 16 elements).
    mutating func normalDouble() -> Double {
        if let c = cachedNormal {
            cachedNormal = nil
            return c
        }
        let u1 = uniformDouble()
        let u2 = uniformDouble()
        let r = (-2.0 * Foundation.log1p(-u2)).squareRoot()
        let theta = 2.0 * Double.pi * u1
        cachedNormal = r * Foundation.sin(theta)
        return r * Foundation.cos(theta)
    }

    /// `torch.randn(count)` (float32, contiguous): the same values as any shape with that many elements.
    public mutating func randn(count: Int) -> [Float] {
        guard count > 0 else { return [] }
        if count < 16 {
            return (0..<count).map { _ in Float(normalDouble()) }
        }
        var data = [Float](repeating: 0, count: count)
        for i in 0..<count { data[i] = uniformFloat() }
        let mode = self.mode
        data.withUnsafeMutableBufferPointer { buf in
            var i = 0
            while i + 16 <= count {
                TorchBoxMuller.fill16(buf.baseAddress! + i, mode: mode)
                i += 16
            }
        }
        if count % 16 != 0 {
            // torch redraws the last 16 values and transforms them again.
            for i in (count - 16)..<count { data[i] = uniformFloat() }
            data.withUnsafeMutableBufferPointer { buf in
                TorchBoxMuller.fill16(buf.baseAddress! + count - 16, mode: mode)
            }
        }
        return data
    }

    /// `torch.randn(shape)` as a float32 CPU tensor.
    public mutating func randn(_ shape: [Int]) -> Tensor {
        Tensor(randn(count: shape.reduce(1, *)), shape: shape)
    }
}

/// torch's in-place Box-Muller over 16 uniforms: pairs (j, j + 8), u1 = 1 - data[j], u2 = data[j + 8].
enum TorchBoxMuller {
    static func fill16(_ data: UnsafeMutablePointer<Float>, mode: NoiseRNG) {
        switch mode {
        case .torch:
            let twoPi = Float(2.0 * Double.pi)
            for j in 0..<8 {
                let u1 = 1 - data[j]
                let u2 = data[j + 8]
                let radius = (-2 * CephesF32.log(u1)).squareRoot()
                let (s, c) = CephesF32.sincos(twoPi * u2)
                // _mm256_fmadd_ps(n, std = 1, mean = 0)
                data[j] = Float(0).addingProduct(radius * c, 1)
                data[j + 8] = Float(0).addingProduct(radius * s, 1)
            }
        case .torchScalar:
            for j in 0..<8 {
                let u1 = 1 - data[j]
                let u2 = data[j + 8]
                let radius = (-2 * Foundation.log(u1)).squareRoot()
                // `const float theta = 2.0f * pi<double> * u2`: a double product stored as float
                let theta = Float(2.0 * Double.pi * Double(u2))
                data[j] = radius * Foundation.cos(theta)
                data[j + 8] = radius * Foundation.sin(theta)
            }
        }
    }
}

/// float32 log and sincos as torch's AVX2 `log256_ps` / `sincos256_ps` compute them, one lane at a
/// time, with the multiply-adds fused exactly where the compiled AVX2 code fuses them. Constants
/// are the C double literals rounded to float (what `_PS256_CONST` stores).
enum CephesF32 {
    static let sqrtHalf = Float(0.707106781186547524 as Double)
    static let logP: [Float] = [7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1,
                                1.4249322787E-1, -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1,
                                3.3333331174E-1].map { Float($0 as Double) }
    static let logQ1 = Float(-2.12194440e-4 as Double)
    static let logQ2 = Float(0.693359375 as Double)
    static let minusDP1 = Float(-0.78515625 as Double)
    static let minusDP2 = Float(-2.4187564849853515625e-4 as Double)
    static let minusDP3 = Float(-3.77489497744594108e-8 as Double)
    static let sinP: [Float] = [-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1].map { Float($0 as Double) }
    static let cosP: [Float] = [2.443315711809948E-005, -1.388731625493765E-003, 4.166664568298827E-002].map { Float($0 as Double) }
    static let fourOverPi = Float(1.27323954473516 as Double)

    static func log(_ input: Float) -> Float {
        if !(input > 0) { return .nan }
        var x = Swift.max(input, Float(bitPattern: 0x0080_0000))
        let bits = x.bitPattern
        var e = Float(Int32(bitPattern: bits >> 23) - 0x7F) + 1
        // keep the mantissa, with the exponent of 0.5: x in [0.5, 1)
        x = Float(bitPattern: (bits & ~0x7F80_0000) | Float(0.5).bitPattern)
        let below = x < sqrtHalf
        let tmp: Float = below ? x : 0
        x = x - 1
        e = e - (below ? 1 : 0)
        x = x + tmp
        let z = x * x
        var y = logP[0]
        for k in 1..<9 { y = logP[k].addingProduct(y, x) }
        y = y * x
        y = (e * logQ1).addingProduct(y, z)
        y = y.addingProduct(-z, 0.5)
        x = x + y
        x = x.addingProduct(e, logQ2)
        return x
    }

    /// (sin, cos) of x.
    static func sincos(_ input: Float) -> (Float, Float) {
        var x = Swift.abs(input)
        let signIn = input.bitPattern & 0x8000_0000
        var j = Int32(truncatingIfNeeded: Int64(x * fourOverPi))   // cvttps: truncation
        j = (j &+ 1) & ~1
        let y = Float(j)
        let swapSin = UInt32(bitPattern: j & 4) << 29
        let polyMask = (j & 2) == 0
        x = x.addingProduct(y, minusDP1)
        x = x.addingProduct(y, minusDP2)
        x = x.addingProduct(y, minusDP3)
        let signCos = UInt32(bitPattern: ~(j &- 2) & 4) << 29
        let signSin = signIn ^ swapSin
        let z = x * x
        var yc = cosP[1].addingProduct(cosP[0], z)
        yc = cosP[2].addingProduct(yc, z)
        yc = yc * z
        yc = (-(z * 0.5)).addingProduct(yc, z)
        yc = yc + 1
        var ys = sinP[1].addingProduct(sinP[0], z)
        ys = sinP[2].addingProduct(ys, z)
        ys = ys * z
        ys = x.addingProduct(ys, x)
        // the masked select adds +0, which turns -0 into +0
        let sinMag = (polyMask ? ys : yc) + 0
        let cosMag = (polyMask ? yc : ys) + 0
        return (Float(bitPattern: sinMag.bitPattern ^ signSin), Float(bitPattern: cosMag.bitPattern ^ signCos))
    }
}
