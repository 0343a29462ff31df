import NewBieCUDA
import NewBieTensor
import NewBieWeights

extension GPUCheck {
    /// Rows for the quantized-weight kernels (Kernels/quant.cu and the FP8 GEMM) against the CPU's
    /// reference definitions (NewBieTensor/QuantizedOps.swift): int8 dequantization per channel and
    /// per group of 128, quantized linear layers, the activations' e4m3 codes and scale, and the
    /// fp8 W8A8 product.
    func checkQuantized(cuda: CUDABackend, rand: ([Int], DType, Float) -> Tensor,
                        check: (String, DType, (Device) -> Tensor) -> Void) {
        let w = rand([96, 384], .f32, 0.2)
        let bias = rand([96], .f32, 1)
        let int8 = QuantizedWeight.quantize(w, scheme: .int8), g128 = QuantizedWeight.quantize(w, scheme: .int8g128)
        let fp8 = QuantizedWeight.quantize(w, scheme: .fp8)
        let odd = rand([40, 300], .f32, 0.2)
        let oddInt8 = QuantizedWeight.quantize(odd, scheme: .int8), oddG128 = QuantizedWeight.quantize(odd, scheme: .int8g128)
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
            for (label, xa) in [("", x), (", 105 elements", rand([3, 5, 7], dt, 1))] {
                check("fp8 activation codes x scale\(label)", dt) { d in
                    if d == .cpu {
                        let v = xa.toFloats()
                        let s = FloatE4M3.scale(amax: v.map { Swift.abs($0) }.max() ?? 0)
                        return Tensor(v.map { FloatE4M3.decode(FloatE4M3.encode($0 / s)) * s }, shape: xa.shape)
                    }
                    let (codes, scale) = cuda.quantizeActivationE4M3(xa.to(device: d))
                    let s = scale.toFloats()[0]
                    return Tensor(codes.toInts().map { FloatE4M3.decode(UInt8($0)) * s }, shape: xa.shape)
                }
            }
            // the 16-bit compute dtypes only: with fp32 outputs the comparison would measure the FP8
            // tensor cores' accumulation (fewer bits than fp32 between promotions), not our code
            if dt != .f32 {
                check("fp8 W8A8 linear + bias", dt) { d in
                    Linear(quantized: fp8.on(d), bias: b.to(device: d), dtype: dt, device: d)(x.to(device: d))
                }
            }
        }
    }
}

extension GPUCheck {
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
