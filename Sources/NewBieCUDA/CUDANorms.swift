import Foundation
import NewBieTensor

// Reductions and norms: reduce, softmax, RMSNorm, LayerNorm, GroupNorm and the fused RMSNorm ops.

extension CUDABackend {
    // MARK: reductions and norms

    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, dtype: DType) -> Tensor {
        let out = empty([outer, inner], dtype)
        if outer * inner == 0 { return out }
        let code: Int32
        switch op {
        case .sum: code = 0
        case .mean: code = 1
        case .max: code = 2
        case .min: code = 3
        case .sumSquares: code = 4
        }
        launch("nb_reduce", grid: outer * inner, KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(ptr(out)).i32(Self.dtypeCode(dtype)).i64(outer).i64(n).i64(inner).i32(code))
        return out
    }

    public func softmax(_ x: Tensor) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let n = x.shape.last ?? 1
        let rows = x.count / Swift.max(n, 1)
        if rows == 0 { return out }
        launch("nb_softmax", grid: rows, block: rowThreads(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset).ptr(ptr(out)).i64(n))
        return out
    }

    public func rmsNorm(_ x: Tensor, weight: Tensor?, eps: Float, style: RMSNormStyle) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape.last!
        let rows = x.count / Swift.max(d, 1)
        if rows == 0 { return out }
        launch("nb_rmsnorm", grid: rows, block: rowThreads(d), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(weight.map(ptr) ?? 0).i32(Self.dtypeCode(weight?.dtype ?? .f32)).ptr(ptr(out)).i64(d).f32(eps)
            .i32(style == .roundThenWeight ? 0 : 1))
        return out
    }

    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape.last!
        let rows = x.count / Swift.max(d, 1)
        if rows == 0 { return out }
        // weight and bias share one dtype code in the kernel
        let wdt = weight?.dtype ?? bias?.dtype ?? .f32
        let b = bias.map { $0.dtype == wdt ? $0 : $0.to(wdt) }
        launch("nb_layernorm", grid: rows, block: rowThreads(d), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(weight.map(ptr) ?? 0).ptr(b.map(ptr) ?? 0).i32(Self.dtypeCode(wdt)).ptr(ptr(out)).i64(d).f32(eps))
        return out
    }

    /// False (environment NEWBIE_VAE_UNFUSED=1) runs GroupNorm, SiLU and the convolution bias as
    /// before the fusion (five GroupNorm passes, SiLU apart, the bias filled in first), for
    /// measuring one against the other in the same binary.
    nonisolated(unsafe) public static var fuseVAEOps: Bool = ProcessInfo.processInfo.environment["NEWBIE_VAE_UNFUSED"] != "1"

    public func groupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        if Self.fuseVAEOps, let out = fusedGroupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps, silu: false) { return out }
        return unfusedGroupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps)
    }

    public func groupNormSiLU(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        if Self.fuseVAEOps, let out = fusedGroupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps, silu: true) { return out }
        return unfusedGroupNorm(x, groups: groups, weight: weight, bias: bias, eps: eps).silu()
    }

    /// GroupNorm (then SiLU) in two kernels (norms.cu, `nb_gn_*`); nil for dtypes other than
    /// fp32/fp16/bf16. Each group is cut in chunks of about 16K elements, so a 1024x1024 image's
    /// 32 groups still fill every SM.
    func fusedGroupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float, silu: Bool) -> Tensor? {
        let name: String
        switch x.dtype {
        case .f32: name = "f32"
        case .f16: name = "f16"
        case .bf16: name = "bf16"
        default: return nil
        }
        let out = empty(x.shape, x.dtype)
        let c = x.shape[1], s = x.shape.dropFirst(2).reduce(1, *), batch = x.shape[0]
        let n = (c / groups) * s
        if out.count == 0 { return out }
        let vec = x.dtype == .f32 ? 4 : 8
        // 16-byte vectors when every plane, chunk and pointer lines up with them
        let vectorised = s % vec == 0 && x.offset % vec == 0 && ptr(x) % 16 == 0 && ptr(out) % 16 == 0
        let step = vectorised ? vec : 1
        let wanted = Swift.max(1, Swift.min(1024, n / (1 << 14)))
        let len = ((n + wanted - 1) / wanted + step - 1) / step * step
        let chunks = (n + len - 1) / len
        let suffix = vectorised ? name + (vec == 4 ? "x4" : "x8") : name
        let wdt = weight?.dtype ?? bias?.dtype ?? .f32
        let b = bias.map { $0.dtype == wdt ? $0 : $0.to(wdt) }
        let part = empty([batch * groups * chunks * 2], .f32)
        launch2D("nb_gn_chunk_stats_" + suffix, grid: (chunks, batch * groups), KernelArgs().ptr(base(x)).i64(x.offset)
            .ptr(ptr(part)).i64(n).i64(len).i32(Int32(chunks)))
        let perPlane = Swift.max(1, Swift.min(1024, (s + 256 * step * 4 - 1) / (256 * step * 4)))
        launch2D("nb_gn_apply_" + suffix, grid: (perPlane, batch * c), KernelArgs().ptr(base(x)).i64(x.offset)
            .ptr(weight.map(ptr) ?? 0).ptr(b.map(ptr) ?? 0).i32(Self.dtypeCode(wdt)).ptr(ptr(out)).ptr(ptr(part))
            .i64(c).i64(s).i32(Int32(groups)).i64(len).i32(Int32(chunks)).f32(eps).i32(silu ? 1 : 0))
        return out
    }

    func unfusedGroupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let c = x.shape[1], s = x.shape.dropFirst(2).reduce(1, *)
        let wdt = weight?.dtype ?? bias?.dtype ?? .f32
        let b = bias.map { $0.dtype == wdt ? $0 : $0.to(wdt) }
        let batch = x.shape[0], n = (c / groups) * s
        if n >= 1 << 15 {
            // large groups (the VAE's): statistics from many blocks, then a plane-parallel pass
            let chunks = Swift.min(1024, n / (1 << 14)), groupsTotal = batch * groups
            let part = empty([groupsTotal * chunks], .f32), mean = empty([groupsTotal], .f32), rstd = empty([groupsTotal], .f32)
            for (stat, center) in [(mean, nil), (rstd, Optional(mean))] {
                launch2D("nb_groupnorm_partial", grid: (chunks, groupsTotal), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype))
                    .i64(x.offset).ptr(ptr(part)).ptr(center.map(ptr) ?? 0).i64(n).i32(Int32(chunks)))
                launch("nb_groupnorm_stats", grid: (groupsTotal + 255) / 256, KernelArgs().ptr(ptr(part)).ptr(ptr(stat)).i64(groupsTotal)
                    .i64(n).i32(Int32(chunks)).i32(center == nil ? 0 : 1).f32(eps))
            }
            launch2D("nb_groupnorm_apply", grid: (Swift.min((s + 255) / 256, 1024), batch * c), KernelArgs().ptr(base(x))
                .i32(Self.dtypeCode(x.dtype)).i64(x.offset).ptr(weight.map(ptr) ?? 0).ptr(b.map(ptr) ?? 0).i32(Self.dtypeCode(wdt))
                .ptr(ptr(out)).ptr(ptr(mean)).ptr(ptr(rstd)).i64(c).i64(s).i32(Int32(groups)))
            return out
        }
        launch("nb_groupnorm", grid: x.shape[0] * groups, KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(weight.map(ptr) ?? 0).ptr(b.map(ptr) ?? 0).i32(Self.dtypeCode(wdt)).ptr(ptr(out)).i64(c).i64(s).i32(Int32(groups)).f32(eps))
        return out
    }

    // MARK: fused transformer ops (kernels in fused.cu round where the default compositions do)

    /// The suffix of the fast fused kernels ("bf16" / "f16") when every operand is contiguous, of that one
    /// 16-bit dtype, 16-byte aligned and rows are whole 16-byte vectors; nil for the generic kernels.
    func fastSuffix(_ ts: [Tensor?], rowLength d: Int, maxRow: Int = 4096) -> String? {
        guard let first = ts.compactMap({ $0 }).first, first.dtype == .bf16 || first.dtype == .f16,
              d % 8 == 0, d <= maxRow else { return nil }
        for case let t? in ts where t.dtype != first.dtype || !t.isContiguous || ptr(t) % 16 != 0 { return nil }
        return first.dtype == .bf16 ? "bf16" : "f16"
    }

    /// A 16-bit norm kernel's name and launch shape: `prefix` + "blk_" + suffix, one block sized to
    /// each row (`rowBlock`), or `prefix` + suffix, eight rows (warps) per 256-thread block.
    func normLaunch(_ prefix: String, _ suffix: String, rows: Int, d: Int) -> (kernel: String, grid: Int, block: Int) {
        normRowsPerBlock ? (prefix + "blk_" + suffix, rows, Self.rowBlock(vectors: d / 8)) : (prefix + suffix, (rows + 7) / 8, 256)
    }

    public func rmsNormModulate(_ x: Tensor, weight: Tensor, eps: Float, scale: Tensor?) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape[2], rows = x.shape[0] * x.shape[1]
        if rows == 0 { return out }
        if let t = fastSuffix([x, weight, scale], rowLength: d), x.shape[1] > 0 {
            let (kernel, grid, block) = normLaunch("nb_rmsnorm_mod_", t, rows: rows, d: d)
            launch(kernel, grid: grid, block: block, KernelArgs().ptr(ptr(x)).ptr(ptr(weight))
                .ptr(scale.map(ptr) ?? 0).ptr(ptr(out)).i32(Int32(rows)).i32(Int32(d)).i32(Int32(x.shape[1])).f32(eps))
            return out
        }
        launch("nb_rmsnorm_mod", grid: rows, block: rowThreads(d), KernelArgs().ptr(ptr(x)).i32(Self.dtypeCode(x.dtype))
            .ptr(ptr(weight)).i32(Self.dtypeCode(weight.dtype)).ptr(scale.map(ptr) ?? 0).i32(Self.dtypeCode(scale?.dtype ?? x.dtype))
            .ptr(ptr(out)).i64(d).i64(x.shape[1]).f32(eps))
        return out
    }

    public func rmsNormGatedResidual(_ x: Tensor, _ y: Tensor, weight: Tensor, eps: Float, gate: Tensor?) -> Tensor {
        let out = empty(x.shape, x.dtype)
        let d = x.shape[2], rows = x.shape[0] * x.shape[1]
        if rows == 0 { return out }
        let yy = y.dtype == x.dtype ? y : y.to(x.dtype)
        if let t = fastSuffix([x, yy, weight, gate], rowLength: d), x.shape[1] > 0 {
            let (kernel, grid, block) = normLaunch("nb_rmsnorm_gate_res_", t, rows: rows, d: d)
            launch(kernel, grid: grid, block: block, KernelArgs().ptr(ptr(x)).ptr(ptr(yy))
                .ptr(ptr(weight)).ptr(gate.map(ptr) ?? 0).ptr(ptr(out)).i32(Int32(rows)).i32(Int32(d)).i32(Int32(x.shape[1])).f32(eps))
            return out
        }
        launch("nb_rmsnorm_gate_res", grid: rows, block: rowThreads(d), KernelArgs().ptr(ptr(x)).ptr(ptr(yy)).i32(Self.dtypeCode(x.dtype))
            .ptr(ptr(weight)).i32(Self.dtypeCode(weight.dtype)).ptr(gate.map(ptr) ?? 0).i32(Self.dtypeCode(gate?.dtype ?? x.dtype))
            .ptr(ptr(out)).i64(d).i64(x.shape[1]).f32(eps))
        return out
    }
}
