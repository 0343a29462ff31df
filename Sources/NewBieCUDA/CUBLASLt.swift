import Foundation

/// Matrix products on the tensor cores through cuBLASLt (libcublasLt.so.13, dlopen).
/// Row-major C[m, n] = A[m, k] * op(B) is computed as the column-major C^T = op(B)^T A^T.
final class CUBLASLt: @unchecked Sendable {
    typealias Handle = OpaquePointer?
    typealias FCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias FDescCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, Int32) -> Int32
    typealias FDescSet = @convention(c) (OpaquePointer?, Int32, UnsafeRawPointer, Int) -> Int32
    typealias FDestroy = @convention(c) (OpaquePointer?) -> Int32
    typealias FLayoutCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, UInt64, UInt64, Int64) -> Int32
    typealias FPrefCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias FHeuristic = @convention(c) (OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?,
                                           OpaquePointer?, Int32, UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> Int32
    typealias FMatmul = @convention(c) (OpaquePointer?, OpaquePointer?, UnsafeRawPointer, UInt64, OpaquePointer?, UInt64, OpaquePointer?,
                                        UnsafeRawPointer, UInt64, OpaquePointer?, UInt64, OpaquePointer?, UnsafeRawPointer?,
                                        UInt64, Int, OpaquePointer?) -> Int32

    // Enum values from cublasLt.h / library_types.h (stable ABI).
    static let CUDA_R_32F: Int32 = 0, CUDA_R_16F: Int32 = 2, CUDA_R_16BF: Int32 = 14
    static let COMPUTE_32F: Int32 = 68, COMPUTE_32F_FAST_TF32: Int32 = 77
    static let DESC_TRANSA: Int32 = 3, DESC_TRANSB: Int32 = 4, DESC_EPILOGUE: Int32 = 7
    static let DESC_BIAS_POINTER: Int32 = 8, DESC_BIAS_DATA_TYPE: Int32 = 26
    static let EPILOGUE_DEFAULT: UInt32 = 1, EPILOGUE_BIAS: UInt32 = 4
    static let LAYOUT_BATCH_COUNT: Int32 = 5, LAYOUT_BATCH_STRIDE: Int32 = 6
    static let PREF_MAX_WORKSPACE: Int32 = 1
    /// sizeof(cublasLtMatmulHeuristicResult_t): algo (64) + workspaceSize (8) + state (4) + waves (4) + reserved (16)
    static let heuristicResultBytes = 96

    let lib: DynamicLibrary
    let handle: OpaquePointer?
    let descCreate: FDescCreate, descSet: FDescSet, descDestroy: FDestroy
    let layoutCreate: FLayoutCreate, layoutSet: FDescSet, layoutDestroy: FDestroy
    let prefCreate: FPrefCreate, prefSet: FDescSet, prefDestroy: FDestroy
    let heuristic: FHeuristic, matmul: FMatmul
    let workspace: CUdeviceptr
    let workspaceBytes = 32 << 20
    private var plans: [String: Plan] = [:]
    private let lock = NSLock()

    /// A cached descriptor set and algorithm for one problem shape.
    final class Plan {
        var desc: OpaquePointer?, a: OpaquePointer?, b: OpaquePointer?, c: OpaquePointer?
        var algo = [UInt8](repeating: 0, count: 64)
    }

    init(driver: CUDADriver) throws {
        lib = try DynamicLibrary(["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"])
        let create = try lib.symbol("cublasLtCreate", as: FCreate.self)
        descCreate = try lib.symbol("cublasLtMatmulDescCreate", as: FDescCreate.self)
        descSet = try lib.symbol("cublasLtMatmulDescSetAttribute", as: FDescSet.self)
        descDestroy = try lib.symbol("cublasLtMatmulDescDestroy", as: FDestroy.self)
        layoutCreate = try lib.symbol("cublasLtMatrixLayoutCreate", as: FLayoutCreate.self)
        layoutSet = try lib.symbol("cublasLtMatrixLayoutSetAttribute", as: FDescSet.self)
        layoutDestroy = try lib.symbol("cublasLtMatrixLayoutDestroy", as: FDestroy.self)
        prefCreate = try lib.symbol("cublasLtMatmulPreferenceCreate", as: FPrefCreate.self)
        prefSet = try lib.symbol("cublasLtMatmulPreferenceSetAttribute", as: FDescSet.self)
        prefDestroy = try lib.symbol("cublasLtMatmulPreferenceDestroy", as: FDestroy.self)
        heuristic = try lib.symbol("cublasLtMatmulAlgoGetHeuristic", as: FHeuristic.self)
        matmul = try lib.symbol("cublasLtMatmul", as: FMatmul.self)
        var h: OpaquePointer? = nil
        let rc = create(&h)
        guard rc == 0 else { throw CUDAError("cublasLtCreate failed (\(rc))") }
        handle = h
        var ws: CUdeviceptr = 0
        try driver.check(driver.cuMemAlloc(&ws, workspaceBytes), "cuMemAlloc(cuBLASLt workspace)")
        workspace = ws
    }

    static func dataType(_ dt: Int32) -> Int32 { dt }

    /// Row-major, batched: for each batch i, C_i[m, n] = A_i[m, k] * (transposeB ? B_i[n, k]^T : B_i[k, n]) (+ bias[n]).
    /// A, B and C share `type` unless `outType` names C's (16-bit operands with an fp32 product);
    /// accumulation in fp32 (tf32 only when `allowTF32` and type is fp32).
    /// `accumulate`: C += A B, added in fp32 before C is rounded (once) to `type`.
    func gemm(m: Int, n: Int, k: Int, batch: Int, type: Int32, a: CUdeviceptr, strideA: Int,
              b: CUdeviceptr, strideB: Int, transposeB: Bool, c: CUdeviceptr, strideC: Int,
              bias: CUdeviceptr?, allowTF32: Bool, accumulate: Bool = false, ldc: Int? = nil, outType: Int32? = nil,
              stream: OpaquePointer?) throws {
        let ldc = ldc ?? n, outType = outType ?? type
        let key = "\(m),\(n),\(k),\(batch),\(type),\(outType),\(strideA),\(strideB),\(transposeB),\(strideC),\(bias != nil),\(allowTF32),\(ldc)"
        lock.lock(); defer { lock.unlock() }
        let plan: Plan
        if let p = plans[key] { plan = p } else {
            plan = try makePlan(m: m, n: n, k: k, batch: batch, type: type, strideA: strideA, strideB: strideB,
                                transposeB: transposeB, strideC: strideC, hasBias: bias != nil, allowTF32: allowTF32, ldc: ldc,
                                outType: outType)
            plans[key] = plan
        }
        if let bp = bias {
            var p = bp
            try ok(descSet(plan.desc, CUBLASLt.DESC_BIAS_POINTER, &p, 8), "set bias pointer")
        }
        var alpha: Float = 1, beta: Float = accumulate ? 1 : 0
        // Column-major view: D^T (n x m) = op(B)^T (n x k) * A^T (k x m); "A" operand is B.
        let rc = plan.algo.withUnsafeBytes { algo in
            matmul(handle, plan.desc, &alpha, b, plan.a, a, plan.b, &beta, c, plan.c, c, plan.c,
                   algo.baseAddress, workspace, workspaceBytes, stream)
        }
        try ok(rc, "cublasLtMatmul m=\(m) n=\(n) k=\(k) batch=\(batch)")
    }

    private func ok(_ rc: Int32, _ what: String) throws {
        if rc != 0 { throw CUDAError("cuBLASLt: \(what) failed (status \(rc))") }
    }

    private func makePlan(m: Int, n: Int, k: Int, batch: Int, type: Int32, strideA: Int, strideB: Int,
                          transposeB: Bool, strideC: Int, hasBias: Bool, allowTF32: Bool, ldc: Int, outType: Int32) throws -> Plan {
        let p = Plan()
        let compute = (type == CUBLASLt.CUDA_R_32F && allowTF32) ? CUBLASLt.COMPUTE_32F_FAST_TF32 : CUBLASLt.COMPUTE_32F
        try ok(descCreate(&p.desc, compute, CUBLASLt.CUDA_R_32F), "matmul descriptor")
        // operand 1 = B: row-major B[n,k] (transposeB) is column-major k x n -> op T gives n x k
        var ta: Int32 = transposeB ? 1 : 0, tb: Int32 = 0
        try ok(descSet(p.desc, CUBLASLt.DESC_TRANSA, &ta, 4), "transa")
        try ok(descSet(p.desc, CUBLASLt.DESC_TRANSB, &tb, 4), "transb")
        if hasBias {
            var epi = CUBLASLt.EPILOGUE_BIAS
            try ok(descSet(p.desc, CUBLASLt.DESC_EPILOGUE, &epi, 4), "epilogue")
            var bt = type
            try ok(descSet(p.desc, CUBLASLt.DESC_BIAS_DATA_TYPE, &bt, 4), "bias type")
        }
        // Layouts (column-major): operand1 = B viewed as (transposeB ? k x n : n x k), ld = k or n
        if transposeB {
            try ok(layoutCreate(&p.a, type, UInt64(k), UInt64(n), Int64(k)), "layout B")
        } else {
            try ok(layoutCreate(&p.a, type, UInt64(n), UInt64(k), Int64(n)), "layout B")
        }
        try ok(layoutCreate(&p.b, type, UInt64(k), UInt64(m), Int64(k)), "layout A")
        // C's rows may be longer than n (a band of columns written into a wider matrix)
        try ok(layoutCreate(&p.c, outType, UInt64(n), UInt64(m), Int64(ldc)), "layout C")
        if batch > 1 {
            var count = Int32(batch)
            for (l, stride) in [(p.a, strideB), (p.b, strideA), (p.c, strideC)] {
                var s = Int64(stride)
                try ok(layoutSet(l, CUBLASLt.LAYOUT_BATCH_COUNT, &count, 4), "batch count")
                try ok(layoutSet(l, CUBLASLt.LAYOUT_BATCH_STRIDE, &s, 8), "batch stride")
            }
        }
        var pref: OpaquePointer? = nil
        try ok(prefCreate(&pref), "preference")
        defer { _ = prefDestroy(pref) }
        var ws = UInt64(workspaceBytes)
        try ok(prefSet(pref, CUBLASLt.PREF_MAX_WORKSPACE, &ws, 8), "workspace preference")
        var result = [UInt8](repeating: 0, count: CUBLASLt.heuristicResultBytes)
        var found: Int32 = 0
        let rc = result.withUnsafeMutableBytes { r in
            heuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, r.baseAddress!, &found)
        }
        guard rc == 0, found > 0 else {
            throw CUDAError("cuBLASLt found no algorithm for m=\(m) n=\(n) k=\(k) batch=\(batch) type=\(type) (status \(rc))")
        }
        p.algo = Array(result[0..<64])
        return p
    }
}
