import NewBieTensor

/// float8 e4m3 "fn" (safetensors `F8_E4M3`, torch `float8_e4m3fn`): 1 sign, 4 exponent (bias 7)
/// and 3 mantissa bits, no infinities, one NaN pattern per sign (S.1111.111), largest finite 448.
/// Conversions follow torch's casts bit for bit (tested against a torch fixture).
public enum FP8E4M3 {
    public static let maxFinite: Float = 448

    /// The exact float32 value of a byte.
    @inline(__always) public static func toFloat(_ b: UInt8) -> Float {
        let sign: Float = b & 0x80 != 0 ? -1 : 1
        let e = Int((b >> 3) & 0x0F), m = Int(b & 0x07)
        if e == 15 && m == 7 { return .nan }
        if e == 0 { return sign * Float(m) * 0x1p-9 }
        return sign * Float(8 + m) * Float(sign: .plus, exponent: e - 10, significand: 1)
    }

    /// Round to nearest, ties to even; NaN stays NaN, and magnitudes that round past 448
    /// (anything above the 464 midpoint, infinities included) saturate to ±448, as torch's CPU
    /// cast does.
    @inline(__always) public static func fromFloat(_ x: Float) -> UInt8 {
        var bits = x.bitPattern
        let sign = UInt8((bits >> 24) & 0x80)
        bits &= 0x7FFF_FFFF
        if bits > 0x7F80_0000 { return sign | 0x7F }           // NaN
        if bits >= 0x43F0_0000 { return sign | 0x7E }          // >= 480 and inf: 448
        if bits < (121 << 23) {                                  // below 2^-6: subnormal or zero
            // adding 2^-9 * 2^23 aligns the fp8 subnormal step to float32's last bit, so the
            // float addition performs the round-to-nearest-even
            let magic = Float(bitPattern: 141 << 23)
            return sign | UInt8(truncatingIfNeeded: (Float(bitPattern: bits) + magic).bitPattern &- (141 << 23))
        }
        let odd = (bits >> 20) & 1
        bits = bits &+ (UInt32(bitPattern: Int32(7 - 127) << 23)) &+ 0x7FFFF &+ odd
        let r = UInt8(truncatingIfNeeded: bits >> 20)
        return sign | (r == 0x7F ? 0x7E : r)                    // rounded up past 448
    }

    /// Decodes `count` bytes to float32, each multiplied by `scale(i)` when given (in float32, as
    /// torch's `w8.to(float32) * scale` does).
    public static func decode(_ src: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
        let p = src.assumingMemoryBound(to: UInt8.self)
        for i in 0..<count { dst[i] = toFloat(p[i]) }
    }
}
