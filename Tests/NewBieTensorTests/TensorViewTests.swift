import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport

/// Views and strides (metadata only), checked against index arithmetic; plus properties of the
/// CPU kernels that no small fixture reaches (attention memory, zero rows, blocked weights).
final class TensorViewTests: XCTestCase {
    /// A [2, 3, 4, 5] tensor whose element at (a, b, c, d) is its row-major index.
    private func iota(_ shape: [Int], dtype: DType = .f32) -> Tensor {
        let n = shape.reduce(1, *)
        return Tensor((0..<n).map { Float($0) }, shape: shape, dtype: dtype)
    }

    private func index(_ idx: [Int], _ shape: [Int]) -> Int {
        var r = 0
        for (i, s) in zip(idx, shape) { r = r * s + i }
        return r
    }

    /// All multi-indices of `shape` in row-major order.
    private func indices(_ shape: [Int]) -> [[Int]] {
        var out: [[Int]] = [[]]
        for s in shape { out = out.flatMap { p in (0..<s).map { p + [$0] } } }
        return out
    }

    func testPermuteThenContiguous() {
        let shape = [2, 3, 4, 5]
        for dtype in [DType.f32, .bf16, .f16] {
            let x = iota(shape, dtype: dtype)
            let order = [2, 0, 3, 1]
            let p = x.permute(order)
            XCTAssertEqual(p.shape, order.map { shape[$0] })
            XCTAssertEqual(p.strides, order.map { x.strides[$0] })
            XCTAssertFalse(p.isContiguous)
            XCTAssertTrue(p.buffer === x.buffer, "permute must not copy")
            let c = p.contiguous()
            XCTAssertTrue(c.isContiguous)
            XCTAssertEqual(c.strides, Tensor.contiguousStrides(c.shape))
            let got = c.toFloats()
            let want = indices(p.shape).map { pi -> Float in
                var src = [Int](repeating: 0, count: 4)
                for (k, a) in order.enumerated() { src[a] = pi[k] }
                return Float(index(src, shape))
            }
            XCTAssertEqual(got, want, "\(dtype)")
        }
    }

    func testNarrowSelectOffsets() {
        let shape = [2, 3, 4, 5]
        let x = iota(shape)
        let n = x.narrow(2, start: 1, length: 2)
        XCTAssertEqual(n.offset, 1 * x.strides[2])
        XCTAssertEqual(n.strides, x.strides)
        XCTAssertTrue(n.buffer === x.buffer)
        XCTAssertFalse(n.isContiguous)
        let want = indices(n.shape).map { i in Float(index([i[0], i[1], i[2] + 1, i[3]], shape)) }
        XCTAssertEqual(n.contiguous().toFloats(), want)
        XCTAssertEqual(n.toFloats(), want, "toFloats of a view reads through its strides")

        // narrow of a narrow accumulates offsets
        let nn = n.narrow(3, start: 2, length: 3).narrow(0, start: 1, length: 1)
        XCTAssertEqual(nn.offset, x.strides[0] + x.strides[2] + 2)
        let want2 = indices(nn.shape).map { i in Float(index([i[0] + 1, i[1], i[2] + 1, i[3] + 2], shape)) }
        XCTAssertEqual(nn.toFloats(), want2)

        // select removes the axis and moves the offset
        let s = x.select(1, 2)
        XCTAssertEqual(s.shape, [2, 4, 5])
        XCTAssertEqual(s.offset, 2 * x.strides[1])
        XCTAssertEqual(s.strides, [x.strides[0], x.strides[2], x.strides[3]])
        XCTAssertEqual(s.toFloats(), indices(s.shape).map { i in Float(index([i[0], 2, i[1], i[2]], shape)) })

        // split pieces are narrows with increasing offsets, and cover the axis
        let parts = x.split([1, 4], axis: 3)
        XCTAssertEqual(parts.map(\.offset), [0, 1])
        XCTAssertEqual(parts.map { $0.shape[3] }, [1, 4])
        let rejoined = Tensor.concat(parts, axis: 3)
        XCTAssertEqual(rejoined.toFloats(), x.toFloats())
        let chunks = x.chunk(3, axis: 1)
        XCTAssertEqual(chunks.map(\.offset), [0, 20, 40])
    }

    func testExpandHasZeroStrides() {
        let z = Tensor([1, 2, 3, 4], shape: [2, 1, 2, 1])
        let e = z.expand([3, 2, 5, 2, 4])
        XCTAssertEqual(e.shape, [3, 2, 5, 2, 4])
        XCTAssertEqual(e.strides, [0, z.strides[0], 0, z.strides[2], 0])
        XCTAssertTrue(e.buffer === z.buffer)
        let zv = z.toFloats()
        let want = indices(e.shape).map { i in zv[index([i[1], 0, i[3], 0], z.shape)] }
        XCTAssertEqual(e.contiguous().toFloats(), want)
        // an expanded (zero-stride) operand inside a binary op
        let a = Tensor((0..<(3 * 2 * 5 * 2 * 4)).map { Float($0) * 0.5 }, shape: e.shape)
        let sum = (a + e).toFloats()
        let av = a.toFloats()
        XCTAssertEqual(sum, (0..<av.count).map { av[$0] + want[$0] })
        // expanded view of a narrowed, offset tensor
        let x = iota([4, 6])
        let col = x.narrow(1, start: 3, length: 1)          // [4, 1], offset 3
        let ce = col.expand([4, 5])
        XCTAssertEqual(ce.offset, 3)
        XCTAssertEqual(ce.strides, [6, 0])
        XCTAssertEqual(ce.toFloats(), indices([4, 5]).map { i in Float(i[0] * 6 + 3) })
    }

    func testUnsqueezeSqueezeReshape() {
        let x = iota([3, 4])
        let u = x.unsqueeze(1)
        XCTAssertEqual(u.shape, [3, 1, 4])
        XCTAssertTrue(u.isContiguous)
        XCTAssertEqual(u.squeeze(1).shape, [3, 4])
        XCTAssertEqual(x.unsqueeze(-1).shape, [3, 4, 1])
        // reshape of contiguous data shares the buffer; of a transposed view copies
        let r = x.reshape([2, -1])
        XCTAssertEqual(r.shape, [2, 6])
        XCTAssertTrue(r.buffer === x.buffer)
        let t = x.transpose(0, 1)
        let rt = t.reshape([12])
        XCTAssertFalse(rt.buffer === x.buffer)
        XCTAssertEqual(rt.toFloats(), indices([4, 3]).map { i in Float(i[1] * 4 + i[0]) })
    }

    func testConcatOfViewsMixedLayouts() {
        let x = iota([2, 3, 4])
        let a = x.permute([0, 2, 1])                       // [2, 4, 3], strided
        let b = iota([2, 4, 2]).affine(scale: -1, shift: 0) // contiguous
        let c = Tensor.concat([a, b], axis: 2)
        XCTAssertEqual(c.shape, [2, 4, 5])
        let av = a.toFloats(), bv = b.toFloats()
        let want = indices(c.shape).map { i -> Float in
            i[2] < 3 ? av[index([i[0], i[1], i[2]], [2, 4, 3])] : bv[index([i[0], i[1], i[2] - 3], [2, 4, 2])]
        }
        XCTAssertEqual(c.toFloats(), want)
    }

    /// The CPU attention is tiled (flash style): no Lq x Lk score matrix is ever allocated.
    func testAttentionAllocatesNoScoreMatrix() throws {
        let (b, l, h, d) = (1, 2048, 2, 16)
        var rng = TestRandom(seed: 7)
        let q = Tensor(rng.floats(b * l * h * d), shape: [b, l, h, d])
        let k = Tensor(rng.floats(b * l * h * d), shape: [b, l, h, d])
        let v = Tensor(rng.floats(b * l * h * d), shape: [b, l, h, d])
        let backend = CPUBackend.shared
        let before = backend.memoryStats.currentBytes
        backend.resetPeakMemory()
        let out = q.attention(k: k, v: v, options: AttentionOptions(causal: true))
        let growth = backend.memoryStats.peakBytes - before
        let scoreMatrixPerHead = l * l * 4  // 16 MiB
        // the output plus a bounded working set per concurrent worker (a 128 x 512 score tile is 256 KiB)
        let workers = ProcessInfo.processInfo.activeProcessorCount
        let allowance = out.byteCount + workers * 512 * 1024
        try XCTSkipIf(allowance >= scoreMatrixPerHead / 2, "too many cores (\(workers)) for this size to tell tiles from a score matrix")
        XCTAssertEqual(out.shape, [b, l, h, d])
        XCTAssertLessThan(growth, allowance,
                          "attention grew tracked memory by \(growth) bytes (one Lq x Lk score matrix per head is \(scoreMatrixPerHead))")
        OpReport.record("attention 2048x2048 peak growth bytes \(growth) allowance \(allowance)", 0, 0)
        let o = out.toFloats()
        XCTAssertFalse(o.contains { !$0.isFinite })
        // the first query sees only the first key (causal): its output is exactly v[0]
        let v0 = v.toFloats()
        for hi in 0..<h {
            XCTAssertEqual(maxAbsDiff(Array(o[(hi * d)..<((hi + 1) * d)]), Array(v0[(hi * d)..<((hi + 1) * d)])), 0, accuracy: 1e-6)
        }
    }

    /// Query rows that can see no key at all (a fully padded sample) give zeros, never NaN.
    func testAttentionFullyMaskedRowsAreZero() {
        let (b, l, h, d) = (2, 5, 2, 8)
        var rng = TestRandom(seed: 11)
        let q = Tensor(rng.floats(b * l * h * d), shape: [b, l, h, d])
        let k = Tensor(rng.floats(b * l * h * d), shape: [b, l, h, d])
        let v = Tensor(rng.floats(b * l * h * d), shape: [b, l, h, d])
        let mask = Tensor(ints: [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], shape: [b, l])
        for dtype in [DType.f32, .bf16] {
            let out = q.to(dtype).attention(k: k.to(dtype), v: v.to(dtype), options: AttentionOptions(keyPaddingMask: mask)).toFloats()
            let second = Array(out[(l * h * d)...])
            XCTAssertEqual(second, [Float](repeating: 0, count: l * h * d), "\(dtype)")
            let first = Array(out[..<(l * h * d)])
            XCTAssertFalse(first.contains { !$0.isFinite })
            XCTAssertGreaterThan(first.map { abs($0) }.max() ?? 0, 0)
        }
    }

    /// Reduced-precision weights are widened in blocks of rows; with more rows than one block the
    /// product must equal the one with the whole weight widened first (same float32 GEMM inputs).
    func testLinearBlockedReducedWeights() {
        let (m, k, n) = (3, 2304, 300)  // 300 output rows > one block of 256
        var rng = TestRandom(seed: 3)
        let x = Tensor(rng.floats(m * k), shape: [m, k])
        let wFloats = rng.floats(n * k).map { $0 * 0.05 }
        let bias = Tensor(rng.floats(n), shape: [n])
        for dtype in [DType.bf16, .f16] {
            let w = Tensor(wFloats, shape: [n, k], dtype: dtype)
            let blocked = x.linear(w, bias: bias).toFloats()
            let widened = x.linear(w.to(.f32), bias: bias).toFloats()
            let err = relativeL2(blocked, widened)
            OpReport.record("linear blocked \(dtype) weights vs widened", err, 1e-6)
            XCTAssertLessThanOrEqual(err, 1e-6, "\(dtype)")
        }
    }
}
