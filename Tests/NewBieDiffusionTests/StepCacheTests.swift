import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// The opt-in step cache over a short Euler run of the fixture DiT with guidance (batch 2).
final class StepCacheTests: XCTestCase {
    static let reference: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("dit/reference.safetensors"))

    struct Run { let x: [Float]; let stats: StepCacheStats? }

    /// Euler over `times` with guided velocities; `truncation` < 1 halves the batch for the late steps.
    func euler(_ m: NextDiT, cache: StepCacheOptions?, times: [Float], truncation: Float = 100) throws -> Run {
        let r = StepCacheTests.reference
        let cap = try r.tensor("inputs/cap"), clip = try r.tensor("inputs/clip")
        let mask = Tensor(try r.tensor("inputs/mask").toInts().map(Float.init), shape: [2, 9])
        let cond = DiTConditioning(capFeats: cap.narrow(0, start: 0, length: 1), capMask: mask.narrow(0, start: 0, length: 1),
                                   clipPooled: clip.narrow(0, start: 0, length: 1))
        let uncond = DiTConditioning(capFeats: cap.narrow(0, start: 1, length: 1), capMask: mask.narrow(0, start: 1, length: 1),
                                     clipPooled: clip.narrow(0, start: 1, length: 1))
        var x = try r.tensor("inputs/x").narrow(0, start: 0, length: 1).contiguous()
        let sc = cache.map(StepCache.init)
        m.stepCache = sc
        defer { m.stepCache = nil }
        for k in 0..<(times.count - 1) {
            let v = try m.guidedVelocity(x, t: times[k], cond: cond, uncond: uncond,
                                         options: CFGOptions(scale: 4, truncation: truncation, renorm: 0))
            x = x + v * (times[k + 1] - times[k])
        }
        return Run(x: x.toFloats(), stats: sc?.stats)
    }

    let times: [Float] = [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]

    func testThresholdZeroIsBitIdentical() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        let plain = try euler(m, cache: nil, times: times)
        XCTAssertFalse(plain.x.contains { !$0.isFinite })
        for mode in StepCacheMode.allCases {
            let cached = try euler(m, cache: try StepCacheOptions(mode: mode, threshold: 0), times: times)
            XCTAssertEqual(cached.x, plain.x, "\(mode) at threshold 0 must be bit-identical to no cache")
            XCTAssertEqual(cached.stats, StepCacheStats(computed: times.count - 1, skipped: 0), "\(mode)")
        }
    }

    func testLargeThresholdSkipsAndReportsIt() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        let plain = try euler(m, cache: nil, times: times)
        for mode in StepCacheMode.allCases {
            let cached = try euler(m, cache: try StepCacheOptions(mode: mode, threshold: 1e6), times: times)
            // only the first call computes: nothing to compare with before it
            XCTAssertEqual(cached.stats, StepCacheStats(computed: 1, skipped: times.count - 2), "\(mode)")
            XCTAssertFalse(cached.x.contains { !$0.isFinite }, "\(mode)")
            let err = relativeL2(cached.x, plain.x)
            print("step cache \(mode), all but one call skipped: relative L2 \(err) against no cache")
            XCTAssertGreaterThan(err, 0, "\(mode): skipping must change the result")
        }
    }

    /// A higher threshold never computes more calls.
    func testSkipsGrowWithTheThreshold() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        for mode in StepCacheMode.allCases {
            var skipped: [Int] = []
            for threshold: Float in [0, 0.02, 0.1, 0.5, 2] {
                let run = try euler(m, cache: try StepCacheOptions(mode: mode, threshold: threshold), times: times)
                XCTAssertEqual(run.stats.map { $0.computed + $0.skipped }, times.count - 1)
                skipped.append(run.stats?.skipped ?? -1)
            }
            print("step cache \(mode), thresholds 0, 0.02, 0.1, 0.5, 2: skipped \(skipped)")
            XCTAssertEqual(skipped, skipped.sorted(), "\(mode)")
            XCTAssertEqual(skipped.first, 0)
        }
    }

    /// --cfg-trunc halves the batch mid-run: the cached residual of the batch-2 calls does not fit,
    /// so the first cond-only call computes in full and the cache starts over.
    func testBatchChangeComputesInFull() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        let cached = try euler(m, cache: try StepCacheOptions(mode: .teacache, threshold: 1e6), times: times, truncation: 0.35)
        // t = 0, 0.1, 0.2, 0.3 guided (first computes), t = 0.4 ... 0.6 cond only (first computes)
        XCTAssertEqual(cached.stats, StepCacheStats(computed: 2, skipped: 5))
    }

    /// Per sample: the batch is skipped only when every CFG branch's change is below the threshold.
    func testRelativeL1IsPerSample() {
        let a = Tensor([1, 1, 2, 2, 0, 0], shape: [3, 2]), b = Tensor([1, 1, 1, 1, 0, 0], shape: [3, 2])
        XCTAssertEqual(StepCache.relativeL1(a, b), [0, 1, 0])
        XCTAssertEqual(StepCache.relativeL1(Tensor([1, 1], shape: [1, 2]), Tensor([0, 0], shape: [1, 2])), [.infinity])
        XCTAssertEqual(StepCache.relativeL1(Tensor([Float.nan, 1], shape: [1, 2]), Tensor([1, 1], shape: [1, 2])), [.infinity])
        // [B, S, D], as the DiT's sequences: rows reduced first, then tokens; the same per-sample
        // mean|a - b| / mean|b| as over all values at once
        let bv = (0..<24).map { Float(($0 * 7) % 11) - 5 }
        var av = bv
        av[3] += 2; av[9] -= 4; av[20] += 1
        let r = StepCache.relativeL1(Tensor(av, shape: [2, 3, 4]), Tensor(bv, shape: [2, 3, 4]))
        for s in 0..<2 {
            let idx = (12 * s)..<(12 * s + 12)
            let want = idx.reduce(0.0) { $0 + Double(abs(av[$1] - bv[$1])) } / idx.reduce(0.0) { $0 + Double(abs(bv[$1])) }
            XCTAssertEqual(Double(r[s]), want, accuracy: 1e-6, "sample \(s)")
        }
        XCTAssertEqual(StepCache.relativeL1(Tensor(av, shape: [2, 3, 4]).to(.bf16), Tensor(av, shape: [2, 3, 4]).to(.bf16)), [0, 0])
    }

    func testParseAndRecord() throws {
        XCTAssertNil(try StepCacheOptions.parse(mode: nil, threshold: nil))
        XCTAssertNil(try StepCacheOptions.parse(mode: "off", threshold: nil))
        XCTAssertEqual(try StepCacheOptions.parse(mode: "fbcache", threshold: nil), try StepCacheOptions(mode: .fbcache, threshold: 0.1))
        let t = try XCTUnwrap(try StepCacheOptions.parse(mode: "TeaCache", threshold: 0.25))
        XCTAssertEqual(t.recorded, "teacache:0.25")
        XCTAssertEqual(StepCacheOptions(recorded: t.recorded), t)
        XCTAssertNil(StepCacheOptions(recorded: "teacache:-1"))
        XCTAssertThrowsError(try StepCacheOptions.parse(mode: nil, threshold: 0.2)) { XCTAssert("\($0)".contains("--step-cache")) }
        XCTAssertThrowsError(try StepCacheOptions.parse(mode: "magic", threshold: nil)) { XCTAssert("\($0)".contains("magic")) }
        XCTAssertThrowsError(try StepCacheOptions.parse(mode: "fbcache", threshold: .nan)) { XCTAssert("\($0)".contains("--cache-threshold")) }
    }
}
