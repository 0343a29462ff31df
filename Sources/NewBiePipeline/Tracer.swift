import Foundation
import NewBieTensor
import NewBieWeights

/// Summary of a tensor for tracing: shape, dtype, min / max / mean over the finite values, and
/// the count of NaN and infinite values.
public struct TensorSummary: Sendable, Equatable, CustomStringConvertible {
    public let shape: [Int]
    public let dtype: DType
    public let min: Float, max: Float, mean: Double
    public let nanCount: Int, infCount: Int

    public init(_ t: Tensor) {
        shape = t.shape
        dtype = t.dtype
        var lo = Float.infinity, hi = -Float.infinity, sum = 0.0, n = 0, nan = 0, inf = 0
        for v in t.toFloats() {
            if v.isNaN { nan += 1; continue }
            if v.isInfinite { inf += 1; continue }
            lo = Swift.min(lo, v); hi = Swift.max(hi, v); sum += Double(v); n += 1
        }
        min = n > 0 ? lo : .nan; max = n > 0 ? hi : .nan; mean = n > 0 ? sum / Double(n) : .nan
        nanCount = nan; infCount = inf
    }

    public var isFinite: Bool { nanCount == 0 && infCount == 0 }

    public var description: String {
        String(format: "%@ min %.5g max %.5g mean %.5g", "\(shape)", min, max, mean)
            + (isFinite ? "" : ", \(nanCount) NaN, \(infCount) Inf")
    }
}

/// The error `--detect-overflow` stops with: the first non-finite tensor, named by stage/module
/// path, step and dtype.
public struct OverflowError: Error, CustomStringConvertible, LocalizedError {
    public let path: String
    public let step: Int?
    public let t: Float?
    public let computeDType: DType
    public let summary: TensorSummary
    public var description: String {
        var at = path
        if let s = step { at += " at step \(s)" }
        if let t = t { at += String(format: " (t = %.4f)", t) }
        return "non-finite values in \(at), compute dtype \(computeDType): \(summary.nanCount) NaN, \(summary.infCount) Inf in \(summary.shape)"
            + (computeDType == .f16 ? " (fp16 overflows above 65504; compute this module in fp32 with --precision \"fp16,\(path)=fp32\", or use bf16)" : "")
    }
    public var errorDescription: String? { description }
}

/// One mechanism for `--trace` (print every reported tensor's summary) and `--detect-overflow`
/// (stop at the first non-finite one). The stages report their outputs to it when one is set;
/// with none set nothing is computed.
public final class PipelineTracer {
    public let trace: Bool
    public let detectOverflow: Bool
    public let computeDType: DType
    let sink: (String) -> Void
    /// Compute dtype of every module of the loaded models, by traced path ("dit.layers.3"); shown
    /// beside each module's summary and named by the overflow error.
    public private(set) var moduleDTypes: [String: DType] = [:]
    /// Every summary reported, in order (kept for tests and tools).
    public private(set) var records: [(path: String, step: Int?, summary: TensorSummary)] = []
    /// Sees every reported tensor whole, with its path and step (after its summary is recorded),
    /// e.g. to keep chosen module outputs for comparing one run with another. nil: nothing more
    /// is done.
    public var observer: ((_ path: String, _ step: Int?, _ tensor: Tensor) -> Void)?

    /// The first non-finite tensor reported (path, step, summary), if any.
    public var firstNonFinite: (path: String, step: Int?, summary: TensorSummary)? { records.first { !$0.summary.isFinite } }

    public init(trace: Bool, detectOverflow: Bool, computeDType: DType,
                sink: @escaping (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }) {
        self.trace = trace; self.detectOverflow = detectOverflow; self.computeDType = computeDType; self.sink = sink
    }

    /// Records the compute dtype of a model's modules under `prefix` ("dit", "vae", ...).
    public func registerModules(_ prefix: String, _ dtypes: [String: DType]) {
        for (path, d) in dtypes { moduleDTypes[path.isEmpty ? prefix : "\(prefix).\(path)"] = d }
    }

    /// The compute dtype of a traced path (its module's), else the tracer's default.
    public func computeDType(of path: String) -> DType { moduleDTypes[path] ?? computeDType }

    /// Reports `tensor` as the output of `path` (e.g. "dit.velocity") at an optional sampler step
    /// and time; throws `OverflowError` for a non-finite tensor when detecting.
    public func report(_ path: String, step: Int? = nil, t: Float? = nil, _ tensor: Tensor) throws {
        let s = TensorSummary(tensor)
        records.append((path, step, s))
        observer?(path, step, tensor)
        if trace {
            var at = path + (moduleDTypes[path].map { " (computes in \($0.userName))" } ?? "")
            if let st = step { at += " step \(st)" }
            if let tt = t { at += String(format: " t=%.4f", tt) }
            sink("trace \(at): \(s)")
        }
        if detectOverflow && !s.isFinite {
            throw OverflowError(path: path, step: step, t: t, computeDType: computeDType(of: path), summary: s)
        }
    }
}
