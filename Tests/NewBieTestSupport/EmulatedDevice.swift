import Foundation
import NewBieTensor

/// A second device for machines without a GPU, to check that a model keeps its weights and work
/// on the device it was given. Its memory is host memory that only this backend reaches: buffers
/// carry the address as an opaque `deviceAddress` and no host pointer, so a device tensor that
/// reaches the CPU backend stops the test, and a CPU tensor passed to a device op fails a
/// precondition. Each op runs the CPU kernel on CPU views of the same memory, so results equal the
/// CPU's, except attention: it runs `attentionByMatmul`, as the CUDA backend does for head dims
/// its flash kernels do not cover.
public final class EmulatedDevice: Backend, @unchecked Sendable {
    /// The registered backend (registered on first use).
    public static let shared: EmulatedDevice = {
        let b = EmulatedDevice()
        Backends.register(b)
        return b
    }()

    /// The emulated device (its own kind, never a GPU index).
    public let device = Device.emulated(0)
    let cpu = CPUBackend.shared
    private let lock = NSLock()
    private var attentionHeadDims: [Int] = []

    /// Head dims of the attention calls since the last `resetCounts`.
    public var attentionCalls: [Int] { lock.lock(); defer { lock.unlock() }; return attentionHeadDims }
    public func resetCounts() { lock.lock(); attentionHeadDims = []; lock.unlock() }

    // MARK: recorded work

    /// When set, `record` behaves as a CUDA graph does for its user: nothing is computed at
    /// recording (the output starts as NaN) and each `replay` recomputes the body into the same
    /// output buffer, reading whatever its input buffers hold then.
    public var emulateRecording = false

    final class Recording: RecordedWork {
        let body: () throws -> Tensor
        let output: Tensor
        init(body: @escaping () throws -> Tensor, output: Tensor) { self.body = body; self.output = output }
        func replay() { output.assign(try! body()) }
    }

    public func record(_ body: @escaping () throws -> Tensor) throws -> (work: RecordedWork, output: Tensor)? {
        guard emulateRecording else { return nil }
        let output = try body().contiguous()
        fill(output, value: .nan)
        return (Recording(body: body, output: output), output)
    }

    // MARK: device <-> CPU views of the same memory

    func wrap(_ b: Buffer) -> Buffer {
        Buffer(device: device, byteCount: b.byteCount, host: nil, deviceAddress: UInt64(UInt(bitPattern: b.host!)), owner: b)
    }

    func wrap(_ t: Tensor) -> Tensor {
        Tensor(buffer: wrap(t.buffer), dtype: t.dtype, shape: t.shape, strides: t.strides, offset: t.offset)
    }

    func hostBuffer(_ b: Buffer) -> Buffer {
        precondition(b.device == device, "emulated device: got a buffer on \(b.device)")
        return Buffer(device: .cpu, byteCount: b.byteCount, host: UnsafeMutableRawPointer(bitPattern: UInt(b.deviceAddress))!, owner: b)
    }

    func h(_ t: Tensor) -> Tensor {
        precondition(t.device == device, "emulated device: \(t) is not on \(device)")
        return Tensor(buffer: hostBuffer(t.buffer), dtype: t.dtype, shape: t.shape, strides: t.strides, offset: t.offset)
    }

    // MARK: memory (counted by the CPU backend)

    public func allocate(byteCount: Int) -> Buffer { wrap(cpu.allocate(byteCount: byteCount)) }
    public func upload(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, byteOffset: Int) {
        cpu.upload(bytes, to: hostBuffer(buffer), byteOffset: byteOffset)
    }
    public func download(_ buffer: Buffer, byteOffset: Int, into bytes: UnsafeMutableRawBufferPointer) {
        cpu.download(hostBuffer(buffer), byteOffset: byteOffset, into: bytes)
    }
    public var memoryStats: MemoryStats { cpu.memoryStats }
    public func resetPeakMemory() { cpu.resetPeakMemory() }

    // MARK: ops

    public func copy(_ src: Tensor, into dst: Tensor) { cpu.copy(h(src), into: h(dst)) }
    public func fill(_ dst: Tensor, value: Float) { cpu.fill(h(dst), value: value) }
    public func unary(_ op: UnaryOp, _ x: Tensor, dtype: DType) -> Tensor { wrap(cpu.unary(op, h(x), dtype: dtype)) }
    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, dtype: DType) -> Tensor { wrap(cpu.binary(op, h(a), h(b), dtype: dtype)) }
    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, dtype: DType) -> Tensor {
        wrap(cpu.reduce(op, h(x), outer: outer, n: n, inner: inner, dtype: dtype))
    }
    public func softmax(_ x: Tensor) -> Tensor { wrap(cpu.softmax(h(x))) }
    public func rmsNorm(_ x: Tensor, weight: Tensor?, eps: Float, style: RMSNormStyle) -> Tensor {
        wrap(cpu.rmsNorm(h(x), weight: weight.map(h), eps: eps, style: style))
    }
    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        wrap(cpu.layerNorm(h(x), weight: weight.map(h), bias: bias.map(h), eps: eps))
    }
    public func groupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        wrap(cpu.groupNorm(h(x), groups: groups, weight: weight.map(h), bias: bias.map(h), eps: eps))
    }
    public func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor { wrap(cpu.linear(h(x), weight: h(weight), bias: bias.map(h))) }
    public func matmul(_ a: Tensor, _ b: Tensor, transposeB: Bool) -> Tensor { wrap(cpu.matmul(h(a), h(b), transposeB: transposeB)) }
    public func rope(_ x: Tensor, cos: Tensor, sin: Tensor, layout: RoPELayout) -> Tensor {
        wrap(cpu.rope(h(x), cos: h(cos), sin: h(sin), layout: layout))
    }
    public func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor, options: AttentionOptions) -> Tensor {
        lock.lock(); attentionHeadDims.append(q.shape[3]); lock.unlock()
        return attentionByMatmul(q, k, v, options: options)
    }
    public func embedding(_ table: Tensor, ids: Tensor, dtype: DType) -> Tensor { wrap(cpu.embedding(h(table), ids: h(ids), dtype: dtype)) }
    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, options: Conv2dOptions) -> Tensor {
        wrap(cpu.conv2d(h(x), weight: h(weight), bias: bias.map(h), options: options))
    }
    public func upsampleNearest2x(_ x: Tensor) -> Tensor { wrap(cpu.upsampleNearest2x(h(x))) }
}
