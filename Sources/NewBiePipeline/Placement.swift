import Foundation
import NewBieCUDA
import NewBieDiffusion
import NewBieTensor
import NewBieWeights

/// Where each of the four models runs and in which precision, module by module: the one value a
/// command's `--device` / `--precision` / `--dtype` become, resolved once and handed to every stage.
///
/// Precision spec: comma-separated items, applied in order.
/// - `DTYPE` (no `=`): the default for every model (`fp32`, `bf16`, `fp16` or `auto`: bf16 on
///   CUDA, fp32 on the CPU);
/// - `SLOT=DTYPE`: one model's default (`vae=fp32`), slots `gemma`, `jina`, `dit`, `vae`;
/// - `SLOT.PATH=DTYPE`: the modules at that path inside one model and everything inside them
///   (`dit.final_layer=fp32`, `dit.layers.*.attention=fp32`, `vae.decoder.conv_out=fp32`); `*`
///   stands for any text inside one path component. The most specific rule covering a module wins.
/// Device spec: the same grammar with devices (`cuda`, `cuda:1`, `cpu`, `cuda,vae=cpu`).
public struct PlacementPolicy: Sendable, Equatable, CustomStringConvertible {
    public var devices: [ModelSlot: Device]
    public var precisions: [ModelSlot: ModulePrecision]
    /// `--offload`: the models in `offloadable` that run on a GPU keep their blocks' weights in
    /// pinned host memory and stream them to the GPU a few blocks ahead of use (docs/MEMORY.md).
    public var offload = false

    /// The models `--offload` streams: the two with stacks of large blocks (the DiT's 40, Gemma's
    /// 34 layers). Jina (0.6 GB in bf16) and the VAE (0.16 GB of weights, activations dominate) stay.
    public static let offloadable: [ModelSlot] = [.dit, .gemma]

    /// The models streamed under this policy: `offloadable` ones placed on a GPU.
    public var offloadedSlots: [ModelSlot] { offload ? PlacementPolicy.offloadable.filter { device($0) != .cpu } : [] }

    /// Every model on `device` in `dtype` (nil = auto for the device).
    public init(device: Device = .cpu, dtype: DType? = nil) {
        var d: [ModelSlot: Device] = [:], p: [ModelSlot: ModulePrecision] = [:]
        for s in ModelSlot.allCases {
            d[s] = device
            p[s] = .uniform(dtype ?? PlacementPolicy.autoDType(device))
        }
        devices = d; precisions = p
    }

    /// What `auto` means on a device: bf16 on CUDA (the published weights' type, the fast path),
    /// fp32 on the CPU (no faster there, and exact).
    public static func autoDType(_ device: Device) -> DType {
        device == .cpu ? .f32 : .bf16
    }

    public static let dtypeNames = "fp32, bf16, fp16 or auto"

    /// Parses the command-line forms (see the type's comment).
    /// `offload`: `--offload`, refused when neither the DiT nor Gemma runs on a GPU (the CPU computes
    /// from host memory already: there is nothing to stream).
    public static func parse(precision: String, device: String = "cpu", quantize: String = "", offload: Bool = false) throws -> PlacementPolicy {
        // devices first: `auto` resolves per slot's device
        var devices: [ModelSlot: Device] = [:]
        var defaultDevice: Device = .cpu
        var slotDevices: [(ModelSlot, Device)] = []
        for item in items(device) {
            if let (key, value) = split(item) {
                guard let slot = ModelSlot(rawValue: key) else {
                    throw PipelineError("--device \(device): unknown model \"\(key)\"; the models are \(ModelSlot.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                slotDevices.append((slot, try parseDevice(value, spec: device)))
            } else {
                defaultDevice = try parseDevice(item, spec: device)
            }
        }
        for s in ModelSlot.allCases { devices[s] = defaultDevice }
        for (s, d) in slotDevices { devices[s] = d }

        var defaultType: DType? = nil   // nil = auto
        var slotTypes: [ModelSlot: DType?] = [:]
        var rules: [ModelSlot: [PrecisionRule]] = [:]
        for item in items(precision) {
            guard let (key, value) = split(item) else {
                defaultType = try parseDType(item, spec: precision)
                continue
            }
            let dot = key.firstIndex(of: ".")
            let slotName = (dot.map { String(key[..<$0]) } ?? key).lowercased()
            guard let slot = ModelSlot(rawValue: slotName) else {
                throw PipelineError("--precision \(precision): unknown model \"\(slotName)\" in \"\(item)\"; the models are \(ModelSlot.allCases.map(\.rawValue).joined(separator: ", ")) (e.g. vae=fp32, dit.final_layer=fp32)")
            }
            let dtype = try parseDType(value, spec: precision)
            if let d = dot {
                let path = String(key[key.index(after: d)...])
                guard !path.isEmpty, !path.split(separator: ".", omittingEmptySubsequences: false).contains(where: \.isEmpty) else {
                    throw PipelineError("--precision \(precision): \"\(item)\" has an empty module path component")
                }
                guard let dt = dtype else {
                    throw PipelineError("--precision \(precision): \"\(item)\": a module takes fp32, bf16 or fp16, not auto")
                }
                rules[slot, default: []].append(PrecisionRule(pattern: path, dtype: dt))
            } else {
                slotTypes.updateValue(dtype, forKey: slot)
            }
        }
        var p = PlacementPolicy()
        p.devices = devices
        for s in ModelSlot.allCases {
            let device = devices[s] ?? .cpu
            let chosen: DType? = slotTypes[s] ?? defaultType
            p.precisions[s] = ModulePrecision(base: chosen ?? autoDType(device), rules: rules[s] ?? [])
        }
        for (s, q) in try parseQuantize(quantize) { p.precisions[s]?.quantization = q }
        p.offload = offload
        if offload && p.offloadedSlots.isEmpty {
            throw PipelineError("--offload: the models it streams (\(offloadable.map(\.rawValue).joined(separator: ", "))) run on the CPU here (--device \(device)); --offload keeps GPU weights in host memory and has nothing to do on the CPU: drop it, or use --device cuda")
        }
        return p
    }

    /// Parses `--quantize`: comma-separated `SLOT=SCHEME` (every linear layer of that model but
    /// those kept in 16 bits by default) or `SLOT.PATH=SCHEME` (the linear layers at or inside
    /// that path, `*` within a component), schemes as `QuantScheme.userNames`; "" or `none` alone: none.
    public static func parseQuantize(_ spec: String) throws -> [ModelSlot: ModuleQuantization] {
        var out: [ModelSlot: ModuleQuantization] = [:]
        let list = items(spec)
        if list == ["none"] { return out }
        for item in list {
            guard let (key, value) = split(item) else {
                throw PipelineError("--quantize \(spec): \"\(item)\" needs MODEL=SCHEME or MODEL.MODULE_PATH=SCHEME (e.g. dit=int8, dit.layers.*=int8); the models are \(ModelSlot.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let dot = key.firstIndex(of: ".")
            let slotName = (dot.map { String(key[..<$0]) } ?? key).lowercased()
            guard let slot = ModelSlot(rawValue: slotName) else {
                throw PipelineError("--quantize \(spec): unknown model \"\(slotName)\" in \"\(item)\"; the models are \(ModelSlot.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard let scheme = QuantScheme(userName: value.lowercased()) else {
                throw PipelineError("--quantize \(spec): unknown type \"\(value)\" in \"\(item)\"; use \(QuantScheme.userNames)")
            }
            var path = ""
            if let d = dot {
                path = String(key[key.index(after: d)...])
                guard !path.isEmpty, !path.split(separator: ".", omittingEmptySubsequences: false).contains(where: \.isEmpty) else {
                    throw PipelineError("--quantize \(spec): \"\(item)\" has an empty module path component")
                }
            }
            out[slot, default: .none].rules.append(QuantRule(pattern: path, scheme: scheme))
        }
        return out
    }

    /// `--quantize` in spec form (`dit=int8,gemma=int8`), "" when nothing is quantized: what PNGs
    /// record as `newbie:quantize`.
    public var quantizeSpec: String {
        ModelSlot.allCases.flatMap { s in
            precision(s).quantization.rules.map { "\(s.rawValue)\($0.pattern.isEmpty ? "" : "." + $0.pattern)=\($0.scheme.rawValue)" }
        }.joined(separator: ",")
    }

    static func items(_ spec: String) -> [String] {
        spec.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    static func split(_ item: String) -> (String, String)? {
        guard let eq = item.firstIndex(of: "=") else { return nil }
        // the model name is case-insensitive; module paths are not (adaLN_modulation)
        return (String(item[..<eq]).trimmingCharacters(in: .whitespaces),
                String(item[item.index(after: eq)...]).trimmingCharacters(in: .whitespaces))
    }

    /// nil for `auto`.
    static func parseDType(_ text: String, spec: String) throws -> DType? {
        if text.lowercased() == "auto" { return nil }
        guard let d = DType(userName: text), [.f32, .bf16, .f16].contains(d) else {
            throw PipelineError("--precision \(spec): unknown dtype \"\(text)\"; use \(dtypeNames)")
        }
        return d
    }

    static func parseDevice(_ text: String, spec: String) throws -> Device {
        guard let d = Device(text) else {
            throw PipelineError("--device \(spec): unknown device \"\(text)\"; use cpu, cuda or cuda:N (optionally per model: cuda,vae=cpu)")
        }
        return d
    }

    public func device(_ slot: ModelSlot) -> Device { devices[slot] ?? .cpu }
    public func precision(_ slot: ModelSlot) -> ModulePrecision { precisions[slot] ?? .uniform(.f32) }

    /// The part of the policy one model is built with.
    public func placement(_ slot: ModelSlot) -> ModelPlacement {
        ModelPlacement(name: slot.rawValue, device: device(slot), precision: precision(slot), offload: offloadedSlots.contains(slot))
    }

    /// The devices the policy uses (each opened before its models load).
    public var usedDevices: [Device] { Array(Set(devices.values)).sorted { $0.description < $1.description } }

    /// One device for every model, if so.
    public var singleDevice: Device? { Set(devices.values).count == 1 ? devices.values.first : nil }

    /// The precision in the policy's own spec form, resolved (no `auto`), as recorded in PNGs and
    /// given back to `--precision`: the common default first, then each model's own default where it
    /// differs, then the per-module rules.
    public var precisionSpec: String {
        let bases = ModelSlot.allCases.map { precision($0).base }
        let common = Dictionary(grouping: bases, by: { $0 }).max { $0.value.count < $1.value.count }?.key ?? .f32
        var items = [common.userName]
        for s in ModelSlot.allCases where precision(s).base != common { items.append("\(s.rawValue)=\(precision(s).base.userName)") }
        for s in ModelSlot.allCases {
            items += precision(s).rules.map { "\(s.rawValue).\($0.pattern)=\($0.dtype.userName)" }
        }
        return items.joined(separator: ",")
    }

    /// The devices in spec form (`cuda:0`, `cuda:0,vae=cpu`).
    public var deviceSpec: String {
        let all = ModelSlot.allCases.map(device)
        let common = Dictionary(grouping: all, by: { $0 }).max { $0.value.count < $1.value.count }?.key ?? .cpu
        return ([common.description] + ModelSlot.allCases.filter { device($0) != common }.map { "\($0.rawValue)=\(device($0))" })
            .joined(separator: ",")
    }

    public var description: String {
        "precision \(precisionSpec), device \(deviceSpec)" + (quantizeSpec.isEmpty ? "" : ", quantize \(quantizeSpec)")
            + (offloadedSlots.isEmpty ? "" : ", offload \(offloadedSlots.map(\.rawValue).joined(separator: ","))")
    }
}

extension PlacementPolicy {
    /// Checks the precision rules of the DiT and the VAE against the modules their checkpoints
    /// would build (headers and configs only, no weights), so that a misspelt module path fails
    /// before the text encoders run. The text encoders' rules are checked when they load (first).
    public func checkRules(paths: ModelPaths) throws {
        if !precision(.dit).rules.isEmpty || !precision(.dit).quantization.isEmpty, let p = paths.path(.dit) {
            let (source, json) = try NextDiT.openCheckpoint(path: p, configPath: nil)
            let (_, config) = try NextDiT.checkedWeights(source: source, json: json)
            try NextDiT.plan(config, precision: precision(.dit)).checkRules(model: "dit")
        }
        if !precision(.vae).rules.isEmpty || !precision(.vae).quantization.isEmpty, let p = paths.path(.vae) {
            let config = try AutoencoderKL.readConfig(path: p)
            try AutoencoderKL.plan(config, parts: .all, precision: precision(.vae)).checkRules(model: "vae")
        }
    }
}

/// CUDA settings chosen on the command line (environment variables only seed their defaults).
/// They travel with the stage options and are applied to each CUDA device when it opens.
public struct CUDAOptions: Sendable, Equatable {
    /// Replay each guided DiT step as a CUDA graph once shapes are fixed.
    public var graphs = false
    /// fp32 GEMMs on the tensor cores in TF32.
    public var tf32 = false
    /// Flash-attention kernel: "auto" (wgmma on compute capability 9.0, mma.sync elsewhere), or the
    /// mma.sync kernel forced: "mma" (= "w4", 4 warps) or "w8" (8 warps).
    public var flashVariant = "auto"
    /// Time each kernel family (prints a profile).
    public var profile = false
    public init(graphs: Bool = false, tf32: Bool = false, flashVariant: String = "auto", profile: Bool = false) {
        self.graphs = graphs; self.tf32 = tf32; self.flashVariant = flashVariant; self.profile = profile
    }
    public static let flashVariants = ["auto", "mma", "w4", "w8"]
}

/// Opens devices for the pipeline: makes CUDA devices openable (through the driver, loaded on
/// first use) and applies the CUDA options to each. Opening fails with a `DeviceError` that says
/// why (no driver, no such GPU, no BLAS library for the CPU), before any weight is read.
public enum DeviceSupport {
    private static let installed: Void = {
        Backends.registerOpener(kind: "cuda") { device in
            guard case .cuda(let index) = device else { throw DeviceError("\(device) is not a CUDA device") }
            do { return try CUDABackend.load(index: index) } catch {
                throw DeviceError("\(device): cannot open the GPU: \(error)")
            }
        }
    }()

    /// Registers the device kinds this build supports (idempotent).
    public static func install() { _ = installed }

    /// Opens `device` and applies `cuda` to it when it is a GPU.
    @discardableResult
    public static func open(_ device: Device, cuda: CUDAOptions = CUDAOptions()) throws -> Backend {
        install()
        let b = try Backends.open(device)
        if let c = b as? CUDABackend {
            c.allowTF32 = cuda.tf32
            c.flashVariant = cuda.flashVariant
            c.profiling = cuda.profile
        }
        return b
    }

    /// The kernel-family profile (`--cuda-profile`) of every open GPU among `devices` since it was
    /// last read, as printable lines (empty when nothing was profiled).
    public static func profileLines(_ devices: [Device]) -> [String] {
        var lines: [String] = []
        for d in Set(devices) where d != .cpu {
            guard let c = try? Backends.open(d) as? CUDABackend, c.profiling else { continue }
            let prof = c.profileReport()
            let total = prof.reduce(0) { $0 + $1.ms }
            lines.append("device time by kernel family on \(d) (events around each launch; total \(String(format: "%.1f", total)) ms):")
            for p in prof { lines.append(String(format: "  %-32@ %10.2f ms %8d launches", p.name as NSString, p.ms, p.count)) }
        }
        return lines
    }

    /// Opens GPU `index` as the CUDA backend itself (for the checks and benchmarks that drive it
    /// directly).
    public static func openCUDA(_ index: Int = 0, cuda: CUDAOptions = CUDAOptions()) throws -> CUDABackend {
        guard let b = try open(.cuda(index), cuda: cuda) as? CUDABackend else { throw DeviceError("cuda:\(index) did not open as a CUDA backend") }
        return b
    }
}
