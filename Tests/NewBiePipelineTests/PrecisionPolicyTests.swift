import Foundation
import XCTest
@testable import NewBieDiffusion
import NewBieHarness
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// The placement policy: one spec from the command line to every module, per-module dtypes
/// visible in --trace, and the fp16 overflow that a per-module fp32 override fixes.
final class PrecisionPolicyTests: XCTestCase {
    static let dir: String = try! TinyFixture.write("tiny-precision", seed: 2)
    let settings = SamplingSettings(width: 32, height: 32, steps: 3, sampler: .euler, shift: 6,
                                    cfg: CFGOptions(scale: 5, truncation: 100, renorm: 0), seed: 3, rng: .torch)

    // MARK: parsing

    func testParseDefaultsSlotsAndRules() throws {
        let p = try PlacementPolicy.parse(precision: "bf16,vae=fp32,dit.layers.*.attention=fp32,dit.final_layer=fp32", device: "cpu")
        XCTAssertEqual(p.precision(.gemma), .uniform(.bf16))
        XCTAssertEqual(p.precision(.vae), .uniform(.f32))
        XCTAssertEqual(p.precision(.dit).base, .bf16)
        XCTAssertEqual(p.precision(.dit).rules, [PrecisionRule(pattern: "layers.*.attention", dtype: .f32),
                                                 PrecisionRule(pattern: "final_layer", dtype: .f32)])
        XCTAssertEqual(p.precisionSpec, "bf16,vae=fp32,dit.layers.*.attention=fp32,dit.final_layer=fp32")
        // the recorded spec parses back to the same policy
        XCTAssertEqual(try PlacementPolicy.parse(precision: p.precisionSpec, device: p.deviceSpec), p)
    }

    /// `encode`, `denoise` and `decode` each record the policy; the PNG of a staged run names each
    /// model as the stage that ran it placed it.
    func testStagedRunsRecordEachModelAsItsStageRanIt() throws {
        let encodeMeta = GenerationMetadata.options(StageOptions(placement: try PlacementPolicy.parse(precision: "fp16,jina=fp32")))
        let denoise = StageOptions(placement: try PlacementPolicy.parse(precision: "bf16,dit.final_layer=fp32", device: "cuda"))
        let afterDenoise = GenerationMetadata.options(denoise, ran: [.dit], over: encodeMeta)
        let decode = StageOptions(placement: try PlacementPolicy.parse(precision: "fp32"))
        let afterDecode = GenerationMetadata.options(decode, ran: [.vae], over: afterDenoise)
        let p = try PlacementPolicy.parse(precision: afterDecode[MetadataKey.precision]!, device: afterDecode[MetadataKey.device]!)
        XCTAssertEqual(p.precision(.gemma), .uniform(.f16))
        XCTAssertEqual(p.precision(.jina), .uniform(.f32))
        XCTAssertEqual(p.precision(.dit), ModulePrecision(base: .bf16, rules: [PrecisionRule(pattern: "final_layer", dtype: .f32)]))
        XCTAssertEqual(p.precision(.vae), .uniform(.f32))
        XCTAssertEqual(p.device(.dit), .cuda(0))
        XCTAssertEqual(p.device(.gemma), .cpu)
        // no record (a file from elsewhere): the stage's own policy
        XCTAssertEqual(GenerationMetadata.options(decode, ran: [.vae], over: [:]), GenerationMetadata.options(decode))
    }

    func testAutoMeansBF16OnCUDAAndFP32OnTheCPU() throws {
        let p = try PlacementPolicy.parse(precision: "auto", device: "cuda:1,vae=cpu")
        XCTAssertEqual(p.device(.dit), .cuda(1))
        XCTAssertEqual(p.device(.vae), .cpu)
        XCTAssertEqual(p.precision(.dit).base, .bf16)
        XCTAssertEqual(p.precision(.vae).base, .f32)
        XCTAssertEqual(p.deviceSpec, "cuda:1,vae=cpu")
        XCTAssertEqual(try PlacementPolicy.parse(precision: "fp16,jina=auto", device: "cpu").precision(.jina).base, .f32)
    }

    func testBadSpecsNameWhatIsWrongAndWhatExists() {
        func message(_ precision: String, _ device: String = "cpu") -> String {
            do { _ = try PlacementPolicy.parse(precision: precision, device: device); return "" } catch { return "\(error)" }
        }
        XCTAssertTrue(message("bf16,unet=fp32").contains("unknown model \"unet\""), message("bf16,unet=fp32"))
        XCTAssertTrue(message("bf16,unet=fp32").contains("dit, gemma, jina, vae"))
        XCTAssertTrue(message("fp8").contains("unknown dtype \"fp8\""))
        XCTAssertTrue(message("bf16,dit..x=fp32").contains("empty module path component"))
        XCTAssertTrue(message("bf16,dit.layers=auto").contains("not auto"))
        XCTAssertTrue(message("bf16", "tpu").contains("unknown device \"tpu\""))
    }

    func testMostSpecificRuleWins() {
        let p = ModulePrecision(base: .f16, rules: [PrecisionRule(pattern: "layers.*", dtype: .bf16),
                                                    PrecisionRule(pattern: "layers.1.attention", dtype: .f32),
                                                    PrecisionRule(pattern: "layers.1*", dtype: .f16)])
        XCTAssertEqual(p.dtype(for: ""), .f16)
        XCTAssertEqual(p.dtype(for: "final_layer"), .f16)
        XCTAssertEqual(p.dtype(for: "layers.0"), .bf16)
        XCTAssertEqual(p.dtype(for: "layers.0.attention.qkv"), .bf16)
        XCTAssertEqual(p.dtype(for: "layers.1"), .f16)                   // the later of two equally deep rules
        XCTAssertEqual(p.dtype(for: "layers.1.attention.qkv"), .f32)     // deeper beats shallower
        XCTAssertEqual(p.dtype(for: "layers.12.feed_forward"), .f16)     // `*` within a component
    }

    func testRulesNamingNoModuleAreAnErrorListingTheModules() throws {
        let plan = try NextDiT.plan(TinyModel.ditConfig, precision: ModulePrecision(base: .f16, rules: [PrecisionRule(pattern: "layers.*.atention", dtype: .f32)]))
        XCTAssertThrowsError(try plan.checkRules(model: "dit")) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("dit.layers.*.atention=fp32 names no module"), m)
            XCTAssertTrue(m.contains("did you mean dit.layers.*.attention?"), m)
            XCTAssertTrue(m.contains("dit.layers.*.attention"), m)
            XCTAssertTrue(m.contains("dit.final_layer"), m)
        }
        // a path cut short is completed: "mid" -> "mid_block"
        let vae = try AutoencoderKL.plan(TinyModel.vaeConfig, parts: .all, precision: ModulePrecision(base: .f16, rules: [PrecisionRule(pattern: "decoder.mid", dtype: .f32)]))
        XCTAssertThrowsError(try vae.checkRules(model: "vae")) { e in
            XCTAssertTrue("\(e)".contains("did you mean vae.decoder.mid_block?"), "\(e)")
        }
        // and the pipeline refuses it before loading anything
        let options = StageOptions(placement: try PlacementPolicy.parse(precision: "fp16,dit.layers.*.atention=fp32"))
        XCTAssertThrowsError(try Pipeline.generate([GenerationRequest(prompt: "1girl", settings: settings, output: TestScratch.path("never-\(getpid()).png"))],
                                                   paths: try ModelPaths.resolve(root: Self.dir), options: options)) { e in
            XCTAssertTrue("\(e)".contains("names no module of the dit model"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: TestScratch.path("never-\(getpid()).png")))
    }

    // MARK: the module tree is the weight schema

    func testPlannedTensorsAreTheCheckpointsTensors() throws {
        // the full-size DiT: 534 tensors used (the checkpoint's 535 minus the unused norm_final),
        // 3,486,633,792 parameters (3,486,636,096 minus norm_final's 2304)
        let plan = try NextDiT.plan(.newBieExp01)
        XCTAssertEqual(plan.requested.count, 534)
        XCTAssertEqual(Set(plan.requested.map(\.name)).count, 534)
        XCTAssertEqual(plan.requested.reduce(0) { $0 + $1.shape.reduce(1, *) }, 3_486_636_096 - 2304)
        XCTAssertEqual(plan.requested.first { $0.name == "layers.35.attention.qkv.weight" }?.shape, [3840, 2304])
        XCTAssertEqual(plan.requested.first { $0.name == "time_text_embed.1.weight" }?.shape, [1024, 2048])
        XCTAssertNotNil(plan.modules["layers.7.feed_forward"])
    }

    // MARK: mixed precision on the tiny model

    func traced(_ spec: String) throws -> (lines: [String], tracer: PipelineTracer, latent: Tensor) {
        var lines: [String] = []
        let tracer = PipelineTracer(trace: true, detectOverflow: true, computeDType: .f32, sink: { lines.append($0) })
        let paths = try ModelPaths.resolve(root: Self.dir)
        let options = StageOptions(placement: try PlacementPolicy.parse(precision: spec))
        let text = try TextStage(paths: paths, options: options)
        text.tracer = tracer
        let e = try text.encode(prompt: "1girl, red eyes", systemPrompt: "")
        let den = try DenoiseStage(paths: paths, options: options)
        den.tracer = tracer
        let latent = try den.run(e, settings: settings)
        let dec = try DecodeStage(paths: paths, options: options)
        dec.tracer = tracer
        _ = try dec.run(latent)
        return (lines, tracer, latent)
    }

    func testSeedRecipesRunWithTheirDTypesVisibleInTheTrace() throws {
        // bf16 with the VAE in fp32
        let a = try traced("bf16,vae=fp32")
        XCTAssertTrue(a.lines.contains { $0.hasPrefix("trace vae.decoder.conv_out (computes in fp32)") }, a.lines.joined(separator: "\n"))
        XCTAssertTrue(a.lines.contains { $0.hasPrefix("trace dit.layers.0 (computes in bf16) step 0") })
        XCTAssertEqual(a.tracer.computeDType(of: "gemma.layers.0"), .bf16)
        // fp16 with attention and the final layer in fp32
        let b = try traced("fp16,dit.layers.*.attention=fp32,dit.final_layer=fp32")
        XCTAssertEqual(b.tracer.computeDType(of: "dit.layers.1.attention"), .f32)
        XCTAssertEqual(b.tracer.computeDType(of: "dit.layers.1"), .f16)
        XCTAssertTrue(b.lines.contains { $0.hasPrefix("trace dit.final_layer (computes in fp32) step 0") }, b.lines.joined(separator: "\n"))
        XCTAssertTrue(b.lines.contains { $0.hasPrefix("trace dit.layers.1 (computes in fp16) step 0") })
        // both are close to fp32 and differ from their uniform counterparts
        let ref = try traced("fp32").latent.toFloats()
        for (name, run) in [("bf16,vae=fp32", a.latent), ("mixed fp16", b.latent)] {
            let v = run.toFloats()
            XCTAssertTrue(v.allSatisfy(\.isFinite), name)
            XCTAssertLessThan(relativeL2(v, ref), 5e-2, name)
        }
        let f16 = try traced("fp16").latent.toFloats()
        XCTAssertNotEqual(f16, b.latent.toFloats())
    }

    func testWeightsAreStoredInTheirModulesDType() throws {
        let paths = try ModelPaths.resolve(root: Self.dir)
        let stage = try DenoiseStage(paths: paths, options: StageOptions(placement: try PlacementPolicy.parse(precision: "fp16,dit.layers.*.attention=fp32,dit.final_layer=fp32")))
        XCTAssertEqual(stage.dit.layers[0].qkv.weight.dtype, .f32)
        XCTAssertEqual(stage.dit.layers[0].w1.weight.dtype, .f16)
        XCTAssertEqual(stage.dit.layers[0].qNorm.dtype, .f32)
        XCTAssertEqual(stage.dit.layers[0].attnNorm1.dtype, .f16)
        XCTAssertEqual(stage.dit.finalLinear.weight.dtype, .f32)
        XCTAssertEqual(stage.dit.xEmbedder.weight.dtype, .f16)
    }

    // MARK: an fp16 overflow, found and fixed

    /// A copy of the tiny model whose first DiT layer's SwiGLU overflows fp16 inside the feed-forward
    /// (w1 and w3 scaled up by 300, w2 down by 300^2): the block's output is the same size as before,
    /// but silu(w1 x) * (w3 x) passes 65504.
    static let overflowing: String = {
        let d = TestScratch.path("newbie-tiny-overflow-\(getpid())")
        try? FileManager.default.removeItem(atPath: d)
        try! FileManager.default.copyItem(atPath: dir, toPath: d)
        let file = d + "/transformer/diffusion_pytorch_model.safetensors"
        let st = try! SafeTensorsFile(path: file)
        var tensors: [(String, Tensor)] = []
        for n in st.names {
            var t = try! st.tensor(n).to(.f32)
            if n == "layers.0.feed_forward.w1.weight" || n == "layers.0.feed_forward.w3.weight" { t = t * 300 }
            if n == "layers.0.feed_forward.w2.weight" { t = t * (1 / 90000) }
            tensors.append((n, t))
        }
        try! FileManager.default.removeItem(atPath: file)
        try! SafeTensorsWriter.write(tensors, metadata: [:], to: URL(fileURLWithPath: file))
        return d
    }()

    func testFP16OverflowIsFoundAndFixedByAPerModuleOverride() throws {
        let paths = try ModelPaths.resolve(root: Self.overflowing)
        func run(_ spec: String) throws -> Tensor {
            let options = StageOptions(placement: try PlacementPolicy.parse(precision: spec))
            let tracer = PipelineTracer(trace: false, detectOverflow: true, computeDType: .f16, sink: { _ in })
            let text = try TextStage(paths: paths, options: options)
            let e = try text.encode(prompt: "1girl, red eyes", systemPrompt: "")
            let den = try DenoiseStage(paths: paths, options: options)
            den.tracer = tracer
            return try den.run(e, settings: settings)
        }
        XCTAssertNoThrow(try run("fp32"))
        XCTAssertThrowsError(try run("fp16")) { e in
            guard let o = e as? OverflowError else { return XCTFail("\(e)") }
            XCTAssertEqual(o.path, "dit.layers.0")
            XCTAssertEqual(o.step, 0)
            XCTAssertEqual(o.computeDType, .f16)
            XCTAssertTrue(o.description.contains("--precision \"fp16,dit.layers.0=fp32\""), o.description)
        }
        let fixed = try run("fp16,dit.layers.*.feed_forward=fp32").toFloats()
        XCTAssertTrue(fixed.allSatisfy(\.isFinite))
        let ref = try run("fp32").toFloats()
        XCTAssertLessThan(relativeL2(fixed, ref), 5e-2)
    }
}
