/// Linear layers and batched matrix products on the CPU, through the BLAS sgemm.
/// Reduced-precision operands are widened to Float32 (weights in blocks of rows, so the extra
/// memory stays bounded); the Float32 product plus bias is rounded once to the output dtype.
extension CPUBackend {
    /// Rows of a weight widened per block: 256 rows x 9216 columns is 9 MiB of Float32.
    static let weightBlockRows = 256

    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let k = weight.shape[1], n = weight.shape[0]
        let m = x.count / Swift.max(k, 1)
        let outShape = Array(x.shape.dropLast()) + [n]
        let out = Tensor.empty(outShape, dtype: x.dtype)
        if m == 0 || n == 0 { return out }
        let blas = BLAS.required
        let xf = x.dtype == .f32 ? x : x.to(.f32)
        let c = x.dtype == .f32 ? out : Tensor.empty(outShape, dtype: .f32)
        let a = UnsafePointer(xf.hostPointer.assumingMemoryBound(to: Float.self))
        let cp = c.hostPointer.assumingMemoryBound(to: Float.self)
        if k == 0 {
            cp.update(repeating: 0, count: m * n)
        } else if weight.dtype == .f32 {
            blas.sgemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1,
                       a: a, lda: k, b: weight.hostPointer.assumingMemoryBound(to: Float.self), ldb: k,
                       beta: 0, c: cp, ldc: n)
        } else {
            let rowsPerBlock = Swift.min(n, CPUBackend.weightBlockRows * Swift.max(1, 2304 / Swift.max(k, 1)))
            let wblock = scratch(rowsPerBlock * k)
            defer { release(wblock, rowsPerBlock * k) }
            let wb = UnsafeRawPointer(weight.buffer.host!)
            var r0 = 0
            while r0 < n {
                let rows = Swift.min(rowsPerBlock, n - r0)
                Parallel.forEach(rows, grain: 16) { range in
                    for r in range {
                        RowIO.load(wb, weight.dtype, offset: weight.offset + (r0 + r) * k, stride: 1, count: k, into: wblock + r * k)
                    }
                }
                blas.sgemm(transA: false, transB: true, m: m, n: rows, k: k, alpha: 1,
                           a: a, lda: k, b: wblock, ldb: k, beta: 0, c: cp + r0, ldc: n)
                r0 += rows
            }
        }
        if let bias = bias {
            let bv = bias.toFloats()
            Parallel.forEach(m, grain: 64) { range in
                for r in range {
                    let row = cp + r * n
                    for j in 0..<n { row[j] += bv[j] }
                }
            }
        }
        if c.buffer !== out.buffer { copy(c, into: out) }
        return out
    }

    public func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool) -> Tensor {
        let batch = a.shape[0], m = a.shape[1], k = a.shape[2]
        let n = transposeB ? b.shape[1] : b.shape[2]
        let out = Tensor.empty([batch, m, n], dtype: a.dtype)
        if batch * m * n == 0 { return out }
        let blas = BLAS.required
        let af = a.to(.f32), bf = b.to(.f32)
        let c = a.dtype == .f32 ? out : Tensor.empty([batch, m, n], dtype: .f32)
        let ap = af.hostPointer.assumingMemoryBound(to: Float.self)
        let bp = bf.hostPointer.assumingMemoryBound(to: Float.self)
        let cp = c.hostPointer.assumingMemoryBound(to: Float.self)
        for i in 0..<batch {
            if k == 0 { (cp + i * m * n).update(repeating: 0, count: m * n); continue }
            blas.sgemm(transA: false, transB: transposeB, m: m, n: n, k: k, alpha: 1,
                       a: ap + i * m * k, lda: k, b: bp + i * k * n, ldb: transposeB ? k : n,
                       beta: 0, c: cp + i * m * n, ldc: n)
        }
        if c.buffer !== out.buffer { copy(c, into: out) }
        return out
    }
}
