import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBieImage
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// The tiny random model, written once for the whole test class.
private enum Tiny {
    static let dir: String = try! TinyFixture.write("tiny", seed: 0)
    static var paths: ModelPaths { try! ModelPaths.resolve(root: dir) }
    static func settings(seed: UInt64 = 7, sampler: SamplerKind = .midpoint, steps: Int = 3) -> SamplingSettings {
        SamplingSettings(width: 32, height: 48, steps: steps, sampler: sampler, shift: 6,
                         cfg: CFGOptions(scale: 4, truncation: 100, renorm: 1), seed: seed, rng: .torch)
    }
}

private func tempDir(_ name: String) -> String {
    let d = TestScratch.path("newbie-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

/// Runs `body` and returns the PipelineError message it throws (fails when it throws nothing or
/// another error).
private func pipelineError(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> String {
    do {
        try body()
        XCTFail("expected an error", file: file, line: line)
    } catch let e as PipelineError {
        return e.message
    } catch {
        XCTFail("expected a PipelineError, got \(error)", file: file, line: line)
    }
    return ""
}

final class PipelineBadInputTests: XCTestCase {
    func testSizeNotAMultipleOf16() {
        var s = Tiny.settings()
        s.width = 1000
        let m = pipelineError { try s.validate() }
        XCTAssertTrue(m.contains("--width 1000"), m)
        XCTAssertTrue(m.contains("multiples of 16"), m)
        XCTAssertTrue(m.contains("992 or 1008"), m)
        s.width = 64; s.height = 0
        XCTAssertTrue(pipelineError { try s.validate() }.contains("--height 0"))
        s.height = 8
        XCTAssertTrue(pipelineError { try s.validate() }.contains("--height 8"))
    }

    func testOtherBadSettings() {
        var s = Tiny.settings()
        s.steps = 1
        XCTAssertTrue(pipelineError { try s.validate() }.contains("--steps 1"))
        s = Tiny.settings(); s.shift = -1
        XCTAssertTrue(pipelineError { try s.validate() }.contains("--shift"))
        s = Tiny.settings(); s.cfg.truncation = .nan
        XCTAssertTrue(pipelineError { try s.validate() }.contains("--cfg-trunc"))
        s = Tiny.settings(); s.cfg.renorm = -1
        XCTAssertTrue(pipelineError { try s.validate() }.contains("--renorm"))
    }

    func testUnknownSamplerAndRNG() throws {
        let m = pipelineError { _ = try SamplerKind.parse("heun") }
        XCTAssertTrue(m.contains("--sampler heun") && m.contains("euler, midpoint, rk4 or dpm"), m)
        XCTAssertEqual(try SamplerKind.parse("dpm"), .dpm)
        XCTAssertEqual(try SamplerKind.parse("Midpoint"), .midpoint)
        XCTAssertTrue(pipelineError { _ = try NoiseRNG.parse("cuda") }.contains("--rng cuda"))
        XCTAssertEqual(try NoiseRNG.parse("torch-scalar"), .torchScalar)
    }

    func testWrongFileInEachSlot() {
        let d = Tiny.dir
        // a VAE given as the DiT, the DiT as the VAE, Jina as Gemma, Gemma as Jina
        let cases: [(ModelSlot, String, String)] = [(.dit, "vae", "FLUX VAE"), (.vae, "transformer", "NextDiT"),
                                                    (.gemma, "clip_model", "Jina"), (.jina, "text_encoder", "Gemma 3")]
        for (slot, folder, found) in cases {
            let m = pipelineError { try slot.check(d + "/" + folder) }
            XCTAssertTrue(m.hasPrefix(slot.option + " "), m)
            XCTAssertTrue(m.contains("this is the \(found)"), m)
            XCTAssertTrue(m.contains("not " + slot.expected), m)
        }
        // something that is no model at all
        let m = pipelineError { try ModelSlot.dit.check(Fixtures.path("vae/pil_pixels.safetensors")) }
        XCTAssertTrue(m.contains("--dit") && m.contains("holds none of NewBie's models"), m)
        // a file that is not a checkpoint
        let m2 = pipelineError { try ModelSlot.vae.check(Fixtures.path("vae/config.json")) }
        XCTAssertTrue(m2.contains("--vae") && m2.contains("cannot be read as a checkpoint"), m2)
        // the right files pass
        for slot in ModelSlot.allCases { XCTAssertNoThrow(try slot.check(d + "/" + slot.folder)) }
    }

    func testMissingModelPartAndFolder() throws {
        let empty = tempDir("empty")
        let paths = try ModelPaths.resolve(root: empty)
        let m = pipelineError { _ = try paths.require(.vae) }
        XCTAssertTrue(m.contains("missing model part") && m.contains("--vae") && m.contains(empty + "/vae does not exist"), m)
        let m2 = pipelineError { _ = try ModelPaths().require(.gemma) }
        XCTAssertTrue(m2.contains("missing model part") && m2.contains("--gemma"), m2)
        XCTAssertTrue(pipelineError { _ = try ModelPaths.resolve(root: empty + "/nope") }.contains("--model"))
        let m3 = pipelineError { try ModelSlot.dit.check(empty + "/nothing.safetensors") }
        XCTAssertTrue(m3.contains("--dit") && m3.contains("no such file"), m3)
        // a whole generate run fails on the missing part before loading anything
        let m4 = pipelineError {
            _ = try Pipeline.generate([GenerationRequest(prompt: "x", settings: Tiny.settings(), output: empty + "/a.png")],
                                      paths: ModelPaths(dit: Tiny.dir + "/transformer", gemma: Tiny.dir + "/text_encoder",
                                                        jina: Tiny.dir + "/clip_model"),
                                      options: StageOptions())
        }
        XCTAssertTrue(m4.contains("--vae"), m4)
        XCTAssertFalse(FileManager.default.fileExists(atPath: empty + "/a.png"))
    }

    func testConditioningThatDoesNotFitTheDiT() throws {
        let stage = try DenoiseStage(paths: Tiny.paths, options: StageOptions())
        let good = DiTConditioning(capFeats: Tensor.zeros([1, 2, TinyModel.gemmaHidden]), capMask: Tensor.full([1, 2], value: 1),
                                   clipPooled: Tensor.zeros([1, TinyModel.jinaHidden]))
        let wideGemma = DiTConditioning(capFeats: Tensor.zeros([1, 2, 40]), capMask: Tensor.full([1, 2], value: 1),
                                        clipPooled: Tensor.zeros([1, TinyModel.jinaHidden]))
        let wideJina = DiTConditioning(capFeats: Tensor.zeros([1, 2, TinyModel.gemmaHidden]), capMask: Tensor.full([1, 2], value: 1),
                                       clipPooled: Tensor.zeros([1, 8]))
        XCTAssertNoThrow(try stage.check(EncodedPrompt(prompt: "", negativePrompt: "", systemPrompt: "", cond: good, uncond: good)))
        let m = pipelineError { try stage.check(EncodedPrompt(prompt: "", negativePrompt: "", systemPrompt: "", cond: wideGemma, uncond: good)) }
        XCTAssertTrue(m.contains("--gemma") && m.contains("cap_feat_dim \(TinyModel.gemmaHidden)"), m)
        let m2 = pipelineError { try stage.check(EncodedPrompt(prompt: "", negativePrompt: "", systemPrompt: "", cond: good, uncond: wideJina)) }
        XCTAssertTrue(m2.contains("--jina") && m2.contains("negative prompt"), m2)
    }

    func testBadStageFiles() throws {
        let d = tempDir("stagefiles")
        try SafeTensorsWriter.write([("latent", Tensor.zeros([1, 16, 2, 2]))], to: URL(fileURLWithPath: d + "/l.safetensors"))
        let m = pipelineError { _ = try EncodedPrompt.read(d + "/l.safetensors") }
        XCTAssertTrue(m.contains("no tensor \"cap_feats\"") && m.contains("newbie encode"), m)
        XCTAssertTrue(pipelineError { _ = try EncodedPrompt.read(d + "/missing.safetensors") }.contains("not a readable safetensors"))
        let dec = try DecodeStage(paths: Tiny.paths, options: StageOptions())
        XCTAssertTrue(pipelineError { _ = try dec.run(Tensor.zeros([1, 4, 2, 2])) }.contains("--vae"))
    }
}

final class PipelineRunTests: XCTestCase {
    /// Spec 3.5: Gemma gets system prompt + prompt, Jina the raw prompt; the empty negative gets
    /// no system prompt (Gemma: <bos> only).
    func testPromptRouting() throws {
        let text = try TextStage(paths: Tiny.paths, options: StageOptions())
        let e = try text.encode(prompt: "1girl, red eyes", negativePrompt: "", systemPrompt: SystemPrompt.text)
        let expectedCond = text.gemmaTokenizer.encodeBatch([SystemPrompt.text + "1girl, red eyes"], maxLength: 512, padToMultipleOf: nil).ids[0].count
        XCTAssertEqual(e.condTokens, expectedCond)
        XCTAssertGreaterThan(expectedCond, text.gemmaTokenizer.encodeBatch(["1girl, red eyes"], maxLength: 512, padToMultipleOf: nil).ids[0].count)
        XCTAssertEqual(e.uncondTokens, 1)
        XCTAssertEqual(e.systemPrompt, SystemPrompt.text)
        // Jina: the raw prompt's pooled vector, not the system-prompted one
        let raw = text.jina.pooled(ids: text.jinaTokenizer.encodeBatch(["1girl, red eyes"]).ids).to(.f32)
        let withSystem = text.jina.pooled(ids: text.jinaTokenizer.encodeBatch([SystemPrompt.text + "1girl, red eyes"]).ids).to(.f32)
        XCTAssertLessThan(relativeL2(e.cond.clipPooled!, raw), 1e-6)
        XCTAssertGreaterThan(relativeL2(e.cond.clipPooled!, withSystem), 1e-3)
        // Gemma features: the system-prompted sequence's hidden states
        let ids = text.gemmaTokenizer.encodeBatch([SystemPrompt.text + "1girl, red eyes"], maxLength: 512, padToMultipleOf: nil)
        let h = try text.gemma.encode(ids).to(.f32)
        XCTAssertLessThan(relativeL2(e.cond.capFeats, h), 1e-6)
        XCTAssertEqual(e.cond.capFeats.toFloats().filter { !$0.isFinite }.count, 0)
        // a negative prompt gets no system prompt either
        let n = try text.encode(prompt: "1girl", negativePrompt: "lowres", systemPrompt: SystemPrompt.xml)
        XCTAssertEqual(n.uncondTokens, text.gemmaTokenizer.encodeBatch(["lowres"], maxLength: 512, padToMultipleOf: nil).ids[0].count)
        XCTAssertEqual(SystemPrompt.resolve("auto", prompt: "  <character_1>"), SystemPrompt.xml)
        XCTAssertEqual(SystemPrompt.resolve("auto", prompt: "1girl"), SystemPrompt.text)
        XCTAssertEqual(SystemPrompt.resolve("none", prompt: "1girl"), "")
        XCTAssertEqual(SystemPrompt.resolve("Custom. ", prompt: "1girl"), "Custom. ")
    }

    /// The whole pipeline on the CPU with the tiny model: the PNG exists, has the size and carries
    /// every parameter; the three stages through files give the same pixels.
    func testEndToEndTinyPipelineAndStages() throws {
        let out = tempDir("e2e")
        var steps: [Int] = []
        var stages: [String] = []
        let settings = Tiny.settings()
        let request = GenerationRequest(prompt: "1girl, red eyes", negativePrompt: "lowres", systemPrompt: "auto",
                                        settings: settings, output: out + "/sub/image.png")
        let written = try Pipeline.generate([request], paths: Tiny.paths, options: StageOptions(),
                                            extraMetadata: { _ in [MetadataKey.command: "newbie generate test"] },
                                            events: PipelineEvents(stageEnded: { s, _ in stages.append(s) },
                                                                   step: { s, _, _ in steps.append(s.index) }))
        XCTAssertEqual(written, [out + "/sub/image.png"])
        XCTAssertEqual(steps, [0, 1])  // 3 grid points = 2 midpoint steps
        XCTAssertEqual(stages, ["load text encoders", "encode", "load DiT", "load VAE", "denoise", "decode", "write"])
        let png = try PNG.read(out + "/sub/image.png")
        XCTAssertEqual([png.image.width, png.image.height], [32, 48])
        let expected: [String: String] = [
            MetadataKey.prompt: "1girl, red eyes", MetadataKey.negativePrompt: "lowres", MetadataKey.systemPrompt: SystemPrompt.text,
            MetadataKey.width: "32", MetadataKey.height: "48", MetadataKey.steps: "3", MetadataKey.sampler: "midpoint",
            MetadataKey.shift: "6.0", MetadataKey.cfg: "4.0", MetadataKey.cfgTrunc: "100.0", MetadataKey.renorm: "1.0",
            MetadataKey.seed: "7", MetadataKey.rng: "torch", MetadataKey.precision: "fp32", MetadataKey.device: "cpu",
            MetadataKey.model(.dit): Tiny.dir + "/transformer", MetadataKey.model(.vae): Tiny.dir + "/vae",
            MetadataKey.command: "newbie generate test", "Software": "newbie generate",
        ]
        for (k, v) in expected { XCTAssertEqual(png.textValue(k), v, k) }
        // the settings can be read back from the metadata
        var md: [String: String] = [:]
        for (k, v) in png.text { md[k] = v }
        XCTAssertEqual(GenerationMetadata.settings(from: md), settings)
        // a picture, not a constant (random weights: nothing more to say about it)
        XCTAssertGreaterThan(Set(png.image.pixels).count, 10)

        // stage by stage through safetensors files: same pixels
        let text = try TextStage(paths: Tiny.paths, options: StageOptions())
        let enc = try text.encode(prompt: "1girl, red eyes", negativePrompt: "lowres", systemPrompt: SystemPrompt.text)
        try SafeTensorsWriter.write(enc.tensors(), metadata: enc.metadata, to: URL(fileURLWithPath: out + "/cond.safetensors"))
        let (back, meta) = try EncodedPrompt.read(out + "/cond.safetensors")
        XCTAssertEqual(meta[MetadataKey.prompt], "1girl, red eyes")
        var evaluations = 0
        let latent = try DenoiseStage(paths: Tiny.paths, options: StageOptions()).run(back, settings: settings, onEvaluation: { _ in evaluations += 1 })
        XCTAssertEqual(evaluations, 4)  // midpoint: 2 per step
        XCTAssertEqual(latent.shape, [1, 16, 6, 4])
        XCTAssertEqual(latent.toFloats().filter { !$0.isFinite }.count, 0)
        let image = try DecodeStage(paths: Tiny.paths, options: StageOptions()).run(latent)
        XCTAssertEqual(image, png.image)

        // another seed gives another picture
        let other = try DenoiseStage(paths: Tiny.paths, options: StageOptions()).run(back, settings: Tiny.settings(seed: 8))
        XCTAssertGreaterThan(relativeL2(other, latent), 1e-3)
    }

    /// The VAE stages run on the stage's device (the test support's emulated one) and hand back CPU
    /// values close to the CPU run's (attention there goes through matrix products), tiled or not.
    func testVAEStagesOnTheStageDevice() throws {
        let dev = EmulatedDevice.shared.device
        var g = TorchGenerator(seed: 3)
        let latent = g.randn([1, 16, 6, 4])
        let out = tempDir("vae-device")
        for tiling in [VAETiling.never, VAETiling(mode: .always, tileLatent: 4, overlapLatent: 2, blendLatent: 2)] {
            var cpuOptions = StageOptions(), devOptions = StageOptions(device: dev)
            cpuOptions.vaeTiling = tiling; devOptions.vaeTiling = tiling
            let onDevice = try DecodeStage(paths: Tiny.paths, options: devOptions)
            XCTAssertEqual(onDevice.vae.device, dev)
            let want = try DecodeStage(paths: Tiny.paths, options: cpuOptions).run(latent)
            EmulatedDevice.shared.resetCounts()
            let got = try onDevice.run(latent.to(device: dev))
            XCTAssertEqual(EmulatedDevice.shared.attentionCalls, [16], "the mid-block attention ran on the device")
            XCTAssertEqual([got.width, got.height], [32, 48])
            let off = zip(got.pixels, want.pixels).map { abs(Int($0) - Int($1)) }
            XCTAssertLessThanOrEqual(off.max() ?? 0, 1, "tiling \(tiling.mode)")
            XCTAssertLessThanOrEqual(off.filter { $0 > 0 }.count, off.count / 100, "tiling \(tiling.mode)")

            try PNG.write(want, to: out + "/image.png")
            let encoder = try ImageEncodeStage(paths: Tiny.paths, options: devOptions)
            XCTAssertEqual(encoder.vae.device, dev)
            let z = try encoder.run(png: out + "/image.png", width: 32, height: 48)
            XCTAssertEqual(z.device, .cpu)
            XCTAssertEqual(z.dtype, .f32)
            let zCPU = try ImageEncodeStage(paths: Tiny.paths, options: cpuOptions).run(png: out + "/image.png", width: 32, height: 48)
            XCTAssertLessThanOrEqual(relativeL2(z, zCPU), 1e-5)
        }
    }

    /// `--device` moves every model: the whole pipeline on the emulated device writes the CPU's picture.
    func testWholePipelineOnTheStageDevice() throws {
        let out = tempDir("device-e2e")
        for (name, dev) in [("cpu", Device.cpu), ("device", EmulatedDevice.shared.device)] {
            _ = try Pipeline.generate([GenerationRequest(prompt: "1girl, red eyes", settings: Tiny.settings(), output: out + "/\(name).png")],
                                      paths: Tiny.paths, options: StageOptions(device: dev))
        }
        let want = try PNG.read(out + "/cpu.png"), got = try PNG.read(out + "/device.png")
        XCTAssertEqual(got.textValue(MetadataKey.device), EmulatedDevice.shared.device.description)
        let off = zip(got.image.pixels, want.image.pixels).map { abs(Int($0) - Int($1)) }
        XCTAssertEqual(off.count, 32 * 48 * 3)
        XCTAssertLessThanOrEqual(off.max() ?? 0, 1)
        XCTAssertLessThanOrEqual(off.filter { $0 > 0 }.count, off.count / 100)
    }

    /// `--cuda-graphs`: guided steps replayed from fixed input buffers give exactly the eager run's
    /// latent, with guidance switching off midway (a second recording) and every later step a replay.
    /// The emulated device records as a CUDA graph behaves (nothing computed until a replay).
    func testRecordedStepsGiveTheEagerLatent() throws {
        let dev = EmulatedDevice.shared.device
        EmulatedDevice.shared.emulateRecording = true
        defer { EmulatedDevice.shared.emulateRecording = false }
        let e = try TextStage(paths: Tiny.paths, options: StageOptions()).encode(prompt: "1girl, red eyes", negativePrompt: "blurry",
                                                                                systemPrompt: "")
        var settings = Tiny.settings(sampler: .euler, steps: 7)
        var options = StageOptions(device: dev)
        // guidance stops between the third and the fourth call
        var ts: [Float] = []
        _ = try DenoiseStage(paths: Tiny.paths, options: options).run(e, settings: settings, onEvaluation: { ts.append($0.t) })
        XCTAssertEqual(ts.count, 6)
        settings.cfg = CFGOptions(scale: 4, truncation: (ts[2] + ts[3]) / 2, renorm: 0)
        let eager = try DenoiseStage(paths: Tiny.paths, options: options).run(e, settings: settings)
        options.cuda.graphs = true
        let stage = try DenoiseStage(paths: Tiny.paths, options: options)
        XCTAssertTrue(stage.dit.useRecordedSteps)
        var replays: [Int] = []
        let replayed = try stage.run(e, settings: settings, onEvaluation: { _ in replays.append(stage.dit.recordedReplays) })
        XCTAssertEqual(replayed.toFloats(), eager.toFloats())
        XCTAssertTrue(replayed.toFloats().allSatisfy { $0.isFinite })
        // 6 model calls: guided at t < 0.5 (calls 1-3: eager, recorded + replayed, replayed), then
        // conditional only (calls 4-6: eager, recorded + replayed, replayed)
        XCTAssertEqual(replays, [0, 1, 2, 2, 1, 2])
        // renorm decides on the host: such steps run eagerly
        settings.cfg = CFGOptions(scale: 4, truncation: 100, renorm: 1)
        let renormed = try DenoiseStage(paths: Tiny.paths, options: options).run(e, settings: settings)
        XCTAssertEqual(renormed.toFloats(), try DenoiseStage(paths: Tiny.paths, options: StageOptions(device: dev)).run(e, settings: settings).toFloats())
    }

    func testOutputPathPattern() {
        XCTAssertEqual(Pipeline.outputPaths(pattern: "out/{prompt}-{seed}.png", seeds: [5, 6], promptIndices: [0, 0]),
                       ["out/0-5.png", "out/0-6.png"])
        XCTAssertEqual(Pipeline.outputPaths(pattern: "a.png", seeds: [5, 6], promptIndices: [0, 1]), ["a-0.png", "a-1.png"])
        XCTAssertEqual(Pipeline.outputPaths(pattern: "a", seeds: [1, 1], promptIndices: [0, 1]), ["a-0", "a-1"])
        XCTAssertEqual(Pipeline.outputPaths(pattern: "img_{index}.png", seeds: [9], promptIndices: [0]), ["img_0.png"])
    }

    func testInitialNoiseIsTorchRandn() {
        // the latent noise is torch.manual_seed(seed); torch.randn([1, 16, H/8, W/8]) (CPU generator)
        let s = Tiny.settings(seed: 42)
        var g = TorchGenerator(seed: 42, mode: .torch)
        XCTAssertEqual(s.noise(channels: 16).toFloats(), g.randn(count: 16 * 6 * 4))
        XCTAssertEqual(s.noise(channels: 16).shape, [1, 16, 6, 4])
    }
}
