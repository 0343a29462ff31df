import Foundation
import XCTest
@testable import NewBieDiffusion
import NewBieTensor
import NewBieTestSupport
@testable import NewBieWeights

/// The VAE on another device (the test support's emulated one: host memory the CPU backend cannot
/// reach, attention through `attentionByMatmul`), against the same VAE on the CPU.
final class VAEDeviceTests: XCTestCase {
    static let reference = try! SafeTensorsFile(path: Fixtures.path("vae/reference.safetensors"))
    func ref(_ name: String) throws -> Tensor { try Self.reference.tensor(name) }

    func load(_ dtype: DType, device: Device) throws -> AutoencoderKL {
        try AutoencoderKL.load(path: VAETests.diffusersPath, dtype: dtype, device: device)
    }

    func check(_ got: Tensor, _ want: Tensor, tol: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.shape, want.shape, what, file: file, line: line)
        let e = relativeL2(got.toFloats(), want.toFloats())
        print("[VAE device] \(what): relative L2 \(String(format: "%.3e", e)) (tolerance \(tol))")
        XCTAssertLessThanOrEqual(e, tol, "\(what): relative L2 \(e)", file: file, line: line)
    }

    func testWeightsLiveOnTheDevice() throws {
        let dev = EmulatedDevice.shared.device
        let vae = try load(.bf16, device: dev)
        XCTAssertEqual(vae.device, dev)
        XCTAssertEqual(vae.decoder?.device, dev)
        XCTAssertEqual(vae.encoder?.device, dev)
        let d = try XCTUnwrap(vae.decoder)
        for t in [d.convIn.weight, d.convOut.bias, d.normOut.weight, d.mid.attention!.q.weight, d.up[0].resnets[0].conv1.weight] {
            XCTAssertEqual(t.device, dev)
            XCTAssertEqual(t.dtype, .bf16)
        }
        XCTAssertEqual(try load(.f32, device: .cpu).device, .cpu, "the default stays the CPU")
    }

    func testDecodeAndEncodeOnTheDevice() throws {
        let dev = EmulatedDevice.shared.device
        for (dtype, tol) in [(DType.f32, 1e-5), (.bf16, 1e-2)] {
            let cpu = try load(dtype, device: .cpu), gpu = try load(dtype, device: dev)
            let x = try ref("decode.f32/x")
            EmulatedDevice.shared.resetCounts()
            // inputs from the CPU or already on the device
            for input in [x, x.to(device: dev)] {
                let out = gpu.decode(input)
                XCTAssertEqual(out.device, dev)
                XCTAssertEqual(out.dtype, dtype)
                check(out, cpu.decode(x), tol: tol, "decode \(dtype), input on \(input.device)")
            }
            // the mid-block attention went through the device's attention op: one head of all channels
            XCTAssertEqual(EmulatedDevice.shared.attentionCalls, [32, 32])

            let img = try ref("encode.f32/x")
            let latent = gpu.encode(img)
            XCTAssertEqual(latent.device, dev)
            check(latent, cpu.encode(img), tol: tol, "encode \(dtype)")
            check(gpu.encodeMoments(img.to(device: dev)), cpu.encodeMoments(img), tol: tol, "encode moments \(dtype)")
        }
    }

    func testModuleHookSeesDeviceTensors() throws {
        let dev = EmulatedDevice.shared.device
        let vae = try load(.f32, device: dev)
        var seen: [String: Device] = [:]
        vae.moduleHook = { path, out in seen[path] = out.device }
        let out = vae.decodeRaw(try ref("decode_raw.f32/x"))
        vae.moduleHook = nil
        XCTAssertEqual(out.device, dev)
        XCTAssertEqual(seen["decoder.conv_out"], dev)
        XCTAssertEqual(seen.count, 4 + 4)  // conv_in, mid_block, 4 up blocks, conv_norm_out, conv_out
        XCTAssertTrue(seen.values.allSatisfy { $0 == dev })
    }

    /// Tiled decoding runs its windows, statistics and blending on the device; the result matches the
    /// CPU's tiled decode (global and per-window GroupNorm statistics).
    func testTiledDecodeOnTheDevice() throws {
        let dev = EmulatedDevice.shared.device
        let cpu = try load(.f32, device: .cpu), gpu = try load(.f32, device: dev)
        let x = VAETests.smoothLatent(16, 9, 10)
        for global in [true, false] {
            let tiling = VAETiling(mode: .always, tileLatent: 6, overlapLatent: 2, blendLatent: 2, globalNormStatistics: global)
            let out = gpu.decode(x, tiling: tiling)
            XCTAssertEqual(out.device, dev)
            XCTAssertEqual(out.dtype, .f32)
            check(out, cpu.decode(x, tiling: tiling), tol: 1e-5, "tiled decode (\(global ? "global" : "per-window") statistics)")
        }
        let untiled = gpu.decode(x, tiling: .never)
        XCTAssertEqual(untiled.device, dev)
        XCTAssertEqual(untiled.dtype, .f32)
    }
}
