import XCTest
import NewBieCUDA
import NewBieTensor
import NewBieTestSupport

/// On a machine with an NVIDIA GPU: a few ops on the CUDA backend against the CPU backend (the
/// full per-op table is `newbie gpu-check`). Without one (CI), the test is skipped visibly.
final class CUDABackendTests: XCTestCase {
    func cuda() throws -> CUDABackend {
        do { return try CUDABackend.load() } catch {
            throw XCTSkip("no CUDA device here (\(error)); the GPU checks run with `newbie gpu-check` on a GPU machine")
        }
    }

    func testOpsMatchTheCPU() throws {
        let gpu = try cuda()
        gpu.poisonAllocations = true
        var rng = TestRandom(seed: 42)
        for dt in [DType.f32, .bf16] {
            let tol = dt == .f32 ? 1e-5 : 1e-2
            let x = Tensor(rng.floats(3 * 17 * 96), shape: [3, 17, 96], dtype: dt)
            let w = Tensor(rng.floats(40 * 96).map { $0 * 0.1 }, shape: [40, 96], dtype: dt)
            let b = Tensor(rng.floats(40), shape: [40], dtype: dt)
            let lin = x.linear(w, bias: b)
            let linGPU = x.to(device: .cuda(0)).linear(w.to(device: .cuda(0)), bias: b.to(device: .cuda(0)))
            XCTAssertLessThanOrEqual(relativeL2(linGPU.to(device: .cpu), lin), tol, "linear \(dt)")

            let q = Tensor(rng.floats(2 * 70 * 6 * 64), shape: [2, 70, 6, 64], dtype: dt)
            let k = Tensor(rng.floats(2 * 70 * 2 * 64), shape: [2, 70, 2, 64], dtype: dt)
            let v = Tensor(rng.floats(2 * 70 * 2 * 64), shape: [2, 70, 2, 64], dtype: dt)
            let att = q.attention(k: k, v: v)
            let attGPU = q.to(device: .cuda(0)).attention(k: k.to(device: .cuda(0)), v: v.to(device: .cuda(0)))
            XCTAssertLessThanOrEqual(relativeL2(attGPU.to(device: .cpu), att), tol, "attention \(dt)")
        }
    }
}
