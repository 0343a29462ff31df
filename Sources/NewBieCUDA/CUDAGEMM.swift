import Foundation
import NewBieTensor

// Matrix products through cuBLASLt: linear layers and batched matmul.

extension CUDABackend {
    // MARK: matrix products

    static func blasType(_ d: DType) -> Int32? {
        switch d {
        case .f32: return CUBLASLt.CUDA_R_32F
        case .f16: return CUBLASLt.CUDA_R_16F
        case .bf16: return CUBLASLt.CUDA_R_16BF
        default: return nil
        }
    }

    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        let k = weight.shape[1], n = weight.shape[0]
        let m = x.count / Swift.max(k, 1)
        let out = empty(Array(x.shape.dropLast()) + [n], x.dtype)
        if m == 0 || n == 0 { return out }
        guard let type = Self.blasType(x.dtype) else { driver.fail("linear: unsupported dtype \(x.dtype) on CUDA"); return out }
        guard !driver.failed else { return out }
        let w = weight.dtype == x.dtype ? weight : weight.to(x.dtype)
        let b = bias.map { $0.dtype == x.dtype ? $0 : $0.to(x.dtype) }
        if k == 0 { fill(out, value: 0); return b.map { out + $0 } ?? out }
        setCurrent()
        profiled("cublasLt linear") {
            do {
                try blas.gemm(m: m, n: n, k: k, batch: 1, type: type, a: ptr(x), strideA: 0, b: ptr(w), strideB: 0, transposeB: true,
                              c: ptr(out), strideC: 0, bias: b.map(ptr), allowTF32: allowTF32, stream: stream)
            } catch { driver.fail("linear [\(m) x \(k)] x [\(n) x \(k)]^T (\(x.dtype)): \(error)") }
        }
        return out
    }

    public func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool) -> Tensor {
        matmul(a, b, transposeB: transposeB, outDType: a.dtype)
    }

    /// Batched a [batch, m, k] x b ([batch, k, n], or [batch, n, k] with `transposeB`), the product
    /// written as `outDType`: a's dtype, or fp32 from 16-bit operands (the fp32 accumulator kept
    /// unrounded, as attention's scores need).
    func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool, outDType: DType) -> Tensor {
        let batch = a.shape[0], m = a.shape[1], k = a.shape[2]
        let n = transposeB ? b.shape[1] : b.shape[2]
        let out = empty([batch, m, n], outDType)
        if batch * m * n == 0 { return out }
        guard let type = Self.blasType(a.dtype), outDType == a.dtype || outDType == .f32, let outType = Self.blasType(outDType) else {
            driver.fail("matmul: unsupported dtypes \(a.dtype) -> \(outDType) on CUDA"); return out
        }
        guard !driver.failed else { return out }
        let bb = b.dtype == a.dtype ? b : b.to(a.dtype)
        if k == 0 { fill(out, value: 0); return out }
        setCurrent()
        profiled("cublasLt matmul") {
            do {
                try blas.gemm(m: m, n: n, k: k, batch: batch, type: type, a: ptr(a), strideA: m * k, b: ptr(bb), strideB: k * n,
                              transposeB: transposeB, c: ptr(out), strideC: m * n, bias: nil, allowTF32: allowTF32,
                              outType: outType, stream: stream)
            } catch { driver.fail("matmul \(batch) x [\(m) x \(k)] x [\(k) x \(n)] (\(a.dtype) -> \(outDType)): \(error)") }
        }
        return out
    }
}
