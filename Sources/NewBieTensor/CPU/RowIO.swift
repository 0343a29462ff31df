import CNewBieCPU

/// Moving runs of elements between storage dtypes and Float32 work rows. Every CPU kernel reads
/// its inputs through `loadRow` and writes through `storeRow`, which is where the rounding to the
/// storage dtype happens.
enum RowIO {
    /// Reads `count` elements starting at element `offset` with element stride `stride`.
    @inline(__always)
    static func load(_ base: UnsafeRawPointer, _ dtype: DType, offset: Int, stride: Int, count: Int,
                     into dst: UnsafeMutablePointer<Float>) {
        if count == 0 { return }
        if stride == 0 {
            let v = scalar(base, dtype, offset)
            dst.update(repeating: v, count: count)
            return
        }
        if stride == 1 {
            switch dtype {
            case .f32:
                dst.update(from: (base + offset * 4).assumingMemoryBound(to: Float.self), count: count)
            case .f16:
                nb_f16_to_f32((base + offset * 2).assumingMemoryBound(to: UInt16.self), dst, count)
            case .bf16:
                nb_bf16_to_f32((base + offset * 2).assumingMemoryBound(to: UInt16.self), dst, count)
            default:
                for i in 0..<count { dst[i] = scalar(base, dtype, offset + i) }
            }
            return
        }
        for i in 0..<count { dst[i] = scalar(base, dtype, offset + i * stride) }
    }

    /// Writes `count` Float values, rounded to `dtype`, at element `offset` with element stride `stride`.
    @inline(__always)
    static func store(_ src: UnsafePointer<Float>, _ base: UnsafeMutableRawPointer, _ dtype: DType,
                      offset: Int, stride: Int = 1, count: Int) {
        if count == 0 { return }
        if stride == 1 {
            switch dtype {
            case .f32:
                (base + offset * 4).assumingMemoryBound(to: Float.self).update(from: src, count: count)
                return
            case .f16:
                nb_f32_to_f16(src, (base + offset * 2).assumingMemoryBound(to: UInt16.self), count)
                return
            case .bf16:
                nb_f32_to_bf16(src, (base + offset * 2).assumingMemoryBound(to: UInt16.self), count)
                return
            default: break
            }
        }
        for i in 0..<count { storeScalar(src[i], base, dtype, offset + i * stride) }
    }

    @inline(__always)
    static func scalar(_ base: UnsafeRawPointer, _ dtype: DType, _ i: Int) -> Float {
        switch dtype {
        case .f32: return base.loadUnaligned(fromByteOffset: i * 4, as: Float.self)
        case .f16: return nb_f16_to_f32_one(base.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
        case .bf16: return Half.bf16ToFloat(base.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
        case .f64: return Float(base.loadUnaligned(fromByteOffset: i * 8, as: Double.self))
        case .i64: return Float(base.loadUnaligned(fromByteOffset: i * 8, as: Int64.self))
        case .i32: return Float(base.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))
        case .i16: return Float(base.loadUnaligned(fromByteOffset: i * 2, as: Int16.self))
        case .i8: return Float(base.loadUnaligned(fromByteOffset: i, as: Int8.self))
        case .u8, .bool: return Float(base.loadUnaligned(fromByteOffset: i, as: UInt8.self))
        }
    }

    @inline(__always)
    static func storeScalar(_ v: Float, _ base: UnsafeMutableRawPointer, _ dtype: DType, _ i: Int) {
        switch dtype {
        case .f32: base.storeBytes(of: v, toByteOffset: i * 4, as: Float.self)
        case .f16: base.storeBytes(of: nb_f32_to_f16_one(v), toByteOffset: i * 2, as: UInt16.self)
        case .bf16: base.storeBytes(of: Half.bf16Bits(v), toByteOffset: i * 2, as: UInt16.self)
        case .f64: base.storeBytes(of: Double(v), toByteOffset: i * 8, as: Double.self)
        case .i64: base.storeBytes(of: Int64(clamping: toInt(v)), toByteOffset: i * 8, as: Int64.self)
        case .i32: base.storeBytes(of: Int32(clamping: toInt(v)), toByteOffset: i * 4, as: Int32.self)
        case .i16: base.storeBytes(of: Int16(clamping: toInt(v)), toByteOffset: i * 2, as: Int16.self)
        case .i8: base.storeBytes(of: Int8(clamping: toInt(v)), toByteOffset: i, as: Int8.self)
        case .u8: base.storeBytes(of: UInt8(clamping: toInt(v)), toByteOffset: i, as: UInt8.self)
        case .bool: base.storeBytes(of: UInt8(v != 0 ? 1 : 0), toByteOffset: i, as: UInt8.self)
        }
    }

    @inline(__always) private static func toInt(_ v: Float) -> Int {
        v.isNaN ? 0 : (v >= 9.2e18 ? Int.max : (v <= -9.2e18 ? Int.min : Int(v)))
    }
}

/// Walks tensors of one logical shape row by row (the last axis is the row), after merging
/// axes that are contiguous in every operand. Rows are split over the cores.
struct StridedRows {
    let shape: [Int]         // merged shape; last entry is the row length
    let strides: [[Int]]     // per operand, merged
    let offsets: [Int]       // per operand, element offset of the first element

    init(shape: [Int], operands: [Tensor]) {
        var sh = shape.isEmpty ? [1] : shape
        var st = operands.map { $0.shape.isEmpty ? [1] : $0.strides }
        // drop size-1 axes (their stride is irrelevant)
        if sh.count > 1 {
            let keep = sh.indices.filter { sh[$0] != 1 }
            if keep.isEmpty { sh = [1]; st = st.map { _ in [1] } }
            else { sh = keep.map { sh[$0] }; st = st.map { s in keep.map { s[$0] } } }
        }
        // merge axis i into i+1 when every operand is contiguous across them
        var i = sh.count - 2
        while i >= 0 {
            if st.allSatisfy({ $0[i] == $0[i + 1] * sh[i + 1] }) {
                sh[i + 1] *= sh[i]
                sh.remove(at: i)
                for k in st.indices { st[k].remove(at: i) }
            }
            i -= 1
        }
        self.shape = sh
        self.strides = st
        self.offsets = operands.map { $0.offset }
    }

    var rowLength: Int { shape.last! }
    var rowCount: Int { shape.dropLast().reduce(1, *) }
    func rowStride(_ operand: Int) -> Int { strides[operand].last! }

    /// Element offset of row `r` for operand `k`.
    @inline(__always) func rowOffset(_ r: Int, operand k: Int) -> Int {
        var rem = r, off = offsets[k]
        let st = strides[k]
        var axis = shape.count - 2
        while axis >= 0 {
            let n = shape[axis]
            off += (rem % n) * st[axis]
            rem /= n
            axis -= 1
        }
        return off
    }

    /// Work is handed out in segments: whole rows, or, when there are fewer rows than cores
    /// (a contiguous tensor merges into one row), pieces of rows, so every core gets a share.
    var segmentLength: Int {
        let cores = Parallel.cores
        if rowCount >= 4 * cores || rowLength <= 8192 { return rowLength }
        return Swift.max(4096, (rowLength + 4 * cores - 1) / (4 * cores))
    }
    var segmentsPerRow: Int { (rowLength + segmentLength - 1) / segmentLength }

    /// Offset and length of segment `s` for operand `k`.
    @inline(__always) func segment(_ s: Int, operand k: Int) -> (offset: Int, count: Int) {
        let per = segmentsPerRow, len = segmentLength
        let r = s / per, c = s % per
        let start = c * len
        return (rowOffset(r, operand: k) + start * rowStride(k), Swift.min(len, rowLength - start))
    }

    /// Calls body(segmentRange) in parallel; cheap segments are grouped so each task has enough work.
    func forEachSegment(_ body: (Range<Int>) -> Void) {
        let len = segmentLength
        let grain = Swift.max(1, 16384 / Swift.max(len, 1))
        Parallel.forEach(rowCount * segmentsPerRow, grain: grain, body)
    }
}
