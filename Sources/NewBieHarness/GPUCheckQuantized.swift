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
            check("fp8 activation codes x scale", dt) { d in
                if d == .cpu {
                    let v = x.toFloats()
                    let s = FloatE4M3.scale(amax: v.map { Swift.abs($0) }.max() ?? 0)
                    return Tensor(v.map { FloatE4M3.decode(FloatE4M3.encode($0 / s)) * s }, shape: x.shape)
                }
                let (codes, scale) = cuda.quantizeActivationE4M3(x.to(device: d))
                let s = scale.toFloats()[0]
                return Tensor(codes.toInts().map { FloatE4M3.decode(UInt8($0)) * s }, shape: x.shape)
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
