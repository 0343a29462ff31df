import NewBieTensor

/// Builds one model's layers: hands each module its weights by name, already on the model's device
/// and in the module's compute dtype (from a `ModulePrecision`), and records what the modules ask
/// for. The module tree is the weight schema: the same construction code runs twice, first in
/// plan mode (no file: each weight is a placeholder of the right shape, and every name, shape and
/// module path is recorded), then against checkpoint weights checked against that plan before any
/// byte is read. So each tensor name is written once, in the module that uses it.
public final class WeightLoader {
    enum Mode { case plan, load(ModelWeights) }
    let mode: Mode
    public let device: Device
    public let precision: ModulePrecision
    /// With a Float32 compute dtype, keep weights stored as fp16/bf16 as they are: every op widens
    /// them exactly, and the model holds half the memory (the Gemma encoder's choice).
    public let widenAtUse: Bool
    /// The tensors the modules asked for, in order (internal names).
    public internal(set) var requested: [TensorSpec] = []
    /// Every module built (a compute boundary) with its compute dtype.
    public private(set) var modules: [String: DType] = [:]
    /// Every linear layer built: module path -> weight shape [out, in] (what adapters can attach to).
    public private(set) var linears: [String: [Int]] = [:]
    /// LoRA / LoKr adapters matched to this model's linear layers (nil: none), merged into the
    /// weights or attached as side products (`adapters.mode`).
    public let adapters: ModelAdapters?
    /// Host-resident modules' weights are streamed to `device` at use (`ModelPlacement.offload`).
    public let offload: Bool

    /// A planning loader: placeholders, no file.
    public init(planning precision: ModulePrecision, device: Device = .cpu, widenAtUse: Bool = false) {
        mode = .plan; self.precision = precision; self.device = device; self.widenAtUse = widenAtUse; adapters = nil
        offload = false
    }

    /// A loader over checked weights; opens `device` first (a missing driver or BLAS library is a
    /// thrown `DeviceError` here, before anything is read).
    public init(weights: ModelWeights, precision: ModulePrecision, device: Device = .cpu, widenAtUse: Bool = false,
                adapters: ModelAdapters? = nil, offload: Bool = false) throws {
        try Backends.open(device)
        mode = .load(weights); self.precision = precision; self.device = device; self.widenAtUse = widenAtUse
        self.adapters = adapters; self.offload = offload
    }

    /// A loader for one model's placement: its device, its precision and its adapters.
    public convenience init(weights: ModelWeights, placement: ModelPlacement, widenAtUse: Bool = false) throws {
        try self.init(weights: weights, precision: placement.precision, device: placement.device, widenAtUse: widenAtUse,
                      adapters: placement.adapters, offload: placement.offload)
    }

    public var isPlanning: Bool { if case .plan = mode { return true }; return false }
    /// The model itself ("" path), in the model's dtype.
    public var root: ModuleScope { ModuleScope(loader: self, path: "", dtype: precision.dtype(for: "")) }

    func register(_ path: String, _ dtype: DType) { modules[path] = dtype }
    func registerLinear(_ path: String, _ shape: [Int]) { linears[path] = shape }

    func fetch(_ name: String, shape: [Int], dtype: DType, on device: Device) throws -> Tensor {
        requested.append(TensorSpec(name, shape))
        switch mode {
        case .plan:
            // one element broadcast to the shape: no memory, any view op works on it
            return Tensor.zeros([1], dtype: dtype).reshape([Int](repeating: 1, count: shape.count)).expand(shape)
        case .load(let weights):
            let t = try weights.tensor(name)
            guard t.shape == shape else {
                throw WeightsError("\(weights.source.sourceDescription): \(name) has shape \(t.shape), the model expects \(shape)")
            }
            let keep = widenAtUse && dtype == .f32 && (t.dtype == .bf16 || t.dtype == .f16)
            return keep ? t.to(device: device) : t.to(dtype, device: device)
        }
    }

    /// Raw checkpoint access for weights that need work before use (a LoRA merge, an offset
    /// undone): the stored tensor on the CPU, recorded like any other; a placeholder when planning.
    func fetchStored(_ name: String, shape: [Int]) throws -> Tensor {
        requested.append(TensorSpec(name, shape))
        switch mode {
        case .plan:
            return Tensor.zeros([1]).reshape([Int](repeating: 1, count: shape.count)).expand(shape)
        case .load(let weights):
            let t = try weights.tensor(name)
            guard t.shape == shape else {
                throw WeightsError("\(weights.source.sourceDescription): \(name) has shape \(t.shape), the model expects \(shape)")
            }
            return t
        }
    }

    /// The rules of `precision` that name no module this model built, as one error listing the
    /// module paths that exist (call after building; `model` names the slot, e.g. "dit").
    public func checkRules(model: String) throws {
        try checkQuantizeRules(model: model)
        let bad = precision.unmatchedRules(modules: Set(modules.keys))
        guard !bad.isEmpty else { return }
        let known = modulePathSummary(Set(modules.keys))
        let hints = bad.compactMap { rule in closestModulePath(to: rule.pattern, among: known).map { "\(model).\($0)" } }
        let hint = hints.isEmpty ? "" : " (did you mean \(hints.joined(separator: " / "))?)"
        throw WeightsError("--precision: \(bad.map { "\(model).\($0)" }.joined(separator: ", ")) names no module of the \(model) model\(hint); its modules are: \(known.map { "\(model).\($0)" }.joined(separator: ", "))")
    }

    /// The `--quantize` rules that name no linear layer (or module holding one) of this model, as
    /// one error listing the linear layers' paths.
    public func checkQuantizeRules(model: String) throws {
        let holders = Set(linears.keys.flatMap { p -> [String] in
            let parts = p.split(separator: ".")
            return (1...parts.count).map { parts.prefix($0).joined(separator: ".") }
        })
        let bad = precision.quantization.unmatchedRules(modules: holders)
        guard !bad.isEmpty else { return }
        let known = modulePathSummary(Set(linears.keys))
        let hints = bad.compactMap { rule in closestModulePath(to: rule.pattern, among: known).map { "\(model).\($0)" } }
        let hint = hints.isEmpty ? "" : " (did you mean \(hints.joined(separator: " / "))?)"
        throw WeightsError("--quantize: \(bad.map { "\(model).\($0)" }.joined(separator: ", ")) names no linear layer of the \(model) model\(hint); its linear layers are: \(known.map { "\(model).\($0)" }.joined(separator: ", "))")
    }

    /// Bytes held by the linear layers' weights built so far, as held (int8 + scales where quantized).
    public private(set) var linearWeightBytes = 0
    func addLinearBytes(_ n: Int) { linearWeightBytes += n }

    /// The listed path a mistyped pattern most likely meant: the shortest one it is the start of
    /// ("decoder.mid" -> "decoder.mid_block"), else the nearest by edit distance if that is close.
    func closestModulePath(to pattern: String, among known: [String]) -> String? {
        if let p = known.filter({ $0.hasPrefix(pattern) }).min(by: { $0.count < $1.count }) { return p }
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var row = Array(0...b.count)
            for i in 1...max(a.count, 1) where !a.isEmpty {
                var prev = row[0]; row[0] = i
                for j in 1...max(b.count, 1) where !b.isEmpty {
                    let cur = row[j]
                    row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
                    prev = cur
                }
            }
            return row[b.count]
        }
        let a = Array(pattern)
        guard let best = known.map({ ($0, distance(a, Array($0))) }).min(by: { $0.1 < $1.1 }) else { return nil }
        return best.1 <= max(2, pattern.count / 4) ? best.0 : nil
    }
}

/// A module's place in the tree: its path, its compute dtype, and access to its weights.
public struct ModuleScope {
    public let loader: WeightLoader
    /// Dotted internal path ("layers.3.attention"); "" for the model itself.
    public let path: String
    /// The dtype this module computes in (and its weights are stored in).
    public let dtype: DType
    /// Weights of this module (and those inside it) stay in host memory, to be streamed to the
    /// model's device at use (`--offload`); `device` is then the CPU.
    public let hostResident: Bool

    init(loader: WeightLoader, path: String, dtype: DType, hostResident: Bool = false) {
        self.loader = loader; self.path = path; self.dtype = dtype; self.hostResident = hostResident
        loader.register(path, dtype)
    }

    public var isPlanning: Bool { loader.isPlanning }
    /// Where this module's weights are placed: the model's device, or the host when host-resident.
    public var device: Device { hostResident ? .cpu : loader.device }

    /// This module with its weights kept in host memory when the model is offloaded (`--offload`);
    /// itself otherwise.
    public func offloadable() -> ModuleScope {
        loader.offload && !hostResident ? ModuleScope(loader: loader, path: path, dtype: dtype, hostResident: true) : self
    }

    func name(_ n: String) -> String { path.isEmpty ? n : "\(path).\(n)" }

    /// A sub-module: a compute boundary with its own dtype (from the precision rules).
    public func scope(_ sub: String) -> ModuleScope {
        let p = name(sub)
        return ModuleScope(loader: loader, path: p, dtype: loader.precision.dtype(for: p), hostResident: hostResident)
    }

    /// A weight of this module (`name` may be dotted: "attention_norm1.weight"), in this module's
    /// dtype, on the model's device.
    public func tensor(_ n: String, shape: [Int]) throws -> Tensor {
        try loader.fetch(name(n), shape: shape, dtype: dtype, on: device)
    }

    /// A weight kept in `dtype` whatever the module computes in.
    public func tensor(_ n: String, shape: [Int], dtype: DType) throws -> Tensor {
        try loader.fetch(name(n), shape: shape, dtype: dtype, on: device)
    }

    /// The stored tensor on the CPU, for weights the model transforms before use; a placeholder
    /// when planning (check `isPlanning` before computing with it).
    public func stored(_ n: String, shape: [Int]) throws -> Tensor {
        try loader.fetchStored(name(n), shape: shape)
    }

    /// Declares a weight the model reads another way (rows on demand from a quantised table), so
    /// that it is checked and listed like the others.
    public func declare(_ n: String, shape: [Int]) {
        loader.requested.append(TensorSpec(name(n), shape))
    }

    /// Finishes a weight the model transformed itself: this module's dtype, the model's device.
    public func place(_ t: Tensor) -> Tensor {
        loader.isPlanning ? t : t.to(dtype, device: device)
    }

    /// A linear layer; adapters naming it are merged into its weight (fp32 on the device, then
    /// cast to the module's dtype) or attached as side products, by `loader.adapters.mode`.
    public func linear(_ sub: String, in inFeatures: Int, out outFeatures: Int, bias: Bool) throws -> Linear {
        let s = scope(sub)
        let shape = [outFeatures, inFeatures]
        loader.registerLinear(s.path, shape)
        let b = bias ? try s.tensor("bias", shape: [outFeatures]) : nil
        let scheme = try loader.precision.quantization.scheme(for: s.path).atLoad(shape: shape, path: s.path)
        let l = try plainOrAdapted(s, shape: shape, bias: b, scheme: scheme)
        loader.addLinearBytes(l.weightBytes)
        return l
    }

    private func plainOrAdapted(_ s: ModuleScope, shape: [Int], bias b: Tensor?, scheme: QuantScheme) throws -> Linear {
        /// Quantized from the checkpoint's float weight (read in fp32) on the host, then held on the device.
        func held(_ w: @autoclosure () throws -> Tensor) throws -> Linear {
            // a file quantized ahead of time (int8 values and scales, GGUF blocks): held as stored,
            // copied to the model's device once
            if case .load(let weights) = loader.mode, let q = try weights.quantizedWeight(s.name("weight")) {
                loader.requested.append(TensorSpec(s.name("weight"), shape))
                guard q.shape == shape else {
                    throw WeightsError("\(weights.source.sourceDescription): \(s.name("weight")) has shape \(q.shape), the model expects \(shape)")
                }
                return Linear(quantized: q.on(loader.device), bias: b, dtype: s.dtype, device: loader.device)
            }
            if scheme == .none || isPlanning { return Linear(weight: try w(), bias: b, dtype: s.dtype) }
            return Linear(quantized: .quantize(try s.stored("weight", shape: shape), scheme: scheme).on(s.device), bias: b,
                          dtype: s.dtype, device: loader.device)
        }
        guard !isPlanning, let adapters = loader.adapters, let terms = adapters.terms[s.path], !terms.isEmpty else {
            return try held(try s.tensor("weight", shape: shape))
        }
        switch adapters.mode {
        case .merged:
            var w = try s.stored("weight", shape: shape).to(.f32, device: loader.device)
            for t in terms { w = w + t.delta(on: loader.device) }
            if scheme != .none {
                return Linear(quantized: .quantize(w, scheme: scheme).on(s.device), bias: b, dtype: s.dtype, device: loader.device)
            }
            return Linear(weight: w.to(s.dtype, device: s.device), bias: b, dtype: s.dtype)
        case .unmerged:
            var l = try held(try s.tensor("weight", shape: shape))
            l.adapters = terms.map { $0.side(dtype: s.dtype, device: loader.device) }
            return l
        }
    }

    /// This module as a linear layer over a weight the model computed itself (a merged
    /// parametrization, as Jina's LoRA): registered like `linear(_:in:out:bias:)`, and held quantized
    /// when the quantization rules say so (quantized from `w` as given).
    public func linear(weight w: Tensor, bias: Tensor?) throws -> Linear {
        loader.registerLinear(path, w.shape)
        let scheme = try loader.precision.quantization.scheme(for: path).atLoad(shape: w.shape, path: path)
        let l = scheme == .none || isPlanning ? Linear(weight: w, bias: bias, dtype: dtype)
            : Linear(quantized: .quantize(w, scheme: scheme).on(device), bias: bias, dtype: dtype, device: loader.device)
        loader.addLinearBytes(l.weightBytes)
        return l
    }

    public func conv2d(_ sub: String, in inChannels: Int, out outChannels: Int, kernel: Int,
                       options: Conv2dOptions? = nil) throws -> Conv2d {
        let s = scope(sub)
        return Conv2d(weight: try s.tensor("weight", shape: [outChannels, inChannels, kernel, kernel]),
                      bias: try s.tensor("bias", shape: [outChannels]),
                      options: options ?? Conv2dOptions(stride: 1, padding: kernel / 2), dtype: s.dtype)
    }
}

/// Runs `body` in `dtype`: the input is cast there and the output back to the input's dtype, once
/// each, on the device; no cast at all when the dtypes agree (a uniform precision costs nothing).
@inline(__always)
public func computed(in dtype: DType, _ x: Tensor, _ body: (Tensor) throws -> Tensor) rethrows -> Tensor {
    if x.dtype == dtype { return try body(x) }
    return try body(x.to(dtype)).to(x.dtype)
}

/// y = x W^T + b, computing in the layer's dtype (inputs of another dtype are cast in and the
/// result cast back), plus the side products of unmerged adapters (y += scale * f(x), in order).
/// A quantized layer holds int8/fp8 values and fp32 scales, or a GGUF file's blocks, on its device
/// instead of `weight`. int8 and blocks are widened to the layer's dtype at each call, just before
/// the matrix product (one layer at a time; on CUDA by a kernel into a pooled scratch weight); fp8
/// runs the backend's W8A8 product.
public struct Linear {
    /// The float weight [out, in]; for a quantized layer, the int8 values' shape only (a
    /// placeholder: use `effectiveWeight()` for values).
    public let weight: Tensor
    public let bias: Tensor?
    public let dtype: DType
    /// Unmerged LoRA / LoKr side products (empty: a plain linear layer).
    public var adapters: [LinearAdapter]
    /// The quantized weight (int8, fp8 or GGUF blocks), when this layer is quantized.
    public let quantized: QuantizedWeight?
    /// Where a quantized layer's widened weight goes.
    let device: Device
    public init(weight: Tensor, bias: Tensor?, dtype: DType, adapters: [LinearAdapter] = []) {
        self.weight = weight; self.bias = bias; self.dtype = dtype; self.adapters = adapters
        quantized = nil; device = weight.device
    }
    public init(quantized: QuantizedWeight, bias: Tensor?, dtype: DType, device: Device, adapters: [LinearAdapter] = []) {
        self.quantized = quantized; self.bias = bias; self.dtype = dtype; self.device = device; self.adapters = adapters
        weight = Tensor.zeros([1], dtype: dtype).reshape([1, 1]).expand(quantized.shape)
    }
    /// Bytes the layer's weight holds (int8 + scales when quantized; the bias not counted).
    public var weightBytes: Int { quantized?.byteCount ?? (weight.isContiguous ? weight.byteCount : 0) }
    /// The weight the product uses, in the layer's dtype on its device.
    public func effectiveWeight() -> Tensor { quantized?.dequantized(dtype, device: device) ?? weight }
    public func callAsFunction(_ x: Tensor) -> Tensor {
        computed(in: dtype, x) { x in
            var y: Tensor
            if let qw = quantized, qw.scheme == .fp8 {
                y = x.backend.fp8Linear(x.contiguous(), weight: qw.q, weightScales: qw.scales,
                                        bias: bias.map { $0.dtype == x.dtype ? $0 : $0.to(x.dtype) })
            } else {
                y = x.linear(effectiveWeight(), bias: bias)
            }
            for a in adapters { y = y + a(x) }
            return y
        }
    }
}

extension Linear {
    /// Whether this layer takes its input as e4m3 codes with row scales (`E4M3Rows`, from a fused
    /// producer): an fp8 weight, no side products, on a backend whose fp8 product reads codes.
    /// Decided once per layer; callers feed `E4M3Rows` only when it holds and the producer's dtype is
    /// the layer's (every other layer and precision keeps the 16-bit path).
    public var takesE4M3Rows: Bool {
        quantized?.scheme == .fp8 && adapters.isEmpty && Backends.backend(for: device).takesE4M3Activations
    }

    /// y = x W^T + b for activations already quantized per row; the result in the layer's dtype.
    public func callAsFunction(_ x: E4M3Rows) -> Tensor {
        guard let qw = quantized, qw.scheme == .fp8, adapters.isEmpty else {
            preconditionFailure("Linear: e4m3 activations fed to a layer that is not fp8 (check takesE4M3Rows)")
        }
        return Backends.backend(for: x.device).fp8Linear(x, weight: qw.q, weightScales: qw.scales,
                                                         bias: bias.map { $0.dtype == dtype ? $0 : $0.to(dtype) }, dtype: dtype)
    }

    /// The same product for a reader that applies the scales itself (`ScaledProduct`): the backend
    /// leaves them unapplied where its FP8 GEMM cannot apply them. Layers without a bias only.
    public func product(_ x: E4M3Rows) -> ScaledProduct {
        guard let qw = quantized, qw.scheme == .fp8, adapters.isEmpty, bias == nil else {
            preconditionFailure("Linear.product: only for fp8 layers without bias or adapters (check takesE4M3Rows)")
        }
        return Backends.backend(for: x.device).fp8Product(x, weight: qw.q, weightScales: qw.scales, dtype: dtype)
    }
}

/// A 2-D convolution (NCHW) computing in the layer's dtype.
public struct Conv2d {
    public let weight: Tensor
    public let bias: Tensor
    public let options: Conv2dOptions
    public let dtype: DType
    public func callAsFunction(_ x: Tensor) -> Tensor {
        computed(in: dtype, x) { $0.conv2d(weight, bias: bias, options: options) }
    }
}

/// Where one model runs and in which precision: the part of the pipeline's placement policy that
/// concerns it. `name` is the model's slot ("dit", "vae", "gemma", "jina"), used in messages.
public struct ModelPlacement: Sendable, Equatable {
    public var name: String
    public var device: Device
    public var precision: ModulePrecision
    /// LoRA / LoKr adapters for this model, already matched to its linear layers (nil: none).
    public var adapters: ModelAdapters?
    /// `--offload`: the model keeps its per-block weights in pinned host memory and streams each
    /// block to `device` just ahead of use (models that have blocks: the DiT and Gemma).
    public var offload: Bool
    public init(name: String = "model", device: Device = .cpu, precision: ModulePrecision, adapters: ModelAdapters? = nil,
                offload: Bool = false) {
        self.name = name; self.device = device; self.precision = precision; self.adapters = adapters; self.offload = offload
    }
    /// The model's own dtype (its root module's).
    public var dtype: DType { precision.dtype(for: "") }
}

/// Tensors handed out by a closure, declared by specs (for models built from tensors in memory).
public final class ClosureWeightSource: WeightSource, @unchecked Sendable {
    let specs: [String: TensorSpec]
    let order: [String]
    let body: (String) throws -> Tensor
    public init(specs: [TensorSpec], tensor: @escaping (String) throws -> Tensor) {
        var d: [String: TensorSpec] = [:]
        for s in specs { d[s.name] = s }
        self.specs = d; order = specs.map(\.name); body = tensor
    }
    public var sourceDescription: String { "tensors in memory" }
    public var tensorNames: [String] { order }
    public func tensorInfo(_ name: String) -> TensorInfo? {
        specs[name].map { TensorInfo(name: name, dtype: .f32, shape: $0.shape, dataBegin: 0, dataEnd: 0) }
    }
    public func loadTensor(_ name: String) throws -> Tensor { try body(name) }
}
