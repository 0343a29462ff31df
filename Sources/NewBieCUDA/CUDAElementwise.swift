import Foundation
import NewBieTensor

// Element-wise ops: copies, fills, unary and binary ops, embedding lookup, SwiGLU.

extension CUDABackend {
    // MARK: data movement

    public func copy(_ src: Tensor, into dst: Tensor) {
        let n = src.count
        if n == 0 { return }
        if src.dtype == dst.dtype {
            launch("nb_copy_raw", grid: blocks(n), KernelArgs().ptr(base(src)).strided(src).ptr(base(dst)).strided(dst).i64(n).i32(Int32(src.dtype.byteSize)))
        } else {
            launch("nb_copy", grid: blocks(n), KernelArgs().ptr(base(src)).i32(Self.dtypeCode(src.dtype)).strided(src)
                .ptr(base(dst)).i32(Self.dtypeCode(dst.dtype)).strided(dst).i64(n))
        }
    }

    public func fill(_ dst: Tensor, value: Float) {
        let n = dst.count
        if n == 0 { return }
        launch("nb_fill", grid: blocks(n), KernelArgs().ptr(ptr(dst)).i32(Self.dtypeCode(dst.dtype)).i64(n).f32(value))
    }

    // MARK: element-wise

    static func unaryCode(_ op: UnaryOp) -> (Int32, Float, Float) {
        switch op {
        case .identity: return (0, 0, 0)
        case .neg: return (1, 0, 0)
        case .abs: return (2, 0, 0)
        case .square: return (3, 0, 0)
        case .sqrt: return (4, 0, 0)
        case .rsqrt: return (5, 0, 0)
        case .exp: return (6, 0, 0)
        case .log: return (7, 0, 0)
        case .tanh: return (8, 0, 0)
        case .sin: return (16, 0, 0)
        case .cos: return (17, 0, 0)
        case .sigmoid: return (9, 0, 0)
        case .relu: return (10, 0, 0)
        case .silu: return (11, 0, 0)
        case .geluTanh: return (12, 0, 0)
        case .geluErf: return (13, 0, 0)
        case .affine(let a, let b): return (14, a, b)
        case .clamp(let lo, let hi): return (15, lo, hi)
        }
    }

    public func unary(_ op: UnaryOp, _ x: Tensor, dtype: DType) -> Tensor {
        let out = empty(x.shape, dtype)
        let n = x.count
        if n == 0 { return out }
        let (code, a, b) = Self.unaryCode(op)
        launch("nb_unary", grid: blocks(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).strided(x)
            .ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(n).i32(code).f32(a).f32(b))
        return out
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, dtype: DType) -> Tensor {
        let out = empty(a.shape, dtype)
        let n = a.count
        if n == 0 { return out }
        let code: Int32
        switch op {
        case .add: code = 0
        case .sub: code = 1
        case .mul: code = 2
        case .div: code = 3
        case .maximum: code = 4
        case .minimum: code = 5
        }
        launch("nb_binary", grid: blocks(n), KernelArgs().ptr(base(a)).i32(Self.dtypeCode(a.dtype)).strided(a)
            .ptr(base(b)).i32(Self.dtypeCode(b.dtype)).strided(b).ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(n).i32(code))
        return out
    }

    public func embedding(_ table: Tensor, ids: Tensor, dtype: DType) -> Tensor {
        let n = ids.count, d = table.shape[1]
        let out = empty([n, d], dtype)
        if n * d == 0 { return out }
        launch("nb_embedding", grid: blocks(n * d), KernelArgs().ptr(ptr(table)).i32(Self.dtypeCode(table.dtype))
            .ptr(ptr(ids)).i32(Self.dtypeCode(ids.dtype)).ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(n).i64(d))
        return out
    }

    public func swiglu(_ a: Tensor, _ b: Tensor) -> Tensor {
        let out = empty(a.shape, a.dtype)
        let n = a.count
        if n == 0 { return out }
        let bb = b.dtype == a.dtype ? b : b.to(a.dtype)
        if let t = fastSuffix([a, bb], rowLength: n, maxRow: Int.max) {
            launch("nb_swiglu_" + t, grid: Swift.min((n / 8 + 255) / 256, 1 << 20), KernelArgs().ptr(ptr(a)).ptr(ptr(bb)).ptr(ptr(out)).i64(n / 8))
            return out
        }
        launch("nb_swiglu", grid: blocks(n), KernelArgs().ptr(ptr(a)).ptr(ptr(bb)).i32(Self.dtypeCode(a.dtype)).ptr(ptr(out)).i64(n))
        return out
    }
}
