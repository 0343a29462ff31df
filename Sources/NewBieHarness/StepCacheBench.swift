import Foundation
import NewBieDiffusion
import NewBiePipeline
import NewBieTensor

/// A whole sampling run (Euler over the shifted grid, guided on every step) repeated with one DiT
/// in one process: uncached (eager and, on a GPU, replayed as a CUDA graph) and with step caches
/// (`bench --device cuda --dit --step-cache-runs ...`). Each run's final latent is compared with
/// the first run's, so a threshold of 0 (the check runs, nothing is skipped) must equal the
/// uncached eager run exactly, and a huge threshold (every call after the first skipped) gives the
/// speed of a hit. With random weights the skips a real threshold makes say nothing about quality.
public enum StepCacheBench {
    /// One variant: no cache (`graphs`: CUDA graph replay allowed) or a cache (always eager: the
    /// cache decides on the host between blocks, which a recorded step cannot).
    public struct Variant: Sendable, Equatable, CustomStringConvertible {
        public var cache: StepCacheOptions?
        public var graphs: Bool
        public var description: String { cache?.recorded ?? (graphs ? "uncached, CUDA graphs" : "uncached, eager") }
    }

    public struct Run: Sendable {
        public var variant: Variant
        /// Wall time of the whole sampling call, device work finished.
        public var seconds: Double
        public var calls: Int
        public var stats: StepCacheStats?
        /// Against the first run's final latent: largest |difference|, and ||a - b|| / ||b||.
        public var maxAbsDifference: Float
        public var relativeL2: Float
        public var identical: Bool
        public var finite: Bool
    }

    /// Parses a comma-separated list: `eager`, `graphs`, `teacache[:X]`, `fbcache[:X]`; errors name
    /// the flag. An entry without a threshold takes the mode's default.
    public static func parse(_ list: String, flag: String) throws -> [Variant] {
        let items = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !items.isEmpty else { throw PipelineError("\(flag) \"\(list)\": give at least one of eager, graphs, teacache[:X], fbcache[:X]") }
        return try items.map { item in
            switch item.lowercased() {
            case "eager": return Variant(cache: nil, graphs: false)
            case "graphs": return Variant(cache: nil, graphs: true)
            default:
                let parts = item.split(separator: ":", maxSplits: 1).map(String.init)
                var threshold: Float? = nil
                if parts.count == 2 {
                    guard let t = Float(parts[1]) else { throw PipelineError("\(flag): \"\(item)\": the threshold \"\(parts[1])\" is not a number") }
                    threshold = t
                }
                guard StepCacheMode(rawValue: parts[0].lowercased()) != nil else {
                    throw PipelineError("\(flag): \"\(item)\": use eager, graphs, teacache[:X] or fbcache[:X]")
                }
                do {
                    return Variant(cache: try StepCacheOptions.parse(mode: parts[0].lowercased(), threshold: threshold), graphs: false)
                } catch { throw PipelineError("\(flag): \"\(item)\": \(error)") }
            }
        }
    }

    /// Samples `settings` (its noise, grid, guidance) once per variant with `dit` on its device.
    /// `finish` waits for the device (the CUDA stream) before a run's clock stops.
    public static func run(dit: NextDiT, cond: DiTConditioning, uncond: DiTConditioning, settings: SamplingSettings,
                           variants: [Variant], finish: () throws -> Void = {},
                           log: (String) -> Void = { _ in }) throws -> [Run] {
        try settings.validate()
        let recorded = dit.useRecordedSteps, previousCache = dit.stepCache
        defer { dit.useRecordedSteps = recorded; dit.stepCache = previousCache }
        let start = settings.noise(channels: dit.config.inChannels).to(.f32, device: dit.device)
        // one untimed two-call run per cache mode first: the cache's own kernels (its reductions)
        // compile at their first use, which would otherwise land in the first timed run
        var warm = settings
        warm.steps = 3
        for mode in Set(variants.compactMap { $0.cache?.mode }).sorted(by: { $0.rawValue < $1.rawValue }) {
            dit.stepCache = StepCache(try StepCacheOptions(mode: mode, threshold: 0))
            dit.useRecordedSteps = false
            _ = try warm.makeSampler().sample(start, model: { x, t in
                try dit.guidedVelocity(x, t: t, cond: cond, uncond: uncond, options: warm.cfg).to(.f32)
            }, onStep: nil)
        }
        dit.stepCache = nil
        var reference: [Float]? = nil
        var runs: [Run] = []
        for v in variants {
            let sampler = try settings.makeSampler()
            let cache = v.cache.map(StepCache.init)
            dit.stepCache = cache
            dit.useRecordedSteps = v.graphs
            var calls = 0
            let model: VelocityFunction = { x, t in
                calls += 1
                return try dit.guidedVelocity(x, t: t, cond: cond, uncond: uncond, options: settings.cfg).to(.f32)
            }
            try finish()
            let t0 = DispatchTime.now().uptimeNanoseconds
            let out = try sampler.sample(start, model: model, onStep: nil)
            try finish()
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            dit.stepCache = nil
            let values = out.to(.f32, device: .cpu).toFloats()
            let ref = reference ?? values
            if reference == nil { reference = values }
            var maxDiff: Float = 0, num: Double = 0, den: Double = 0
            for (a, b) in zip(values, ref) {
                let d = a - b
                // NaN must never read as agreement
                maxDiff = d.isNaN ? .nan : (maxDiff.isNaN ? maxDiff : Swift.max(maxDiff, abs(d)))
                num += Double(d) * Double(d); den += Double(b) * Double(b)
            }
            let run = Run(variant: v, seconds: seconds, calls: calls, stats: cache?.stats, maxAbsDifference: maxDiff,
                          relativeL2: den > 0 ? Float((num / den).squareRoot()) : (num == 0 ? 0 : .infinity),
                          identical: values.map(\.bitPattern) == ref.map(\.bitPattern), finite: values.allSatisfy(\.isFinite))
            runs.append(run)
            log(describe(run, baseline: runs.first!))
        }
        return runs
    }

    /// One line per run: time, calls skipped, ratio to the first run, difference from its latent.
    public static func describe(_ r: Run, baseline: Run) -> String {
        let skipped = r.stats.map { "skipped \($0.skipped) of \($0.computed + $0.skipped) calls" } ?? "no cache"
        return String(format: "  %-26@ %8.3f s  %6.1f ms/call  %.3fx first  %@; latent vs first: max |diff| %.3g, rel L2 %.3g, identical %@%@",
                      r.variant.description as NSString, r.seconds, 1000 * r.seconds / Double(Swift.max(r.calls, 1)),
                      r.seconds / Swift.max(baseline.seconds, 1e-12), skipped, r.maxAbsDifference, r.relativeL2,
                      r.identical ? "yes" : "no", r.finite ? "" : " (NON-FINITE)")
    }
}
