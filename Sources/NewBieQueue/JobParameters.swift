import Foundation
import NewBieDiffusion
import NewBiePipeline
import NewBieWeights

/// Why a request was refused: the field at fault and a message for people. The HTTP layer turns it
/// into a 400 (422 for a well-formed body with bad values would also do; one code keeps clients simple).
public struct JobRequestError: Error, CustomStringConvertible, Equatable, Sendable {
    public let field: String?
    public let message: String
    public init(_ message: String, field: String? = nil) { self.message = message; self.field = field }
    public var description: String { field.map { "\($0): \(message)" } ?? message }
}

/// What a server accepts (issue 17 item 5). Every value a request carries is checked against these
/// before it reaches the queue.
public struct JobLimits: Sendable, Equatable, Codable {
    public var maxWidth = 2048
    public var maxHeight = 2048
    public var maxSteps = 200
    public var maxCount = 8
    /// UTF-8 bytes of prompt, negative prompt and system prompt, each.
    public var maxPromptBytes = 32 * 1024
    /// Jobs waiting (queued) before POST /v1/jobs answers 429.
    public var maxQueued = 64
    /// Request bodies above this are refused (413) before they are parsed.
    public var maxBodyBytes = 512 * 1024

    public init() {}

    enum CodingKeys: String, CodingKey {
        case maxWidth = "max_width", maxHeight = "max_height", maxSteps = "max_steps", maxCount = "max_count"
        case maxPromptBytes = "max_prompt_bytes", maxQueued = "max_queued", maxBodyBytes = "max_body_bytes"
    }
}

/// One job's parameters: every `newbie generate` option that does not name a server path, plus the
/// image count. The seed is always concrete here: "random" is drawn when the job is submitted, so a
/// job that is run again after a crash makes the same images.
public struct JobParameters: Codable, Sendable, Equatable {
    public var prompt: String
    public var negativePrompt: String = ""
    /// `auto`, `xml`, `text`, `none` or a literal system prompt (`SystemPrompt.resolve`).
    public var systemPrompt: String = "auto"
    public var width: Int = 1024
    public var height: Int = 1024
    public var steps: Int = 18
    public var sampler: String = "midpoint"
    public var shift: Float = 6
    public var cfg: Float = 5
    public var cfgTrunc: Float = 0.25
    public var renorm: Float = 0
    public var seed: UInt64 = 0
    public var rng: String = "torch"
    public var count: Int = 1

    public init(prompt: String) { self.prompt = prompt }

    enum CodingKeys: String, CodingKey {
        case prompt, negativePrompt = "negative_prompt", systemPrompt = "system_prompt", width, height, steps, sampler, shift, cfg
        case cfgTrunc = "cfg_trunc", renorm, seed, rng, count
    }

    /// The fields a request may carry (anything else is refused, so a misspelt option is not
    /// silently ignored).
    public static let fields: [String] = ["prompt", "negative_prompt", "system_prompt", "width", "height", "steps", "sampler", "shift",
                                          "cfg", "cfg_trunc", "renorm", "seed", "rng", "count"]

    /// Parses and checks a request body (a JSON object). `randomSeed` draws the seed for `"seed": "random"`
    /// (or a missing seed when `defaultSeedRandom`).
    public static func parse(json data: Data, limits: JobLimits,
                             randomSeed: () -> UInt64 = { UInt64(UInt32.random(in: 0...UInt32.max)) }) throws -> JobParameters {
        let obj: Any
        do { obj = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
            throw JobRequestError("the body is not valid JSON")
        }
        guard let o = obj as? [String: Any] else { throw JobRequestError("the body must be a JSON object") }
        for k in o.keys.sorted() where !fields.contains(k) {
            throw JobRequestError("unknown field; the fields are \(fields.joined(separator: ", "))", field: k)
        }
        func string(_ k: String) throws -> String? {
            guard let v = o[k], !(v is NSNull) else { return nil }
            guard let s = v as? String else { throw JobRequestError("must be a string", field: k) }
            return s
        }
        func number(_ k: String) throws -> Double? {
            guard let v = o[k], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, !JSONNumber.isBoolean(v), !(v is String) else { throw JobRequestError("must be a number", field: k) }
            let d = n.doubleValue
            guard d.isFinite else { throw JobRequestError("must be a finite number", field: k) }
            return d
        }
        func integer(_ k: String) throws -> Int? {
            guard let d = try number(k) else { return nil }
            guard d == d.rounded(), abs(d) < 1e15 else { throw JobRequestError("must be an integer", field: k) }
            return Int(d)
        }
        guard let prompt = try string("prompt") else { throw JobRequestError("a prompt is required", field: "prompt") }
        var p = JobParameters(prompt: prompt)
        if let v = try string("negative_prompt") { p.negativePrompt = v }
        if let v = try string("system_prompt") { p.systemPrompt = v }
        if let v = try integer("width") { p.width = v }
        if let v = try integer("height") { p.height = v }
        if let v = try integer("steps") { p.steps = v }
        if let v = try string("sampler") { p.sampler = v }
        if let v = try number("shift") { p.shift = Float(v) }
        if let v = try number("cfg") { p.cfg = Float(v) }
        if let v = try number("cfg_trunc") { p.cfgTrunc = Float(v) }
        if let v = try number("renorm") { p.renorm = Float(v) }
        if let v = try string("rng") { p.rng = v }
        if let v = try integer("count") { p.count = v }
        if let s = o["seed"], !(s is NSNull) {
            if let str = s as? String {
                if str == "random" { p.seed = randomSeed() } else if let v = UInt64(str) { p.seed = v } else {
                    throw JobRequestError("must be an integer >= 0 or \"random\"", field: "seed")
                }
            } else {
                guard let d = try number("seed"), d >= 0, d == d.rounded(), d <= 9_007_199_254_740_991 else {
                    throw JobRequestError("must be an integer >= 0 (at most 2^53 - 1 in JSON) or \"random\"", field: "seed")
                }
                p.seed = UInt64(d)
            }
        }
        try p.validate(limits)
        return p
    }

    /// Checks every value against the limits and the pipeline's own rules, naming the field.
    public func validate(_ limits: JobLimits) throws {
        for (k, v) in [("prompt", prompt), ("negative_prompt", negativePrompt), ("system_prompt", systemPrompt)]
        where v.utf8.count > limits.maxPromptBytes {
            throw JobRequestError("\(v.utf8.count) bytes; at most \(limits.maxPromptBytes)", field: k)
        }
        for (k, v) in [("prompt", prompt), ("negative_prompt", negativePrompt), ("system_prompt", systemPrompt)] where v.utf8.contains(0) {
            throw JobRequestError("contains a NUL character", field: k)
        }
        guard width >= 16, width <= limits.maxWidth else { throw JobRequestError("\(width): must be 16...\(limits.maxWidth)", field: "width") }
        guard height >= 16, height <= limits.maxHeight else {
            throw JobRequestError("\(height): must be 16...\(limits.maxHeight)", field: "height")
        }
        guard steps >= 2, steps <= limits.maxSteps else { throw JobRequestError("\(steps): must be 2...\(limits.maxSteps)", field: "steps") }
        guard count >= 1, count <= limits.maxCount else { throw JobRequestError("\(count): must be 1...\(limits.maxCount)", field: "count") }
        guard seed <= UInt64.max - UInt64(limits.maxCount) else { throw JobRequestError("too large", field: "seed") }
        for (k, v, lo, hi) in [("shift", shift, Float(0), Float(1000)), ("cfg", cfg, -100, 100), ("cfg_trunc", cfgTrunc, 0, 1000), ("renorm", renorm, 0, 100)]
        where !(v.isFinite && v >= lo && v <= hi) {
            throw JobRequestError("\(v): must be in [\(lo), \(hi)]", field: k)
        }
        do {
            _ = try settings(image: 0)
        } catch let e as PipelineError {
            // the pipeline names its options as --flags; the API names fields
            throw JobRequestError(e.message.replacingOccurrences(of: "--cfg-trunc", with: "cfg_trunc")
                .replacingOccurrences(of: "--", with: ""))
        }
    }

    /// The sampling settings of image `image` (seeds seed, seed + 1, ... as `generate --count`).
    public func settings(image: Int) throws -> SamplingSettings {
        var s = SamplingSettings(width: width, height: height, steps: steps, sampler: try SamplerKind.parse(sampler), shift: shift,
                                 cfg: CFGOptions(scale: cfg, truncation: cfgTrunc, renorm: renorm), seed: seed &+ UInt64(image),
                                 rng: try NoiseRNG.parse(rng))
        s.strength = 1
        try s.validate()
        return s
    }

    /// Sampler steps one image takes (for progress: the sampler's own step count).
    public var samplerSteps: Int {
        (try? settings(image: 0).makeSampler().stepCount) ?? max(steps - 1, 1)
    }

    public func jsonData() -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys]
        return (try? e.encode(self)) ?? Data("{}".utf8)
    }

    public static func fromStored(_ data: Data) throws -> JobParameters {
        try JSONDecoder().decode(JobParameters.self, from: data)
    }
}

extension JobParameters {
    /// Decoding stored parameters (written by `jsonData`); defaults fill fields added later.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        prompt = try c.decode(String.self, forKey: .prompt)
        negativePrompt = try c.decodeIfPresent(String.self, forKey: .negativePrompt) ?? ""
        systemPrompt = try c.decodeIfPresent(String.self, forKey: .systemPrompt) ?? "auto"
        width = try c.decodeIfPresent(Int.self, forKey: .width) ?? 1024
        height = try c.decodeIfPresent(Int.self, forKey: .height) ?? 1024
        steps = try c.decodeIfPresent(Int.self, forKey: .steps) ?? 18
        sampler = try c.decodeIfPresent(String.self, forKey: .sampler) ?? "midpoint"
        shift = try c.decodeIfPresent(Float.self, forKey: .shift) ?? 6
        cfg = try c.decodeIfPresent(Float.self, forKey: .cfg) ?? 5
        cfgTrunc = try c.decodeIfPresent(Float.self, forKey: .cfgTrunc) ?? 0.25
        renorm = try c.decodeIfPresent(Float.self, forKey: .renorm) ?? 0
        seed = try c.decodeIfPresent(UInt64.self, forKey: .seed) ?? 0
        rng = try c.decodeIfPresent(String.self, forKey: .rng) ?? "torch"
        count = try c.decodeIfPresent(Int.self, forKey: .count) ?? 1
    }
}
