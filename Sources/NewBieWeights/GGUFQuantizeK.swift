import NewBieTensor

/// The K-quant writers (Q6_K, Q5_K, Q4_K): ggml's reference quantizers (`quantize_row_q*_K_ref`,
/// what `llama-quantize` and `ggml_quantize_chunk` run without an importance matrix), written
/// from their definitions: the same fp32 operations in the same order, so the blocks are the same
/// bytes (checked against ggml through ggml-python, `tools/reference/make_kquant_fixtures.py`).
///
/// Q4_K/Q5_K: per sub-block of 32, a scale and a min chosen by `scaleAndMin` (a weighted
/// least-squares search over candidate step sizes), both then quantized to 6 bits against the
/// block's largest scale and min (two f16s). Q6_K: per sub-block of 16, a signed scale chosen by
/// `signedScale`, quantized to int8 against the block's largest scale (one f16).
enum GGUFQuantizeK {
    /// round-half-to-even for |f| < 2^22, as ggml's `nearest_int` (adds 1.5 * 2^23 and reads the
    /// low mantissa bits); outside that range the same bits as ggml, to stay byte-identical.
    @inline(__always) static func nearestInt(_ f: Float) -> Int32 {
        let v = f + 12582912
        return Int32(bitPattern: v.bitPattern & 0x007f_ffff) - 0x0040_0000
    }

    @inline(__always) static func clamp(_ l: Int32, _ lo: Int32, _ hi: Int32) -> Int32 { max(lo, min(hi, l)) }

    /// ggml's `make_qkx2_quants`: levels L in 0...nmax with x ≈ scale * L - theMin, minimizing the
    /// weighted squared error over nstep + 1 candidate steps (nmax + rmin + rdelta * is) / (max - min).
    /// Returns (scale, theMin); L written to `levels`.
    static func scaleAndMin(_ x: UnsafePointer<Float>, n: Int, nmax: Int32, weights w: UnsafePointer<Float>,
                            levels L: UnsafeMutablePointer<UInt8>, rmin: Float, rdelta: Float, nstep: Int) -> (Float, Float) {
        var mn = x[0], mx = x[0]
        var sumW = w[0]
        var sumX = sumW * x[0]
        for i in 1..<n {
            if x[i] < mn { mn = x[i] }
            if x[i] > mx { mx = x[i] }
            sumW += w[i]
            sumX += w[i] * x[i]
        }
        if mn > 0 { mn = 0 }
        if mx == mn {
            for i in 0..<n { L[i] = 0 }
            return (0, -mn)
        }
        let fmax = Float(nmax)
        var iscale = fmax / (mx - mn)
        var scale = 1 / iscale
        var bestError: Float = 0
        for i in 0..<n {
            let l = clamp(nearestInt(iscale * (x[i] - mn)), 0, nmax)
            L[i] = UInt8(l)
            let diff = scale * Float(L[i]) + mn - x[i]
            bestError += w[i] * (diff * diff)
        }
        var aux = [UInt8](repeating: 0, count: n)
        for step in 0...nstep {
            iscale = (rmin + rdelta * Float(step) + fmax) / (mx - mn)
            var sumL: Float = 0, sumL2: Float = 0, sumXL: Float = 0
            for i in 0..<n {
                let l = clamp(nearestInt(iscale * (x[i] - mn)), 0, nmax)
                aux[i] = UInt8(l)
                let fl = Float(l)
                sumL += w[i] * fl
                sumL2 += w[i] * fl * fl
                sumXL += w[i] * fl * x[i]
            }
            let D = sumW * sumL2 - sumL * sumL
            if D > 0 {
                var thisScale = (sumW * sumXL - sumX * sumL) / D
                var thisMin = (sumL2 * sumX - sumL * sumXL) / D
                if thisMin > 0 {
                    thisMin = 0
                    thisScale = sumXL / sumL2
                }
                var curError: Float = 0
                for i in 0..<n {
                    let diff = thisScale * Float(aux[i]) + thisMin - x[i]
                    curError += w[i] * (diff * diff)
                }
                if curError < bestError {
                    for i in 0..<n { L[i] = aux[i] }
                    bestError = curError
                    scale = thisScale
                    mn = thisMin
                }
            }
        }
        return (scale, -mn)
    }

    /// ggml's `make_qx_quants` with rmse_type 1 (weights x²), no importance: levels L in
    /// 0..<2*nmax (stored as l + nmax) with x ≈ scale * (L - nmax), the scale refined over 18
    /// candidate steps -(nmax + 0.1 * is) / max. Returns the scale (0 for an all-zero group).
    static func signedScale(_ x: UnsafePointer<Float>, n: Int, nmax: Int32, levels L: UnsafeMutablePointer<Int8>) -> Float {
        var mx: Float = 0, amax: Float = 0
        for i in 0..<n {
            let ax = abs(x[i])
            if ax > amax { amax = ax; mx = x[i] }
        }
        if amax < 1e-15 {
            for i in 0..<n { L[i] = 0 }
            return 0
        }
        let fmax = Float(nmax)
        var iscale = -fmax / mx
        var sumLX: Float = 0, sumL2: Float = 0
        for i in 0..<n {
            let l = clamp(nearestInt(iscale * x[i]), -nmax, nmax - 1)
            L[i] = Int8(l + nmax)
            let w = x[i] * x[i], fl = Float(l)
            sumLX += w * x[i] * fl
            sumL2 += w * fl * fl
        }
        var scale: Float = sumL2 != 0 ? sumLX / sumL2 : 0
        var best = scale * sumLX
        for step in -9...9 where step != 0 {
            iscale = -(fmax + 0.1 * Float(step)) / mx
            sumLX = 0; sumL2 = 0
            for i in 0..<n {
                let l = clamp(nearestInt(iscale * x[i]), -nmax, nmax - 1)
                let w = x[i] * x[i], fl = Float(l)
                sumLX += w * x[i] * fl
                sumL2 += w * fl * fl
            }
            if sumL2 > 0 && sumLX * sumLX > best * sumL2 {
                for i in 0..<n { L[i] = Int8(clamp(nearestInt(iscale * x[i]), -nmax, nmax - 1) + nmax) }
                scale = sumLX / sumL2
                best = scale * sumLX
            }
        }
        return scale
    }

    @inline(__always) static func f16Value(_ bits: UInt16) -> Float { Half.f16ToFloat(bits) }

    @inline(__always) static func storeF16(_ bits: UInt16, _ o: UnsafeMutablePointer<UInt8>) {
        o[0] = UInt8(bits & 0xFF); o[1] = UInt8(bits >> 8)
    }

    /// One Q4_K (nmax 15: 144 bytes) or Q5_K (nmax 31: 176 bytes) block of 256 values.
    static func q45K(_ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<UInt8>, five: Bool) {
        let nmax: Int32 = five ? 31 : 15
        var L = [UInt8](repeating: 0, count: 256)
        var scales = [Float](repeating: 0, count: 8), mins = [Float](repeating: 0, count: 8)
        var weights = [Float](repeating: 0, count: 32)
        var maxScale: Float = 0, maxMin: Float = 0
        L.withUnsafeMutableBufferPointer { Lp in
            weights.withUnsafeMutableBufferPointer { wp in
                for j in 0..<8 {
                    let xs = x + 32 * j
                    var sumX2: Float = 0
                    for l in 0..<32 { sumX2 += xs[l] * xs[l] }
                    let avX = (sumX2 / 32).squareRoot()
                    for l in 0..<32 { wp[l] = avX + abs(xs[l]) }
                    let (s, m) = scaleAndMin(xs, n: 32, nmax: nmax, weights: wp.baseAddress!, levels: Lp.baseAddress! + 32 * j,
                                             rmin: five ? -0.5 : -1, rdelta: 0.1, nstep: five ? 15 : 20)
                    scales[j] = s; mins[j] = m
                    if s > maxScale { maxScale = s }
                    if m > maxMin { maxMin = m }
                }
            }
        }
        let invScale: Float = maxScale > 0 ? 63 / maxScale : 0
        let invMin: Float = maxMin > 0 ? 63 / maxMin : 0
        let sc = o + 4
        for k in 0..<12 { sc[k] = 0 }
        for j in 0..<8 {
            // ggml stores nearest_int's result in a uint8_t before the MIN: a negative scale wraps
            let ls = min(63, UInt8(truncatingIfNeeded: nearestInt(invScale * scales[j])))
            let lm = min(63, UInt8(truncatingIfNeeded: nearestInt(invMin * mins[j])))
            if j < 4 {
                sc[j] = ls; sc[j + 4] = lm
            } else {
                sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4)
                sc[j - 4] |= (ls >> 4) << 6
                sc[j] |= (lm >> 4) << 6
            }
        }
        let dBits = Half.f16Bits(maxScale / 63), dminBits = Half.f16Bits(maxMin / 63)
        storeF16(dBits, o); storeF16(dminBits, o + 2)
        let dBlock = f16Value(dBits), dminBlock = f16Value(dminBits)
        for j in 0..<8 {
            let (s, m) = BlockFormat.scaleMinK4(j, UnsafePointer(sc))
            let d = dBlock * Float(s)
            if d == 0 { continue }
            let dm = dminBlock * Float(m)
            for i in 0..<32 { L[32 * j + i] = UInt8(clamp(nearestInt((x[32 * j + i] + dm) / d), 0, nmax)) }
        }
        if five {
            let qh = o + 16, ql = o + 48
            for k in 0..<32 { qh[k] = 0 }
            var m1: UInt8 = 1, m2: UInt8 = 2
            for chunk in 0..<4 {
                let n = chunk * 64
                for j in 0..<32 {
                    var l1 = L[n + j], l2 = L[n + j + 32]
                    if l1 > 15 { l1 -= 16; qh[j] |= m1 }
                    if l2 > 15 { l2 -= 16; qh[j] |= m2 }
                    ql[chunk * 32 + j] = l1 | (l2 << 4)
                }
                m1 <<= 2; m2 <<= 2
            }
        } else {
            let q = o + 16
            for chunk in 0..<4 {
                for l in 0..<32 { q[chunk * 32 + l] = L[chunk * 64 + l] | (L[chunk * 64 + l + 32] << 4) }
            }
        }
    }

    /// One Q6_K block of 256 values (210 bytes).
    static func q6K(_ x: UnsafePointer<Float>, _ o: UnsafeMutablePointer<UInt8>) {
        var L = [Int8](repeating: 0, count: 256)
        var scales = [Float](repeating: 0, count: 16)
        var maxScale: Float = 0, maxAbsScale: Float = 0
        L.withUnsafeMutableBufferPointer { Lp in
            for ib in 0..<16 {
                let s = signedScale(x + 16 * ib, n: 16, nmax: 32, levels: Lp.baseAddress! + 16 * ib)
                scales[ib] = s
                if abs(s) > maxAbsScale { maxAbsScale = abs(s); maxScale = s }
            }
        }
        for k in 0..<210 { o[k] = 0 }
        if maxAbsScale < 1e-15 {
            storeF16(Half.f16Bits(0), o + 208)
            return
        }
        let iscale = -128 / maxScale
        let dBits = Half.f16Bits(1 / iscale)
        storeF16(dBits, o + 208)
        let sc = o + 192
        for ib in 0..<16 { sc[ib] = UInt8(truncatingIfNeeded: min(127, nearestInt(iscale * scales[ib]))) }
        let dBlock = f16Value(dBits)
        for j in 0..<16 {
            let d = dBlock * Float(Int8(bitPattern: sc[j]))
            if d == 0 { continue }
            for i in 0..<16 { L[16 * j + i] = Int8(clamp(nearestInt(x[16 * j + i] / d), -32, 31) + 32) }
        }
        for half in 0..<2 {
            let ql = o + half * 64, qh = o + 128 + half * 32, base = half * 128
            for l in 0..<32 {
                let q1 = UInt8(bitPattern: L[base + l]), q2 = UInt8(bitPattern: L[base + l + 32])
                let q3 = UInt8(bitPattern: L[base + l + 64]), q4 = UInt8(bitPattern: L[base + l + 96])
                ql[l] = (q1 & 0xF) | ((q3 & 0xF) << 4)
                ql[l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4)
                qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
            }
        }
    }
}
