/// An n-dimensional view of a device buffer: dtype, shape, strides and offset (both in elements).
///
/// Views (reshape of contiguous data, permute, narrow, split, expand) only change metadata; ops
/// run on the backend of the tensor's device and return new contiguous tensors.
public struct Tensor: @unchecked Sendable, CustomStringConvertible {
    public let buffer: Buffer
    public let dtype: DType
    public let shape: [Int]
    public let strides: [Int]
    public let offset: Int

    public init(buffer: Buffer, dtype: DType, shape: [Int], strides: [Int]? = nil, offset: Int = 0) {
        self.buffer = buffer
        self.dtype = dtype
        self.shape = shape
        self.strides = strides ?? Tensor.contiguousStrides(shape)
        self.offset = offset
    }

    public var device: Device { buffer.device }
    public var backend: Backend { Backends.backend(for: buffer.device) }
    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }
    public var byteCount: Int { count * dtype.byteSize }

    public var description: String { "Tensor(\(dtype), \(shape), \(device))" }

    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var s = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[i] = s
            s *= shape[i]
        }
        return strides
    }

    public var isContiguous: Bool {
        var s = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != s { return false }
            s *= shape[i]
        }
        return true
    }

    /// Host address of the first element (CPU tensors only).
    public var hostPointer: UnsafeMutableRawPointer {
        guard let h = buffer.host else { fatalError("\(self) is not host-addressable") }
        return h + offset * dtype.byteSize
    }

    @inline(__always) func axis(_ a: Int) -> Int { a < 0 ? a + rank : a }

    // MARK: - creation

    /// Uninitialised tensor on `device`.
    public static func empty(_ shape: [Int], dtype: DType = .f32, device: Device = .cpu) -> Tensor {
        let backend = Backends.backend(for: device)
        let n = shape.reduce(1, *)
        return Tensor(buffer: backend.allocate(byteCount: Swift.max(n * dtype.byteSize, 1)), dtype: dtype, shape: shape)
    }

    public static func full(_ shape: [Int], value: Float, dtype: DType = .f32, device: Device = .cpu) -> Tensor {
        let t = empty(shape, dtype: dtype, device: device)
        t.backend.fill(t, value: value)
        return t
    }

    public static func zeros(_ shape: [Int], dtype: DType = .f32, device: Device = .cpu) -> Tensor {
        full(shape, value: 0, dtype: dtype, device: device)
    }

    /// From Float values, rounded to `dtype`.
    public init(_ values: [Float], shape: [Int], dtype: DType = .f32, device: Device = .cpu) {
        precondition(values.count == shape.reduce(1, *), "\(values.count) values do not fill shape \(shape)")
        let f32 = values.withUnsafeBytes { raw -> Tensor in
            let t = Tensor.empty(shape, dtype: .f32, device: device)
            t.backend.upload(raw, to: t.buffer, byteOffset: 0)
            return t
        }
        self = dtype == .f32 ? f32 : f32.to(dtype)
    }

    /// From integer values (ids, masks).
    public init(ints values: [Int32], shape: [Int], device: Device = .cpu) {
        precondition(values.count == shape.reduce(1, *), "\(values.count) values do not fill shape \(shape)")
        let t = Tensor.empty(shape, dtype: .i32, device: device)
        values.withUnsafeBytes { t.backend.upload($0, to: t.buffer, byteOffset: 0) }
        self = t
    }

    /// Wraps raw bytes in host memory without copying; `owner` keeps them alive.
    public static func borrowing(host: UnsafeMutableRawPointer, byteCount: Int, dtype: DType, shape: [Int],
                                 owner: AnyObject?) -> Tensor {
        Tensor(buffer: Buffer(device: .cpu, byteCount: byteCount, host: host, owner: owner), dtype: dtype, shape: shape)
    }

    // MARK: - reading back

    /// All elements as Float, in logical (row-major) order.
    public func toFloats() -> [Float] {
        let t = (dtype == .f32 && isContiguous && device == .cpu) ? self : self.to(.f32, device: .cpu)
        let n = count
        return [Float](unsafeUninitializedCapacity: n) { buf, done in
            if n > 0 {
                buf.baseAddress!.update(from: t.hostPointer.assumingMemoryBound(to: Float.self), count: n)
            }
            done = n
        }
    }

    /// All elements as Int (integer and bool tensors; floats are truncated).
    public func toInts() -> [Int] {
        let t = (isContiguous && device == .cpu) ? self : self.contiguous().to(device: .cpu)
        let p = t.hostPointer
        let n = count
        switch dtype {
        case .i64: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) }
        case .i32: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        case .i16: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0 * 2, as: Int16.self)) }
        case .i8: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0, as: Int8.self)) }
        case .u8, .bool: return (0..<n).map { Int(p.loadUnaligned(fromByteOffset: $0, as: UInt8.self)) }
        default: return t.toFloats().map { Int($0) }
        }
    }

    // MARK: - conversion and movement

    /// A contiguous copy (or self when already contiguous).
    public func contiguous() -> Tensor {
        if isContiguous { return self }
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.copy(self, into: out)
        return out
    }

    /// Converts to `dtype` (round to nearest even); self when already of that type and contiguous.
    public func to(_ dtype: DType) -> Tensor {
        if dtype == self.dtype { return contiguous() }
        let out = Tensor.empty(shape, dtype: dtype, device: device)
        backend.copy(self, into: out)
        return out
    }

    /// Moves to another device (through host memory for now).
    public func to(device target: Device) -> Tensor {
        if target == device { return self }
        let src = contiguous()
        let out = Tensor.empty(shape, dtype: dtype, device: target)
        if device == .cpu {
            out.backend.upload(UnsafeRawBufferPointer(start: src.hostPointer, count: src.byteCount), to: out.buffer, byteOffset: 0)
        } else if target == .cpu {
            src.backend.download(src.buffer, byteOffset: src.offset * dtype.byteSize,
                                 into: UnsafeMutableRawBufferPointer(start: out.hostPointer, count: out.byteCount))
        } else {
            return src.to(device: .cpu).to(device: target)
        }
        return out
    }

    public func to(_ dtype: DType, device target: Device) -> Tensor {
        target == device ? to(dtype) : to(device: target).to(dtype)
    }

    /// Overwrites this tensor's elements with `src`'s (same shape; converted to this dtype and moved
    /// from its device). For buffers that must keep their address, such as the inputs of recorded
    /// device work (`Backend.record`).
    public func assign(_ src: Tensor) {
        precondition(src.shape == shape, "assign: \(src.shape) into \(shape)")
        backend.copy(src.device == device ? src : src.to(device: device), into: self)
    }

    // MARK: - views

    /// Same data, new shape; one dimension may be -1. Copies only when the data is not contiguous.
    public func reshape(_ newShape: [Int]) -> Tensor {
        var s = newShape
        if let i = s.firstIndex(of: -1) {
            let known = s.enumerated().filter { $0.offset != i }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            s[i] = count / known
        }
        precondition(s.reduce(1, *) == count, "cannot reshape \(shape) (\(count) elements) to \(newShape)")
        let base = contiguous()
        return Tensor(buffer: base.buffer, dtype: dtype, shape: s, offset: base.offset)
    }

    public func flatten(from start: Int) -> Tensor {
        let a = axis(start)
        return reshape(Array(shape[..<a]) + [shape[a...].reduce(1, *)])
    }

    public func permute(_ order: [Int]) -> Tensor {
        precondition(order.count == rank && Set(order) == Set(0..<rank), "bad permutation \(order) for rank \(rank)")
        return Tensor(buffer: buffer, dtype: dtype, shape: order.map { shape[$0] }, strides: order.map { strides[$0] }, offset: offset)
    }

    public func transpose(_ a: Int, _ b: Int) -> Tensor {
        var order = Array(0..<rank)
        order.swapAt(axis(a), axis(b))
        return permute(order)
    }

    /// Elements start ..< start+length along `axis`.
    public func narrow(_ axisIndex: Int, start: Int, length: Int) -> Tensor {
        let a = axis(axisIndex)
        precondition(start >= 0 && length >= 0 && start + length <= shape[a],
                     "narrow \(start)..<\(start + length) is outside axis \(a) of \(shape)")
        var s = shape
        s[a] = length
        return Tensor(buffer: buffer, dtype: dtype, shape: s, strides: strides, offset: offset + start * strides[a])
    }

    /// Removes `axis` by picking one index.
    public func select(_ axisIndex: Int, _ index: Int) -> Tensor {
        let a = axis(axisIndex)
        precondition(index >= 0 && index < shape[a], "index \(index) outside axis \(a) of \(shape)")
        var s = shape, st = strides
        s.remove(at: a); st.remove(at: a)
        return Tensor(buffer: buffer, dtype: dtype, shape: s, strides: st, offset: offset + index * strides[a])
    }

    /// Splits along `axis` into pieces of the given sizes (views).
    public func split(_ sizes: [Int], axis axisIndex: Int) -> [Tensor] {
        let a = axis(axisIndex)
        precondition(sizes.reduce(0, +) == shape[a], "split sizes \(sizes) do not add up to axis \(a) of \(shape)")
        var start = 0
        return sizes.map { n in defer { start += n }; return narrow(a, start: start, length: n) }
    }

    /// Splits along `axis` into `n` equal pieces.
    public func chunk(_ n: Int, axis axisIndex: Int) -> [Tensor] {
        let a = axis(axisIndex)
        precondition(shape[a] % n == 0, "axis \(a) of \(shape) does not split into \(n) equal chunks")
        return split([Int](repeating: shape[a] / n, count: n), axis: a)
    }

    public func unsqueeze(_ axisIndex: Int) -> Tensor {
        let a = axisIndex < 0 ? axisIndex + rank + 1 : axisIndex
        var s = shape, st = strides
        s.insert(1, at: a)
        st.insert(a < rank ? strides[a] * shape[a] : 1, at: a)
        return Tensor(buffer: buffer, dtype: dtype, shape: s, strides: st, offset: offset)
    }

    public func squeeze(_ axisIndex: Int) -> Tensor {
        let a = axis(axisIndex)
        precondition(shape[a] == 1, "cannot squeeze axis \(a) of \(shape)")
        var s = shape, st = strides
        s.remove(at: a); st.remove(at: a)
        return Tensor(buffer: buffer, dtype: dtype, shape: s, strides: st, offset: offset)
    }

    /// Broadcast view (size-1 axes get stride 0; missing leading axes are added).
    public func expand(_ target: [Int]) -> Tensor {
        precondition(target.count >= rank, "cannot expand \(shape) to \(target)")
        let lead = target.count - rank
        var st = [Int](repeating: 0, count: target.count)
        for i in 0..<rank {
            let t = target[lead + i]
            if shape[i] == t { st[lead + i] = strides[i] }
            else { precondition(shape[i] == 1, "cannot expand \(shape) to \(target)"); st[lead + i] = 0 }
        }
        return Tensor(buffer: buffer, dtype: dtype, shape: target, strides: st, offset: offset)
    }

    public static func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int]? {
        let n = Swift.max(a.count, b.count)
        var out = [Int](repeating: 1, count: n)
        for i in 0..<n {
            let x = i < n - a.count ? 1 : a[i - (n - a.count)]
            let y = i < n - b.count ? 1 : b[i - (n - b.count)]
            if x == y || y == 1 { out[i] = x } else if x == 1 { out[i] = y } else { return nil }
        }
        return out
    }

    /// Joins tensors along `axis` (all on one device; result takes the first tensor's dtype).
    public static func concat(_ parts: [Tensor], axis axisIndex: Int) -> Tensor {
        precondition(!parts.isEmpty, "concat of no tensors")
        let first = parts[0]
        let a = first.axis(axisIndex)
        var shape = first.shape
        shape[a] = 0
        for p in parts {
            precondition(p.rank == first.rank && p.device == first.device, "concat: \(p) does not match \(first)")
            for i in 0..<p.rank where i != a {
                precondition(p.shape[i] == first.shape[i], "concat along \(a): shapes \(first.shape) and \(p.shape) differ")
            }
            shape[a] += p.shape[a]
        }
        let out = Tensor.empty(shape, dtype: first.dtype, device: first.device)
        var start = 0
        for p in parts where p.shape[a] > 0 {
            first.backend.copy(p, into: out.narrow(a, start: start, length: p.shape[a]))
            start += p.shape[a]
        }
        return out
    }
}
