import NewBieTensor

/// How a model output in [0, 1] becomes an 8-bit value v * 255: `truncate` (the default) as the
/// official NewBie demo and ComfyUI (SaveImage: `np.clip(255. * image, 0, 255).astype(np.uint8)`)
/// do, `round` (half to even) as diffusers' `numpy_to_pil` does. About half of all values differ
/// by one level between the two.
public enum PixelRounding: String, Sendable, CaseIterable {
    case truncate, round

    public static func parse(_ text: String) -> PixelRounding? { PixelRounding(rawValue: text.lowercased()) }
}

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (R, G, B).
public struct RGBImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(width > 0 && height > 0, "image size \(width)x\(height) must be positive")
        precondition(pixels.count == width * height * 3, "\(pixels.count) bytes do not fill a \(width)x\(height) RGB image")
        self.width = width; self.height = height; self.pixels = pixels
    }

    /// From a model output [1, 3, H, W] (or [3, H, W]) in [-1, 1]: (x + 1) / 2, clamped to [0, 1],
    /// times 255 (Float32), then truncated (the official demo, ComfyUI) or rounded half to even
    /// (NumPy's `round` in diffusers' `numpy_to_pil`).
    public init(tensor: Tensor, rounding: PixelRounding = .truncate) {
        precondition(tensor.rank != 4 || tensor.shape[0] == 1, "one image at a time: got a batch \(tensor.shape)")
        let t = tensor.rank == 4 ? tensor.select(0, 0) : tensor
        precondition(t.rank == 3 && t.shape[0] == 3, "image tensor must be [1, 3, H, W] or [3, H, W], got \(tensor.shape)")
        let (h, w) = (t.shape[1], t.shape[2])
        let v = t.toFloats()
        var px = [UInt8](repeating: 0, count: h * w * 3)
        for c in 0..<3 {
            for i in 0..<(h * w) {
                let x = v[c * h * w + i]
                // NaN maps to 0 rather than trapping
                let u = x.isNaN ? 0 : Swift.min(Swift.max((x + 1) / 2, 0), 1)
                let s = u * 255
                px[i * 3 + c] = UInt8(rounding == .truncate ? s.rounded(.towardZero) : s.rounded(.toNearestOrEven))
            }
        }
        self.init(width: w, height: h, pixels: px)
    }

    /// As a model input [1, 3, H, W] in [-1, 1] (p / 255 * 2 - 1), Float32 on `device`.
    public func tensor(device: Device = .cpu) -> Tensor {
        let n = width * height
        var v = [Float](repeating: 0, count: 3 * n)
        for i in 0..<n {
            for c in 0..<3 { v[c * n + i] = Float(pixels[i * 3 + c]) / 255 * 2 - 1 }
        }
        return Tensor(v, shape: [1, 3, height, width], device: device)
    }
}
