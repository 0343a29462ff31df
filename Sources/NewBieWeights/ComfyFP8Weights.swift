import NewBieTensor

/// A ComfyUI "scaled fp8" checkpoint seen as plain float weights: each `*.weight` stored as
/// F8_E4M3 comes back as float32 `w8 * scale_weight` (torch's order: widen, then multiply, in
/// float32), where `<module>.scale_weight` is a scalar, or one value per output row ([out] or
/// [out, 1]). Without a `scale_weight` the fp8 values are used as they are. `scale_input` (the
/// activation scale of ComfyUI's fp8 matrix product) and the `scaled_fp8` marker are not weights
/// and are hidden, as are the scales.
public final class ComfyFP8Weights: WeightSource, @unchecked Sendable {
    public let file: SafeTensorsFile
    public let tensorNames: [String]

    public var sourceDescription: String { file.path }

    /// Whether `file` holds anything of this layout (an F8_E4M3 tensor, a scale or the marker).
    public static func applies(to file: SafeTensorsFile) -> Bool {
        file.names.contains { isAuxiliary($0) } || file.infos.values.contains { $0.storedAsFP8E4M3 }
    }

    static func isAuxiliary(_ name: String) -> Bool {
        name == "scaled_fp8" || name.hasSuffix(".scale_weight") || name.hasSuffix(".scale_input")
    }

    static func scaleName(_ weight: String) -> String? {
        weight.hasSuffix(".weight") ? String(weight.dropLast(".weight".count)) + ".scale_weight" : nil
    }

    /// Checks every scale against its weight now, so that a bad file fails before any model work.
    public init(_ file: SafeTensorsFile) throws {
        self.file = file
        tensorNames = file.names.filter { !ComfyFP8Weights.isAuxiliary($0) }
        for name in file.names where name.hasSuffix(".scale_weight") {
            let weight = String(name.dropLast(".scale_weight".count)) + ".weight"
            guard let w = file.info(weight) else {
                throw WeightsError(.invalidArgument, file: file.path, tensor: name, "a weight scale without its weight \(weight)")
            }
            guard w.storedAsFP8E4M3 else {
                throw WeightsError(.invalidArgument, file: file.path, tensor: name, "a weight scale for \(weight), which is not stored as F8_E4M3")
            }
            let s = file.info(name)!
            let rows = w.shape.first ?? 1
            guard s.dtype.isFloatingPoint, s.count == 1 || (s.count == rows && (s.shape == [rows] || s.shape == [rows, 1])) else {
                throw WeightsError(.invalidArgument, file: file.path, tensor: name,
                                   "scale of shape \(s.shape) (\(s.dtype)) fits neither a per-tensor scalar nor one per row of \(weight) \(w.shape)")
            }
        }
    }

    public func tensorInfo(_ name: String) -> TensorInfo? { ComfyFP8Weights.isAuxiliary(name) ? nil : file.info(name) }

    public func loadTensor(_ name: String) throws -> Tensor {
        guard !ComfyFP8Weights.isAuxiliary(name) else {
            throw WeightsError(.tensorNotFound, file: file.path, tensor: name, "a scale or marker, not a weight")
        }
        let t = try file.tensor(name)
        guard let scaleName = ComfyFP8Weights.scaleName(name), file.info(scaleName) != nil else { return t }
        let scale = try file.tensor(scaleName).to(.f32).contiguous().toFloats()
        for s in scale where !s.isFinite {
            throw WeightsError(.invalidArgument, file: file.path, tensor: scaleName, "the weight scale holds \(s)")
        }
        let v = t.toFloats()
        let perRow = v.count / max(scale.count, 1)
        return Tensor(v.indices.map { v[$0] * scale[scale.count == 1 ? 0 : $0 / perRow] }, shape: t.shape)
    }
}
