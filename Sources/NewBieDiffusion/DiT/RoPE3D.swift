import Foundation
import NewBieTensor

/// NextDiT's 3-axis rotary embedding: complex number m of a head takes its angle from
/// axis 0 (caption index) for the first axesDims[0]/2 values of m, then axis 1 (patch row), then
/// axis 2 (patch column); frequencies theta^(-2j/d_a). Tables are Float32 cos/sin [B, L, headDim/2]
/// for the `.interleaved` rope op, computed in Double from integer positions.
public struct RoPE3D: Sendable {
    public let axesDims: [Int]
    public let axesLens: [Int]
    public let theta: Double
    /// Per axis, the frequencies omega_j (j < d_a / 2).
    let freqs: [[Double]]

    public init(axesDims: [Int], axesLens: [Int], theta: Double) {
        self.axesDims = axesDims; self.axesLens = axesLens; self.theta = theta
        freqs = axesDims.map { d in (0..<(d / 2)).map { j in 1.0 / Foundation.pow(theta, Double(2 * j) / Double(d)) } }
    }

    public var halfDim: Int { axesDims.reduce(0, +) / 2 }

    /// One position's angles written as cos/sin into `cos[0..<halfDim]`, `sin[...]`.
    func write(_ pos: [Int], cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        var m = 0
        for a in 0..<freqs.count {
            let p = Double(pos[a])
            for w in freqs[a] {
                let angle = p * w
                cos[m] = Float(Foundation.cos(angle)); sin[m] = Float(Foundation.sin(angle))
                m += 1
            }
        }
    }

    /// Tables [B, L, halfDim] for per-sample position lists; a nil position gives cos = sin = 0
    /// (diffusers' zeroed caption-padding rows; such rows are masked or discarded anyway).
    public func tables(_ positions: [[[Int]?]]) throws -> (cos: Tensor, sin: Tensor) {
        let b = positions.count, l = positions.first?.count ?? 0, h = halfDim
        var c = [Float](repeating: 0, count: b * l * h), s = c
        try c.withUnsafeMutableBufferPointer { cp in
            try s.withUnsafeMutableBufferPointer { sp in
                for i in 0..<b {
                    precondition(positions[i].count == l, "RoPE3D: ragged position lists")
                    for k in 0..<l {
                        guard let pos = positions[i][k] else { continue }
                        for a in 0..<axesLens.count where pos[a] < 0 || pos[a] >= axesLens[a] {
                            throw DiTError("RoPE position \(pos[a]) on axis \(a) is outside the table of \(axesLens[a]) (caption or latent too large for this model)")
                        }
                        write(pos, cos: cp.baseAddress! + (i * l + k) * h, sin: sp.baseAddress! + (i * l + k) * h)
                    }
                }
            }
        }
        return (Tensor(c, shape: [b, l, h]), Tensor(s, shape: [b, l, h]))
    }
}

/// Where each sample's tokens sit: caption tokens first, the image right after
/// the sample's real caption tokens, then padding up to the longest sample.
public struct DiTSequenceLayout: Sendable, Hashable {
    /// Real caption tokens per sample.
    public let capLens: [Int]
    /// Padded caption length (the cap_feats sequence axis).
    public let capPadded: Int
    /// Patch rows and columns.
    public let rows: Int, cols: Int
    public var imageTokens: Int { rows * cols }
    public var seqLens: [Int] { capLens.map { $0 + imageTokens } }
    public var maxSeq: Int { seqLens.max() ?? 0 }

    public init(capLens: [Int], capPadded: Int, rows: Int, cols: Int) {
        self.capLens = capLens; self.capPadded = capPadded; self.rows = rows; self.cols = cols
    }

    /// Caption token k: (k, 0, 0); image token (r, c): (capLen, r, c).
    public func jointPositions() -> [[[Int]?]] {
        capLens.map { cl in
            (0..<maxSeq).map { k -> [Int]? in
                if k < cl { return [k, 0, 0] }
                if k < cl + imageTokens { let n = k - cl; return [cl, n / cols, n % cols] }
                return [0, 0, 0]
            }
        }
    }

    /// Context refiner: the padded caption sequence; padding rows are zero (nil).
    public func captionPositions() -> [[[Int]?]] {
        capLens.map { cl in (0..<capPadded).map { k -> [Int]? in k < cl ? [k, 0, 0] : nil } }
    }

    /// Noise refiner: the image tokens alone, with their joint positions.
    public func imagePositions() -> [[[Int]?]] {
        capLens.map { cl in (0..<imageTokens).map { n -> [Int]? in [cl, n / cols, n % cols] } }
    }
}
