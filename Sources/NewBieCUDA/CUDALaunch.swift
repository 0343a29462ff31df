import Foundation
import NewBieTensor

// Launching kernels: argument packing, 1-D and 2-D launches, per-kernel profiling, grid sizes.

extension CUDABackend {
    // MARK: launching

    func launch(_ name: String, grid: Int, block: Int = 256, shared: Int = 0, _ args: KernelArgs) {
        guard !driver.failed else { return }  // an earlier failure: skip the work, report at the next check
        guard let fn = functions[name] else { driver.fail("CUDA kernel \(name) is not loaded"); return }
        setCurrent()
        precondition(grid < Int(Int32.max), "\(name): grid of \(grid) blocks is too large")
        let g = UInt32(Swift.max(1, grid))
        profiled(name) {
            args.withPointers { ptrs in
                driver.must(driver.cuLaunchKernel(fn, g, 1, 1, UInt32(block), 1, 1, UInt32(shared), stream, ptrs, nil), "launch \(name)")
            }
        }
    }

    /// A launch over a 2-D grid (x, y) of `block`-thread blocks.
    func launch2D(_ name: String, grid: (Int, Int), block: Int = 256, _ args: KernelArgs) {
        guard !driver.failed else { return }
        guard let fn = functions[name] else { driver.fail("CUDA kernel \(name) is not loaded"); return }
        setCurrent()
        precondition(grid.0 < Int(Int32.max) && grid.1 < 65536, "\(name): grid \(grid) is too large")
        profiled(name) {
            args.withPointers { ptrs in
                driver.must(driver.cuLaunchKernel(fn, UInt32(Swift.max(1, grid.0)), UInt32(Swift.max(1, grid.1)), 1, UInt32(block), 1, 1, 0,
                                                  stream, ptrs, nil), "launch \(name)")
            }
        }
    }

    // MARK: profiling (`--cuda-profile`): device time per kernel, from events around each launch

    func profiled(_ name: String, _ body: () -> Void) {
        guard profiling, capturing == nil else { body(); return }
        var a: OpaquePointer? = nil, b: OpaquePointer? = nil
        driver.must(driver.cuEventCreate(&a, 0), "cuEventCreate")
        driver.must(driver.cuEventCreate(&b, 0), "cuEventCreate")
        driver.must(driver.cuEventRecord(a, stream), "cuEventRecord")
        body()
        driver.must(driver.cuEventRecord(b, stream), "cuEventRecord")
        profile.append((name, a, b))
    }

    /// Device milliseconds and launch counts per kernel since the last call; clears the record.
    public func profileReport() -> [(name: String, ms: Double, count: Int)] {
        synchronize()
        var acc: [String: (Double, Int)] = [:]
        for (name, a, b) in profile {
            var ms: Float = 0
            _ = driver.cuEventElapsedTime(&ms, a, b)
            let cur = acc[name] ?? (0, 0)
            acc[name] = (cur.0 + Double(ms), cur.1 + 1)
            _ = driver.cuEventDestroy(a); _ = driver.cuEventDestroy(b)
        }
        profile.removeAll()
        return acc.map { ($0.key, $0.value.0, $0.value.1) }.sorted { $0.ms > $1.ms }
    }

    /// Threads per block for the one-block-per-row kernels (norms, softmax): short rows get a warp.
    func rowThreads(_ d: Int) -> Int { d <= 256 ? 32 : (d <= 1024 ? 128 : 256) }

    /// Blocks for a grid-stride loop over n elements.
    func blocks(_ n: Int, _ threads: Int = 256) -> Int { Swift.max(1, Swift.min((n + threads - 1) / threads, 65536)) }
}

/// Kernel arguments packed for cuLaunchKernel: each argument lives in its own heap cell and the
/// kernel receives an array of pointers to them.
final class KernelArgs {
    private var cells: [UnsafeMutableRawPointer] = []

    @discardableResult func bytes(_ b: [UInt8]) -> KernelArgs {
        let p = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(b.count, 1), alignment: 16)
        b.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: b.count) }
        cells.append(p)
        return self
    }
    private func value<T>(_ v: T) -> KernelArgs {
        let p = UnsafeMutableRawPointer.allocate(byteCount: MemoryLayout<T>.size, alignment: 16)
        p.storeBytes(of: v, as: T.self)
        cells.append(p)
        return self
    }
    func ptr(_ v: UInt64) -> KernelArgs { value(v) }
    func i64(_ v: Int) -> KernelArgs { value(Int64(v)) }
    func i32(_ v: Int32) -> KernelArgs { value(v) }
    func f32(_ v: Float) -> KernelArgs { value(v) }

    /// `Strided` in common.cuh: int rank, int small, i64 shape[8], i64 stride[8], i64 offset. The
    /// logical shape is the same for every operand of a kernel, but each operand's own view of it
    /// can drop size-1 axes and merge axes it stores contiguously: the index decomposition then
    /// lands on the same elements with fewer divisions (rank 1 for a contiguous tensor).
    func strided(_ t: Tensor) -> KernelArgs {
        var shape: [Int] = [], strides: [Int] = []
        for (n, s) in zip(t.shape, t.strides) where n != 1 {
            if let last = shape.indices.last, strides[last] == s * n {
                shape[last] *= n
                strides[last] = s
            } else {
                shape.append(n); strides.append(s)
            }
        }
        if shape.isEmpty { shape = [1]; strides = [1] }
        precondition(shape.count <= 8, "CUDA kernels take tensors of rank <= 8 after merging, got \(t.shape)")
        var words = [Int64](repeating: 0, count: 18)
        let small: Int64 = shape.allSatisfy { $0 < Int(Int32.max) } ? 1 : 0
        words[0] = Int64(shape.count) | (small << 32)
        for i in 0..<8 {
            words[1 + i] = i < shape.count ? Int64(shape[i]) : 1
            words[9 + i] = i < shape.count ? Int64(strides[i]) : 0
        }
        words[17] = Int64(t.offset)
        return bytes(words.withUnsafeBytes { Array($0) })
    }

    func withPointers(_ body: (UnsafeMutablePointer<UnsafeMutableRawPointer?>) -> Void) {
        var ptrs: [UnsafeMutableRawPointer?] = cells
        ptrs.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
    }

    deinit { cells.forEach { $0.deallocate() } }
}
