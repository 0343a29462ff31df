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
