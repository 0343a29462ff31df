import ArgumentParser
import Foundation
import NewBieHarness
import NewBieDiffusion
import NewBieImage
import NewBiePipeline
import NewBieTensor

/// `newbie mini-eval`: how well NewBie-mini follows its prompts, XML against flat tags.
struct MiniEvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mini-eval",
        abstract: "Score NewBie-mini's pictures: the asked hair and clothing colours at each character's position, XML prompts against the same content as flat tags.",
        discussion: "Scenes are drawn like the training scenes (seeded); each is generated at 128x128 and read back by colour at the fixed places the training pictures use.")

    @Option(help: "The NewBie-mini folder (official layout).")
    var model = "models/newbie-mini"
    @Option(help: "Scenes per character count.")
    var scenes = 8
    @Option(help: "Character counts to test, comma-separated (1 to 3).")
    var characters = "1,2,3"
    @Option(help: "Prompt forms, comma-separated: xml, tags.")
    var forms = "xml,tags"
    @Option(help: "Seed of the scenes (and of the noise: scene i uses seed + i).")
    var seed: UInt64 = 100
    @OptionGroup var sampling: MiniSamplingOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @Option(help: "Save each picture here as FORM_N.png.")
    var save: String?

    func run() throws {
        let counts = try characters.split(separator: ",").map { s -> Int in
            guard let n = Int(s), (1...3).contains(n) else { throw ValidationError("--characters \(characters): counts are 1, 2 or 3") }
            return n
        }
        let fs = try forms.split(separator: ",").map { s -> MiniEval.Form in
            guard let f = MiniEval.Form(rawValue: String(s)) else { throw ValidationError("--forms \(forms): use xml and/or tags") }
            return f
        }
        guard scenes >= 1 else { throw ValidationError("--scenes must be at least 1") }
        var rng = SplitMix(seed: seed)
        let list = counts.flatMap { n in (0..<scenes).map { _ in MiniScene.random(count: n, rng: &rng) } }
        if let d = save { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        let result = try MiniEval.run(model: model, scenes: list, forms: fs, settings: try sampling.settings(seed: seed),
                                      options: try deviceOptions.stageOptions()) { form, i, image in
            if let d = save { try PNG.write(image, to: "\(d)/\(form.rawValue)_\(i).png", text: []) }
        }
        print("attributes shown where asked (hair and clothing colour per character), \(scenes) scenes per count:")
        print("form   " + counts.map { "\($0) character\($0 == 1 ? " " : "s")" }.joined(separator: "  "))
        for f in fs {
            let row = counts.map { n -> String in
                let s = result[f]?[n] ?? MiniEval.Score()
                return String(format: "%5.1f%% (%d/%d)", 100 * s.accuracy, s.correct, s.asked).padding(toLength: 12, withPad: " ", startingAt: 0)
            }
            print(f.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0) + row.joined(separator: " "))
        }
    }
}

/// The sampler settings of `mini-eval` (the size is NewBie-mini's, 128x128).
struct MiniSamplingOptions: ParsableArguments {
    @Option(help: "Points of the shifted grid.") var steps = 18
    @Option(help: "euler, midpoint, rk4 or dpm.") var sampler = "midpoint"
    @Option(help: "Classifier-free guidance scale.") var cfg: Float = 5
    @Option(name: .customLong("cfg-trunc"), help: "Guidance only while t < this; 100 = always.") var cfgTrunc: Float = 0.25

    func settings(seed: UInt64) throws -> SamplingSettings {
        let s = SamplingSettings(width: MiniScene.size, height: MiniScene.size, steps: steps, sampler: try SamplerKind.parse(sampler),
                                 shift: 6, cfg: CFGOptions(scale: cfg, truncation: cfgTrunc, renorm: 0), seed: seed, rng: .torch)
        try s.validate()
        return s
    }
}
