import Foundation
import NewBieTensor

// Recorded device work: stream capture into CUDA graphs and their replay.

extension CUDABackend {
    public func record(_ body: @escaping () throws -> Tensor) throws -> (work: RecordedWork, output: Tensor)? {
        setCurrent()
        let memory = pool.beginRecording()
        let graph = CUDAGraph(backend: self, memory: memory)
        capturing = graph
        // relaxed: allocations (cuMemAlloc for a new pool block) stay legal while capturing
        try driver.check(driver.cuStreamBeginCapture(stream, 2), "cuStreamBeginCapture")
        var output: Tensor? = nil, failure: Error? = nil
        do { output = try body() } catch { failure = error }
        var g: OpaquePointer? = nil
        let rc = driver.cuStreamEndCapture(stream, &g)
        capturing = nil
        pool.endRecording()
        graph.graph = g
        if let e = failure { throw e }
        try driver.check(rc, "cuStreamEndCapture")
        var exec: OpaquePointer? = nil
        try driver.check(driver.cuGraphInstantiateWithFlags(&exec, g, 0), "cuGraphInstantiateWithFlags")
        graph.exec = exec
        return (graph, output!)
    }
}

/// A captured CUDA graph: the kernels and copies of one recorded body, replayed on its stream.
/// Its memory blocks (`MemoryPool.GraphMemory`) and pinned upload copies live as long as it does.
public final class CUDAGraph: RecordedWork, @unchecked Sendable {
    unowned let backend: CUDABackend
    let memory: MemoryPool.GraphMemory
    var graph: OpaquePointer?
    var exec: OpaquePointer?
    private var pinned: [UnsafeMutableRawPointer] = []

    init(backend: CUDABackend, memory: MemoryPool.GraphMemory) { self.backend = backend; self.memory = memory }

    func pinnedCopy(_ bytes: UnsafeRawBufferPointer) -> UnsafeMutableRawPointer {
        var p: UnsafeMutableRawPointer? = nil
        backend.driver.must(backend.driver.cuMemHostAlloc(&p, bytes.count, 0), "cuMemHostAlloc(recorded upload)")
        p!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        pinned.append(p!)
        return p!
    }

    public func replay() {
        backend.setCurrent()
        backend.driver.must(backend.driver.cuGraphLaunch(exec, backend.stream), "cuGraphLaunch")
    }

    deinit {
        // the stream may still be replaying: wait before the blocks go back to the pool
        backend.setCurrent()
        _ = backend.driver.cuStreamSynchronize(backend.stream)
        if let e = exec { _ = backend.driver.cuGraphExecDestroy(e) }
        if let g = graph { _ = backend.driver.cuGraphDestroy(g) }
        for p in pinned { _ = backend.driver.cuMemFreeHost(p) }
        backend.pool.release(memory)
    }
}
