import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport

/// `Backend.attentionByMatmul` (attention from matmul, softmax pieces and element-wise ops) against
/// the CPU backend's tiled attention kernel, on the CPU backend.
final class MatmulAttentionTests: XCTestCase {
    struct Case {
        var name: String
        var b = 1, lq = 7, lk = 7, hq = 1, hkv = 1, d = 16, dv = 16
        var options = AttentionOptions()
        /// Forces chunks of this many bytes of scores (nil: the default bound, one chunk here).
        var maxScoreBytes: Int? = nil
    }

    /// Compares both ways of computing attention for f32 (1e-5) and bf16 (1e-2); returns the f32 output.
    @discardableResult
    func check(_ c: Case, seed: UInt64 = 1, file: StaticString = #filePath, line: UInt = #line) -> [Float] {
        var rng = TestRandom(seed: seed)
        // spread-out scores (q scaled up) so that the softmax is not nearly uniform
        let q = Tensor(rng.floats(c.b * c.lq * c.hq * c.d).map { $0 * 3 }, shape: [c.b, c.lq, c.hq, c.d])
        let k = Tensor(rng.floats(c.b * c.lk * c.hkv * c.d), shape: [c.b, c.lk, c.hkv, c.d])
        let v = Tensor(rng.floats(c.b * c.lk * c.hkv * c.dv), shape: [c.b, c.lk, c.hkv, c.dv])
        var f32Out: [Float] = []
        for (dtype, tol) in [(DType.f32, 1e-5), (.bf16, 1e-2)] {
            let (qd, kd, vd) = (q.to(dtype), k.to(dtype), v.to(dtype))
            let want = qd.attention(k: kd, v: vd, options: c.options)
            let backend = CPUBackend.shared
            let got = c.maxScoreBytes.map { backend.attentionByMatmul(qd, kd, vd, options: c.options, maxScoreBytes: $0) }
                ?? backend.attentionByMatmul(qd, kd, vd, options: c.options)
            XCTAssertEqual(got.shape, [c.b, c.lq, c.hq, c.dv], c.name, file: file, line: line)
            XCTAssertEqual(got.dtype, dtype, c.name, file: file, line: line)
            let g = got.toFloats()
            XCTAssertFalse(g.contains { !$0.isFinite }, "\(c.name) \(dtype): non-finite output", file: file, line: line)
            let err = relativeL2(g, want.toFloats())  // NaN anywhere gives +infinity
            OpReport.record("attentionByMatmul \(c.name) \(dtype)", err, tol)
            XCTAssertLessThanOrEqual(err, tol, "\(c.name) \(dtype)", file: file, line: line)
            if dtype == .f32 { f32Out = g }
        }
        return f32Out
    }

    func testPlainGQAAndDifferentLengths() {
        check(Case(name: "plain"))
        check(Case(name: "GQA 8/2, B 2, Lq 5, Lk 11", b: 2, lq: 5, lk: 11, hq: 8, hkv: 2))
        check(Case(name: "Lq 13 > Lk 4, Dv 24 != D 8", lq: 13, lk: 4, hq: 2, hkv: 1, d: 8, dv: 24))
        check(Case(name: "scale 0.3", b: 2, lq: 6, lk: 9, hq: 3, hkv: 3, options: AttentionOptions(scale: 0.3)))
    }

    func testKeyPaddingMaskWithAFullyMaskedSample() {
        let (lk, h, dv) = (9, 4, 16)
        // sample 0 keeps keys 0-5, sample 1 has no key at all; an f32 mask with a non-unit value
        for mask in [Tensor(ints: [1, 1, 1, 1, 1, 1, 0, 0, 0] + [Int32](repeating: 0, count: lk), shape: [2, lk]),
                     Tensor([1, 2, 0.5, 1, 1, 1, 0, 0, 0] + [Float](repeating: 0, count: lk), shape: [2, lk])] {
            let out = check(Case(name: "key padding \(mask.dtype)", b: 2, lq: 5, lk: lk, hq: h, hkv: 2, dv: dv,
                                 options: AttentionOptions(keyPaddingMask: mask)))
            let second = Array(out[(5 * h * dv)...])
            XCTAssertEqual(second, [Float](repeating: 0, count: 5 * h * dv), "a fully masked sample gives zeros")
        }
    }

    func testCausalAndSlidingWindow() {
        check(Case(name: "causal", lq: 10, lk: 10, hq: 4, hkv: 2, options: AttentionOptions(causal: true)))
        check(Case(name: "causal, Lq 4 < Lk 10 (cached keys)", b: 2, lq: 4, lk: 10, hq: 2, hkv: 1, options: AttentionOptions(causal: true)))
        check(Case(name: "causal + window 3", b: 2, lq: 12, lk: 12, hq: 4, hkv: 1, options: AttentionOptions(causal: true, slidingWindow: 3)))
        check(Case(name: "causal + window 4, Lq 5 < Lk 11", lq: 5, lk: 11, hq: 2, hkv: 2, options: AttentionOptions(causal: true, slidingWindow: 4)))
        // Lq > Lk: the first Lq - Lk queries see no key and give zeros
        let out = check(Case(name: "causal, Lq 9 > Lk 5", lq: 9, lk: 5, hq: 2, hkv: 1, options: AttentionOptions(causal: true)))
        XCTAssertEqual(Array(out[..<(4 * 2 * 16)]), [Float](repeating: 0, count: 4 * 2 * 16))
        XCTAssertNotEqual(Array(out[(4 * 2 * 16)...]), [Float](repeating: 0, count: 5 * 2 * 16))
    }

    func testAdditiveBias() {
        var rng = TestRandom(seed: 5)
        let (b, lq, lk, hq) = (2, 6, 8, 4)
        let perHead = Tensor(rng.floats(hq * lq * lk).map { $0 * 2 }, shape: [1, hq, lq, lk])
        let perSample = Tensor(rng.floats(b * lq * lk), shape: [b, 1, lq, lk], dtype: .bf16)
        var blocked = rng.floats(b * hq * lq * lk)
        for i in stride(from: 0, to: blocked.count, by: 3) { blocked[i] = -.infinity }
        let full = Tensor(blocked, shape: [b, hq, lq, lk])
        check(Case(name: "bias [1, H, Lq, Lk]", b: b, lq: lq, lk: lk, hq: hq, hkv: 2, options: AttentionOptions(bias: perHead)))
        check(Case(name: "bias [B, 1, Lq, Lk] bf16", b: b, lq: lq, lk: lk, hq: hq, hkv: 1, options: AttentionOptions(bias: perSample)))
        check(Case(name: "bias with -inf + mask + causal", b: b, lq: lq, lk: lk, hq: hq, hkv: 4,
                   options: AttentionOptions(causal: true, slidingWindow: 5,
                                             keyPaddingMask: Tensor(ints: [1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1], shape: [b, lk]),
                                             bias: full)))
    }

    /// Tiny score budgets split the query rows into chunks (one row, a few rows, uneven last chunk);
    /// every option that is sliced per chunk (bias rows, causal positions) is covered.
    func testChunkedQueryRows() {
        var rng = TestRandom(seed: 9)
        let (b, lq, lk, hq) = (2, 11, 7, 4)
        let bias = Tensor(rng.floats(b * hq * lq * lk), shape: [b, hq, lq, lk])
        let mask = Tensor(ints: [1, 1, 0, 1, 1, 1, 1] + [Int32](repeating: 0, count: lk), shape: [b, lk])
        let rowBytes = b * hq * lk * 4
        for rows in [1, 3, 4, 10] {
            check(Case(name: "chunks of \(rows) rows", b: b, lq: lq, lk: lk, hq: hq, hkv: 2,
                       options: AttentionOptions(causal: true, slidingWindow: 6, keyPaddingMask: mask, bias: bias),
                       maxScoreBytes: rows * rowBytes))
        }
        check(Case(name: "budget below one row", b: b, lq: lq, lk: lk, hq: hq, hkv: 2, options: AttentionOptions(bias: bias), maxScoreBytes: 1))
    }

    /// The chunk bound holds: with a small budget the tracked memory stays far below one Lq x Lk
    /// score matrix; with the default (one chunk) it does not.
    func testChunksBoundTheScoreMemory() {
        let (l, d) = (1024, 16)
        var rng = TestRandom(seed: 13)
        let q = Tensor(rng.floats(l * d), shape: [1, l, 1, d])
        let k = Tensor(rng.floats(l * d), shape: [1, l, 1, d])
        let v = Tensor(rng.floats(l * d), shape: [1, l, 1, d])
        let backend = CPUBackend.shared
        let scoreMatrix = l * l * 4  // 4 MiB
        func growth(_ maxScoreBytes: Int) -> (Int, Tensor) {
            let before = backend.memoryStats.currentBytes
            backend.resetPeakMemory()
            let out = backend.attentionByMatmul(q, k, v, options: AttentionOptions(causal: true), maxScoreBytes: maxScoreBytes)
            return (backend.memoryStats.peakBytes - before, out)
        }
        let (small, chunked) = growth(64 << 10)  // 16 rows of 4 KiB
        let (large, whole) = growth(256 << 20)
        OpReport.record("attentionByMatmul 1024x1024 peak growth: 64 KiB chunks \(small), one chunk \(large)", 0, 0)
        XCTAssertLessThan(small, scoreMatrix / 8, "64 KiB chunks grew tracked memory by \(small) bytes")
        XCTAssertGreaterThanOrEqual(large, scoreMatrix)
        XCTAssertLessThanOrEqual(relativeL2(chunked.toFloats(), whole.toFloats()), 1e-6)
    }

    /// The shapes it exists for: the VAE's single head of 512 channels, Gemma's 256 with GQA.
    func testLargeHeadDims() {
        check(Case(name: "D 512, one head (VAE)", lq: 300, lk: 300, d: 512, dv: 512, maxScoreBytes: 100 * 300 * 4))
        check(Case(name: "D 256, GQA 4/1, causal + window (Gemma)", lq: 40, lk: 40, hq: 4, hkv: 1, d: 256, dv: 256,
                   options: AttentionOptions(scale: 0.0625, causal: true, slidingWindow: 16)))
    }

    func testEmptyShapes() {
        let backend = CPUBackend.shared
        var rng = TestRandom(seed: 2)
        let q = Tensor(rng.floats(3 * 2 * 4), shape: [1, 3, 2, 4])
        let none = Tensor.empty([1, 0, 1, 4])
        let out = backend.attentionByMatmul(q, none, Tensor.empty([1, 0, 1, 6]), options: AttentionOptions())
        XCTAssertEqual(out.shape, [1, 3, 2, 6])
        XCTAssertEqual(out.toFloats(), [Float](repeating: 0, count: 36), "no keys: zeros")
        XCTAssertEqual(backend.attentionByMatmul(Tensor.empty([1, 0, 2, 4]), q.narrow(2, start: 0, length: 1).contiguous(),
                                                 q.narrow(2, start: 0, length: 1).contiguous(), options: AttentionOptions()).shape, [1, 0, 2, 4])
    }
}
