import Foundation
import CNewBieCPU

/// The CPU backend: Float32 compute over any storage dtype, GEMMs through the system BLAS,
/// everything else in Swift loops split over the cores.
public final class CPUBackend: Backend, @unchecked Sendable {
    public static let shared = CPUBackend()
    public let device = Device.cpu

    private let statsLock = NSLock()
    private var current = 0
    private var peak = 0

    // MARK: memory

    public func allocate(byteCount: Int) -> Buffer {
        let n = Swift.max(byteCount, 1)
        let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 64)
        statsLock.lock()
        current += n
        peak = Swift.max(peak, current)
        statsLock.unlock()
        return Buffer(device: .cpu, byteCount: n, host: p, release: { [unowned self] in
            p.deallocate()
            self.statsLock.lock()
            self.current -= n
            self.statsLock.unlock()
        })
    }

    /// Float scratch memory for a kernel's working set, counted in `memoryStats` like tensors are,
    /// so a kernel's peak memory is visible (e.g. that attention holds no L x L matrix).
    func scratch(_ count: Int) -> UnsafeMutablePointer<Float> {
        let n = Swift.max(count, 1)
        statsLock.lock()
        current += n * 4
        peak = Swift.max(peak, current)
        statsLock.unlock()
        return .allocate(capacity: n)
    }

    func release(_ p: UnsafeMutablePointer<Float>, _ count: Int) {
        p.deallocate()
        statsLock.lock()
        current -= Swift.max(count, 1) * 4
        statsLock.unlock()
    }

    public func upload(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, byteOffset: Int) {
        guard bytes.count > 0 else { return }
        (buffer.host! + byteOffset).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
    }

    public func download(_ buffer: Buffer, byteOffset: Int, into bytes: UnsafeMutableRawBufferPointer) {
        guard bytes.count > 0 else { return }
        bytes.baseAddress!.copyMemory(from: buffer.host! + byteOffset, byteCount: bytes.count)
    }

    public var memoryStats: MemoryStats {
        statsLock.lock(); defer { statsLock.unlock() }
        return MemoryStats(currentBytes: current, peakBytes: peak)
    }

    public func resetPeakMemory() {
        statsLock.lock(); peak = current; statsLock.unlock()
    }

    // MARK: data movement

    public func copy(_ src: Tensor, into dst: Tensor) {
        precondition(src.shape == dst.shape, "copy: shapes \(src.shape) and \(dst.shape) differ")
        if src.count == 0 { return }
        let rows = StridedRows(shape: src.shape, operands: [src, dst])
        let ss = rows.rowStride(0), ds = rows.rowStride(1)
        let sb = UnsafeRawPointer(src.buffer.host!), db = dst.buffer.host!
        // same dtype, both rows contiguous: plain byte copies
        if src.dtype == dst.dtype && ss == 1 && ds == 1 {
            let es = src.dtype.byteSize
            rows.forEachSegment { range in
                for s in range {
                    let (so, n) = rows.segment(s, operand: 0), (dof, _) = rows.segment(s, operand: 1)
                    (db + dof * es).copyMemory(from: sb + so * es, byteCount: n * es)
                }
            }
            return
        }
        rows.forEachSegment { range in
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: rows.segmentLength)
            defer { tmp.deallocate() }
            for s in range {
                let (so, n) = rows.segment(s, operand: 0), (dof, _) = rows.segment(s, operand: 1)
                RowIO.load(sb, src.dtype, offset: so, stride: ss, count: n, into: tmp)
                RowIO.store(tmp, db, dst.dtype, offset: dof, stride: ds, count: n)
            }
        }
    }

    public func fill(_ dst: Tensor, value: Float) {
        let n = dst.count
        if n == 0 { return }
        let base = dst.buffer.host!
        Parallel.forEach(n, grain: 1 << 16) { range in
            let chunk = 4096
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
            defer { tmp.deallocate() }
            tmp.update(repeating: value, count: chunk)
            var i = range.lowerBound
            while i < range.upperBound {
                let m = Swift.min(chunk, range.upperBound - i)
                RowIO.store(tmp, base, dst.dtype, offset: dst.offset + i, count: m)
                i += m
            }
        }
    }

    // MARK: element-wise

    public func unary(_ op: UnaryOp, _ x: Tensor, dtype: DType) -> Tensor {
        let out = Tensor.empty(x.shape, dtype: dtype)
        if x.count == 0 { return out }
        let rows = StridedRows(shape: x.shape, operands: [x, out])
        let xs = rows.rowStride(0)
        let xb = UnsafeRawPointer(x.buffer.host!), ob = out.buffer.host!
        rows.forEachSegment { range in
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: rows.segmentLength)
            defer { tmp.deallocate() }
            for s in range {
                let (xo, n) = rows.segment(s, operand: 0), (oo, _) = rows.segment(s, operand: 1)
                RowIO.load(xb, x.dtype, offset: xo, stride: xs, count: n, into: tmp)
                CPUMath.apply(op, tmp, n)
                RowIO.store(tmp, ob, dtype, offset: oo, count: n)
            }
        }
        return out
    }

    public func binary(_ op: BinaryOp, _ a: Tensor, _ b: Tensor, dtype: DType) -> Tensor {
        precondition(a.shape == b.shape)
        let out = Tensor.empty(a.shape, dtype: dtype)
        if a.count == 0 { return out }
        let rows = StridedRows(shape: a.shape, operands: [a, b, out])
        let as_ = rows.rowStride(0), bs = rows.rowStride(1)
        let ab = UnsafeRawPointer(a.buffer.host!), bb = UnsafeRawPointer(b.buffer.host!), ob = out.buffer.host!
        rows.forEachSegment { range in
            let x = UnsafeMutablePointer<Float>.allocate(capacity: rows.segmentLength)
            let y = UnsafeMutablePointer<Float>.allocate(capacity: rows.segmentLength)
            defer { x.deallocate(); y.deallocate() }
            for s in range {
                let (ao, n) = rows.segment(s, operand: 0), (bo, _) = rows.segment(s, operand: 1), (oo, _) = rows.segment(s, operand: 2)
                RowIO.load(ab, a.dtype, offset: ao, stride: as_, count: n, into: x)
                RowIO.load(bb, b.dtype, offset: bo, stride: bs, count: n, into: y)
                switch op {
                case .add: for i in 0..<n { x[i] += y[i] }
                case .sub: for i in 0..<n { x[i] -= y[i] }
                case .mul: for i in 0..<n { x[i] *= y[i] }
                case .div: for i in 0..<n { x[i] /= y[i] }
                case .maximum: for i in 0..<n { x[i] = (x[i].isNaN || y[i].isNaN) ? .nan : Swift.max(x[i], y[i]) }
                case .minimum: for i in 0..<n { x[i] = (x[i].isNaN || y[i].isNaN) ? .nan : Swift.min(x[i], y[i]) }
                }
                RowIO.store(x, ob, dtype, offset: oo, count: n)
            }
        }
        return out
    }

    // MARK: reductions

    public func reduce(_ op: ReduceOp, _ x: Tensor, outer: Int, n: Int, inner: Int, dtype: DType) -> Tensor {
        let out = Tensor.empty([outer, inner], dtype: dtype)
        let xb = UnsafeRawPointer(x.buffer.host!), ob = out.buffer.host!
        Parallel.forEach(outer * inner, grain: Swift.max(1, 4096 / Swift.max(n, 1))) { range in
            // one output element at a time; inputs read along n with stride `inner`
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(n, 1))
            defer { tmp.deallocate() }
            for idx in range {
                let o = idx / inner, i = idx % inner
                RowIO.load(xb, x.dtype, offset: x.offset + o * n * inner + i, stride: inner, count: n, into: tmp)
                var r: Float
                switch op {
                case .sum, .mean, .sumSquares:
                    var acc = 0.0
                    if op == .sumSquares { for j in 0..<n { acc += Double(tmp[j]) * Double(tmp[j]) } }
                    else { for j in 0..<n { acc += Double(tmp[j]) } }
                    r = Float(op == .mean ? acc / Double(n) : acc)
                case .max:
                    r = -.infinity
                    for j in 0..<n { if tmp[j].isNaN { r = .nan; break }; r = Swift.max(r, tmp[j]) }
                case .min:
                    r = .infinity
                    for j in 0..<n { if tmp[j].isNaN { r = .nan; break }; r = Swift.min(r, tmp[j]) }
                }
                RowIO.storeScalar(r, ob, dtype, idx)
            }
        }
        return out
    }

    public func softmax(_ x: Tensor) -> Tensor {
        let n = x.shape.last ?? 1
        let rowsCount = x.count / Swift.max(n, 1)
        let out = Tensor.empty(x.shape, dtype: x.dtype)
        let xb = UnsafeRawPointer(x.buffer.host!), ob = out.buffer.host!
        Parallel.forEach(rowsCount, grain: Swift.max(1, 8192 / Swift.max(n, 1))) { range in
            let t = UnsafeMutablePointer<Float>.allocate(capacity: n)
            defer { t.deallocate() }
            for r in range {
                RowIO.load(xb, x.dtype, offset: x.offset + r * n, stride: 1, count: n, into: t)
                var m = -Float.infinity
                for i in 0..<n { m = Swift.max(m, t[i]) }
                for i in 0..<n { t[i] -= m }
                nb_exp_f32(t, t, n)
                var s: Float = 0
                for i in 0..<n { s += t[i] }
                let inv = 1 / s
                for i in 0..<n { t[i] *= inv }
                RowIO.store(t, ob, x.dtype, offset: r * n, count: n)
            }
        }
        return out
    }

    // MARK: normalisation

    public func rmsNorm(_ x: Tensor, weight: Tensor?, eps: Float, style: RMSNormStyle) -> Tensor {
        let d = x.shape.last!
        let rowsCount = x.count / Swift.max(d, 1)
        let out = Tensor.empty(x.shape, dtype: x.dtype)
        let w = weight.map { $0.toFloats() }
        let wdt = weight?.dtype ?? .f32
        let xb = UnsafeRawPointer(x.buffer.host!), ob = out.buffer.host!
        Parallel.forEach(rowsCount, grain: Swift.max(1, 8192 / Swift.max(d, 1))) { range in
            let t = UnsafeMutablePointer<Float>.allocate(capacity: d)
            defer { t.deallocate() }
            for r in range {
                RowIO.load(xb, x.dtype, offset: x.offset + r * d, stride: 1, count: d, into: t)
                var acc: Float = 0
                for i in 0..<d { acc += t[i] * t[i] }
                let inv = 1 / (acc / Float(d) + eps).squareRoot()
                switch style {
                case .roundThenWeight:
                    for i in 0..<d { t[i] *= inv }
                    if let w = w {
                        // reduced-precision weights: the normalised value is cast to the weight's dtype first
                        for i in 0..<d { t[i] = Half.round(t[i], to: wdt) * w[i] }
                    }
                case .gemmaOnePlusWeight:
                    if let w = w { for i in 0..<d { t[i] = t[i] * inv * (1 + w[i]) } }
                    else { for i in 0..<d { t[i] *= inv } }
                }
                RowIO.store(t, ob, x.dtype, offset: r * d, count: d)
            }
        }
        return out
    }

    public func layerNorm(_ x: Tensor, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let d = x.shape.last!
        let rowsCount = x.count / Swift.max(d, 1)
        let out = Tensor.empty(x.shape, dtype: x.dtype)
        let w = weight.map { $0.toFloats() }, b = bias.map { $0.toFloats() }
        let xb = UnsafeRawPointer(x.buffer.host!), ob = out.buffer.host!
        Parallel.forEach(rowsCount, grain: Swift.max(1, 8192 / Swift.max(d, 1))) { range in
            let t = UnsafeMutablePointer<Float>.allocate(capacity: d)
            defer { t.deallocate() }
            for r in range {
                RowIO.load(xb, x.dtype, offset: x.offset + r * d, stride: 1, count: d, into: t)
                let (mean, rstd) = CPUMath.meanRstd(t, d, eps: eps)
                for i in 0..<d { t[i] = (t[i] - mean) * rstd }
                if let w = w { for i in 0..<d { t[i] *= w[i] } }
                if let b = b { for i in 0..<d { t[i] += b[i] } }
                RowIO.store(t, ob, x.dtype, offset: r * d, count: d)
            }
        }
        return out
    }

    public func groupNorm(_ x: Tensor, groups: Int, weight: Tensor?, bias: Tensor?, eps: Float) -> Tensor {
        let batch = x.shape[0], c = x.shape[1]
        let spatial = x.shape.dropFirst(2).reduce(1, *)
        let cpg = c / groups
        let n = cpg * spatial
        let out = Tensor.empty(x.shape, dtype: x.dtype)
        let w = weight.map { $0.toFloats() }, b = bias.map { $0.toFloats() }
        let xb = UnsafeRawPointer(x.buffer.host!), ob = out.buffer.host!
        Parallel.forEach(batch * groups) { range in
            let t = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(n, 1))
            defer { t.deallocate() }
            for bg in range {
                let start = bg * n  // groups are contiguous blocks of channels in NCHW
                let g = bg % groups
                RowIO.load(xb, x.dtype, offset: x.offset + start, stride: 1, count: n, into: t)
                let (mean, rstd) = CPUMath.meanRstd(t, n, eps: eps)
                for ci in 0..<cpg {
                    let ch = g * cpg + ci
                    let scale = rstd * (w?[ch] ?? 1), shift = (b?[ch] ?? 0) - mean * scale
                    let row = t + ci * spatial
                    for i in 0..<spatial { row[i] = row[i] * scale + shift }
                }
                RowIO.store(t, ob, x.dtype, offset: start, count: n)
            }
        }
        return out
    }

    // MARK: gather

    public func embedding(_ table: Tensor, ids: Tensor, dtype: DType) -> Tensor {
        let v = table.shape[0], d = table.shape[1]
        let idx = ids.toInts()
        for (i, id) in idx.enumerated() where id < 0 || id >= v {
            preconditionFailure("embedding: id \(id) at position \(i) is outside the table of \(v) rows")
        }
        let out = Tensor.empty([idx.count, d], dtype: dtype)
        let tb = UnsafeRawPointer(table.buffer.host!), ob = out.buffer.host!
        Parallel.forEach(idx.count) { range in
            let t = UnsafeMutablePointer<Float>.allocate(capacity: d)
            defer { t.deallocate() }
            for r in range {
                RowIO.load(tb, table.dtype, offset: table.offset + idx[r] * d, stride: 1, count: d, into: t)
                RowIO.store(t, ob, dtype, offset: r * d, count: d)
            }
        }
        return out
    }
}

/// Scalar math shared by the CPU kernels.
enum CPUMath {
    @inline(__always)
    static func apply(_ op: UnaryOp, _ t: UnsafeMutablePointer<Float>, _ n: Int) {
        switch op {
        case .identity: break
        case .neg: for i in 0..<n { t[i] = -t[i] }
        case .abs: for i in 0..<n { t[i] = Swift.abs(t[i]) }
        case .square: for i in 0..<n { t[i] *= t[i] }
        case .sqrt: for i in 0..<n { t[i] = t[i].squareRoot() }
        case .rsqrt: for i in 0..<n { t[i] = 1 / t[i].squareRoot() }
        case .exp: for i in 0..<n { t[i] = Foundation.exp(t[i]) }
        case .log: for i in 0..<n { t[i] = Foundation.log(t[i]) }
        case .tanh: for i in 0..<n { t[i] = Foundation.tanh(t[i]) }
        case .sin: for i in 0..<n { t[i] = Foundation.sin(t[i]) }
        case .cos: for i in 0..<n { t[i] = Foundation.cos(t[i]) }
        case .sigmoid: for i in 0..<n { t[i] = 1 / (1 + Foundation.exp(-t[i])) }
        case .relu: for i in 0..<n { t[i] = t[i] > 0 ? t[i] : (t[i].isNaN ? t[i] : 0) }
        case .silu: nb_silu_f32(t, n)
        case .geluTanh: nb_gelu_tanh_f32(t, n)
        case .geluErf: nb_gelu_erf_f32(t, n)
        case .affine(let a, let b): for i in 0..<n { t[i] = t[i] * a + b }
        case .clamp(let lo, let hi): for i in 0..<n { t[i] = t[i].isNaN ? t[i] : Swift.min(Swift.max(t[i], lo), hi) }
        }
    }

    /// Mean and 1/sqrt(biased variance + eps), accumulated in Double (two passes).
    @inline(__always)
    static func meanRstd(_ t: UnsafePointer<Float>, _ n: Int, eps: Float) -> (Float, Float) {
        var s = 0.0
        for i in 0..<n { s += Double(t[i]) }
        let mean = s / Double(n)
        var v = 0.0
        for i in 0..<n { let d = Double(t[i]) - mean; v += d * d }
        let rstd = 1 / (v / Double(n) + Double(eps)).squareRoot()
        return (Float(mean), Float(rstd))
    }
}
