import NewBieCUDA
import NewBieTensor
import NewBieWeights

extension GPUCheck {
    /// Rows for the quantized-weight kernels (Kernels/quant.cu, the fused producers' e4m3 forms in
    /// fused.cu, and the FP8 GEMM) against the CPU's reference definitions
    /// (NewBieTensor/QuantizedOps.swift): int8 dequantization per channel and per group of 128,
    /// quantized linear layers, the activations' per-row e4m3 codes and scales, the fused producers,
    /// and the fp8 W8A8 product with per-channel and per-token scales.
    func checkQuantized(cuda: CUDABackend, rand: ([Int], DType, Float) -> Tensor,
                        check: (String, DType, (Device) -> Tensor) -> Void,
                        report: (String, DType, Double, Double) -> Void) {
        let w = rand([96, 384], .f32, 0.2)
        let bias = rand([96], .f32, 1)
        let int8 = QuantizedWeight.quantize(w, scheme: .int8), g128 = QuantizedWeight.quantize(w, scheme: .int8g128)
        let fp8 = QuantizedWeight.quantize(w, scheme: .fp8)
        let odd = rand([40, 300], .f32, 0.2)
        let oddInt8 = QuantizedWeight.quantize(odd, scheme: .int8), oddG128 = QuantizedWeight.quantize(odd, scheme: .int8g128)
        let gpu = Device.cuda(0)
        let cpuBackend = Backends.backend(for: .cpu)
        for dt in [DType.f32, .bf16, .f16] {
            let x = rand([2, 37, 384], dt, 1)
            let b = bias.to(dt)
            for (name, qw) in [("int8", int8), ("int8-g128", g128)] {
                check("dequant \(name)", dt) { d in
                    qw.on(d).dequantized(dt, device: d)
                }
                check("\(name) linear + bias", dt) { d in
                    Linear(quantized: qw.on(d), bias: b.to(device: d), dtype: dt, device: d)(x.to(device: d))
                }
            }
            // the 16-bit rows above take the 8-wide kernels (lengths multiples of 8); these take the
            // scalar ones (a row of 300 and 3 x 5 x 7 elements)
            for (name, qw) in [("int8", oddInt8), ("int8-g128", oddG128)] {
                check("dequant \(name), rows of 300", dt) { d in qw.on(d).dequantized(dt, device: d) }
            }
            // per-row e4m3 codes (nb_quant_rows_e4m3, 8-wide for 16-bit rows of 8k values up to 32768):
            // the same codes as the CPU's (the division is correctly rounded on both; the 8-wide form
            // divides by a reciprocal with Markstein's correction), scales to 1e-6
            for (label, xa) in [("rows of 384", x), ("rows of 105", rand([3, 5, 105], dt, 1)), ("rows of 9216", rand([6, 9216], dt, 3)),
                                ("rows of 32776 (past the held length)", rand([2, 32776], dt, 1))] {
                let ref = cpuBackend.quantizeRowsE4M3(xa)
                let got = cuda.quantizeRowsE4M3(xa.to(device: gpu))
                report("e4m3 row codes, \(label): codes differing from the CPU's", dt, Self.codesApart(got, ref, steps: 0), 0)
                report("e4m3 row codes, \(label): scales, max relative error", dt, Self.scalesApart(got, ref), 1e-6)
            }
            guard dt != .f32 else { continue }
            // the fused producers: bit for bit the GPU's own unfused pair (16-bit op, then the row
            // quantizer), and their values against the CPU's composition
            let norm = rand([384], dt, 1), mod = rand([2, 384], dt, 0.5)
            let ga = rand([2, 37, 1152], dt, 3), gb = rand([2, 37, 1152], dt, 1)
            let producers: [(String, (Device) -> E4M3Rows, () -> E4M3Rows)] = [
                ("rmsnorm+modulate -> e4m3", { d in x.to(device: d).rmsNormModulateE4M3(weight: norm.to(device: d), eps: 1e-6, scale: mod.to(device: d)) },
                 { x.to(device: gpu).rmsNormModulate(weight: norm.to(device: gpu), eps: 1e-6, scale: mod.to(device: gpu)).quantizedRowsE4M3() }),
                ("rmsnorm -> e4m3 (no modulation)", { d in x.to(device: d).rmsNormModulateE4M3(weight: norm.to(device: d), eps: 1e-6, scale: nil) },
                 { x.to(device: gpu).rmsNormModulate(weight: norm.to(device: gpu), eps: 1e-6, scale: nil).quantizedRowsE4M3() }),
                ("swiglu -> e4m3", { d in ga.to(device: d).swigluE4M3(gb.to(device: d)) },
                 { ga.to(device: gpu).swiglu(gb.to(device: gpu)).quantizedRowsE4M3() }),
            ]
            let defaultLayout = cuda.normRowsPerBlock
            for perBlock in [false, true] {
                cuda.normRowsPerBlock = perBlock
                for (name, fused, unfused) in producers {
                    let label = name + (perBlock ? " (norm: block per row)" : " (norm: warp per row)")
                    let f = fused(gpu), u = unfused()
                    report("\(label): codes and scales differing from the GPU's unfused pair", dt,
                           Self.codesApart(f, u, steps: 0) + (Self.scalesApart(f, u) == 0 ? 0 : 1), 0)
                    check("\(label) values vs the CPU composition", dt) { d in fused(d).decoded() }
                }
            }
            cuda.normRowsPerBlock = defaultLayout
            // the 16-bit compute dtypes only: with fp32 outputs the comparison would measure the FP8
            // tensor cores' accumulation (fewer bits than fp32 between promotions), not our code
            check("fp8 W8A8 linear + bias", dt) { d in
                Linear(quantized: fp8.on(d), bias: b.to(device: d), dtype: dt, device: d)(x.to(device: d))
            }
            cuda.avoidFP8OuterVectorScaling = true
            check("fp8 W8A8 linear + bias, fallback: unscaled fp32 GEMM + nb_fp8_rescale", dt) { d in
                Linear(quantized: fp8.on(d), bias: b.to(device: d), dtype: dt, device: d)(x.to(device: d))
            }
            cuda.avoidFP8OuterVectorScaling = false
            let oddFP8 = QuantizedWeight.quantize(odd, scheme: .fp8), xo = rand([2, 37, 300], dt, 1)
            check("fp8 W8A8 linear, k = 300 (codes widened, 16-bit GEMM)", dt) { d in
                Linear(quantized: oddFP8.on(d), bias: nil, dtype: dt, device: d)(xo.to(device: d).quantizedRowsE4M3())
            }
            check("fp8 W8A8 linear + bias, e4m3 rows from the fused rmsnorm", dt) { d in
                let rows = x.to(device: d).rmsNormModulateE4M3(weight: norm.to(device: d), eps: 1e-6, scale: mod.to(device: d))
                return Linear(quantized: fp8.on(d), bias: b.to(device: d), dtype: dt, device: d)(rows)
            }
            if dt == .bf16 { checkUnscaledReaders(cuda: cuda, rand: rand, check: check, report: report) }
        }
    }

    /// The readers of bf16 fp8 products before their scales (`ScaledProduct`, fused.cu's *_sc_bf16):
    /// bit for bit the GPU's scale-first composition (`scaledByTensorOps`, then the plain op) on made-up
    /// products, and real fp8 products through each reader against the CPU's scaled composition.
    func checkUnscaledReaders(cuda: CUDABackend, rand: ([Int], DType, Float) -> Tensor,
                              check: (String, DType, (Device) -> Tensor) -> Void,
                              report: (String, DType, Double, Double) -> Void) {
        let gpu = Device.cuda(0), dt = DType.bf16
        let heads = 4, kvHeads = 2, hd = 96, width = (heads + 2 * kvHeads) * hd, dim = 384, ffn = 1152
        func made(_ n: Int, rowScales: Tensor) -> ScaledProduct {
            ScaledProduct(raw: rand([2, 37, n], dt, 300).to(device: gpu), rowScales: rowScales,
                          columnScales: (rand([n], .f32, 0.004).apply(.abs) + 0.001).to(device: gpu))
        }
        let rs = (rand([74], .f32, 0.01).apply(.abs) + 0.001).to(device: gpu)
        let x = rand([2, 37, dim], dt, 1).to(device: gpu), norm = rand([dim], dt, 1).to(device: gpu), gate = rand([2, dim], dt, 1).to(device: gpu)
        let qn = rand([hd], dt, 1).to(device: gpu), kn = rand([hd], dt, 1).to(device: gpu)
        let (cosT, sinT) = (rand([1, 37, hd / 2], .f32, 1).to(device: gpu), rand([1, 37, hd / 2], .f32, 1).to(device: gpu))
        let qkv = made(width, rowScales: rs), y = made(dim, rowScales: rs), ga = made(ffn, rowScales: rs), gb = made(ffn, rowScales: rs)
        // the made-up products are read twice (fused, then composed): copies, since scaling may work in place
        func copy(_ p: ScaledProduct) -> ScaledProduct {
            ScaledProduct(raw: p.raw.to(.f32).to(dt), rowScales: p.rowScales!, columnScales: p.columnScales!)
        }
        let fused = copy(qkv).qkvNormRope(heads: heads, kvHeads: kvHeads, qNorm: qn, kNorm: kn, eps: 1e-5, cos: cosT, sin: sinT, layout: .interleaved)
        let composed = copy(qkv).scaledByTensorOps().qkvNormRope(heads: heads, kvHeads: kvHeads, qNorm: qn, kNorm: kn, eps: 1e-5,
                                                                  cos: cosT, sin: sinT, layout: .interleaved)
        report("qkv norm rope of an unscaled fp8 product: q, k, v elements differing from scale-first", dt,
               Self.bitsDiffer(fused.q, composed.q) + Self.bitsDiffer(fused.k, composed.k) + Self.bitsDiffer(fused.v, composed.v), 0)
        report("gated residual of an unscaled fp8 product: elements differing from scale-first", dt,
               Self.bitsDiffer(x.rmsNormGatedResidual(copy(y), weight: norm, eps: 1e-6, gate: gate),
                               x.rmsNormGatedResidual(copy(y).scaledByTensorOps(), weight: norm, eps: 1e-6, gate: gate)), 0)
        let sf = copy(ga).swigluE4M3(copy(gb)), sc = copy(ga).scaledByTensorOps().swigluE4M3(copy(gb).scaledByTensorOps())
        report("swiglu -> e4m3 of unscaled fp8 products: codes and scales differing from scale-first", dt,
               Self.codesApart(sf, sc, steps: 0) + (Self.scalesApart(sf, sc) == 0 ? 0 : 1), 0)
        report("rescale in place of an unscaled fp8 product: elements differing from the tensor ops", dt,
               Self.bitsDiffer(copy(y).scaled(), copy(y).scaledByTensorOps()), 0)

        // real products: the fp8 layers' unscaled GEMM and the readers, against the CPU's scaled path
        let wq = QuantizedWeight.quantize(rand([width, dim], .f32, 0.2), scheme: .fp8)
        let wo = QuantizedWeight.quantize(rand([dim, dim], .f32, 0.2), scheme: .fp8)
        let w1 = QuantizedWeight.quantize(rand([ffn, dim], .f32, 0.2), scheme: .fp8)
        let w3 = QuantizedWeight.quantize(rand([ffn, dim], .f32, 0.2), scheme: .fp8)
        let xin = rand([2, 37, dim], dt, 1), nw = rand([dim], dt, 1), gt = rand([2, dim], dt, 1)
        let qnh = rand([hd], dt, 1), knh = rand([hd], dt, 1), cosH = rand([1, 37, hd / 2], .f32, 1), sinH = rand([1, 37, hd / 2], .f32, 1)
        func layer(_ w: QuantizedWeight, _ d: Device) -> Linear { Linear(quantized: w.on(d), bias: nil, dtype: dt, device: d) }
        for (i, name) in ["q", "k", "v"].enumerated() {
            check("fp8 qkv product -> qkv norm rope \(name)", dt) { d in
                let p = layer(wq, d).product(xin.to(device: d).quantizedRowsE4M3())
                let r = p.qkvNormRope(heads: heads, kvHeads: kvHeads, qNorm: qnh.to(device: d), kNorm: knh.to(device: d), eps: 1e-5,
                                      cos: cosH.to(device: d), sin: sinH.to(device: d), layout: .interleaved)
                return [r.q, r.k, r.v][i]
            }
        }
        check("fp8 out product -> gated residual", dt) { d in
            let xd = xin.to(device: d)
            return xd.rmsNormGatedResidual(layer(wo, d).product(xd.quantizedRowsE4M3()), weight: nw.to(device: d), eps: 1e-6, gate: gt.to(device: d))
        }
        // the SwiGLU of two real products, the value whose codes w2 reads (its quantization is checked
        // bit for bit above). Not the codes themselves against the CPU: the FP8 tensor cores
        // accumulate with fewer bits than the CPU's fp32 and the GPU rounds the product twice, so
        // where w1 x cancels to near zero a value lands several e4m3 steps away (25 of 85,248 codes)
        check("fp8 w1, w3 products -> swiglu", dt) { d in
            let h = xin.to(device: d).quantizedRowsE4M3()
            return layer(w1, d).product(h).scaled().swiglu(layer(w3, d).product(h).scaled())
        }
    }

    /// Codes of `a` and `b` more than `steps` apart (as e4m3 values order them: same sign, byte
    /// difference), or of different sign, or a NaN against a number; infinity when the shapes differ.
    static func codesApart(_ a: E4M3Rows, _ b: E4M3Rows, steps: Int = 1) -> Double {
        let x = a.codes.to(device: .cpu).toInts(), y = b.codes.to(device: .cpu).toInts()
        guard a.codes.shape == b.codes.shape else { return .infinity }
        return Double(zip(x, y).filter { p, q in (p ^ q) & 0x80 != 0 || Swift.abs(p - q) > steps || ((p & 0x7f == 0x7f) != (q & 0x7f == 0x7f)) }.count)
    }

    /// The largest relative difference between the row scales of `a` and `b` (infinity for a count
    /// mismatch or a non-finite scale).
    static func scalesApart(_ a: E4M3Rows, _ b: E4M3Rows) -> Double {
        let x = a.scales.to(device: .cpu).toFloats(), y = b.scales.to(device: .cpu).toFloats()
        guard x.count == y.count else { return .infinity }
        var worst = 0.0
        for (p, q) in zip(x, y) {
            guard p.isFinite, q.isFinite, q > 0 else { return .infinity }
            worst = Swift.max(worst, Double(Swift.abs(p - q) / q))
        }
        return worst
    }
}

extension GPUCheck {
    /// Elements whose bits differ between a and b (as fp32); infinity for different shapes or any
    /// non-finite value.
    static func bitsDiffer(_ a: Tensor, _ b: Tensor) -> Double {
        guard a.shape == b.shape else { return .infinity }
        let x = a.to(.f32, device: .cpu).toFloats(), y = b.to(.f32, device: .cpu).toFloats()
        if x.contains(where: { !$0.isFinite }) || y.contains(where: { !$0.isFinite }) { return .infinity }
        return Double(zip(x, y).filter { $0.bitPattern != $1.bitPattern }.count)
    }

    /// Byte offsets of a block's f16 scales (d, and dmin for Q4_K/Q5_K).
    static func scaleOffsets(_ f: BlockFormat) -> [Int] {
        switch f {
        case .q8_0, .q5_0, .q4_0: return [0]
        case .q4_K, .q5_K: return [0, 2]
        case .q6_K: return [208]
        }
    }

    /// Weight blocks [rows, rowBytes(cols)] of random bytes (every quant, scale and high-bit field
    /// pattern occurs) whose f16 scales are overwritten with `scales` values (finite: random bytes
    /// would give f16 infinities and NaNs, whose products are not a comparison of arithmetic).
    public static func randomBlocks(_ f: BlockFormat, rows: Int, cols: Int, bytes: [UInt8], scales: [Float]) -> Tensor {
        let n = rows * f.rowBytes(cols)
        precondition(bytes.count >= n && scales.count >= rows * cols / f.blockSize * scaleOffsets(f).count)
        var b = Array(bytes.prefix(n))
        var k = 0
        for block in 0..<(rows * cols / f.blockSize) {
            for off in scaleOffsets(f) {
                let h = Half.f16Bits(scales[k]); k += 1
                b[block * f.blockBytes + off] = UInt8(h & 0xFF)
                b[block * f.blockBytes + off + 1] = UInt8(h >> 8)
            }
        }
        let t = Tensor.empty([rows, f.rowBytes(cols)], dtype: .u8)
        b.withUnsafeBytes { t.hostPointer.copyMemory(from: $0.baseAddress!, byteCount: n) }
        return t
    }

    /// Rows for Kernels/gguf.cu: each block format's widening against the CPU decoder
    /// (`BlockFormat.decode`, itself bit-exact with the gguf package), bit for bit in fp32 and after
    /// the one rounding to bf16/f16, and a linear layer holding the blocks against the CPU's.
    func checkBlockFormats(rand: ([Int], DType, Float) -> Tensor, randomBytes: (Int) -> [UInt8],
                           check: (String, DType, (Device) -> Tensor) -> Void,
                           exact: (String, DType, (Device) -> Tensor) -> Void) {
        let rows = 96, cols = 512
        for f in BlockFormat.allCases {
            let blocks = Self.randomBlocks(f, rows: rows, cols: cols, bytes: randomBytes(rows * f.rowBytes(cols)),
                                           scales: rand([rows * cols / f.blockSize * 2], .f32, 0.01).toFloats())
            let w = QuantizedWeight(blocks: blocks, format: f, shape: [rows, cols])
            let bias = rand([rows], .f32, 1)
            for dt in [DType.f32, .bf16, .f16] {
                exact("dequant \(f) (bit for bit)", dt) { d in w.on(d).dequantized(dt, device: d) }
            }
            let x = rand([2, 37, cols], .bf16, 1)
            check("\(f) linear + bias", .bf16) { d in
                Linear(quantized: w.on(d), bias: bias.to(.bf16).to(device: d), dtype: .bf16, device: d)(x.to(device: d))
            }
        }
    }
}
