import Foundation
import NewBieImage
import NewBiePipeline
import NewBieTensor

/// NewBie-mini's world, read back: the scenes its training data drew (tools/mini/scene.py holds the
/// drawing side and the same geometry), their captions in both forms, and the colour reader that
/// says whether a generated picture shows what its prompt asked for.
public struct MiniScene: Sendable, Equatable {
    public struct Character: Sendable, Equatable {
        public var gender: String     // girl, boy
        public var hair: String
        public var eyes: String
        public var clothing: String
        public var position: String   // left, center, right
    }
    public var background: String
    /// In the order the caption writes them (not left to right).
    public var characters: [Character]

    public static let size = 128
    public static let slots: [String: Int] = ["left": 24, "center": 64, "right": 104]
    public static let palette: [(String, (Int, Int, Int))] = [
        ("red", (220, 40, 40)), ("orange", (240, 140, 30)), ("yellow", (235, 215, 40)), ("green", (40, 165, 60)),
        ("blue", (40, 80, 220)), ("purple", (140, 60, 190)), ("pink", (250, 140, 195)), ("black", (35, 35, 35)),
    ]
    public static let eyeColours = ["red", "blue", "green", "yellow", "purple"]
    public static let backgrounds = ["white", "grey", "beige"]

    /// A scene of `count` characters, drawn from `rng` like the training scenes: distinct hair
    /// colours, clothing unlike the hair, distinct positions.
    public static func random(count: Int, rng: inout SplitMix) -> MiniScene {
        func pick<T>(_ a: [T]) -> T { a[Int(rng.next() % UInt64(a.count))] }
        var positions = ["left", "center", "right"], hairs = palette.map(\.0)
        var chars: [Character] = []
        for _ in 0..<count {
            let p = positions.remove(at: Int(rng.next() % UInt64(positions.count)))
            let h = hairs.remove(at: Int(rng.next() % UInt64(hairs.count)))
            chars.append(Character(gender: pick(["girl", "boy"]), hair: h, eyes: pick(eyeColours),
                                   clothing: pick(palette.map(\.0).filter { $0 != h }), position: p))
        }
        return MiniScene(background: pick(backgrounds), characters: chars)
    }

    func garment(_ c: Character) -> String { "\(c.clothing)_\(c.gender == "girl" ? "dress" : "shirt")" }

    var countTag: String {
        let girls = characters.filter { $0.gender == "girl" }.count, boys = characters.count - girls
        return [girls == 0 ? nil : girls == 1 ? "1girl" : "\(girls)girls", boys == 0 ? nil : boys == 1 ? "1boy" : "\(boys)boys"]
            .compactMap { $0 }.joined(separator: ", ")
    }

    /// The NewBie XML caption, one line, as the training captions were written.
    public var xmlCaption: String {
        var s = ""
        for (i, c) in characters.enumerated() {
            let n = i + 1
            let hair = "\(c.hair)_hair, \(c.gender == "girl" ? "long_hair" : "short_hair")"
            s += "<character_\(n)><n>$character_\(n)$</n><gender>1\(c.gender)</gender><appearance>\(hair), \(c.eyes)_eyes</appearance>"
            s += "<clothing>\(garment(c))</clothing><position>\(c.position)</position></character_\(n)>"
        }
        return s + "<general_tags><count>\(countTag)</count><background>\(background)_background</background></general_tags>"
    }

    /// The same content as flat tags (nothing says whose tag is whose), in a fixed shuffled order.
    public func tagCaption(rng: inout SplitMix) -> String {
        var tags: [String] = []
        for c in characters {
            for t in ["\(c.hair)_hair", c.gender == "girl" ? "long_hair" : "short_hair", "\(c.eyes)_eyes", garment(c), c.position]
            where !tags.contains(t) { tags.append(t) }
        }
        tags.sort()
        for i in stride(from: tags.count - 1, to: 0, by: -1) { tags.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        return ([countTag] + tags + ["\(background)_background"]).joined(separator: ", ")
    }

    /// The hair and clothing colour words a picture shows at a slot: the median colour of the hair
    /// crown (rows 26-31) and of the clothes (rows 66-78), each the nearest palette entry.
    public static func readColours(_ image: RGBImage, position: String) -> (hair: String, clothing: String) {
        let sx = Double(image.width) / Double(size), sy = Double(image.height) / Double(size)
        let x = Double(slots[position] ?? 64)
        func median(rows: ClosedRange<Int>, halfWidth: Int) -> (Double, Double, Double) {
            var r: [Double] = [], g: [Double] = [], b: [Double] = []
            for row in rows {
                for dx in -halfWidth...halfWidth {
                    let px = min(image.width - 1, max(0, Int((x + Double(dx)) * sx)))
                    let py = min(image.height - 1, max(0, Int(Double(row) * sy)))
                    let o = (py * image.width + px) * 3
                    r.append(Double(image.pixels[o])); g.append(Double(image.pixels[o + 1])); b.append(Double(image.pixels[o + 2]))
                }
            }
            func m(_ v: [Double]) -> Double { v.sorted()[v.count / 2] }
            return (m(r), m(g), m(b))
        }
        func nearest(_ c: (Double, Double, Double)) -> String {
            palette.min { a, b in
                func d(_ p: (Int, Int, Int)) -> Double {
                    let (x, y, z) = (Double(p.0) - c.0, Double(p.1) - c.1, Double(p.2) - c.2)
                    return x * x + y * y + z * z
                }
                return d(a.1) < d(b.1)
            }!.0
        }
        return (nearest(median(rows: 26...31, halfWidth: 5)), nearest(median(rows: 66...78, halfWidth: 4)))
    }

    /// How many of the asked hair and clothing colours the picture shows where they were asked.
    public func score(_ image: RGBImage) -> (correct: Int, asked: Int) {
        var ok = 0
        for c in characters {
            let seen = MiniScene.readColours(image, position: c.position)
            ok += (seen.hair == c.hair ? 1 : 0) + (seen.clothing == c.clothing ? 1 : 0)
        }
        return (ok, 2 * characters.count)
    }
}

/// Draws scenes' prompts with a model and scores the pictures (`newbie mini-eval`, the semantic
/// test): how often each asked hair and clothing colour appears at its character's position.
public enum MiniEval {
    public struct Score: Sendable, Equatable {
        public var correct = 0, asked = 0
        public init() {}
        public var accuracy: Double { asked == 0 ? .nan : Double(correct) / Double(asked) }
    }
    public enum Form: String, CaseIterable, Sendable { case xml, tags }

    /// `scenes` as prompts of each form in `forms`, generated with `settings` (seed i for scene i),
    /// scored per form and character count. `onImage` sees every picture (to save them).
    public static func run(model: String, scenes: [MiniScene], forms: [Form], settings: SamplingSettings,
                           options: StageOptions = StageOptions(), tagSeed: UInt64 = 7,
                           onImage: (Form, Int, RGBImage) throws -> Void = { _, _, _ in }) throws -> [Form: [Int: Score]] {
        let paths = try ModelPaths.resolve(root: model)
        let text = try TextStage(paths: paths, options: options)
        let denoise = try DenoiseStage(paths: paths, options: options)
        let decode = try DecodeStage(paths: paths, options: options)
        var scores: [Form: [Int: Score]] = [:]
        var rng = SplitMix(seed: tagSeed)
        for (i, scene) in scenes.enumerated() {
            let tags = scene.tagCaption(rng: &rng)
            for form in forms {
                let prompt = form == .xml ? scene.xmlCaption : tags
                let e = try text.encode(prompt: prompt, systemPrompt: SystemPrompt.resolve("auto", prompt: prompt))
                var s = settings
                s.seed = settings.seed + UInt64(i)
                let image = try decode.run(try denoise.run(e, settings: s))
                try onImage(form, i, image)
                let (ok, asked) = scene.score(image)
                scores[form, default: [:]][scene.characters.count, default: Score()].correct += ok
                scores[form, default: [:]][scene.characters.count, default: Score()].asked += asked
            }
        }
        return scores
    }
}

extension MiniScene {
    /// The scene drawn like the training pictures (without their jitter): for checking the reader
    /// without a model.
    public static func draw(_ scene: MiniScene) -> RGBImage {
        let n = size
        var px = [UInt8](repeating: 0, count: n * n * 3)
        func rgb(_ name: String, _ table: [(String, (Int, Int, Int))]) -> (Int, Int, Int) { table.first { $0.0 == name }!.1 }
        let bg: [String: (Int, Int, Int)] = ["white": (245, 245, 245), "grey": (185, 185, 185), "beige": (238, 222, 190)]
        func fill(_ c: (Int, Int, Int), _ inside: (Int, Int) -> Bool) {
            for y in 0..<n { for x in 0..<n where inside(x, y) {
                px[(y * n + x) * 3] = UInt8(c.0); px[(y * n + x) * 3 + 1] = UInt8(c.1); px[(y * n + x) * 3 + 2] = UInt8(c.2)
            } }
        }
        fill(bg[scene.background] ?? (245, 245, 245)) { _, _ in true }
        let skin = (252, 220, 190)
        for c in scene.characters.sorted(by: { slots[$0.position]! < slots[$1.position]! }) {
            let cx = slots[c.position]!, hair = rgb(c.hair, palette), cloth = rgb(c.clothing, palette)
            let girl = c.gender == "girl"
            if girl { fill(hair) { x, y in y >= 38 && y < 66 && abs(x - cx) <= 14 } }
            fill(hair) { x, y in (x - cx) * (x - cx) + (y - 38) * (y - 38) <= 225 }
            if girl {
                fill(cloth) { x, y in y >= 58 && y < 100 && Double(abs(x - cx)) <= 9 + Double(y - 58) * 9 / 42 }
            } else {
                fill(cloth) { x, y in y >= 58 && y < 84 && abs(x - cx) <= 11 }
                fill((60, 60, 85)) { x, y in y >= 84 && y < 104 && abs(x - cx) <= 9 }
            }
            fill(skin) { x, y in (x - cx) * (x - cx) + (y - 46) * (y - 46) <= 121 }
        }
        return RGBImage(width: n, height: n, pixels: px)
    }
}

/// NewBie-mini's recommended sampling (what its model card, the README's first command and the
/// semantic test use): the defaults' midpoint sampler on 18 grid points with shift 6, guidance on
/// every step.
public enum MiniModel {
    public static let steps = 18
    public static let cfg: Float = 5
    public static let cfgTruncation: Float = 100
}
