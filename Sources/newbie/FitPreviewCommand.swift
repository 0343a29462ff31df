import ArgumentParser
import Foundation
import NewBieImage
import NewBiePipeline
import NewBieQueue
import NewBieTensor

/// `newbie fit-preview`: fits the live-preview map (latent channels -> RGB, linear plus bias) by
/// least squares against the VAE decoder, on latents the model itself samples (docs/SERVER.md).
struct FitPreviewCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fit-preview",
        abstract: "Fit the linear latent->RGB preview map of `newbie serve --preview-map` against the VAE decoder.",
        discussion: "Samples --images latents (prompts below, seeds 0, 1, ...) with the DiT, decodes each with the VAE, and solves for the 3 x C map plus bias that best gives each latent pixel's 8x8 block mean colour. Prints the fit's RMSE next to the best constant colour's.")

    @OptionGroup var models: ModelOptions
    @OptionGroup var deviceOptions: DeviceOptions

    @Option(help: "Images to sample and decode.")
    var images = 8
    @Option(help: "Width and height of each.")
    var size = 512
    @Option(help: "Sampler grid points.")
    var steps = 18
    @Option(name: [.short, .long], help: "Where to write the map (JSON).")
    var output = "preview-map.json"

    static let prompts = [
        "1girl, solo, red eyes, long hair, white dress, blue sky, outdoors",
        "1boy, black jacket, night, city lights, neon, rain",
        "landscape, forest, river, sunset, orange sky, no humans",
        "2girls, school uniform, classroom, indoors, smile, window, daylight",
        "<character_1><n>hatsune_miku</n><gender>1girl</gender><appearance>twintails, aqua_hair</appearance></character_1><general_tags><background>white_background</background></general_tags>",
        "still life, flowers, vase, green, yellow, purple, table",
    ]

    func run() throws {
        let pipeline = try ResidentPipeline(paths: try models.paths(), options: try deviceOptions.stageOptions())
        var latents: [Tensor] = []
        var decoded: [RGBImage] = []
        for i in 0..<images {
            var p = JobParameters(prompt: Self.prompts[i % Self.prompts.count])
            p.width = size; p.height = size; p.steps = steps; p.seed = UInt64(i)
            try p.validate(JobLimits())
            guard let text = pipeline.text, let denoise = pipeline.denoise, let decode = pipeline.decode else {
                throw PipelineError("fit-preview needs the models resident")
            }
            let e = try text.encode(prompt: p.prompt, negativePrompt: "", systemPrompt: SystemPrompt.resolve("auto", prompt: p.prompt))
            let latent = try denoise.run(e, settings: try p.settings(image: 0))
            latents.append(latent)
            decoded.append(try decode.run(latent))
            FileHandle.standardError.write(Data("image \(i + 1)/\(images)\n".utf8))
        }
        let fit = try LatentPreview.fit(latents: latents, images: decoded)
        try fit.map.json().write(to: URL(fileURLWithPath: output))
        print(String(format: "wrote %@: RMSE %.4f (the best constant colour: %.4f), in [-1, 1] units over %d latent pixels",
                     output, fit.rmse, fit.biasOnlyRMSE, images * (size / 8) * (size / 8)))
    }
}
