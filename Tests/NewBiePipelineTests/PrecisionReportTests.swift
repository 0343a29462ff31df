import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBieImage
import NewBieMetrics
import NewBiePipeline
import NewBieTestSupport
import NewBieTensor
import NewBieWeights

/// `newbie precision-report` on the tiny model, on the CPU: fp32 (reference), bf16, fp32 again and
/// a config that cannot run, one prompt, 64x64.
final class PrecisionReportTests: XCTestCase {
    static let model: String = try! TinyFixture.write("tiny-precision-report", seed: 1)

    static let configs = ["fp32", "bf16", "fp32", "bogus"]

    func config(_ out: String) throws -> PrecisionReportConfig {
        let settings = SamplingSettings(width: 64, height: 64, steps: 4, sampler: .midpoint, shift: 6,
                                        cfg: CFGOptions(scale: 5, truncation: 0.25, renorm: 0), seed: 0, rng: .torch)
        return PrecisionReportConfig(paths: try ModelPaths.resolve(root: Self.model), configs: Self.configs,
                                     cases: [.init(prompt: "1girl, red eyes", seed: 7)], settings: settings, output: out,
                                     command: "newbie precision-report (test)", deviceName: "cpu")
    }

    func run(_ name: String) throws -> (PrecisionReport, String, [String]) {
        let out = TestScratch.path("newbie-precision-\(name)-\(getpid())")
        try? FileManager.default.removeItem(atPath: out)
        var lines: [String] = []
        let r = try PrecisionReportRunner.run(try config(out), log: { lines.append($0) })
        return (r, out, lines)
    }

    /// The numbers that must not change from run to run (times and memory left out).
    func numbers(_ r: PrecisionReport) -> [String] {
        r.configs.flatMap { c -> [String] in
            c.results.map { x in
                "\(c.index) \(x.error ?? "") \(String(describing: x.metrics)) \(String(describing: x.latentRelativeL2)) \(String(describing: x.firstNonFinite))"
            } + c.layerErrors.map { le in "\(le.step): " + le.modules.map { "\($0.path)=\($0.relativeError)" }.joined(separator: " ") }
        }
    }

    /// NewBie-mini, whose pictures mean something: bf16 against fp32 on an XML prompt at its size.
    func testReportOnNewBieMini() throws {
        let out = TestScratch.path("newbie-precision-mini-\(getpid())")
        try? FileManager.default.removeItem(atPath: out)
        let settings = SamplingSettings(width: 128, height: 128, steps: 6, sampler: .midpoint, shift: 6,
                                        cfg: CFGOptions(scale: 5, truncation: 100, renorm: 0), seed: 0, rng: .torch)
        var rng = SplitMix(seed: 11)
        let prompt = MiniScene.random(count: 2, rng: &rng).xmlCaption
        let config = PrecisionReportConfig(paths: try ModelPaths.resolve(root: MiniModelTests.model), configs: ["fp32", "bf16"],
                                           cases: [.init(prompt: prompt, seed: 3)], settings: settings, output: out,
                                           command: "newbie precision-report (test)", deviceName: "cpu")
        let r = try PrecisionReportRunner.run(config, log: { _ in })
        let x = try XCTUnwrap(r.configs[1].results.first)
        XCTAssertNil(x.error)
        let m = try XCTUnwrap(x.metrics)
        print(String(format: "NewBie-mini, bf16 against fp32: PSNR %.2f dB, SSIM %.4f, VIF %.4f, latent rel. L2 %.2e",
                     m.psnr, m.ssim, m.vif ?? .nan, x.latentRelativeL2 ?? .nan))
        XCTAssertTrue(m.psnr.isFinite && m.psnr > 20 && m.psnr < 90, "\(m)")
        XCTAssertTrue(m.ssim > 0.8 && m.ssim < 1, "\(m)")
        XCTAssertTrue(x.latentRelativeL2! > 1e-5 && x.latentRelativeL2! < 0.3, "\(x.latentRelativeL2!)")
        XCTAssertEqual(try PNG.read(out + "/images/1-bf16-case0.png").image.width, 128)
        XCTAssertTrue(r.configs[1].layerErrors[0].modules.map(\.path).contains("dit.layers.5"))
    }

    func testReportOnTheTinyModel() throws {
        let (r, out, log) = try run("a")
        XCTAssertEqual(r.configs.map(\.spec), Self.configs)
        XCTAssertEqual(r.settings.evaluations, 6)  // midpoint, 3 steps
        XCTAssertEqual(r.layerSteps, [0, 3, 5])
        XCTAssertTrue(log.contains { $0.hasPrefix("config 4/4: bogus") }, "\(log)")

        // the reference against itself, and a second fp32 run against it: identical
        for c in [r.configs[0], r.configs[2]] {
            XCTAssertNil(c.error)
            let x = try XCTUnwrap(c.results.first)
            XCTAssertNil(x.error)
            let m = try XCTUnwrap(x.metrics)
            XCTAssertEqual(m.psnr, .infinity)
            XCTAssertEqual(m.ssim, 1, accuracy: 1e-9)
            XCTAssertEqual(m.ssimRGB, 1, accuracy: 1e-9)
            XCTAssertEqual(try XCTUnwrap(m.vif), 1, accuracy: 1e-6)
            XCTAssertEqual(x.latentRelativeL2, 0)
            XCTAssertNil(x.firstNonFinite)
        }
        XCTAssertTrue(r.configs[0].layerErrors.isEmpty, "the reference has no errors against itself")
        XCTAssertEqual(r.configs[2].layerErrors.map(\.step), [0, 3, 5])
        for le in r.configs[2].layerErrors { XCTAssertTrue(le.modules.allSatisfy { $0.relativeError == 0 }, "\(le.modules)") }

        // bf16: finite and plausible (close, not identical)
        let bf = r.configs[1]
        XCTAssertEqual(bf.precision, "bf16")
        let x = try XCTUnwrap(bf.results.first)
        XCTAssertNil(x.error)
        let m = try XCTUnwrap(x.metrics)
        XCTAssertTrue(m.psnr.isFinite && m.psnr > 25 && m.psnr < 90, "\(m)")
        XCTAssertTrue(m.ssim > 0.9 && m.ssim < 1, "\(m)")
        XCTAssertTrue(m.ssimRGB > 0.9 && m.ssimRGB < 1, "\(m)")
        XCTAssertTrue(m.vif! > 0.5 && m.vif! < 1.01, "\(m)")
        XCTAssertTrue(x.latentRelativeL2! > 1e-5 && x.latentRelativeL2! < 0.2, "\(x.latentRelativeL2!)")
        XCTAssertEqual(x.stepSeconds.count, 3)
        XCTAssertNotNil(x.encodeSeconds); XCTAssertNotNil(x.decodeSeconds)
        XCTAssertEqual(bf.layerErrors.map(\.step), [0, 3, 5])
        let paths = bf.layerErrors[0].modules.map(\.path)
        XCTAssertEqual(paths, ["dit.cap_embedder", "dit.x_embedder", "dit.context_refiner.0", "dit.noise_refiner.0", "dit.layers.0",
                               "dit.layers.1", "dit.final_layer", "dit.velocity"])
        for le in bf.layerErrors {
            XCTAssertTrue(le.modules.allSatisfy { $0.relativeError > 1e-5 && $0.relativeError < 0.2 }, "\(le.modules)")
        }
        XCTAssertTrue(bf.peakHostBytes > 0 && bf.peakCPUTensorBytes > 0)
        XCTAssertNil(bf.peakDeviceBytes)

        // a config that cannot run is reported in its row, and the run went on
        let bad = r.configs[3]
        XCTAssertEqual(bad.error.map { $0.contains("bogus") }, true, "\(String(describing: bad.error))")
        XCTAssertNil(bad.results[0].metrics)
        XCTAssertNotNil(bad.results[0].error)

        // the files
        for f in PrecisionReportRunner.files { XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), f) }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/report.json"))) as! [String: Any]
        for k in ["command", "created", "machine", "device", "versions", "models", "settings", "cases", "layerSteps", "configs"] {
            XCTAssertNotNil(json[k], k)
        }
        let c0 = (json["configs"] as! [[String: Any]])[0]
        for k in ["spec", "precision", "peakHostBytes", "peakCPUTensorBytes", "generateCommand", "results", "layerErrors", "loadDiTSeconds"] {
            XCTAssertNotNil(c0[k], k)
        }
        let res0 = (c0["results"] as! [[String: Any]])[0]
        let metrics0 = res0["metrics"] as! [String: Any]
        XCTAssertEqual(metrics0["psnr"] as? String, "inf")
        XCTAssertEqual(try PrecisionReport.decode(Data(contentsOf: URL(fileURLWithPath: out + "/report.json"))).configs.count, 4)
        for k in c0.keys.sorted() where k.hasSuffix("Seconds") { XCTAssertNotNil(c0[k] as? Double, k) }
        for r0 in res0.keys where ["encodeSeconds", "denoiseSeconds", "decodeSeconds", "image", "latentRelativeL2"].contains(r0) { XCTAssertNotNil(res0[r0]) }
        XCTAssertEqual(res0["image"] as? String, "images/0-fp32-case0.png")
        XCTAssertEqual(try PNG.read(out + "/images/1-bf16-case0.png").image.width, 64)

        let md = try String(contentsOfFile: out + "/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("| 0 | fp32 | 1 |"), md)
        XCTAssertTrue(md.contains("## Where precision is lost"), md)
        XCTAssertTrue(md.contains("| dit.layers.1 |"), md)
        let html = try String(contentsOfFile: out + "/report.html", encoding: .utf8)
        XCTAssertTrue(html.contains("<svg"), "per-layer plot")
        XCTAssertTrue(html.contains("data:image/png;base64,"), "inline grid")
        XCTAssertTrue(html.contains("<script>"), "sortable table")
        XCTAssertFalse(html.replacingOccurrences(of: "http://www.w3.org/2000/svg", with: "").contains("http"), "no network references")
        XCTAssertEqual(html.components(separatedBy: "<svg").count - 1, 3, "one plot per chosen evaluation")

        let grid = try PNG.read(out + "/grid.png").image
        XCTAssertEqual(grid.width, 4 + 4 * (64 + 4))
        XCTAssertGreaterThan(grid.height, 2 * 64)

        // determinism: a second run gives the same numbers
        let (again, out2, _) = try run("b")
        XCTAssertEqual(numbers(again), numbers(r))
        try? FileManager.default.removeItem(atPath: out)
        try? FileManager.default.removeItem(atPath: out2)
    }

    /// A constructed fp16 overflow: the tiny model with layer 1's FFN input norm scaled by 1000,
    /// so silu(w1 x) * w3 x passes 65504 inside the block while its normalised output stays
    /// finite in fp32. fp16 fails in its row with the block and step named; fp16 with that block
    /// in fp32 runs.
    func testConstructedFP16OverflowIsLocated() throws {
        let dir = TestScratch.path("newbie-tiny-overflow-\(getpid())")
        try? FileManager.default.removeItem(atPath: dir)
        try TinyModel.write(to: dir, seed: 1, gemmaTokenizer: Fixtures.path("gemma/small_tokenizer.json"),
                            jinaTokenizer: Fixtures.path("jina/tokenizer.json"))
        try Self.scaleTensor(in: dir + "/transformer/diffusion_pytorch_model.safetensors", name: "layers.1.ffn_norm1.weight", by: 1000)
        var c = try config(TestScratch.path("newbie-precision-overflow-\(getpid())"))
        try? FileManager.default.removeItem(atPath: c.output)
        c.paths = try ModelPaths.resolve(root: dir)
        c.configs = ["fp32", "fp16", "fp16,dit.layers.1=fp32"]
        c.timingPass = true
        let r = try PrecisionReportRunner.run(c)
        // times from an untraced pass that made the same latents and images
        XCTAssertEqual(r.configs.map(\.timingPass), [true, true, true])
        XCTAssertEqual(r.configs.map { $0.results[0].timingPassMatches }, [true, true, true])
        XCTAssertEqual(r.configs[2].results[0].stepSeconds.count, 3)
        XCTAssertNil(r.configs[0].results[0].error)
        let f16 = r.configs[1].results[0]
        XCTAssertNotNil(f16.error, "fp16 must fail on the overflow")
        let n = try XCTUnwrap(f16.firstNonFinite)
        XCTAssertEqual(n.path, "dit.layers.1")
        XCTAssertEqual(n.step, 0)
        XCTAssertEqual(n.computeDType, "fp16")
        XCTAssertNil(f16.metrics)
        XCTAssertTrue(r.configs[1].layerErrors.flatMap(\.modules).contains { $0.path == "dit.layers.1" && !$0.relativeError.isFinite })
        let fixed = r.configs[2].results[0]
        XCTAssertNil(fixed.error)
        XCTAssertNil(fixed.firstNonFinite)
        XCTAssertTrue(try XCTUnwrap(fixed.metrics).psnr > 25, "\(String(describing: fixed.metrics))")
        let md = try String(contentsOfFile: c.output + "/report.md", encoding: .utf8)
        XCTAssertTrue(md.contains("dit.layers.1 step 0 (fp16)"), md)
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.removeItem(atPath: c.output)
    }

    static func scaleTensor(in path: String, name: String, by k: Float) throws {
        let f = try SafeTensorsFile(path: path)
        var tensors: [(String, Tensor)] = []
        for n in f.names {
            let t = try f.tensor(n)
            tensors.append((n, n == name ? Tensor(t.toFloats().map { $0 * k }, shape: t.shape).to(t.dtype) : t.contiguous()))
        }
        let md = f.metadata
        try SafeTensorsWriter.write(tensors, metadata: md.isEmpty ? nil : md, to: URL(fileURLWithPath: path + ".tmp"))
        XCTAssertEqual(rename(path + ".tmp", path), 0)
    }

    func testOutputFolderIsNotOverwrittenWithoutConsent() throws {
        let dir = TestScratch.path("newbie-precision-busy-\(getpid())")
        try? FileManager.default.removeItem(atPath: dir)
        XCTAssertNoThrow(try PrecisionReportRunner.checkOutput(dir, force: false), "a new folder is fine")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        XCTAssertNoThrow(try PrecisionReportRunner.checkOutput(dir, force: false), "an empty folder is fine")
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/notes.txt"))
        XCTAssertThrowsError(try PrecisionReportRunner.checkOutput(dir, force: false)) { e in
            XCTAssertTrue("\(e)".contains("notes.txt") && "\(e)".contains("--force"), "\(e)")
        }
        XCTAssertNoThrow(try PrecisionReportRunner.checkOutput(dir, force: true))
        XCTAssertThrowsError(try PrecisionReportRunner.checkOutput(dir + "/notes.txt", force: true))
        try? FileManager.default.removeItem(atPath: dir)
    }

    func testTracerObserverSeesEveryTensor() throws {
        let tracer = PipelineTracer(trace: false, detectOverflow: false, computeDType: .f32, sink: { _ in })
        var seen: [String] = []
        tracer.observer = { path, step, t in seen.append("\(path)@\(step.map(String.init) ?? "-") \(t.shape)") }
        try tracer.report("dit.layers.0", step: 2, Tensor([1, 2, 3, 4], shape: [2, 2]))
        try tracer.report("vae.decoder", Tensor([.nan], shape: [1]))
        XCTAssertEqual(seen, ["dit.layers.0@2 [2, 2]", "vae.decoder@- [1]"])
        XCTAssertEqual(tracer.firstNonFinite?.path, "vae.decoder")
    }

    /// Quantized configs join the table: a bare type and a precision with a `+` quantization spec.
    func testQuantizedConfigsJoinTheReport() throws {
        XCTAssertEqual(PrecisionReportConfig.split(config: "int8").precision, "auto")
        XCTAssertEqual(PrecisionReportConfig.split(config: "int8").quantize, "dit=int8,gemma=int8,jina=int8")
        XCTAssertEqual(PrecisionReportConfig.split(config: "bf16,vae=fp32+dit.layers.0=int8-g128").precision, "bf16,vae=fp32")
        XCTAssertEqual(PrecisionReportConfig.split(config: "bf16,vae=fp32+dit.layers.0=int8-g128").quantize, "dit.layers.0=int8-g128")
        XCTAssertEqual(PrecisionReportConfig.split(config: "+dit=int8").precision, "auto")
        XCTAssertEqual(PrecisionReportConfig.split(config: "fp16").quantize, "")
        XCTAssertNil(PrecisionReportConfig.split(config: "fp16").stepCache)
        let cached = PrecisionReportConfig.split(config: "bf16+dit=int8@teacache:0.3")
        XCTAssertEqual([cached.precision, cached.quantize, cached.stepCache], ["bf16", "dit=int8", "teacache:0.3"])
        XCTAssertEqual(try PrecisionReportConfig.stepCache("fbcache")?.threshold, 0.1)
        XCTAssertThrowsError(try PrecisionReportConfig.stepCache("teacache:x"))
        XCTAssertThrowsError(try PrecisionReportConfig.stepCache("warpcache"))

        let out = TestScratch.path("newbie-precision-quant-\(getpid())")
        try? FileManager.default.removeItem(atPath: out)
        var c = try config(out)
        c.configs = ["fp32", "int8", "fp32+dit.layers.0=int8", "fp32+dit.nowhere=int8", "fp32@teacache:1000", "fp32@fbcache:0"]
        let r = try PrecisionReportRunner.run(c, log: { _ in })
        for i in 1...2 {
            XCTAssertNil(r.configs[i].error, "\(r.configs[i])")
            let x = try XCTUnwrap(r.configs[i].results.first)
            let e = try XCTUnwrap(x.latentRelativeL2)
            XCTAssertTrue(e > 1e-6 && e < 0.2, "config \(r.configs[i].spec): latent error \(e)")
            XCTAssertTrue(r.configs[i].generateCommand.contains("--quantize"), r.configs[i].generateCommand)
        }
        XCTAssertTrue(r.configs[1].generateCommand.contains("--quantize dit=int8,gemma=int8,jina=int8"), r.configs[1].generateCommand)
        // quantizing one block moves the latent less than quantizing every model
        XCTAssertLessThan(r.configs[2].results[0].latentRelativeL2!, r.configs[1].results[0].latentRelativeL2!)
        XCTAssertEqual(r.configs[3].error.map { $0.contains("nowhere") }, true, "\(String(describing: r.configs[3].error))")
        // the step cache: a huge threshold skips calls (the latent moves), threshold 0 skips none (identical)
        XCTAssertNil(r.configs[4].error)
        XCTAssertGreaterThan(r.configs[4].results[0].latentRelativeL2!, 1e-4)
        XCTAssertTrue(r.configs[4].generateCommand.contains("--step-cache teacache --cache-threshold 1000.0"), r.configs[4].generateCommand)
        XCTAssertEqual(r.configs[5].results[0].latentRelativeL2, 0)
    }

    func testConfigList() throws {
        XCTAssertEqual(try PrecisionReportConfig.parseConfigs("fp32; bf16;;fp16,dit.layers.*.attention=fp32 "),
                       ["fp32", "bf16", "fp16,dit.layers.*.attention=fp32"])
        XCTAssertThrowsError(try PrecisionReportConfig.parseConfigs(" ; "))
    }
}
