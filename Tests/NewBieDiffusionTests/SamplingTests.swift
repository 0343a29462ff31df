import Foundation
import XCTest
@testable import NewBieDiffusion
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// Grids, integrators and guidance against tools/reference/make_sampling_fixtures.py
/// (official transport code semantics; torchdiffeq for Euler / midpoint).
final class SamplingTests: XCTestCase {
    static let file = try! SafeTensorsFile(path: Fixtures.path("sampling/sampling.safetensors"))
    static let cases: [[String: Any]] = {
        let json = file.metadata["cases"]!.data(using: .utf8)!
        return try! JSONSerialization.jsonObject(with: json) as! [[String: Any]]
    }()

    func ref(_ name: String) throws -> Tensor { try Self.file.tensor(name) }
    func cases(_ prefix: String) -> [[String: Any]] {
        Self.cases.filter { ($0["name"] as! String).hasPrefix(prefix + ".") }
    }

    func assertBitEqual(_ got: [Float], _ want: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, file: file, line: line)
        for i in 0..<min(got.count, want.count) where got[i].bitPattern != want[i].bitPattern {
            XCTFail("\(what)[\(i)]: \(got[i]) != \(want[i])", file: file, line: line)
            return
        }
    }

    // MARK: grids

    func testGridMatchesSpecWorkedExample() throws {
        // spec 3.2: N = 18, shift 6
        let spec: [Float] = [0, 0.0103, 0.0217, 0.0345, 0.0488, 0.0649, 0.0833, 0.1045, 0.1290, 0.1579, 0.1923,
                             0.2340, 0.2857, 0.3514, 0.4375, 0.5556, 0.7273, 1.0]
        let grid = try FlowSchedule.timeGrid(points: 18, shift: 6)
        XCTAssertEqual(grid.count, 18)
        for (g, s) in zip(grid, spec) { XCTAssertEqual(g, s, accuracy: 0.00005) }
        XCTAssertEqual(grid.first, 0)
        XCTAssertEqual(grid.last, 1)
        // and the official float32 values bit for bit
        assertBitEqual(grid, try ref("grid.n18_s6/t").toFloats(), "grid n18 s6")
    }

    func testGridsMatchOfficialBitForBit() throws {
        let all = cases("grid")
        XCTAssertEqual(all.count, 5)
        for c in all {
            let name = c["name"] as! String
            let grid = try FlowSchedule.timeGrid(points: c["n"] as! Int, shift: Float(c["shift"] as! Double))
            assertBitEqual(grid, try ref("\(name)/t").toFloats(), name)
        }
    }

    func testDPMSigmasMatchOfficial() throws {
        let all = cases("dpm_grid")
        XCTAssertEqual(all.count, 2)
        for c in all {
            let name = c["name"] as! String
            let sigmas = try FlowSchedule.dpmSigmas(steps: c["steps"] as! Int, shift: Float(c["shift"] as! Double))
            let want = try ref("\(name)/sigma").toFloats()
            assertBitEqual(sigmas, want, name)
            XCTAssertEqual(sigmas.last, 0)
        }
    }

    func testCFGTruncationCoversTheEarlyGrid() throws {
        // spec 1.7: with shift 6, cfg_trunc 0.25 is active for u < 2/3 of the uniform grid.
        let grid = try FlowSchedule.timeGrid(points: 18, shift: 6)
        let active = grid.filter { CFGCombine.isActive(t: $0, truncation: 0.25) }.count
        XCTAssertEqual(active, 12) // t_0 ... t_11 = 0.2340 < 0.25 <= t_12 = 0.2857
        XCTAssertTrue(grid.allSatisfy { CFGCombine.isActive(t: $0, truncation: 100) })
        XCTAssertFalse(CFGCombine.isActive(t: 0.25, truncation: 0.25))
    }

    // MARK: trajectories on the toy field v(x, t) = A x + b t

    func field(_ prefix: String) throws -> VelocityFunction {
        let a = try ref("\(prefix)/a").toFloats(), b = try ref("\(prefix)/b").toFloats()
        let d = b.count
        return { x, t in
            let xs = x.toFloats()
            var out = [Float](repeating: 0, count: d)
            for i in 0..<d {
                var s = 0.0
                for j in 0..<d { s += Double(a[i * d + j]) * Double(xs[j]) }
                out[i] = Float(s + Double(b[i]) * Double(t))
            }
            return Tensor(out, shape: x.shape)
        }
    }

    func checkTrajectory(_ sampler: FlowSampler, prefix: String, tol: Double) throws {
        let x0 = try ref("\(prefix)/x0")
        let states = try ref("\(prefix)/states")
        var got: [Tensor] = []
        var calls = 0
        let model = try field(prefix)
        let counted: VelocityFunction = { x, t in calls += 1; return try model(x, t) }
        let final = try sampler.sample(x0, model: counted) { step in got.append(step.x) }
        XCTAssertEqual(calls, sampler.evaluationCount, prefix)
        // odeint stores the initial state first; the DPM reference stores only the updates
        let offset = states.shape[0] - got.count
        XCTAssertTrue(offset == 0 || offset == 1, prefix)
        XCTAssertEqual(got.count, sampler.stepCount, prefix)
        for (i, s) in got.enumerated() {
            let want = states.select(0, i + offset)
            let e = relativeL2(s.toFloats(), want.toFloats())
            XCTAssertLessThanOrEqual(e, tol, "\(prefix) step \(i): relative L2 \(e)")
        }
        let e = relativeL2(final.toFloats(), states.select(0, states.shape[0] - 1).toFloats())
        print("[Sampling] \(prefix): final relative L2 \(String(format: "%.3e", e))")
        XCTAssertLessThanOrEqual(e, tol, prefix)
    }

    func testEulerMatchesTorchdiffeq() throws {
        for c in cases("euler") {
            let name = c["name"] as! String
            let sampler = try SamplerKind.euler.make(steps: c["n"] as! Int, shift: Float(c["shift"] as! Double))
            try checkTrajectory(sampler, prefix: name, tol: 1e-6)
        }
        XCTAssertEqual(cases("euler").count, 2)
    }

    func testMidpointMatchesTorchdiffeq() throws {
        for c in cases("midpoint") {
            let name = c["name"] as! String
            let sampler = try SamplerKind.midpoint.make(steps: c["n"] as! Int, shift: Float(c["shift"] as! Double))
            try checkTrajectory(sampler, prefix: name, tol: 1e-6)
        }
        XCTAssertEqual(cases("midpoint").count, 2)
    }

    func testRK4MatchesTorchdiffeq() throws {
        for c in cases("rk4") {
            let name = c["name"] as! String
            let sampler = try SamplerKind.rk4.make(steps: c["n"] as! Int, shift: Float(c["shift"] as! Double))
            XCTAssertEqual(sampler.evaluationCount, 4 * ((c["n"] as! Int) - 1))
            try checkTrajectory(sampler, prefix: name, tol: 1e-6)
        }
        XCTAssertEqual(cases("rk4").count, 1)
    }

    func testDPMSolverMatchesOfficial() throws {
        for c in cases("dpm") {
            let name = c["name"] as! String
            let sampler = try SamplerKind.dpm.make(steps: c["steps"] as! Int, shift: Float(c["shift"] as! Double))
            try checkTrajectory(sampler, prefix: name, tol: 1e-5)
        }
        XCTAssertEqual(cases("dpm").count, 3)
    }

    func testEvaluationCounts() throws {
        // spec 3.3: midpoint with 18 grid points = 17 intervals = 34 model evaluations
        XCTAssertEqual(try SamplerKind.midpoint.make(steps: 18, shift: 6).evaluationCount, 34)
        XCTAssertEqual(try SamplerKind.euler.make(steps: 29, shift: 6).evaluationCount, 28)
        XCTAssertEqual(try SamplerKind.dpm.make(steps: 20, shift: 6).evaluationCount, 20)
        XCTAssertEqual(SamplerKind(rawValue: "dpm++2m"), .dpm)
        XCTAssertEqual(SamplerKind(name: "dpm"), .dpm)
        XCTAssertEqual(SamplerKind(name: "Midpoint"), .midpoint)
        XCTAssertEqual(SamplerKind(name: "rk4"), .rk4)
        XCTAssertNil(SamplerKind(name: "dopri5"))
    }

    // MARK: guidance

    func testCFGCombineMatchesOfficial() throws {
        let all = cases("cfg")
        XCTAssertEqual(all.count, 4)
        for c in all {
            let name = c["name"] as! String
            let out = try CFGCombine.combine(cond: try ref("\(name)/cond"), uncond: try ref("\(name)/uncond"),
                                             scale: Float(c["scale"] as! Double), renorm: Float(c["renorm"] as! Double))
            let want = try ref("\(name)/out")
            XCTAssertEqual(out.shape, want.shape)
            let e = relativeL2(out.toFloats(), want.toFloats())
            XCTAssertLessThanOrEqual(e, 1e-6, "\(name): relative L2 \(e)")
            // per sample too (the renorm decision is per sample)
            for i in 0..<want.shape[0] {
                let ei = relativeL2(out.select(0, i).toFloats(), want.select(0, i).toFloats())
                XCTAssertLessThanOrEqual(ei, 1e-6, "\(name) sample \(i)")
            }
        }
    }

    /// The renorm as device work (tensor ops only, what the GPU runs; here on the CPU backend)
    /// against the official outputs: the branch-free factor min(1, maxNorm / newNorm) must make the
    /// same decision per sample.
    func testRenormAsDeviceWorkMatchesOfficial() throws {
        var renormed = 0
        for c in cases("cfg") {
            let name = c["name"] as! String
            let renorm = Float(c["renorm"] as! Double), scale = Float(c["scale"] as! Double)
            guard renorm > 0 else { continue }
            let cond = try ref("\(name)/cond"), uncond = try ref("\(name)/uncond")
            let v = uncond + (cond - uncond) * scale
            let out = CFGCombine.renormOnDevice(v, cond: cond, renorm: renorm, dtype: .f32)
            let want = try ref("\(name)/out")
            for i in 0..<want.shape[0] {
                let ei = relativeL2(out.select(0, i).toFloats(), want.select(0, i).toFloats())
                XCTAssertLessThanOrEqual(ei, 1e-6, "\(name) sample \(i)")
                if relativeL2(v.select(0, i).toFloats(), want.select(0, i).toFloats()) > 1e-3 { renormed += 1 }
            }
        }
        XCTAssertGreaterThan(renormed, 0, "no fixture sample exercises the rescaling")
    }

    /// In bf16 the device form rounds where the host's does: same outputs as the host branch on
    /// samples that are and are not rescaled, and 0/0 gives NaN on both.
    func testRenormAsDeviceWorkRoundsAsTheHostInBF16() throws {
        var rng = SplitMix(seed: 7)
        let n = 4 * 3 * 5 * 6
        let c = Tensor((0..<n).map { _ in rng.uniform() }, shape: [4, 3, 5, 6], dtype: .bf16)
        // samples 0, 1: a large guided difference (rescaled); 2, 3: uncond = 1.2 cond, so that
        // v = 0.3 cond is shorter than cond (left alone)
        let u = Tensor.concat([Tensor((0..<n / 2).map { _ in rng.uniform() * 2 }, shape: [2, 3, 5, 6], dtype: .bf16),
                               c.narrow(0, start: 2, length: 2) * 1.2], axis: 0)
        let host = try CFGCombine.combine(cond: c, uncond: u, scale: 4.5, renorm: 1, dtype: .bf16)
        let v = u + (c - u) * 4.5
        let device = CFGCombine.renormOnDevice(v, cond: c, renorm: 1, dtype: .bf16).to(.f32)
        XCTAssertEqual(device.toFloats(), host.toFloats())
        XCTAssertNotEqual(host.select(0, 0).toFloats(), v.select(0, 0).to(.f32).toFloats(), "sample 0 must be rescaled")
        XCTAssertEqual(host.select(0, 3).toFloats(), v.select(0, 3).to(.f32).toFloats(), "sample 3 must be left alone")
        let zero = Tensor.zeros([1, 3, 5, 6], dtype: .bf16)
        let hostZero = try CFGCombine.combine(cond: zero, uncond: zero, scale: 4.5, renorm: 1, dtype: .bf16).toFloats()
        let deviceZero = CFGCombine.renormOnDevice(zero, cond: zero, renorm: 1, dtype: .bf16).toFloats()
        XCTAssertTrue(hostZero.allSatisfy { $0.isNaN } && deviceZero.allSatisfy { $0.isNaN })
    }

    func testGuidedUsesConditionalOnlyWhenTruncated() throws {
        let x = Tensor([1, 2, 3, 4], shape: [1, 4])
        var both = 0, single = 0
        let run: (Float) throws -> Tensor = { t in
            try CFGCombine.guided(x: x, t: t, scale: 3, truncation: 0.5, renorm: 0,
                                  both: { x, _ in both += 1; return (x * 2, x) },
                                  condOnly: { x, _ in single += 1; return x * 2 })
        }
        XCTAssertEqual(try run(0.1).toFloats(), [4, 8, 12, 16]) // 1 + 3 (2 - 1) = 4 per unit
        XCTAssertEqual(try run(0.5).toFloats(), [2, 4, 6, 8])
        XCTAssertEqual(both, 1)
        XCTAssertEqual(single, 1)
    }

    // MARK: img2img

    func testImg2imgGrid() throws {
        let full = try FlowSchedule.timeGrid(points: 18, shift: 6)
        XCTAssertEqual(try FlowSchedule.img2imgGrid(points: 18, shift: 6, strength: 1), full)
        XCTAssertEqual(try FlowSchedule.img2imgGrid(points: 18, shift: 6, strength: 0), [1])
        let half = try FlowSchedule.img2imgGrid(points: 18, shift: 6, strength: 0.6)
        XCTAssertEqual(half.first!, 0.4, accuracy: 1e-7)
        XCTAssertEqual(Array(half.dropFirst()), full.filter { $0 > half.first! })
        XCTAssertEqual(half.last, 1)
        // strength 0: no step, the image latent comes back unchanged
        let data = Tensor([0.5, -1, 2, 0.25], shape: [1, 4]), noise = Tensor([1, 1, -1, 3], shape: [1, 4])
        let start = try img2imgStart(data: data, noise: noise, strength: 0)
        XCTAssertEqual(start.toFloats(), data.toFloats())
        let out = try EulerSampler(grid: [1]).sample(start) { x, _ in x }
        XCTAssertEqual(out.toFloats(), data.toFloats())
        // strength 1: pure noise
        XCTAssertEqual(try img2imgStart(data: data, noise: noise, strength: 1).toFloats(), noise.toFloats())
        let mid = try img2imgStart(data: data, noise: noise, strength: 0.25).toFloats()
        XCTAssertEqual(mid[0], 0.75 * 0.5 + 0.25 * 1, accuracy: 1e-7)
    }

    // MARK: bad settings

    func expectError(_ what: String, _ contains: String, _ body: () throws -> Void,
                     file: StaticString = #filePath, line: UInt = #line) {
        do {
            try body()
            XCTFail("\(what): no error", file: file, line: line)
        } catch let e as SamplingError {
            XCTAssertTrue(e.message.contains(contains), "\(what): \(e.message)", file: file, line: line)
        } catch {
            XCTFail("\(what): unexpected \(error)", file: file, line: line)
        }
    }

    func testBadSettingsAreRejected() {
        let x = Tensor([1, 2], shape: [1, 2])
        expectError("one grid point", "at least 2 points") { _ = try FlowSchedule.timeGrid(points: 1, shift: 6) }
        expectError("negative shift", "shift") { _ = try FlowSchedule.timeGrid(points: 10, shift: -1) }
        expectError("NaN shift", "shift") { _ = try FlowSchedule.timeGrid(points: 10, shift: .nan) }
        expectError("dpm 1 step", "at least 2 steps") { _ = try FlowSchedule.dpmSigmas(steps: 1, shift: 6) }
        expectError("strength > 1", "strength") { _ = try FlowSchedule.img2imgGrid(points: 10, shift: 6, strength: 1.5) }
        expectError("strength NaN", "strength") { _ = try img2imgStart(data: x, noise: x, strength: .nan) }
        expectError("img2img shapes", "differ") { _ = try img2imgStart(data: x, noise: Tensor([1], shape: [1, 1]), strength: 0.5) }
        expectError("decreasing grid", "not increasing") { _ = try EulerSampler(grid: [0, 0.5, 0.4]).sample(x) { x, _ in x } }
        expectError("grid outside", "outside") { _ = try MidpointSampler(grid: [0, 1.5]).sample(x) { x, _ in x } }
        expectError("model shape", "returned shape") {
            _ = try EulerSampler(grid: [0, 1]).sample(x) { _, _ in Tensor([1], shape: [1, 1]) }
        }
        expectError("dpm increasing", "not decreasing") { _ = try DPMSolverPP2M(sigmas: [0.5, 0.6, 0]).sample(x) { x, _ in x } }
        expectError("cfg shapes", "differ") { _ = try CFGCombine.combine(cond: x, uncond: Tensor([1], shape: [1, 1]), scale: 4, renorm: 1) }
        expectError("cfg renorm", "renorm") { _ = try CFGCombine.combine(cond: x, uncond: x, scale: 4, renorm: -1) }
    }
}
