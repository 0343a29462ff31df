import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// ComfyUI's flow-model sampling against ComfyUI's own code (tools/reference/
/// make_comfy_sampling_fixtures.py): the model sampling's sigmas, the simple / normal / karras /
/// beta schedules, and euler, euler_ancestral, dpmpp_2m and res_multistep trajectories with a
/// stand-in velocity, within fp32 1e-5.
final class ComfySamplingTests: XCTestCase {
    static let reference: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("sampling/comfy_reference.safetensors"))
    func ref(_ n: String) throws -> Tensor { try ComfySamplingTests.reference.tensor(n) }

    func testModelSigmas() throws {
        let ms = ComfyFlowModelSampling(shift: 6)
        let want = try ref("model.sigmas/sigmas").toFloats()
        XCTAssertEqual(ms.sigmas.count, 1000)
        XCTAssertLessThanOrEqual(maxAbsDiff(ms.sigmas, want), 1e-7)
        XCTAssertEqual(ms.sigmaMax, 1)
    }

    func testSchedules() throws {
        let ms = ComfyFlowModelSampling(shift: 6)
        for s in ComfyScheduler.allCases {
            for n in [9, 20] {
                let want = try ref("sched.\(s.rawValue).\(n)/sigmas").toFloats()
                let got = try ms.schedule(s, steps: n)
                XCTAssertEqual(got.count, want.count, "\(s) \(n)")
                let err = maxAbsDiff(got, want)
                print("comfy schedule \(s.rawValue) \(n): \(got.count) sigmas, max error \(String(format: "%.1e", err))")
                XCTAssertLessThanOrEqual(err, 1e-6, "\(s) \(n): \(got) vs \(want)")
            }
        }
    }

    func testSamplerTrajectories() throws {
        let ms = ComfyFlowModelSampling(shift: 6)
        let noise = try ref("inputs/noise"), m = try ref("inputs/m")
        let model: VelocityFunction = { x, t in x.tanh() * -0.7 + m * (1.3 * (1 - t)) }
        for sampler in ComfySampler.allCases {
            for sched in ComfyScheduler.allCases {
                let name = "run.\(sampler.rawValue).\(sched.rawValue)"
                let sigmas = try ms.schedule(sched, steps: 9)
                var states: [Tensor] = [noise]
                let k = ComfyKSampler(sampler: sampler, sigmas: sigmas, seed: 42)
                let out = try k.sample(noise, model: model, onStep: { states.append($0.x) })
                let want = try ref("\(name)/out")
                let wantStates = try ref("\(name)/states")
                let scale = max(1.0, maxAbsDiff(want.toFloats(), [Float](repeating: 0, count: want.count)))
                let err = maxAbsDiff(out.toFloats(), want.toFloats()) / scale
                var worst = 0.0
                for i in 0..<wantStates.shape[0] {
                    worst = max(worst, maxAbsDiff(states[i].toFloats(), wantStates.select(0, i).toFloats()) / scale)
                }
                print("comfy \(name): out error \(String(format: "%.1e", err)), states \(String(format: "%.1e", worst))")
                XCTAssertLessThanOrEqual(err, 1e-5, name)
                XCTAssertLessThanOrEqual(worst, 1e-5, name)
            }
        }
    }

    /// The SDE noise's parts: NumPy's SeedSequence words, torchsde's Brownian tree increments.
    func testSeedSequenceAndBrownianTree() throws {
        let words = try ref("seedseq/words").toInts().map { UInt32($0) }
        XCTAssertEqual(NumpySeedSequence(entropy: 42, spawnKey: [5, 3], poolSize: 24).generateState(4), words)
        let big = try ref("seedseq/big").toInts().map { UInt32($0) }
        XCTAssertEqual(NumpySeedSequence(entropy: (1 << 40) + 7, poolSize: 24).generateState(3), big)
        let cases = try JSONSerialization.jsonObject(with: Data(ComfySamplingTests.reference.metadata["cases"]!.utf8)) as! [[String: Any]]
        let c = cases.first { ($0["name"] as? String) == "brownian" }!
        let queries = c["queries"] as! [[Double]]
        let tree = BrownianTree(t0: c["t0"] as! Double, t1: 1, shape: [1, 16, 6, 4], entropy: 42)
        let want = try ref("brownian/w")
        for (i, q) in queries.enumerated() {
            let got = tree(q[0], q[1])
            let err = maxAbsDiff(got.toFloats(), want.select(0, i).toFloats())
            XCTAssertLessThanOrEqual(err, 1e-5, "query \(q): \(err)")
        }
    }

    func testBetaQuantile() {
        // symmetric: the median of Beta(0.6, 0.6) is 1/2; I_x at the quantile gives q back
        XCTAssertEqual(BetaDistribution.quantile(0.5, a: 0.6, b: 0.6), 0.5, accuracy: 1e-12)
        for q in [0.01, 0.2, 0.77, 0.999] {
            XCTAssertEqual(BetaDistribution.cdf(BetaDistribution.quantile(q, a: 0.6, b: 0.6), a: 0.6, b: 0.6), q, accuracy: 1e-12)
        }
    }
}
