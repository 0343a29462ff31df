import NewBieTensor

/// Anything that holds named tensors: a safetensors file, a sharded safetensors folder, a GGUF file.
/// Model loaders read through this protocol (usually via `ScopedWeights`), so the file format
/// never leaks into model code.
public protocol WeightSource: AnyObject, Sendable {
    /// Where the weights came from (a path), for error messages.
    var sourceDescription: String { get }
    /// All tensor names.
    var tensorNames: [String] { get }
    /// dtype and shape of a tensor without reading it.
    func tensorInfo(_ name: String) -> TensorInfo?
    /// The tensor on the CPU (zero-copy where the format allows).
    func loadTensor(_ name: String) throws -> Tensor
    /// The weight as stored int8 values and scales, for files quantized ahead of time (nil: the
    /// tensor is not stored that way; `loadTensor` still gives its float values).
    func quantizedWeight(_ name: String) throws -> QuantizedWeight?
}

extension WeightSource {
    public func quantizedWeight(_ name: String) throws -> QuantizedWeight? { nil }
}

extension SafeTensorsFile: WeightSource {
    public var sourceDescription: String { path }
    public var tensorNames: [String] { names }
    public func tensorInfo(_ name: String) -> TensorInfo? { info(name) }
    public func loadTensor(_ name: String) throws -> Tensor { try tensor(name) }
}
