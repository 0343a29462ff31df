import Foundation
import NewBieTensor

/// Which signal decides that a model call may reuse the joint layers' cached residual.
public enum StepCacheMode: String, Sendable, Equatable, CaseIterable {
    /// TeaCache: the relative L1 change of the first joint block's modulated input (RMSNorm of the
    /// block's input times 1 + scale_msa), accumulated over the calls since the last full one.
    case teacache
    /// First-Block-Cache: run the first joint block, and compare its output residual with the one
    /// of the last fully computed call (relative L1, not accumulated).
    case fbcache
}

/// An opt-in step cache (`--step-cache MODE --cache-threshold X`): speed over exactness. When the
/// signal of `mode` stays below `threshold`, the remaining joint blocks are skipped and the
/// residual they added at the last fully computed call is added instead. Threshold 0 never skips.
public struct StepCacheOptions: Sendable, Equatable {
    public var mode: StepCacheMode
    public var threshold: Float

    public init(mode: StepCacheMode, threshold: Float) throws {
        guard threshold.isFinite, threshold >= 0 else {
            throw DiTError("--cache-threshold \(threshold): must be a finite number >= 0")
        }
        self.mode = mode; self.threshold = threshold
    }

    /// From the command-line flags: nil when no mode is given; a threshold without a mode, or an
    /// unknown mode, is an error naming the flag.
    public static func parse(mode: String?, threshold: Float?) throws -> StepCacheOptions? {
        guard let m = mode else {
            if threshold != nil { throw DiTError("--cache-threshold needs --step-cache teacache or fbcache") }
            return nil
        }
        if m == "off" || m == "none" {
            if threshold != nil { throw DiTError("--cache-threshold has no effect with --step-cache \(m)") }
            return nil
        }
        guard let kind = StepCacheMode(rawValue: m.lowercased()) else {
            throw DiTError("--step-cache \(m): use teacache, fbcache or off")
        }
        return try StepCacheOptions(mode: kind, threshold: threshold ?? kind.defaultThreshold)
    }

    /// The form recorded in the PNG (`teacache:0.3`) and read back by `init(recorded:)`.
    public var recorded: String { "\(mode.rawValue):\(threshold)" }

    public init?(recorded s: String) {
        let parts = s.split(separator: ":")
        guard parts.count == 2, let m = StepCacheMode(rawValue: String(parts[0])), let t = Float(parts[1]),
              let o = try? StepCacheOptions(mode: m, threshold: t) else { return nil }
        self = o
    }
}

extension StepCacheMode {
    /// The threshold used when `--cache-threshold` is not given: TeaCache's published Lumina
    /// setting (0.3) and First-Block-Cache's usual one (0.1). Neither is tuned for NewBie.
    public var defaultThreshold: Float { self == .teacache ? 0.3 : 0.1 }
}

/// What a step cache did during one sampling run.
public struct StepCacheStats: Sendable, Equatable {
    /// Model calls whose joint blocks ran in full.
    public var computed = 0
    /// Model calls that reused the cached residual (all but the first joint block skipped for
    /// First-Block-Cache, all joint blocks for TeaCache).
    public var skipped = 0

    /// One line for the log: `step cache teacache:0.3: skipped 9 of 34 model calls`.
    public static func describe(_ s: StepCacheStats, _ o: StepCacheOptions) -> String {
        "step cache \(o.recorded): skipped \(s.skipped) of \(s.computed + s.skipped) model calls"
    }
}

/// The state of a step cache over one sampling run; `NextDiT.stepCache` holds it. One forward
/// pass carries the CFG batch [cond | uncond], so each sample keeps its own signal; the batch is
/// skipped only when every sample's signal is below the threshold, and its cached residual holds
/// every sample's own rows. A call whose sequence shape differs from the cached one (guidance
/// turned off by --cfg-trunc halves the batch; another prompt) computes in full and starts over.
public final class StepCache: @unchecked Sendable {
    public let options: StepCacheOptions
    public private(set) var stats = StepCacheStats()
    /// TeaCache: the previous call's modulated input; First-Block-Cache: the first block's residual
    /// at the last full call.
    private var reference: Tensor?
    /// Per-sample TeaCache distance accumulated since the last full call.
    private var accumulated: [Float] = []
    /// The residual the skipped blocks added at the last full call, and the shape it belongs to.
    private var residual: Tensor?

    public init(_ options: StepCacheOptions) { self.options = options }

    /// Forgets everything (a new sampling run).
    public func reset() {
        reference = nil; residual = nil; accumulated = []; stats = StepCacheStats()
    }

    /// Per-sample relative L1 change: mean|a - b| / mean|b| over all but the batch axis, in
    /// Float32 on the tensors' device (only B numbers come back to the host).
    static func relativeL1(_ a: Tensor, _ b: Tensor) -> [Float] {
        let diff = perSampleMean((a.to(.f32) - b.to(.f32)).apply(.abs))
        let base = perSampleMean(b.to(.f32).apply(.abs))
        // a zero reference changes "infinitely" unless the new value is zero too; NaN counts as a
        // change so that a broken signal never skips
        return zip(diff, base).map { d, r in
            if r > 0 { let q = d / r; return q.isNaN ? .infinity : q }
            return d == 0 ? 0 : .infinity
        }
    }

    /// The mean over all but the batch axis, per sample: the last axis first (one output per
    /// token, so a GPU reduces every row at once instead of one sample per thread block), then the
    /// rest. The rows are equal in size, so the mean of the row means is the mean.
    static func perSampleMean(_ x: Tensor) -> [Float] {
        let rows = x.rank > 2 ? x.reduce(.mean, axes: [x.rank - 1]) : x
        return rows.reduce(.mean, axes: Array(1..<rows.rank)).toFloats()
    }

    /// The joint blocks over `hs` [B, S, D] through the cache. `modulatedInput` gives TeaCache's
    /// signal, `first` runs the first joint block, `rest` the others.
    func run(_ hs: Tensor, modulatedInput: (Tensor) -> Tensor, first: (Tensor) throws -> Tensor,
             rest: (Tensor) throws -> Tensor) throws -> Tensor {
        let fits = residual?.shape == hs.shape
        switch options.mode {
        case .teacache:
            let signal = modulatedInput(hs)
            var skip = false
            if fits, let prev = reference, prev.shape == signal.shape {
                let change = StepCache.relativeL1(signal, prev)
                // the published Lumina polynomial was fit on another model; the change is taken as it is
                accumulated = zip(accumulated, change).map { $0 + $1 }
                skip = accumulated.allSatisfy { $0 < options.threshold }
            }
            reference = signal
            if skip, let r = residual {
                stats.skipped += 1
                return hs + r
            }
            accumulated = [Float](repeating: 0, count: hs.shape[0])
            let out = try rest(try first(hs))
            residual = out - hs
            stats.computed += 1
            return out
        case .fbcache:
            let h1 = try first(hs)
            let r1 = h1 - hs
            if fits, let prev = reference, prev.shape == r1.shape,
               StepCache.relativeL1(r1, prev).allSatisfy({ $0 < options.threshold }), let r = residual {
                stats.skipped += 1
                return h1 + r
            }
            let out = try rest(h1)
            reference = r1
            residual = out - h1
            stats.computed += 1
            return out
        }
    }
}
