import Foundation
import NewBiePipeline
import NewBieTensor
import NewBieWeights

/// `--resident auto`: keep every stage loaded when the models' weights fit their devices, else load
/// them in stage order.
///
/// The estimate is the weights only: each model's parameter count (from its checkpoint's headers)
/// times the byte size of its precision's base dtype, summed per device, against `headroom` of that
/// device's memory (the rest is for activations, the CUDA context and the VAE's decoding, which
/// the weights-only sum does not count). Quantized layers are counted at the base dtype, so the
/// estimate errs towards `stage`.
public enum ResidencyChoice {
    /// Share of a device's memory the resident weights may take.
    public static let headroom = 0.8

    /// The decision from the numbers (a pure function, tested alone): per model, its device and
    /// weight bytes; per device, its memory (nil: unknown, counted as fitting). Returns the choice
    /// and a sentence saying why.
    public static func decide(weights: [(slot: ModelSlot, device: Device, bytes: Int)], memory: [Device: Int?]) -> (Residency, String) {
        var perDevice: [Device: Int] = [:]
        for w in weights { perDevice[w.device, default: 0] += w.bytes }
        var reasons: [String] = []
        var fits = true
        for (device, bytes) in perDevice.sorted(by: { "\($0.key)" < "\($1.key)" }) {
            guard let known = memory[device], let total = known else {
                reasons.append("\(device): \(formatBytes(bytes)) of weights, memory unknown")
                continue
            }
            let limit = Int(Double(total) * headroom)
            if bytes > limit { fits = false }
            reasons.append("\(device): \(formatBytes(bytes)) of weights \(bytes > limit ? ">" : "<=") \(Int(headroom * 100))% of \(formatBytes(total))")
        }
        return (fits ? .all : .stage, reasons.joined(separator: "; "))
    }

    /// Reads the checkpoints' headers (no weights) and the devices' memory, then decides.
    /// `deviceMemory` answers a device's total memory in bytes (the CUDA backend's for a GPU).
    public static func choose(paths: ModelPaths, options: StageOptions, deviceMemory: (Device) throws -> Int?) throws -> (Residency, String) {
        var weights: [(slot: ModelSlot, device: Device, bytes: Int)] = []
        var memory: [Device: Int?] = [:]
        for slot in ModelSlot.allCases {
            let path = try paths.require(slot)
            let source: WeightSource
            do { source = try openWeights(path: path) } catch { throw PipelineError("--resident auto: cannot read \(slot.option) \(path): \(error)") }
            let parameters = WeightsSummary(path: path, source: source).parameterCount
            let device = options.placement.device(slot)
            weights.append((slot, device, parameters * options.placement.precision(slot).base.byteSize))
            if memory[device] == nil { memory[device] = try deviceMemory(device) }
        }
        return decide(weights: weights, memory: memory)
    }
}
