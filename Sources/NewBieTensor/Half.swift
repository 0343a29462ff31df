import CNewBieCPU

/// Scalar conversions between Float and the 16-bit storage types (round to nearest even; NaN and
/// infinities preserved). Row conversions live in `CNewBieCPU` and use F16C where present.
public enum Half {
    @inline(__always) public static func bf16Bits(_ f: Float) -> UInt16 {
        let u = f.bitPattern
        if u & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: u >> 16) | 0x0040 }
        let rounded = u &+ 0x7FFF &+ ((u >> 16) & 1)
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }
    @inline(__always) public static func bf16ToFloat(_ b: UInt16) -> Float {
        Float(bitPattern: UInt32(b) << 16)
    }
    @inline(__always) public static func f16Bits(_ f: Float) -> UInt16 { nb_f32_to_f16_one(f) }
    @inline(__always) public static func f16ToFloat(_ h: UInt16) -> Float { nb_f16_to_f32_one(h) }

    /// Rounds a Float to the nearest value representable in `dtype` (identity for f32).
    @inline(__always) public static func round(_ f: Float, to dtype: DType) -> Float {
        switch dtype {
        case .bf16: return bf16ToFloat(bf16Bits(f))
        case .f16: return f16ToFloat(f16Bits(f))
        default: return f
        }
    }
}
