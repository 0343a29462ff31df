import Foundation
import NewBieTensor

/// Replay of the guided DiT step as recorded device work (CUDA graphs). Within a sampling run every
/// model call has the same shapes and conditioning; only the state x and the time t change. The
/// first call runs eagerly from fixed device input buffers (building the cached RoPE tables, masks
/// and GEMM plans), the second records the forward pass and the CFG combination once
/// (`Backend.record`) and replays it, later calls copy x and t into the input buffers and replay.
/// The host then queues one graph per step instead of about 700 kernels.
final class StepGraph {
    struct Key: Equatable {
        let stateShape: [Int]
        let guided: Bool
        let scale: Float
        let renorm: Float
        let conditioning: [ObjectIdentifier]
        let captionShapes: [[Int]]
    }
    let key: Key
    let xIn: Tensor, tIn: Tensor
    let capFeats: Tensor, capMask: Tensor, clip: Tensor?
    var calls = 0
    var work: RecordedWork?
    var output: Tensor?

    init(key: Key, xIn: Tensor, tIn: Tensor, capFeats: Tensor, capMask: Tensor, clip: Tensor?) {
        self.key = key; self.xIn = xIn; self.tIn = tIn; self.capFeats = capFeats; self.capMask = capMask; self.clip = clip
    }
}

extension NextDiT {
    /// The guided velocity through a recorded step, or nil where recording does not apply (the
    /// CPU, tracing hooks and the step cache, which decide on the host, or recording switched off).
    /// The CFG renorm is device work on the GPU (`CFGCombine.renormOnDevice`), so it is recorded too.
    func recordedVelocity(_ x: Tensor, t: Float, cond: DiTConditioning, uncond: DiTConditioning,
                          options: CFGOptions) throws -> Tensor? {
        guard useRecordedSteps, device != .cpu, moduleHook == nil, stepCache == nil, streamedBlocks == nil else { return nil }
        let n = x.shape[0]
        let guided = CFGCombine.isActive(t: t, truncation: options.truncation)
        let key = StepGraph.Key(stateShape: x.shape, guided: guided, scale: guided ? options.scale : 0, renorm: guided ? options.renorm : 0,
                                conditioning: [cond.capFeats, cond.capMask, uncond.capFeats, uncond.capMask].map { ObjectIdentifier($0.buffer) }
                                    + [cond.clipPooled, uncond.clipPooled].compactMap { $0.map { ObjectIdentifier($0.buffer) } },
                                captionShapes: [cond.capFeats.shape, uncond.capFeats.shape])
        if stepGraph?.key != key {
            stepGraph = nil  // frees the previous graph and its memory first
            let batch = guided ? 2 * n : n
            // as the eager path: captions padded to the longer of the two, the conditional half alone
            // once guidance has stopped
            let l = max(cond.capFeats.shape[1], uncond.capFeats.shape[1])
            let c = cond.padded(to: l), u = uncond.padded(to: l)
            var feats = c.capFeats, mask = c.capMask.to(.f32), clip = c.clipPooled
            if guided {
                feats = Tensor.concat([c.capFeats, u.capFeats.to(c.capFeats.dtype)], axis: 0)
                mask = Tensor.concat([c.capMask.to(.f32), u.capMask.to(.f32)], axis: 0)
                if let cc = c.clipPooled, let uc = u.clipPooled { clip = Tensor.concat([cc, uc], axis: 0) } else { clip = nil }
            }
            stepGraph = StepGraph(key: key, xIn: Tensor.empty([batch] + Array(x.shape.dropFirst()), dtype: .f32, device: device),
                                  tIn: Tensor.empty([batch], dtype: .f32, device: device),
                                  capFeats: feats.to(dtype, device: device), capMask: mask.to(device: .cpu),
                                  clip: clip?.to(dtype, device: device))
        }
        let g = stepGraph!
        g.calls += 1
        let xs = x.to(.f32, device: device)
        g.xIn.narrow(0, start: 0, length: n).assign(xs)
        if guided { g.xIn.narrow(0, start: n, length: n).assign(xs) }
        g.tIn.assign(Tensor([Float](repeating: t, count: g.tIn.count), shape: [g.tIn.count]))

        // the step itself: device work only
        let body = { [unowned self] () throws -> Tensor in
            let out = try self.forwardRaw(g.xIn, t: g.tIn, capFeats: g.capFeats, capMask: g.capMask, clipPooled: g.clip)
            if !guided { return out.to(.f32) }
            return try CFGCombine.combine(cond: out.narrow(0, start: 0, length: n), uncond: out.narrow(0, start: n, length: n),
                                          scale: options.scale, renorm: options.renorm, dtype: self.dtype)
        }
        if g.work == nil {
            if g.calls == 1 { return try body() }
            guard let recorded = try Backends.backend(for: device).record(body) else {
                useRecordedSteps = false  // this backend cannot record
                stepGraph = nil
                return nil
            }
            g.work = recorded.work
            g.output = recorded.output
            recordedReplays = 0
        }
        g.work!.replay()
        recordedReplays += 1
        // a copy: the next replay rewrites the recorded output
        let v = Tensor.empty(g.output!.shape, dtype: .f32, device: device)
        v.assign(g.output!)
        return v
    }
}
