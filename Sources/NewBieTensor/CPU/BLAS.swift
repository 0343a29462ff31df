import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Single-precision GEMM from a system BLAS, loaded with dlopen so that the binary links no BLAS
/// and runs on machines without one until a matrix product is needed.
///
/// Looked for, in order: `$NEWBIE_BLAS` (a path), Debian's OpenBLAS (`libopenblas.so.0`), the
/// generic `libblas.so.3` / `libcblas.so.3` (which export `cblas_sgemm` when they are OpenBLAS), and
/// the ILP64 `scipy_openblas64_` build that NumPy wheels carry (symbols with a `scipy_` prefix and
/// `64_` suffix, 64-bit integers).
public final class BLAS: @unchecked Sendable {
    public typealias SGEMM32 = @convention(c) (Int32, Int32, Int32, Int32, Int32, Int32, Float,
                                                UnsafePointer<Float>?, Int32, UnsafePointer<Float>?, Int32,
                                                Float, UnsafeMutablePointer<Float>?, Int32) -> Void
    public typealias SGEMM64 = @convention(c) (Int32, Int32, Int32, Int64, Int64, Int64, Float,
                                                UnsafePointer<Float>?, Int64, UnsafePointer<Float>?, Int64,
                                                Float, UnsafeMutablePointer<Float>?, Int64) -> Void
    typealias SetThreads = @convention(c) (Int32) -> Void
    typealias GetThreads = @convention(c) () -> Int32

    public let libraryPath: String
    private let sgemm32: SGEMM32?
    private let sgemm64: SGEMM64?
    private let setThreads: SetThreads?
    private let getThreads: GetThreads?

    public static let shared: BLAS? = BLAS.load()
    public static var loadError: String {
        "no BLAS library found: install OpenBLAS (Debian: apt-get install libopenblas0) or set NEWBIE_BLAS to a library that exports cblas_sgemm"
    }

    /// The shared instance. `Backends.open(.cpu)` throws the load error first, so the CPU ops that
    /// use this never run without a library.
    public static var required: BLAS {
        guard let b = shared else { fatalError(loadError) }
        return b
    }

    private init(path: String, sgemm32: SGEMM32?, sgemm64: SGEMM64?, setThreads: SetThreads?, getThreads: GetThreads?) {
        self.libraryPath = path; self.sgemm32 = sgemm32; self.sgemm64 = sgemm64
        self.setThreads = setThreads; self.getThreads = getThreads
    }

    static func load() -> BLAS? {
        var candidates: [String] = []
        if let env = ProcessInfo.processInfo.environment["NEWBIE_BLAS"], !env.isEmpty { candidates.append(env) }
        candidates += ["libopenblas.so.0", "libopenblas.so", "libblas.so.3", "libcblas.so.3"]
        for path in candidates {
            guard let h = dlopen(path, RTLD_NOW | RTLD_LOCAL) else { continue }
            if let s = dlsym(h, "cblas_sgemm") {
                return BLAS(path: path, sgemm32: unsafeBitCast(s, to: SGEMM32.self), sgemm64: nil,
                            setThreads: dlsym(h, "openblas_set_num_threads").map { unsafeBitCast($0, to: SetThreads.self) },
                            getThreads: dlsym(h, "openblas_get_num_threads").map { unsafeBitCast($0, to: GetThreads.self) })
            }
            if let s = dlsym(h, "scipy_cblas_sgemm64_") {
                return BLAS(path: path, sgemm32: nil, sgemm64: unsafeBitCast(s, to: SGEMM64.self),
                            setThreads: dlsym(h, "scipy_openblas_set_num_threads64_").map { unsafeBitCast($0, to: SetThreads.self) },
                            getThreads: dlsym(h, "scipy_openblas_get_num_threads64_").map { unsafeBitCast($0, to: GetThreads.self) })
            }
            dlclose(h)
        }
        return nil
    }

    /// Row-major C[m,n] = alpha * op(A) op(B) + beta * C.
    @inline(__always)
    public func sgemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                      a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                      beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        let ta: Int32 = transA ? 112 : 111, tb: Int32 = transB ? 112 : 111
        if let f = sgemm32 {
            f(101, ta, tb, Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
        } else if let f = sgemm64 {
            f(101, ta, tb, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
        }
    }

    public var threads: Int { getThreads.map { Int($0()) } ?? 1 }

    /// Runs `body` with BLAS limited to one thread (for GEMMs issued from our own worker threads).
    public func singleThreaded<R>(_ body: () throws -> R) rethrows -> R {
        guard let set = setThreads, let get = getThreads else { return try body() }
        let before = get()
        if before == 1 { return try body() }
        set(1)
        defer { set(before) }
        return try body()
    }
}
