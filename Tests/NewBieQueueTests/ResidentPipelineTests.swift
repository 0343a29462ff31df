import Foundation
import XCTest
import NewBieHarness
import NewBieImage
import NewBiePipeline
@testable import NewBieQueue
import NewBieTensor
import NewBieTestSupport

enum TinyQueueFixture {
    static let dir: String = try! TinyModel.writeTemporary("queue-tiny", seed: 0, in: TestScratch.root)
    static let pipeline: ResidentPipeline = try! ResidentPipeline(paths: try! ModelPaths.resolve(root: dir), options: StageOptions())
}

final class ResidentPipelineTests: XCTestCase {
    /// A job on the resident tiny models makes the same pixels as `Pipeline.generate` (the CLI's
    /// path), and its PNG records the job and every parameter.
    func testSamePixelsAsTheCLIPipeline() throws {
        let dir = tempDir("resident")
        let store = try SQLiteJobStore(path: dir + "/jobs.sqlite")
        var p = params("<character_1><n>miku</n></character_1>", count: 2, steps: 4)
        p.width = 32; p.height = 48; p.seed = 5; p.cfgTrunc = 100
        let j = try store.submit(p, maxQueued: 10, now: 0)
        let worker = JobWorker(store: store, executor: TinyQueueFixture.pipeline, hub: JobEventHub(), outputs: dir, id: "w")
        XCTAssertTrue(try worker.runOnce())
        let done = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(done.state, .done, done.error ?? "")

        let reqs = try (0..<2).map { i in
            GenerationRequest(prompt: p.prompt, settings: try p.settings(image: i), output: dir + "/cli-\(i).png")
        }
        _ = try Pipeline.generate(reqs, paths: TinyQueueFixture.pipeline.paths, options: StageOptions())
        for i in 0..<2 {
            let server = try PNG.read(dir + "/" + done.images[i])
            let cli = try PNG.read(dir + "/cli-\(i).png")
            XCTAssertEqual(server.image, cli.image, "image \(i)")
                        XCTAssertEqual(server.textValue("newbie:job"), j.id)
            XCTAssertEqual(server.textValue("newbie:seed"), "\(5 + i)")
            XCTAssertEqual(server.textValue("Software"), "newbie serve")
        }
    }

    /// Stage residency (each job loads the text encoders, the DiT, the VAE in turn and frees each)
    /// makes the same files' pixels and parameters as resident mode, and keeps no stage.
    func testStageResidencySameImagesAsResident() throws {
        let dir = tempDir("resident-stage")
        let stage = try ResidentPipeline(paths: TinyQueueFixture.pipeline.paths, options: StageOptions(), residency: .stage)
        XCTAssertNil(stage.text)
        XCTAssertNil(stage.denoise)
        XCTAssertNil(stage.decode)
        XCTAssertEqual(stage.ditConfig.inChannels, TinyQueueFixture.pipeline.ditConfig.inChannels)
        var p = params("1girl, red eyes", count: 2, steps: 4)
        p.width = 48; p.height = 32; p.seed = 11
        let job = Job(id: Job.newID(), seq: 1, state: .running, parameters: p, createdAt: 0)
        var wrote: [Int] = []
        var steps = 0
        let context = JobRunContext(onStep: { _, _, _, _ in steps += 1 }, onImage: { wrote.append($0) })
        try stage.run(job, outputs: [dir + "/s0.png", dir + "/s1.png"], context: context)
        XCTAssertEqual(stage.loadSeconds.map(\.0), ["text encoders", "dit", "vae"], "the loads of the job, in stage order")
        try TinyQueueFixture.pipeline.run(job, outputs: [dir + "/r0.png", dir + "/r1.png"], context: JobRunContext())
        XCTAssertEqual(wrote, [0, 1])
        XCTAssertGreaterThan(steps, 0)
        for i in 0..<2 {
            let a = try PNG.read(dir + "/s\(i).png"), b = try PNG.read(dir + "/r\(i).png")
            XCTAssertEqual(a.image, b.image, "image \(i)")
            XCTAssertEqual(a.text.map { "\($0.key)=\($0.value)" }, b.text.map { "\($0.key)=\($0.value)" })
        }
        let s0 = try PNG.read(dir + "/s0.png"), s1 = try PNG.read(dir + "/s1.png")
        XCTAssertNotEqual(s0.image, s1.image, "two seeds, two images")
        XCTAssertThrowsError(try Residency.parse("some")) { XCTAssertTrue("\($0)".contains("--resident some"), "\($0)") }
    }

    /// A cancel request seen at step 2's report stops the sampler before its next model call.
    func testCancelMidSampling() throws {
        let dir = tempDir("resident-cancel")
        let job = Job(id: Job.newID(), seq: 1, state: .running, parameters: params(steps: 30), createdAt: 0)
        var last = 0
        var context: JobRunContext! = nil
        context = JobRunContext(onStep: { _, step, _, _ in
            last = step
            if step == 2 { context.requestCancel() }
        })
        XCTAssertThrowsError(try TinyQueueFixture.pipeline.run(job, outputs: [dir + "/0.png"], context: context)) {
            XCTAssertTrue($0 is JobCancelled, "\($0)")
        }
        XCTAssertEqual(last, 2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/0.png"))
    }

    func testPreviewMapImage() throws {
        let map = LatentPreview(weights: [[Float]](repeating: [Float](repeating: 0, count: 16), count: 3), bias: [1, 0, -1])
        let img = try map.image(latent: Tensor.zeros([1, 16, 2, 3]))
        XCTAssertEqual(img.width, 3); XCTAssertEqual(img.height, 2)
        XCTAssertEqual(Array(img.pixels.prefix(3)), [255, 128, 0])
        XCTAssertThrowsError(try map.image(latent: Tensor.zeros([1, 4, 2, 2])))
    }

    /// Images made by a known map (each 8x8 block the map's colour of its latent pixel) give that
    /// map back, to the 8-bit rounding.
    func testPreviewFitRecoversAKnownMap() throws {
        var g = TestRandom(seed: 3)
        let c = 16
        let truth = LatentPreview(weights: (0..<3).map { _ in (0..<c).map { _ in g.uniform() * 0.15 } },
                                  bias: [0.1, -0.2, 0.05])
        var latents: [Tensor] = [], images: [RGBImage] = []
        for _ in 0..<3 {
            let h = 6, w = 5
            let lat = Tensor(g.floats(c * h * w), shape: [1, c, h, w])
            let small = try truth.image(latent: lat)
            var px = [UInt8](repeating: 0, count: h * 8 * w * 8 * 3)
            for y in 0..<(h * 8) {
                for x in 0..<(w * 8) {
                    for k in 0..<3 { px[(y * w * 8 + x) * 3 + k] = small.pixels[((y / 8) * w + x / 8) * 3 + k] }
                }
            }
            latents.append(lat)
            images.append(RGBImage(width: w * 8, height: h * 8, pixels: px))
        }
        let fit = try LatentPreview.fit(latents: latents, images: images)
        XCTAssertLessThan(fit.rmse, 0.003, "8-bit rounding only")
        XCTAssertLessThan(fit.rmse, fit.biasOnlyRMSE / 10)
        for k in 0..<3 {
            XCTAssertEqual(fit.map.bias[k], truth.bias[k], accuracy: 0.01)
            for ch in 0..<c { XCTAssertEqual(fit.map.weights[k][ch], truth.weights[k][ch], accuracy: 0.01) }
        }
        let path = tempDir("map") + "/map.json"
        try fit.map.json().write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try LatentPreview.load(path).bias, fit.map.bias)
        XCTAssertThrowsError(try LatentPreview.fit(latents: latents, images: Array(images.prefix(2))))
    }

    /// With a map, the resident pipeline sends a small PNG every N steps and at the last.
    func testPreviewsDuringSampling() throws {
        let dir = tempDir("resident-preview")
        let pipe = try ResidentPipeline(paths: TinyQueueFixture.pipeline.paths, options: StageOptions())
        pipe.previewMap = LatentPreview(weights: [[Float]](repeating: [Float](repeating: 0.1, count: 16), count: 3), bias: [0, 0, 0])
        var previews: [(Int, Data)] = []
        let ctx = JobRunContext(previewEvery: 2, onPreview: { _, step, png in previews.append((step, png)) })
        var p = params(steps: 6)
        p.width = 64; p.height = 48
        let job = Job(id: Job.newID(), seq: 1, state: .running, parameters: p, createdAt: 0)
        try pipe.run(job, outputs: [dir + "/0.png"], context: ctx)
        XCTAssertEqual(previews.map(\.0), [2, 4, 5], "every 2 of 5 steps, and the last")
        let f = dir + "/preview.png"
        try previews[0].1.write(to: URL(fileURLWithPath: f))
        let img = try PNG.read(f).image
        XCTAssertEqual(img.width, 8); XCTAssertEqual(img.height, 6)
    }
}
