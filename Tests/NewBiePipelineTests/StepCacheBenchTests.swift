import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBiePipeline
import NewBieTensor
import NewBieTestSupport

/// `bench --dit --step-cache-runs` on the CPU backend with the tiny model's DiT: the variants the GPU
/// bench runs, with the exact properties its report relies on (threshold 0 checks every call and
/// equals the uncached run bit for bit; a huge threshold skips every call after the first).
final class StepCacheBenchTests: XCTestCase {
    /// The tiny model's DiT (two joint layers: First-Block-Cache has one to skip), deterministic
    /// weights about 1/sqrt(fan_in), norms near 1.
    func setup() throws -> (NextDiT, DiTConditioning, DiTConditioning, SamplingSettings) {
        let cfg = TinyModel.ditConfig
        let shapes = Dictionary(uniqueKeysWithValues: try cfg.expectedTensors().enumerated().map { ($1.name, ($0, $1.shape)) })
        let dit = try NextDiT(config: cfg, dtype: .f32, tensor: { name in
            guard let (k, shape) = shapes[name] else { throw PipelineError("no tensor \(name)") }
            let isNorm = shape.count == 1 && !name.hasSuffix(".bias")
            let scale: Float = shape.count == 2 ? 1 / Float(shape[1]).squareRoot() : 0.1
            let n = shape.reduce(1, *)
            return Tensor((0..<n).map { i in let v = sin(Float(i) * 0.6180339 + Float(k) * 1.37); return isNorm ? 1 + 0.1 * v : scale * v }, shape: shape)
        })
        func values(_ n: Int, _ seed: Float) -> [Float] { (0..<n).map { sin(Float($0) * 0.731 + seed) } }
        let (capDim, clipDim) = (cfg.capFeatDim, cfg.clipTextDim ?? 0)
        let cond = DiTConditioning(capFeats: Tensor(values(5 * capDim, 1.7), shape: [1, 5, capDim]), capMask: Tensor([1, 1, 1, 1, 1], shape: [1, 5]),
                                   clipPooled: Tensor(values(clipDim, 2.9), shape: [1, clipDim]))
        let uncond = DiTConditioning(capFeats: Tensor(values(5 * capDim, 0.4), shape: [1, 5, capDim]), capMask: Tensor([1, 1, 1, 1, 1], shape: [1, 5]),
                                     clipPooled: Tensor(values(clipDim, 0.8), shape: [1, clipDim]))
        let settings = SamplingSettings(width: 32, height: 32, steps: 7, sampler: .euler, shift: 6,
                                        cfg: CFGOptions(scale: 5, truncation: 100, renorm: 0), seed: 3, rng: .torch)
        return (dit, cond, uncond, settings)
    }

    func testThresholdZeroEqualsUncachedAndAHugeOneSkipsAllButTheFirstCall() throws {
        let (dit, cond, uncond, settings) = try setup()
        let variants = try StepCacheBench.parse("eager,graphs,teacache:0,fbcache:0,teacache:1e9,fbcache:1e9,teacache", flag: "--step-cache-runs")
        XCTAssertEqual(variants.count, 7)
        XCTAssertEqual(variants[6].cache?.threshold, StepCacheMode.teacache.defaultThreshold)
        let runs = try StepCacheBench.run(dit: dit, cond: cond, uncond: uncond, settings: settings, variants: variants)
        XCTAssertEqual(runs.count, 7)
        for r in runs {
            XCTAssertTrue(r.finite, "\(r.variant)")
            XCTAssertEqual(r.calls, 6, "\(r.variant)")
            XCTAssertFalse(r.maxAbsDifference.isNaN, "\(r.variant)")
        }
        XCTAssertTrue(runs[0].identical && runs[0].maxAbsDifference == 0)
        XCTAssertTrue(runs[1].identical, "graphs on the CPU backend run eagerly")
        for r in runs[2...3] {
            XCTAssertEqual(r.stats?.skipped, 0, "\(r.variant)")
            XCTAssertEqual(r.stats?.computed, 6, "\(r.variant)")
            XCTAssertTrue(r.identical, "\(r.variant): the check alone must not change the result")
        }
        for r in runs[4...5] {
            XCTAssertEqual(r.stats?.computed, 1, "\(r.variant)")
            XCTAssertEqual(r.stats?.skipped, 5, "\(r.variant)")
            XCTAssertFalse(r.identical, "\(r.variant): skipping five calls must change the latent")
            XCTAssertGreaterThan(r.relativeL2, 0)
        }
        // the model is left as it was found
        XCTAssertNil(dit.stepCache)
        XCTAssertTrue(StepCacheBench.describe(runs[4], baseline: runs[0]).contains("skipped 5 of 6 calls"))
    }

    func testBadListsNameTheFlag() {
        for (list, expected) in [("", "give at least one"), ("teacache:x", "is not a number"), ("tea", "use eager, graphs"),
                                 ("fbcache:-1", "--cache-threshold -1")] {
            XCTAssertThrowsError(try StepCacheBench.parse(list, flag: "--step-cache-runs")) { e in
                XCTAssertTrue("\(e)".contains("--step-cache-runs") && "\(e)".contains(expected), "\(list): \(e)")
            }
        }
    }
}
