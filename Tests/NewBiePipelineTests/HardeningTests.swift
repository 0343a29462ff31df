import Foundation
import XCTest
import NewBieDiffusion
import NewBieHarness
import NewBieImage
@testable import NewBiePipeline
import NewBieTensor
import NewBieTestSupport

/// Library-level checks of issue 13: images written as they are finished, size and memory checked
/// before anything is loaded.
final class HardeningTests: XCTestCase {
    static let dir: String = try! TinyFixture.write("harden-tiny", seed: 0)
    var paths: ModelPaths { try! ModelPaths.resolve(root: Self.dir) }

    func settings(_ seed: UInt64, width: Int = 32, height: Int = 32) -> SamplingSettings {
        SamplingSettings(width: width, height: height, steps: 3, sampler: .euler, shift: 6,
                         cfg: CFGOptions(scale: 4, truncation: 100, renorm: 0), seed: seed, rng: .torch)
    }

    func outDir() -> String {
        let d = TestScratch.path("newbie-harden-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    /// With several images, each is on disk before the next one is sampled (an interrupt or a late
    /// failure keeps the finished ones).
    func testEachImageIsWrittenBeforeTheNextIsSampled() throws {
        let out = outDir()
        let requests = (0..<3).map { GenerationRequest(prompt: "1girl", settings: settings(UInt64($0)), output: out + "/img-\($0).png") }
        var log: [String] = []
        _ = try Pipeline.generate(requests, paths: paths, options: StageOptions(), events: PipelineEvents(
            step: { s, image, _ in if s.index == 0 { log.append("sample \(image)") } },
            wrote: { path, image in
                XCTAssertTrue(FileManager.default.fileExists(atPath: path))
                log.append("wrote \(image)")
            }))
        XCTAssertEqual(log, ["sample 0", "wrote 0", "sample 1", "wrote 1", "sample 2", "wrote 2"])
    }

    /// A failure in a later image leaves the earlier images written.
    func testLateFailureKeepsFinishedImages() throws {
        let out = outDir()
        let requests = (0..<2).map { GenerationRequest(prompt: "1girl", settings: settings(UInt64($0)), output: out + "/img-\($0).png") }
        XCTAssertThrowsError(try Pipeline.generate(requests, paths: paths, options: StageOptions(), events: PipelineEvents(
            step: { _, image, _ in
                // the second image's output folder vanishes under a file of the same name
                if image == 1 { try? FileManager.default.removeItem(atPath: out); FileManager.default.createFile(atPath: out, contents: nil) }
            },
            wrote: { path, image in
                if image == 0 { try? FileManager.default.copyItem(atPath: path, toPath: out + "-kept.png") }
            })))
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + "-kept.png"), "the first image was not written before the second was sampled")
    }

    /// The size limit comes from the DiT's position tables, checked before loading.
    func testSizeLimitFromTheModel() throws {
        var c = NextDiTConfig()
        XCTAssertEqual(RunCheck.maxSize(c).width, 8192)
        XCTAssertEqual(RunCheck.maxSize(c).height, 8192)
        c.axesLens = [1024, 64, 128]
        XCTAssertEqual(RunCheck.maxSize(c).height, 1024)
        XCTAssertEqual(RunCheck.maxSize(c).width, 2048)
        XCTAssertThrowsError(try Pipeline.generate([GenerationRequest(prompt: "x", settings: settings(0, width: 8208, height: 16), output: outDir() + "/x.png")],
                                                   paths: paths, options: StageOptions())) {
            XCTAssertTrue("\($0)".contains("at most 8192x8192"), "\($0)")
        }
    }

    /// The memory estimate grows with the size and is checked against a limit, naming the numbers
    /// and the largest size that fits.
    func testMemoryEstimate() throws {
        let full = NextDiTConfig()
        let o = StageOptions()
        let e1 = RunCheck.estimate(width: 1024, height: 1024, dit: full, vae: VAEConfig(), options: o, captionTokens: 512)
        let e2 = RunCheck.estimate(width: 2048, height: 2048, dit: full, vae: VAEConfig(), options: o, captionTokens: 512)
        // 3.5B parameters (plus the CLIP pathway) in fp32
        XCTAssertGreaterThan(e1.ditWeights, 13_000_000_000)
        XCTAssertLessThan(e1.ditWeights, 17_000_000_000)
        XCTAssertGreaterThan(e2.ditActivations, 3 * e1.ditActivations)
        XCTAssertGreaterThan(e1.total, e1.ditWeights)
        let r = [GenerationRequest(prompt: "x", settings: settings(0, width: 512, height: 512), output: outDir() + "/x.png")]
        XCTAssertThrowsError(try RunCheck.check(r, paths: paths, options: o, memoryLimit: 1 << 20)) {
            let m = "\($0)"
            XCTAssertTrue(m.contains("--width 512 --height 512") && m.contains("1.00 MiB") && m.contains("largest square"), m)
        }
        XCTAssertNoThrow(try RunCheck.check(r, paths: paths, options: o, memoryLimit: 1 << 40))
        XCTAssertNoThrow(try RunCheck.check(r, paths: paths, options: o, memoryLimit: 1 << 20, checkMemory: false))
    }
}
