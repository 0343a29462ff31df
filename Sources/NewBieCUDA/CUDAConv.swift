import Foundation
import NewBieTensor

// Convolution (im2col bands + GEMM) and nearest 2x upsampling.

extension CUDABackend {
    // MARK: convolution

    /// The most bytes of im2col columns a convolution holds at once (see conv2d); the environment
    /// variable NEWBIE_IM2COL_BAND_BYTES overrides it (a huge value gives one band: the whole
    /// column matrix, for comparing).
    nonisolated(unsafe) public static var im2colBandBytes: Int =
        ProcessInfo.processInfo.environment["NEWBIE_IM2COL_BAND_BYTES"].flatMap { Int($0) }.map { Swift.max($0, 1) } ?? 256 << 20

    public func conv2d(_ x: Tensor, weight: Tensor, bias: Tensor?, options o: Conv2dOptions) -> Tensor {
        let (batch, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let (cout, kh, kw) = (weight.shape[0], weight.shape[2], weight.shape[3])
        let oh = (h + o.padTop + o.padBottom - kh) / o.strideH + 1
        let ow = (w + o.padLeft + o.padRight - kw) / o.strideW + 1
        let out = empty([batch, cout, oh, ow], x.dtype)
        guard let type = Self.blasType(x.dtype) else { driver.fail("conv2d: unsupported dtype \(x.dtype) on CUDA"); return out }
        guard !driver.failed else { return out }
        let wt = weight.dtype == x.dtype ? weight : weight.to(x.dtype)
        let kdim = cin * kh * kw, p = oh * ow, xb = x.dtype.byteSize
        setCurrent()
        func gemm(_ a: UInt64, k: Int, _ b: UInt64, n: Int, into c: UInt64, accumulate: Bool) {
            // out_b[:, band] [cout, n] = W [cout, k] x B [k, n], rows of out_b p long
            profiled("cublasLt conv") { do {
                try blas.gemm(m: cout, n: n, k: k, batch: 1, type: type, a: a, strideA: 0, b: b, strideB: 0,
                              transposeB: false, c: c, strideC: 0, bias: nil, allowTF32: allowTF32, accumulate: accumulate,
                              ldc: p, stream: stream)
            } catch { driver.fail("conv2d \(x.shape) * \(weight.shape) (\(x.dtype)): \(error)") } }
        }
        func fillBias(_ bias: Tensor) {
            // the bias goes in first and the product is added to it in fp32 (cuBLASLt's beta = 1):
            // one rounding of (W x + bias), as the CPU and cuDNN's fused bias do
            launch("nb_channel_fill", grid: blocks(out.count), KernelArgs().ptr(ptr(out)).i32(Self.dtypeCode(out.dtype))
                .ptr(ptr(bias)).i32(Self.dtypeCode(bias.dtype)).i64(cout).i64(p).i64(out.count))
        }
        // a 1x1 convolution with stride 1 and no padding is a plain product: the input is its own
        // column matrix
        if Self.fuseVAEOps && kh == 1 && kw == 1 && o.strideH == 1 && o.strideW == 1 && o.padTop == 0 && o.padBottom == 0 && o.padLeft == 0 && o.padRight == 0 {
            if let bias = bias { fillBias(bias) }
            for bi in 0..<batch {
                gemm(ptr(wt), k: cin, ptr(x) + UInt64(bi * cin * p * xb), n: p, into: ptr(out) + UInt64(bi * cout * p * xb),
                     accumulate: bias != nil)
            }
            return out
        }
        // With the fusion on, the bias enters the product itself: the weight gains columns
        // [bias, 0 ...] and the columns rows [1, 0 ...] (padded to 8 for the tensor cores' alignment),
        // so the GEMM writes W col + bias, accumulated in fp32 and rounded once, with no fill pass
        // and no read of the output (cuBLASLt's bias epilogue adds along the other axis of this
        // NCHW product).
        let foldBias = bias != nil && Self.fuseVAEOps
        let kAug = foldBias ? (kdim / 8 + 1) * 8 : kdim
        var weightAug = wt
        if foldBias, let bias = bias {
            let w2 = wt.reshape([cout, kdim])
            var parts = [w2, bias.to(x.dtype).reshape([cout, 1])]
            if kAug - kdim > 1 { parts.append(Tensor.zeros([cout, kAug - kdim - 1], dtype: x.dtype, device: x.device)) }
            weightAug = Tensor.concat(parts, axis: 1)
        } else if let bias = bias {
            fillBias(bias)
        }
        // im2col in bands of output rows, each band's columns multiplied into its slice of the
        // output (ldc = the full row length): the column matrix of a 128-channel 3x3 convolution at
        // 1024x1024 would be 2.4 GB whole; a band is at most `Self.im2colBandBytes`.
        let bandRows = Swift.max(1, Swift.min(oh, Self.im2colBandBytes / Swift.max(1, kAug * ow * xb)))
        let col = empty([kAug, bandRows * ow], x.dtype)
        let colFlat = col.reshape([col.count])
        var constantRowsFor: Int? = nil   // the band width whose bias rows (ones, zeros) are in place
        for bi in 0..<batch {
            for r0 in stride(from: 0, to: oh, by: bandRows) {
                let rows = Swift.min(bandRows, oh - r0), n = rows * ow
                // the band's first output row reads input row r0 * strideH - padTop: a shifted top pad
                let pt = o.padTop - r0 * o.strideH
                if Self.fuseVAEOps && xb == 2 && kw == 3 && o.strideH == 1 && o.strideW == 1 && ow % 8 == 0 && cin < 65536 {
                    launch2D("nb_im2col_u16_k3w8", grid: ((n / 8 + 255) / 256, cin),
                             KernelArgs().ptr(ptr(x) + UInt64(bi * cin * h * w * xb)).ptr(ptr(col)).i32(Int32(cin)).i32(Int32(h)).i32(Int32(w))
                        .i32(Int32(kh)).i32(Int32(pt)).i32(Int32(o.padLeft)).i32(Int32(rows)).i32(Int32(ow)))
                } else if cin < 65536 && (xb == 2 || xb == 4) {
                    // x and col share the dtype: a raw copy
                    launch2D(xb == 2 ? "nb_im2col_u16" : "nb_im2col_u32", grid: ((n + 1023) / 1024, cin),
                             KernelArgs().ptr(ptr(x) + UInt64(bi * cin * h * w * xb)).ptr(ptr(col)).i32(Int32(cin)).i32(Int32(h)).i32(Int32(w))
                        .i32(Int32(kh)).i32(Int32(kw)).i32(Int32(o.strideH)).i32(Int32(o.strideW)).i32(Int32(pt)).i32(Int32(o.padLeft))
                        .i32(Int32(rows)).i32(Int32(ow)))
                } else {
                    launch("nb_im2col", grid: blocks(kdim * n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype))
                        .i64(x.offset + bi * cin * h * w).ptr(ptr(col)).i32(Self.dtypeCode(x.dtype)).i32(Int32(cin)).i32(Int32(h)).i32(Int32(w))
                        .i32(Int32(kh)).i32(Int32(kw)).i32(Int32(o.strideH)).i32(Int32(o.strideW)).i32(Int32(pt)).i32(Int32(o.padLeft))
                        .i32(Int32(rows)).i32(Int32(ow)))
                }
                if foldBias && constantRowsFor != n {
                    // the band's columns are [kAug, n] packed: row kdim all ones, the rest zero; im2col
                    // never writes there, so they stay in place for every band of the same width
                    fill(colFlat.narrow(0, start: kdim * n, length: n), value: 1)
                    if kAug - kdim > 1 { fill(colFlat.narrow(0, start: (kdim + 1) * n, length: (kAug - kdim - 1) * n), value: 0) }
                    constantRowsFor = n
                }
                gemm(ptr(weightAug), k: kAug, ptr(col), n: n, into: ptr(out) + UInt64((bi * cout * p + r0 * ow) * xb),
                     accumulate: bias != nil && !foldBias)
            }
        }
        return out
    }

    public func upsampleNearest2x(_ x: Tensor) -> Tensor {
        let (b, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let out = empty([b, c, 2 * h, 2 * w], x.dtype)
        let n = out.count
        if n == 0 { return out }
        launch("nb_upsample2x", grid: blocks(n), KernelArgs().ptr(base(x)).i32(Self.dtypeCode(x.dtype)).i64(x.offset)
            .ptr(ptr(out)).i64(b * c).i64(h).i64(w))
        return out
    }
}
