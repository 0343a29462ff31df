import Foundation
import NewBieTensor

// Weight streaming for `--offload` (NewBieTensor's `WeightRing`): page-locked host buffers, a
// second stream that only copies, and two events per ring slot ordering it against the compute
// stream. Nothing here waits on the host: both streams queue and the GPU orders them.

extension CUDABackend {
    public var weightStreaming: WeightStreaming {
        streamingLock.lock(); defer { streamingLock.unlock() }
        if let s = streamingState { return s }
        let s = CUDAWeightStreaming(backend: self)
        streamingState = s
        return s
    }
}

final class CUDAWeightStreaming: WeightStreaming {
    /// `ready`: recorded on the copy stream after the slot's copy; `free`: recorded on the compute
    /// stream after the last work that reads the slot. An event never recorded is waited on at once.
    final class Events: SlotSync {
        var ready: OpaquePointer?, free: OpaquePointer?
        let driver: CUDADriver
        init(driver: CUDADriver) {
            self.driver = driver
            driver.must(driver.cuEventCreate(&ready, 0x2 /* CU_EVENT_DISABLE_TIMING */), "cuEventCreate(offload)")
            driver.must(driver.cuEventCreate(&free, 0x2), "cuEventCreate(offload)")
        }
        deinit { _ = driver.cuEventDestroy(ready); _ = driver.cuEventDestroy(free) }
    }

    unowned let backend: CUDABackend
    private var copyStream: OpaquePointer?

    init(backend: CUDABackend) { self.backend = backend }

    private var driver: CUDADriver { backend.driver }

    func pinnedHostBuffer(byteCount: Int) throws -> Buffer {
        backend.setCurrent()
        var p: UnsafeMutableRawPointer? = nil
        let n = Swift.max(byteCount, 1)
        try driver.check(driver.cuMemHostAlloc(&p, n, 0), "--offload: pinning \(formatBytes(n)) of host memory (cuMemHostAlloc)")
        guard let ptr = p else { throw CUDAError("--offload: cuMemHostAlloc of \(formatBytes(n)) returned no memory") }
        let b = backend
        return Buffer(device: .cpu, byteCount: n, host: ptr, release: { b.setCurrent(); _ = b.driver.cuMemFreeHost(ptr) })
    }

    func makeSlotSync() -> SlotSync {
        backend.setCurrent()
        return Events(driver: driver)
    }

    func streamIn(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, sync: SlotSync) {
        guard bytes.count > 0, !driver.failed, buffer.deviceAddress != 0, let e = sync as? Events else { return }
        backend.setCurrent()
        if copyStream == nil {
            driver.must(driver.cuStreamCreate(&copyStream, 1 /* CU_STREAM_NON_BLOCKING */), "cuStreamCreate(offload copies)")
        }
        driver.must(driver.cuStreamWaitEvent(copyStream, e.free, 0), "offload: wait for the slot's last reader")
        driver.must(driver.cuMemcpyHtoDAsync(buffer.deviceAddress, bytes.baseAddress, bytes.count, copyStream), "offload: copy a block's weights")
        driver.must(driver.cuEventRecord(e.ready, copyStream), "offload: record the block's arrival")
    }

    func waitUntilReady(_ sync: SlotSync) {
        guard let e = sync as? Events else { return }
        backend.setCurrent()
        driver.must(driver.cuStreamWaitEvent(backend.stream, e.ready, 0), "offload: wait for a block's weights")
    }

    func markFree(_ sync: SlotSync) {
        guard let e = sync as? Events else { return }
        backend.setCurrent()
        driver.must(driver.cuEventRecord(e.free, backend.stream), "offload: record a block's last reader")
    }
}
