import NewBieTensor

// What travels when a model streams its blocks' weights to the device (`--offload`,
// NewBieTensor's `WeightRing`): each module lists its tensors in a fixed order, and is rebuilt
// over the device copies in that same order.

/// Hands out a list of tensors in order (the device copies of one block's weights).
public struct TensorCursor {
    let tensors: [Tensor]
    var index = 0
    public init(_ tensors: [Tensor]) { self.tensors = tensors }
    public mutating func next() -> Tensor {
        precondition(index < tensors.count, "TensorCursor: the block asked for more tensors than it listed")
        defer { index += 1 }
        return tensors[index]
    }
    /// Whether every tensor was taken (a module that lists more than it takes back is a bug).
    public var isExhausted: Bool { index == tensors.count }
}

extension Linear {
    /// The tensors that travel: the float weight, or the int8 / fp8 values and their scales; then
    /// the bias. Unmerged adapters' side products stay where they were placed (on the device).
    public var streamedTensors: [Tensor] {
        (quantized.map { [$0.q, $0.scales] } ?? [weight]) + (bias.map { [$0] } ?? [])
    }

    /// This layer over tensors taken from `cursor` in `streamedTensors` order, computing on `device`.
    public func rebound(_ cursor: inout TensorCursor, device: Device) -> Linear {
        if let qw = quantized {
            let q = cursor.next(), s = cursor.next()
            return Linear(quantized: qw.replacing(q: q, scales: s), bias: bias == nil ? nil : cursor.next(), dtype: dtype,
                          device: device, adapters: adapters)
        }
        let w = cursor.next()
        return Linear(weight: w, bias: bias == nil ? nil : cursor.next(), dtype: dtype, adapters: adapters)
    }
}
