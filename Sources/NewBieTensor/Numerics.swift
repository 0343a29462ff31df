/// Comparisons shared by the tests and `newbie gpu-check`.
public enum Numerics {
    /// Relative L2 error ||a - b|| / ||b||, accumulated in Double. Any NaN, infinity mismatch or
    /// length mismatch gives +infinity, so a comparison with a tolerance can never pass on NaN.
    public static func relativeL2(_ a: [Float], _ b: [Float]) -> Double {
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
}
