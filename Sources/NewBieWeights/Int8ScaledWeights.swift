import NewBieTensor

/// A safetensors file written by `newbie quantize --to int8|int8-g128`: each quantized `X.weight`
/// is I8 [out, in] beside an F32 `X.weight_scale`, [out] (one scale per output row) or
/// [out, ceil(in / 128)] (one per group of 128 input features, the last group shorter when `in`
/// is not a multiple of 128), `w = q * scale`. Linear layers take the int8 values and scales as they
/// are (`quantizedWeight`); `loadTensor` gives the float32 product for anything else. The scale
/// tensors are not listed as weights.
public final class Int8ScaledWeights: WeightSource, @unchecked Sendable {
    public let file: SafeTensorsFile
    public let tensorNames: [String]
    public var sourceDescription: String { file.path }

    static let suffix = "_scale"

    public static func applies(to file: SafeTensorsFile) -> Bool {
        file.names.contains { $0.hasSuffix(".weight" + suffix) }
    }

    /// Checks every scale against its weight now, so that a bad file fails before any model work.
    public init(_ file: SafeTensorsFile) throws {
        self.file = file
        tensorNames = file.names.filter { !$0.hasSuffix(".weight" + Int8ScaledWeights.suffix) }
        for name in file.names where name.hasSuffix(".weight" + Int8ScaledWeights.suffix) {
            let weight = String(name.dropLast(Int8ScaledWeights.suffix.count))
            guard let w = file.info(weight) else {
                throw WeightsError(.invalidArgument, file: file.path, tensor: name, "a weight scale without its weight \(weight)")
            }
            guard w.dtype == .i8, w.shape.count == 2 else {
                throw WeightsError(.invalidArgument, file: file.path, tensor: name,
                                   "a weight scale for \(weight), which is \(w.dtype.safetensorsName) \(w.shape), not a 2-D I8 weight")
            }
            let s = file.info(name)!
            let out = w.shape[0], inF = w.shape[1]
            let g128 = (inF + 127) / 128
            guard s.dtype == .f32, s.shape == [out] || s.shape == [out, 1] || s.shape == [out, g128] else {
                throw WeightsError(.invalidArgument, file: file.path, tensor: name,
                                   "scale of shape \(s.shape) (\(s.dtype.safetensorsName)) fits \(weight) \(w.shape) neither as F32 [\(out)] (per row) nor as F32 [\(out), \(g128)] (per 128 inputs)")
            }
        }
        for name in tensorNames where file.info(name)?.dtype == .i8 && file.info(name + Int8ScaledWeights.suffix) == nil {
            throw WeightsError(.invalidArgument, file: file.path, tensor: name, "an I8 weight without its scale \(name + Int8ScaledWeights.suffix)")
        }
    }

    public func tensorInfo(_ name: String) -> TensorInfo? {
        guard let i = file.info(name), !name.hasSuffix(".weight" + Int8ScaledWeights.suffix) else { return nil }
        return i
    }

    public func quantizedWeight(_ name: String) throws -> QuantizedWeight? {
        guard let w = file.info(name), w.dtype == .i8, let s = file.info(name + Int8ScaledWeights.suffix) else { return nil }
        let out = w.shape[0]
        let groups = s.shape.count == 2 ? s.shape[1] : 1
        let scales = try file.tensor(name + Int8ScaledWeights.suffix).contiguous().reshape([out, groups])
        for v in scales.toFloats() where !v.isFinite {
            throw WeightsError(.invalidArgument, file: file.path, tensor: name + Int8ScaledWeights.suffix, "the scale holds \(v)")
        }
        let scheme: QuantScheme = groups == 1 ? .int8 : .int8g128
        return QuantizedWeight(scheme: scheme, q: try file.tensor(name), scales: scales)
    }

    public func loadTensor(_ name: String) throws -> Tensor {
        if let q = try quantizedWeight(name) { return q.dequantized() }
        guard tensorInfo(name) != nil else {
            throw WeightsError(.tensorNotFound, file: file.path, tensor: name, "no such tensor in this file")
        }
        return try file.tensor(name)
    }
}
