import Foundation
import NewBieTensor

// Device memory: the caching pool, allocation, uploads and downloads.

extension CUDABackend {
    // MARK: memory

    public func allocate(byteCount: Int) -> Buffer {
        setCurrent()
        let (ptr, size) = pool.take(Swift.max(byteCount, 1))
        // out of memory (recorded by the pool): a buffer at address 0 that no launch will touch
        guard ptr != 0 else { return Buffer(device: device, byteCount: byteCount, host: nil, deviceAddress: 0) }
        if poisonAllocations { driver.must(driver.cuMemsetD8Async(ptr, 0xFF, size, stream), "poison") }
        return Buffer(device: device, byteCount: byteCount, host: nil, deviceAddress: ptr, release: { [pool] in pool.give(ptr, size) })
    }

    public func upload(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, byteOffset: Int) {
        guard bytes.count > 0, !driver.failed, buffer.deviceAddress != 0 else { return }
        setCurrent()
        if let g = capturing {
            // recorded: a pinned copy the graph keeps, so each replay uploads these same bytes
            let pinned = g.pinnedCopy(bytes)
            driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress + UInt64(byteOffset), pinned, bytes.count, stream), "upload")
            return
        }
        // Small uploads (RoPE tables, masks, timestep embeddings) go straight from pageable memory:
        // the driver stages them before returning and does not wait for the stream, so queued
        // kernels keep running. Large ones (weights) go through the pinned buffer in big chunks.
        if bytes.count <= 4 << 20 {
            driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress + UInt64(byteOffset), bytes.baseAddress, bytes.count, stream), "upload")
            return
        }
        pool.staged { staging, halfBytes, events, nextHalf in
            var done = 0
            while done < bytes.count {
                let n = Swift.min(halfBytes, bytes.count - done)
                let half = nextHalf
                nextHalf ^= 1
                let dst = staging + half * halfBytes
                driver.must(driver.cuEventSynchronize(events[half]), "wait for the staging buffer")
                ParallelCopy.copy(to: dst, from: bytes.baseAddress! + done, count: n)
                driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress + UInt64(byteOffset + done), dst, n, stream), "upload")
                driver.must(driver.cuEventRecord(events[half], stream), "record the staging copy")
                done += n
            }
        }
    }

    public func download(_ buffer: Buffer, byteOffset: Int, into bytes: UnsafeMutableRawBufferPointer) {
        guard bytes.count > 0 else { return }
        // after a failure the data is meaningless: zeros (never read as a result: the next check throws)
        guard !driver.failed, buffer.deviceAddress != 0 else { bytes.initializeMemory(as: UInt8.self, repeating: 0); return }
        setCurrent()
        precondition(capturing == nil, "a download while recording device work (the recorded body must not read results)")
        driver.must(driver.cuMemcpyDtoHAsync(bytes.baseAddress, buffer.deviceAddress + UInt64(byteOffset), bytes.count, stream), "download")
        driver.must(driver.cuStreamSynchronize(stream), "download")
    }

    public var memoryStats: MemoryStats { pool.stats }
    public func resetPeakMemory() { pool.resetPeak() }
}

/// Caching device allocator: freed blocks go to a free list keyed by their rounded size and are
/// reused by later allocations of that size, so steady-state steps make no cuMemAlloc calls.
/// Reuse is safe because every op runs on the one stream, in order.
final class MemoryPool: @unchecked Sendable {
    let driver: CUDADriver
    private var free: [Int: [CUdeviceptr]] = [:]
    private var current = 0, peak = 0, reserved = 0
    private let lock = NSLock()
    private var staging: UnsafeMutableRawPointer?
    private let stagingHalfBytes = 64 << 20
    private var stagingEvents: [OpaquePointer?] = [nil, nil]
    private var stagingNextHalf = 0
    private let stagingLock = NSLock()

    init(driver: CUDADriver) { self.driver = driver }

    static func roundUp(_ n: Int) -> Int {
        if n <= 1 << 20 { return (n + 511) & ~511 }
        return (n + (1 << 20) - 1) & ~((1 << 20) - 1)
    }

    func take(_ bytes: Int) -> (CUdeviceptr, Int) {
        let size = MemoryPool.roundUp(bytes)
        lock.lock(); defer { lock.unlock() }
        current += size
        peak = Swift.max(peak, current + graphReserved)
        if let g = recording {
            // recorded work reuses what it freed itself first (replays run in the same order)
            if var list = g.free[size], let p = list.popLast() {
                g.free[size] = list
                graphReserved -= size
                return (p, size)
            }
            let p = takeShared(size)
            g.owned[p] = size
            owner[p] = g
            return (p, size)
        }
        return (takeShared(size), size)
    }

    private func takeShared(_ size: Int) -> CUdeviceptr {
        if var list = free[size], let p = list.popLast() {
            free[size] = list
            return p
        }
        var p: CUdeviceptr = 0
        var rc = driver.cuMemAlloc(&p, size)
        if rc != 0 {  // out of memory: give the cached blocks back and try once more
            for (_, list) in free { for q in list { _ = driver.cuMemFree(q) } }
            free.removeAll()
            reserved = current - size
            rc = driver.cuMemAlloc(&p, size)
        }
        guard driver.must(rc, "out of device memory: cuMemAlloc of \(formatBytes(size)) with \(formatBytes(current - size)) in use") else {
            current -= size
            return 0
        }
        reserved += size
        return p
    }

    func give(_ p: CUdeviceptr, _ size: Int) {
        lock.lock(); defer { lock.unlock() }
        current -= size
        if let g = owner[p] {
            if !g.released {
                // a block of recorded work stays with it: a replay writes it again
                g.free[size, default: []].append(p)
                graphReserved += size
                return
            }
            owner[p] = nil
        }
        free[size, default: []].append(p)
    }

    // MARK: memory of recorded work (CUDA graphs)

    /// The blocks a recording allocated: they keep their addresses for as long as the graph lives.
    final class GraphMemory {
        var owned: [CUdeviceptr: Int] = [:]
        var free: [Int: [CUdeviceptr]] = [:]
        var released = false
    }
    private var recording: GraphMemory?
    private var owner: [CUdeviceptr: GraphMemory] = [:]
    /// Bytes held by live graphs but by no tensor (their intermediate results).
    private var graphReserved = 0

    func beginRecording() -> GraphMemory {
        lock.lock(); defer { lock.unlock() }
        precondition(recording == nil, "a recording is already in progress")
        let g = GraphMemory()
        recording = g
        return g
    }

    func endRecording() { lock.lock(); recording = nil; lock.unlock() }

    /// The graph is gone: its free blocks return to the pool; blocks still held by tensors return
    /// when those are freed.
    func release(_ g: GraphMemory) {
        lock.lock(); defer { lock.unlock() }
        g.released = true
        for (size, list) in g.free {
            for p in list { owner[p] = nil; free[size, default: []].append(p); graphReserved -= size }
        }
        g.free.removeAll()
    }

    var stats: MemoryStats {
        lock.lock(); defer { lock.unlock() }
        return MemoryStats(currentBytes: current + graphReserved, peakBytes: peak)
    }

    func resetPeak() { lock.lock(); peak = current + graphReserved; lock.unlock() }

    /// A pinned host buffer for uploads in two halves (allocated once, 2 x 64 MiB), with one event
    /// per half marking its last copy to the device (never recorded at first: a wait returns at
    /// once), and the half to fill next.
    func staged(_ body: (UnsafeMutableRawPointer, Int, [OpaquePointer?], inout Int) -> Void) {
        stagingLock.lock(); defer { stagingLock.unlock() }
        if staging == nil {
            var p: UnsafeMutableRawPointer? = nil
            driver.must(driver.cuMemHostAlloc(&p, 2 * stagingHalfBytes, 0), "cuMemHostAlloc(staging)")
            staging = p
            for i in 0..<2 {
                driver.must(driver.cuEventCreate(&stagingEvents[i], 0x2 /* CU_EVENT_DISABLE_TIMING */), "cuEventCreate(staging)")
            }
        }
        body(staging!, stagingHalfBytes, stagingEvents, &stagingNextHalf)
    }
}

/// memcpy of large host ranges by several threads, each a contiguous slice: copying out of a
/// mapped file is bound by page faults, which threads take in parallel.
enum ParallelCopy {
    static let sliceBytes = 8 << 20
    static let maxThreads = Swift.max(1, Swift.min(8, ProcessInfo.processInfo.activeProcessorCount))

    static func copy(to dst: UnsafeMutableRawPointer, from src: UnsafeRawPointer, count: Int) {
        let slices = Swift.min(maxThreads, (count + sliceBytes - 1) / sliceBytes)
        guard slices > 1 else { dst.copyMemory(from: src, byteCount: count); return }
        let per = (count + slices - 1) / slices
        DispatchQueue.concurrentPerform(iterations: slices) { i in
            let lo = i * per, n = Swift.min(per, count - lo)
            if n > 0 { (dst + lo).copyMemory(from: src + lo, byteCount: n) }
        }
    }
}
