import XCTest
import Foundation
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// `newbie quantize`'s writer: GGUF blocks byte-identical to the gguf package's quantizer, fp8
/// bytes identical to torch's casts, int8 files that load as the `--quantize` path computes, and
/// clear errors for damaged files.
final class QuantizedFileWriterTests: XCTestCase {
    func fixture(_ name: String) -> String { Fixtures.path("quantfiles/" + name) }

    /// A temporary folder holding the tiny DiT's config.json, for files written by the tests.
    func folder() throws -> String {
        let dir = TestScratch.path("newbie-qfw-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: fixture("config.json"), toPath: dir + "/config.json")
        return dir
    }

    func rawBytes(_ gguf: GGUFFile, _ name: String) throws -> Data {
        let info = gguf.tensors[name]!
        let data = try Data(contentsOf: URL(fileURLWithPath: gguf.path))
        return data.subdata(in: info.fileBegin..<info.fileEnd)
    }

    func testGGUFBlocksMatchTheGGUFPackageQuantizer() throws {
        let source = try openWeights(path: fixture("dit.safetensors"))
        for (type, file) in [(QuantizedFileTarget.q8_0, "dit.q8_0.gguf"), (.q5_0, "dit.q5_0.gguf"), (.q4_0, "dit.q4_0.gguf")] {
            let out = try folder() + "/dit.gguf"
            let report = try QuantizedFileWriter(target: type, architecture: "lumina2").write(source, to: out)
            XCTAssertTrue(report.quantized.contains("layers.0.feed_forward.w2.weight"))
            XCTAssertFalse(report.quantized.contains { $0.contains("adaLN_modulation") || $0.contains("embedder") || $0.hasPrefix("final_layer") })
            let mine = try GGUFFile(path: out), theirs = try GGUFFile(path: fixture(file))
            XCTAssertEqual(mine.architecture, "lumina2")
            var compared = 0
            for name in report.quantized {
                XCTAssertEqual(mine.tensors[name]?.type, theirs.tensors[name]?.type, name)
                XCTAssertEqual(try rawBytes(mine, name), try rawBytes(theirs, name), "\(file) \(name)")
                compared += 1
            }
            XCTAssertGreaterThanOrEqual(compared, 5)       // the main layer's five; the refiners stay float
            XCTAssertTrue(report.kept.contains("noise_refiner.0.attention.qkv.weight"))
            // kept tensors are the source values exactly
            for name in report.kept {
                XCTAssertEqual(try mine.tensor(name).to(.f32).toFloats(), try source.loadTensor(name).to(.f32).toFloats(), name)
            }
        }
    }

    func testFP8BytesMatchTorchAndTheFileLoadsAsComfyUIs() throws {
        let dir = try folder()
        let out = dir + "/dit.safetensors"
        let source = try openWeights(path: fixture("dit.safetensors"))
        let report = try QuantizedFileWriter(target: .fp8, architecture: "lumina2").write(source, to: out)
        let mine = try SafeTensorsFile(path: out), torch = try SafeTensorsFile(path: fixture("dit.comfy_fp8.safetensors"))
        XCTAssertTrue(report.quantized.contains("layers.0.attention.qkv.weight"))
        for name in report.quantized {
            XCTAssertTrue(mine.info(name)!.storedAsFP8E4M3, name)
            XCTAssertEqual(Data(try mine.rawBytes(name)), Data(try torch.rawBytes(name)), name)
            let scale = String(name.dropLast(".weight".count)) + ".scale_weight"
            XCTAssertEqual(try mine.tensor(scale).toFloats(), try torch.tensor(scale).toFloats(), scale)
        }
        XCTAssertTrue(try openWeights(path: out) is ComfyFP8Weights)
        let a = try NextDiT.load(path: out, dtype: .f32), b = try NextDiT.load(path: fixture("dit.comfy_fp8.safetensors"), dtype: .f32)
        XCTAssertEqual(a.config, b.config)
    }

    /// An int8 file loads to exactly what `--quantize dit=int8` computes from the float file.
    func testInt8FileLoadsAsTheQuantizePath() throws {
        for (target, scheme) in [(QuantizedFileTarget.int8, QuantScheme.int8), (.int8g128, .int8g128)] {
            let dir = try folder()
            let out = dir + "/dit.safetensors"
            let report = try QuantizedFileWriter(target: target, architecture: "lumina2").write(try openWeights(path: fixture("dit.safetensors")), to: out)
            XCTAssertFalse(report.quantized.isEmpty)
            let source = try openWeights(path: out)
            XCTAssertTrue(source is Int8ScaledWeights)
            XCTAssertNotNil(try source.quantizedWeight("layers.0.attention.qkv.weight"))
            XCTAssertNil(try source.quantizedWeight("x_embedder.weight"))
            let fromFile = try NextDiT.load(path: out, dtype: .f32)
            let precision = ModulePrecision(base: .f32, quantization: ModuleQuantization(rules: [QuantRule(pattern: "", scheme: scheme)]))
            let fromFlag = try NextDiT.load(path: fixture("dit.safetensors"), placement: ModelPlacement(device: .cpu, precision: precision))
            let qFile = fromFile.layers[0].qkv.quantized, qFlag = fromFlag.layers[0].qkv.quantized
            XCTAssertNotNil(qFile)
            XCTAssertEqual(qFile?.q.toFloats(), qFlag?.q.toFloats())
            XCTAssertEqual(qFile?.scales.toFloats(), qFlag?.scales.toFloats())
            let o1 = try tinyDiTForward(fromFile), o2 = try tinyDiTForward(fromFlag)
            XCTAssertEqual(o1.toFloats().map(\.bitPattern), o2.toFloats().map(\.bitPattern), target.rawValue)
        }
    }

    /// Rows that are not whole groups of 128: the file holds ceil(in / 128) scales per row and
    /// reads back to the values the writer quantized.
    func testInt8G128FileWithAShortLastGroup() throws {
        let dir = try folder()
        let input = dir + "/w.safetensors", out = dir + "/q.safetensors"
        let w = Tensor((0..<(4 * 200)).map { k in sin(Float(k)) * (k % 200 < 128 ? 1 : 5) }, shape: [4, 200])
        try SafeTensorsWriter.write([("layers.0.feed_forward.w2.weight", w)], toPath: input)
        _ = try QuantizedFileWriter(target: .int8g128, architecture: "lumina2").write(try openWeights(path: input), to: out)
        XCTAssertEqual(try SafeTensorsFile(path: out).info("layers.0.feed_forward.w2.weight_scale")?.shape, [4, 2])
        let q = try XCTUnwrap(try openWeights(path: out).quantizedWeight("layers.0.feed_forward.w2.weight"))
        XCTAssertEqual(q.scheme, .int8g128)
        let back = q.dequantized().toFloats(), orig = w.toFloats()
        let s = q.scales.toFloats()
        for k in orig.indices {
            // each value within half a step of its own group's scale
            XCTAssertLessThanOrEqual(abs(back[k] - orig[k]), s[(k / 200) * 2 + (k % 200) / 128] * 0.5001, "\(k)")
        }
    }

    func testNonFiniteWeightsAreRefusedNamingTheTensor() throws {
        let dir = try folder()
        let bad = dir + "/nan.safetensors"
        var v = [Float](repeating: 0.5, count: 64 * 64); v[7] = .nan
        try SafeTensorsWriter.write([("layers.0.attention.out.weight", Tensor(v, shape: [64, 64]))], toPath: bad)
        XCTAssertThrowsError(try QuantizedFileWriter(target: .q8_0, architecture: "lumina2").write(try openWeights(path: bad), to: dir + "/o.gguf")) { e in
            XCTAssertTrue("\(e)".contains("layers.0.attention.out.weight") && "\(e)".contains("nan"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.gguf"))
    }

    func testDamagedQuantizedFilesGiveErrorsNamingFileAndTensor() throws {
        let dir = try folder()
        // an int8 weight whose scale has the wrong row count
        let p1 = dir + "/badscale.safetensors"
        try SafeTensorsWriter.write([("a.weight", Tensor.zeros([4, 8], dtype: .i8)), ("a.weight_scale", Tensor([1, 2, 3], shape: [3]))], toPath: p1)
        XCTAssertThrowsError(try openWeights(path: p1)) { e in
            XCTAssertTrue("\(e)".contains(p1) && "\(e)".contains("a.weight_scale"), "\(e)")
        }
        // an int8 weight without its scale (beside another scaled one)
        let p2 = dir + "/noscale.safetensors"
        try SafeTensorsWriter.write([("a.weight", Tensor.zeros([4, 8], dtype: .i8)), ("a.weight_scale", Tensor([1, 2, 3, 4], shape: [4])),
                                     ("b.weight", Tensor.zeros([4, 8], dtype: .i8))], toPath: p2)
        XCTAssertThrowsError(try openWeights(path: p2)) { e in XCTAssertTrue("\(e)".contains("b.weight"), "\(e)") }
        // a non-finite int8 scale: an error when the weight is read
        let p3 = dir + "/nanscale.safetensors"
        try SafeTensorsWriter.write([("a.weight", Tensor.zeros([4, 8], dtype: .i8)), ("a.weight_scale", Tensor([1, .nan, 3, 4], shape: [4]))], toPath: p3)
        XCTAssertThrowsError(try openWeights(path: p3).loadTensor("a.weight")) { e in XCTAssertTrue("\(e)".contains("a.weight_scale"), "\(e)") }
        // a ComfyUI fp8 scale that fits neither per tensor nor per row
        let p4 = dir + "/fp8scale.safetensors"
        try SafeTensorsWriter.write([("a.weight", Tensor.zeros([4, 8], dtype: .u8)), ("a.scale_weight", Tensor([1, 2], shape: [2]))],
                                    storedAs: ["a.weight": "F8_E4M3"], toPath: p4)
        XCTAssertThrowsError(try openWeights(path: p4)) { e in
            XCTAssertTrue("\(e)".contains(p4) && "\(e)".contains("a.scale_weight"), "\(e)")
        }
        // a GGUF DiT cut short: the error names the file and the tensor that runs past the end
        let whole = try Data(contentsOf: URL(fileURLWithPath: fixture("dit.q4_0.gguf")))
        let p5 = dir + "/cut.gguf"
        try whole.prefix(whole.count - 100).write(to: URL(fileURLWithPath: p5))
        XCTAssertThrowsError(try NextDiT.load(path: p5, dtype: .f32)) { e in
            XCTAssertTrue("\(e)".contains(p5) && "\(e)".contains("truncated") && "\(e)".contains("tensor \""), "\(e)")
        }
    }
}
