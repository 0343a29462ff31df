/// The op set every backend implements. Inputs arrive as described on each method (the `Tensor`
/// wrappers make them contiguous or broadcast them first); results are new contiguous tensors on
/// the backend's device. Reduced-precision results are computed in Float32 and rounded once to
/// the output dtype.
public protocol Backend: AnyObject, Sendable {
    var device: Device { get }

    // MARK: memory
    /// Uninitialised memory for `byteCount` bytes.
    func allocate(byteCount: Int) -> Buffer
    /// Copies host bytes into a buffer at a byte offset.
    func upload(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, byteOffset: Int)
    /// Copies a buffer's bytes to host memory.
    func download(_ buffer: Buffer, byteOffset: Int, into bytes: UnsafeMutableRawBufferPointer)
    /// Bytes currently allocated by this backend and the high-water mark since the last reset.
    var memoryStats: MemoryStats { get }
    func resetPeakMemory()

    // MARK: data movement
    /// Copies `src` (any strides, any dtype) into `dst` (any strides, same shape), converting dtype.
    func copy(_ src: Tensor, into dst: Tensor)
    /// Sets every element of a contiguous tensor.
    func fill(_ dst: Tensor, value: Float)

    // MARK: element-wise (a, b: same shape as the result, possibly with zero strides)
    func unary(_ op: UnaryOp, _ x: Tensor, dtype: DType) -> Tensor
    func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, dtype: DType) -> Tensor

    // MARK: reductions and normalisation (x contiguous)
    /// Reduces x viewed as [outer, n, inner] over n; result [outer, inner].
    func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, dtype: DType) -> Tensor
    /// Softmax over the last axis.
    func softmax(_ x: Tensor) -> Tensor
    func rmsNorm(_ x: Tensor, weight: Tensor?, eps: Float, style: RMSNormStyle) -> Tensor
    func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor
    /// x [B, C, *spatial]; weight/bias [C].
    func groupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor

    // MARK: matrix products
    /// x [..., in] (contiguous) times weight [out, in] (contiguous, any float dtype) plus bias [out].
    func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor
    /// Batched a [batch, m, k] times b [batch, k, n] (or b [batch, n, k] with transposeB); contiguous.
    func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool) -> Tensor
    /// Quantized weights (QuantizedOps.swift: definitions, and the host defaults the CPU runs).
    func dequantizeInt8(_ q: Tensor, scales: Tensor, group: Int, dtype: DType) -> Tensor
    /// GGML blocks widened to a float weight (BlockFormats.swift).
    func dequantizeBlocks(_ blocks: Tensor, format: BlockFormat, rows: Int, cols: Int, dtype: DType) -> Tensor
    /// fp8 W8A8 with per-row activation scales (QuantizedOps.swift: the definition).
    func quantizeRowsE4M3(_ x: Tensor) -> E4M3Rows
    func fp8Linear(_ x: E4M3Rows, weight: Tensor, weightScales: Tensor, bias: Tensor?, dtype: DType) -> Tensor
    func fp8Linear(_ x: Tensor, weight: Tensor, weightScales: Tensor, bias: Tensor?) -> Tensor
    /// The same product with its scales left to the reader (`ScaledProduct`), and their application.
    func fp8Product(_ x: E4M3Rows, weight: Tensor, weightScales: Tensor, dtype: DType) -> ScaledProduct
    func applyScales(_ p: ScaledProduct) -> Tensor
    /// Whether fp8 linear layers on this backend take `E4M3Rows` from the fused producers below
    /// (false where the FP8 product is not native and fp8 layers widen their weight instead).
    var takesE4M3Activations: Bool { get }

    // MARK: transformer ops
    /// x [B, L, H, D] rotated by angles whose cos/sin are [B or 1, L, D/2] (Float32).
    func rope(_ x: Tensor, cos: Tensor, sin: Tensor, layout: RoPELayout) -> Tensor
    /// q [B, Lq, Hq, D], k/v [B, Lk, Hkv, D] (contiguous); result [B, Lq, Hq, Dv].
    func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, options: AttentionOptions) -> Tensor
    /// table [V, D], ids [N] (i32 or i64); result [N, D] in `dtype`.
    func embedding(_ table: Tensor, ids: Tensor, dtype: DType) -> Tensor

    // MARK: convolution and resampling (NCHW, contiguous)
    func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, options: Conv2dOptions) -> Tensor
    func upsampleNearest2x(_ x: Tensor) -> Tensor

    // MARK: fused transformer ops
    // Each has a default implementation composed of the ops above (what the CPU backend runs);
    // a backend may replace it with one kernel that rounds at the same points, so both agree.

    /// `x.rmsNorm(weight) * (scale + 1)`: x [B, L, D], scale [B, D] or nil (plain RMSNorm).
    func rmsNormModulate(_ x: Tensor, weight: Tensor, eps: Float, scale: Tensor?) -> Tensor
    /// `x + tanh(gate) * y.rmsNorm(weight)`: x, y [B, L, D], gate [B, D] or nil (no gate).
    func rmsNormGatedResidual(_ x: Tensor, _ y: Tensor, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor
    /// `a.silu() * b` (SwiGLU), same shapes.
    func swiglu(_ a: Tensor, _ b: Tensor) -> Tensor
    /// `quantizeRowsE4M3(rmsNormModulate(...))` and `quantizeRowsE4M3(swiglu(a, b))`: the producers
    /// of fp8 layers' inputs writing e4m3 codes and row scales (each value rounded to x's dtype
    /// first, so the codes equal the unfused pair's).
    func rmsNormModulateE4M3(_ x: Tensor, weight: Tensor, eps: Float, scale: Tensor?) -> E4M3Rows
    func swigluE4M3(_ a: Tensor, _ b: Tensor) -> E4M3Rows
    /// The three readers of fp8 products, taking them before their scales (`ScaledProduct`): the
    /// same values as scaling first (`applyScales`), then the op above.
    func qkvNormRope(_ qkv: ScaledProduct, heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                     cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor)
    func rmsNormGatedResidual(_ x: Tensor, _ y: ScaledProduct, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor
    func swigluE4M3(_ a: ScaledProduct, _ b: ScaledProduct) -> E4M3Rows
    /// `x.groupNorm(...).silu()` (the VAE's norm-then-activation): x [B, C, *spatial] contiguous,
    /// the normalised value rounded to x's dtype before SiLU, as the two ops round.
    func groupNormSiLU(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor
    /// Splits a fused projection qkv [B, L, (Hq + 2 Hkv) * D] into q [B, L, Hq, D] and k, v
    /// [B, L, Hkv, D], with per-head RMSNorm (`roundThenWeight`) and RoPE applied to q and k.
    func qkvNormRope(_ qkv: Tensor, heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                     cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor)

    // MARK: recorded work

    /// Records the device work `body` queues, without running it, so that it can be replayed on the
    /// same buffers (CUDA graphs); nil where the backend cannot (the CPU). `body` must only queue
    /// device work: no upload of data that changes between replays, no download, no wait. The
    /// returned output tensor is rewritten by each replay.
    func record(_ body: @escaping () throws -> Tensor) throws -> (work: RecordedWork, output: Tensor)?

    // MARK: weight streaming

    /// Pinned host memory and side-queue copies for `--offload` (`WeightRing`); the default copies
    /// at once (the CPU, where host memory is the device's).
    var weightStreaming: WeightStreaming { get }

    // MARK: errors

    /// Throws (and clears) the first failure since the last call. Device backends queue work
    /// without waiting, so a failed launch, library call or allocation is kept ("sticky"), later
    /// work is skipped, and the failure surfaces here, at the next synchronisation point (a
    /// download, the end of a model's forward pass).
    func checkErrors() throws
}

/// Device work recorded once by `Backend.record` and queued again by `replay()`.
public protocol RecordedWork: AnyObject {
    func replay()
}

extension Backend {
    public func checkErrors() throws {}

    public var weightStreaming: WeightStreaming { HostWeightStreaming(backend: self) }

    public func record(_ body: @escaping () throws -> Tensor) throws -> (work: RecordedWork, output: Tensor)? { nil }

    public func rmsNormModulate(_ x: Tensor, weight: Tensor, eps: Float, scale: Tensor?) -> Tensor {
        let h = x.rmsNorm(weight: weight, eps: eps)
        guard let s = scale else { return h }
        return h * (s + 1).unsqueeze(1)
    }

    public func rmsNormGatedResidual(_ x: Tensor, _ y: Tensor, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor {
        let n = y.rmsNorm(weight: weight, eps: eps)
        guard let g = gate else { return x + n }
        return x + g.tanh().unsqueeze(1) * n
    }

    public func swiglu(_ a: Tensor, _ b: Tensor) -> Tensor { a.silu() * b }

    public func groupNormSiLU(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        groupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps).silu()
    }

    public func qkvNormRope(_ qkv: Tensor, heads: Int, kvHeads: Int, qNorm: Tensor, kNorm: Tensor, eps: Float,
                            cos: Tensor, sin: Tensor, layout: RoPELayout) -> (q: Tensor, k: Tensor, v: Tensor) {
        let (b, l) = (qkv.shape[0], qkv.shape[1])
        let d = qkv.shape[2] / (heads + 2 * kvHeads)
        let parts = qkv.split([heads * d, kvHeads * d, kvHeads * d], axis: 2)
        let q = parts[0].reshape([b, l, heads, d]).rmsNorm(weight: qNorm, eps: eps).rope(cos: cos, sin: sin, layout: layout)
        let k = parts[1].reshape([b, l, kvHeads, d]).rmsNorm(weight: kNorm, eps: eps).rope(cos: cos, sin: sin, layout: layout)
        return (q, k, parts[2].reshape([b, l, kvHeads, d]))
    }
}

public struct MemoryStats: Sendable, CustomStringConvertible {
    public var currentBytes: Int
    public var peakBytes: Int
    public init(currentBytes: Int, peakBytes: Int) { self.currentBytes = currentBytes; self.peakBytes = peakBytes }
    public var description: String {
        "current \(formatBytes(currentBytes)), peak \(formatBytes(peakBytes))"
    }
}

public func formatBytes(_ n: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n); var u = 0
    while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
    return u == 0 ? "\(n) B" : String(format: "%.2f %@", v, units[u])
}

public enum UnaryOp: Sendable, Equatable {
    case neg, abs, square, sqrt, rsqrt, exp, log, tanh, sigmoid, relu
    case sin, cos
    case silu
    case geluTanh   // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    case geluErf    // 0.5 x (1 + erf(x / sqrt(2)))
    /// a * x + b
    case affine(Float, Float)
    case clamp(Float, Float)
    /// Float(x != 0) for masks; x for floats.
    case identity
}

public enum BinaryOp: Sendable, Equatable {
    case add, sub, mul, div, maximum, minimum
}

public enum ReduceOp: Sendable, Equatable {
    case sum, mean, max, min
    /// sum of squares
    case sumSquares
}

/// How an RMSNorm applies its weight.
public enum RMSNormStyle: Sendable, Equatable {
    /// x * rsqrt(mean(x^2) + eps), rounded to the input dtype, then times `weight` (rounded again):
    /// LLaMA, Lumina-2 and NewBie's DiT.
    case roundThenWeight
    /// x * rsqrt(mean(x^2) + eps) * (1 + weight) all in Float32, rounded once: Gemma.
    case gemmaOnePlusWeight
}

public enum RoPELayout: Sendable, Equatable {
    /// Channel pairs (2m, 2m+1) are the real and imaginary part of rotation m (Lumina, NewBie DiT).
    case interleaved
    /// Channel m pairs with m + D/2 (`rotate_half`, Gemma, Jina XLM-R).
    case rotateHalf
}

public struct AttentionOptions: Sendable {
    /// Multiplies q.k; default 1/sqrt(D).
    public var scale: Float?
    /// Key j is visible to query i only if j <= i + (Lk - Lq).
    public var causal: Bool
    /// With `causal`, also hides keys more than `window - 1` positions behind the query (Gemma).
    public var slidingWindow: Int?
    /// [B, Lk]: nonzero = real token. Masked keys get no weight.
    public var keyPaddingMask: Tensor?
    /// Additive logits bias broadcastable to [B, H, Lq, Lk] (given as a 4-D tensor; size-1 axes broadcast).
    public var bias: Tensor?

    public init(scale: Float? = nil, causal: Bool = false, slidingWindow: Int? = nil,
                keyPaddingMask: Tensor? = nil, bias: Tensor? = nil) {
        self.scale = scale; self.causal = causal; self.slidingWindow = slidingWindow
        self.keyPaddingMask = keyPaddingMask; self.bias = bias
    }
}

public struct Conv2dOptions: Sendable, Equatable {
    public var strideH: Int, strideW: Int
    public var padTop: Int, padBottom: Int, padLeft: Int, padRight: Int

    public init(stride: Int = 1, padding: Int = 0) {
        strideH = stride; strideW = stride
        padTop = padding; padBottom = padding; padLeft = padding; padRight = padding
    }
    public init(strideH: Int, strideW: Int, padTop: Int, padBottom: Int, padLeft: Int, padRight: Int) {
        self.strideH = strideH; self.strideW = strideW
        self.padTop = padTop; self.padBottom = padBottom; self.padLeft = padLeft; self.padRight = padRight
    }
    /// The FLUX/SD encoder's stride-2 downsampling: pad right and bottom by one, no padding before.
    public static let downsampleAsymmetric = Conv2dOptions(strideH: 2, strideW: 2, padTop: 0, padBottom: 1, padLeft: 0, padRight: 1)
}
