import Foundation
import NewBieTensor

/// The velocity model as the samplers see it: v(x, t) = d x / d t for t in [0, 1] (0 = noise,
/// 1 = clean). For NewBie this is the DiT with guidance; the toy tests plug in an
/// analytic field. The result must have x's shape; it is used as float32.
public typealias VelocityFunction = (_ x: Tensor, _ t: Float) throws -> Tensor

/// What a sampler reports after each step (for progress, `--save-steps`, tracing).
public struct SamplerStep {
    /// 0-based step index and the number of steps.
    public let index: Int
    public let count: Int
    /// The step went from time `from` to time `to` (model time t, 0 = noise).
    public let from: Float
    public let to: Float
    /// The state after the step (float32).
    public let x: Tensor
    /// Model evaluations so far.
    public let evaluations: Int
}

public protocol FlowSampler {
    /// Model evaluations the whole run makes (each one is a guided batch for NewBie).
    var evaluationCount: Int { get }
    /// Number of steps (what a progress bar counts).
    var stepCount: Int { get }
    /// Integrates from the grid's first time to its last, starting at x.
    func sample(_ x: Tensor, model: VelocityFunction, onStep: ((SamplerStep) -> Void)?) throws -> Tensor
}

extension FlowSampler {
    public func sample(_ x: Tensor, model: VelocityFunction) throws -> Tensor {
        try sample(x, model: model, onStep: nil)
    }
}

/// The sampler names the command line accepts.
public enum SamplerKind: String, CaseIterable, Sendable {
    case euler, midpoint, rk4
    case dpm = "dpm++2m"
    /// ComfyUI's k-diffusion samplers (with a `ComfyScheduler`; see `ComfyKSampler`). `euler`
    /// with a scheduler is ComfyUI's Euler too.
    case eulerAncestral = "euler_ancestral"
    case dpmpp2m = "dpmpp_2m"
    case dpmpp2mSDE = "dpmpp_2m_sde"
    case dpmppSDE = "dpmpp_sde"
    case resMultistep = "res_multistep"

    /// By name, also accepting the official `--solver` spelling "dpm" and "dpmpp2m"; case-insensitive.
    public init?(name: String) {
        switch name.lowercased() {
        case "euler": self = .euler
        case "midpoint": self = .midpoint
        case "rk4": self = .rk4
        case "dpm", "dpm++2m", "dpmpp2m", "dpm++": self = .dpm
        case "euler_ancestral": self = .eulerAncestral
        case "dpmpp_2m": self = .dpmpp2m
        case "dpmpp_2m_sde": self = .dpmpp2mSDE
        case "dpmpp_sde": self = .dpmppSDE
        case "res_multistep": self = .resMultistep
        default: return nil
        }
    }

    /// The ComfyUI sampler of this name (euler, euler_ancestral, dpmpp_2m, res_multistep).
    public var comfy: ComfySampler? {
        switch self {
        case .euler: return .euler
        case .eulerAncestral: return .eulerAncestral
        case .dpmpp2m: return .dpmpp2m
        case .dpmpp2mSDE: return .dpmpp2mSDE
        case .dpmppSDE: return .dpmppSDE
        case .resMultistep: return .resMultistep
        case .midpoint, .rk4, .dpm: return nil
        }
    }

    /// Only ComfyUI has it (so it runs with a scheduler).
    public var isComfyOnly: Bool { comfy != nil && self != .euler }

    /// A sampler over the official grids: for Euler and midpoint `steps` is the official
    /// num_sampling_steps (grid points, so steps - 1 intervals), for DPM-Solver++ the number of
    /// model evaluations (= updates) as in the official `sample_fn(z, steps=...)`.
    public func make(steps: Int, shift: Float) throws -> FlowSampler {
        switch self {
        case .euler: return EulerSampler(grid: try FlowSchedule.timeGrid(points: steps, shift: shift))
        case .midpoint: return MidpointSampler(grid: try FlowSchedule.timeGrid(points: steps, shift: shift))
        case .rk4: return RK4Sampler(grid: try FlowSchedule.timeGrid(points: steps, shift: shift))
        case .dpm: return DPMSolverPP2M(sigmas: try FlowSchedule.dpmSigmas(steps: steps, shift: shift))
        case .eulerAncestral, .dpmpp2m, .dpmpp2mSDE, .dpmppSDE, .resMultistep:
            throw SamplingError("\(rawValue) is one of ComfyUI's samplers: it runs over a ComfyUI schedule (simple, normal, karras or beta)")
        }
    }
}

func checkGrid(_ grid: [Float]) throws {
    guard grid.count >= 1 else { throw SamplingError("empty time grid") }
    for t in grid where !(t >= 0 && t <= 1) { throw SamplingError("time grid value \(t) is outside [0, 1]") }
    for i in 1..<max(grid.count, 1) where !(grid[i] > grid[i - 1]) {
        throw SamplingError("time grid is not increasing at index \(i) (\(grid[i - 1]) -> \(grid[i]))")
    }
}

func velocity(_ model: VelocityFunction, _ x: Tensor, _ t: Float) throws -> Tensor {
    let v = try model(x, t)
    guard v.shape == x.shape else {
        throw SamplingError("the model returned shape \(v.shape) for a state of shape \(x.shape)")
    }
    return v.to(.f32)
}

/// Fixed-grid Euler as torchdiffeq's "euler" on the given grid: x <- x + dt v(x, t_i).
public struct EulerSampler: FlowSampler {
    public let grid: [Float]
    public init(grid: [Float]) { self.grid = grid }
    public var stepCount: Int { max(grid.count - 1, 0) }
    public var evaluationCount: Int { stepCount }

    public func sample(_ x0: Tensor, model: VelocityFunction, onStep: ((SamplerStep) -> Void)?) throws -> Tensor {
        try checkGrid(grid)
        var x = x0.to(.f32)
        for i in 0..<stepCount {
            let t0 = grid[i], t1 = grid[i + 1]
            let dt = t1 - t0
            let f0 = try velocity(model, x, t0)
            x = x + f0 * dt
            onStep?(SamplerStep(index: i, count: stepCount, from: t0, to: t1, x: x, evaluations: i + 1))
        }
        return x
    }
}

/// Fixed-grid explicit midpoint as torchdiffeq's "midpoint" (the official default solver):
/// k1 = v(x, t_i); x_mid = x + k1 dt/2; x <- x + dt v(x_mid, t_i + dt/2).
public struct MidpointSampler: FlowSampler {
    public let grid: [Float]
    public init(grid: [Float]) { self.grid = grid }
    public var stepCount: Int { max(grid.count - 1, 0) }
    public var evaluationCount: Int { 2 * stepCount }

    public func sample(_ x0: Tensor, model: VelocityFunction, onStep: ((SamplerStep) -> Void)?) throws -> Tensor {
        try checkGrid(grid)
        var x = x0.to(.f32)
        for i in 0..<stepCount {
            let t0 = grid[i], t1 = grid[i + 1]
            let dt = t1 - t0
            let half = 0.5 * dt
            let f0 = try velocity(model, x, t0)
            let xMid = x + f0 * half
            let k2 = try velocity(model, xMid, t0 + half)
            x = x + k2 * dt
            onStep?(SamplerStep(index: i, count: stepCount, from: t0, to: t1, x: x, evaluations: 2 * (i + 1)))
        }
        return x
    }
}

/// Fixed-grid fourth order Runge-Kutta as torchdiffeq's "rk4" (the official demo offers it): the
/// 3/8-rule variant, 4 model calls per interval.
/// k1 = v(x, t), k2 = v(x + dt k1/3, t + dt/3), k3 = v(x + dt (k2 - k1/3), t + 2dt/3),
/// k4 = v(x + dt (k1 - k2 + k3), t + dt), x <- x + (k1 + 3 (k2 + k3) + k4) dt/8.
public struct RK4Sampler: FlowSampler {
    public let grid: [Float]
    public init(grid: [Float]) { self.grid = grid }
    public var stepCount: Int { max(grid.count - 1, 0) }
    public var evaluationCount: Int { 4 * stepCount }

    public func sample(_ x0: Tensor, model: VelocityFunction, onStep: ((SamplerStep) -> Void)?) throws -> Tensor {
        try checkGrid(grid)
        let oneThird = Float(1.0 / 3.0), twoThirds = Float(2.0 / 3.0)
        var x = x0.to(.f32)
        for i in 0..<stepCount {
            let t0 = grid[i], t1 = grid[i + 1]
            let dt = t1 - t0
            let k1 = try velocity(model, x, t0)
            let k2 = try velocity(model, x + (k1 * dt) * oneThird, t0 + dt * oneThird)
            let k3 = try velocity(model, x + (k2 - k1 * oneThird) * dt, t0 + dt * twoThirds)
            let k4 = try velocity(model, x + (k1 - k2 + k3) * dt, t1)
            x = x + ((k1 + (k2 + k3) * 3) + k4) * dt * 0.125
            onStep?(SamplerStep(index: i, count: stepCount, from: t0, to: t1, x: x, evaluations: 4 * (i + 1)))
        }
        return x
    }
}

/// DPM-Solver++ multistep, order 2, with the first step and (lower_order_final) the last step of
/// order 1, over noise levels sigma (alpha = 1 - sigma) as the official `transport/dpm_solver.py`
/// runs it for `solver == "dpm"`. The velocity model is called at t = 1 - sigma and turned into a
/// data prediction x0 = (x - sigma (x - (1 - sigma) v)) / (1 - sigma). `sigmas` decreases from
/// below 1 to (usually) 0; each update consumes one model evaluation (none after the last).
public struct DPMSolverPP2M: FlowSampler {
    public let sigmas: [Float]
    public init(sigmas: [Float]) { self.sigmas = sigmas }
    public var stepCount: Int { max(sigmas.count - 1, 0) }
    public var evaluationCount: Int { stepCount }

    /// half log-SNR lambda = log(alpha) - log(sigma); +infinity at sigma = 0.
    @inline(__always) static func lambda(_ s: Float) -> Float { Foundation.log(1 - s) - Foundation.log(s) }

    public func sample(_ x0: Tensor, model: VelocityFunction, onStep: ((SamplerStep) -> Void)?) throws -> Tensor {
        guard sigmas.count >= 3 else { throw SamplingError("DPM-Solver++ 2M needs at least 2 steps") }
        for s in sigmas where !(s >= 0 && s < 1) { throw SamplingError("noise level \(s) is outside [0, 1)") }
        for i in 1..<sigmas.count where !(sigmas[i] < sigmas[i - 1]) {
            throw SamplingError("noise levels are not decreasing at index \(i)")
        }
        func dataPrediction(_ x: Tensor, _ s: Float) throws -> Tensor {
            let v = try velocity(model, x, 1 - s)
            let noise = x - v * (1 - s)
            return (x - noise * s) / Tensor.full([1], value: 1 - s, device: x.device)
        }
        var x = x0.to(.f32)
        let steps = stepCount
        var tPrev: [Float] = [sigmas[0]]
        var mPrev: [Tensor] = [try dataPrediction(x, sigmas[0])]
        var evaluations = 1
        for step in 1...steps {
            let t = sigmas[step]
            let order = step == 1 ? 1 : min(2, steps + 1 - step)
            let s0 = tPrev[tPrev.count - 1]
            let h = DPMSolverPP2M.lambda(t) - DPMSolverPP2M.lambda(s0)
            let phi = Foundation.expm1(-h)
            let alphaT = Foundation.exp(Foundation.log(1 - t))
            let m0 = mPrev[mPrev.count - 1]
            if order == 1 {
                x = x * (t / s0) - m0 * (alphaT * phi)
            } else {
                let s1 = tPrev[tPrev.count - 2]
                let h0 = DPMSolverPP2M.lambda(s0) - DPMSolverPP2M.lambda(s1)
                let r0 = h0 / h
                let d1 = (m0 - mPrev[mPrev.count - 2]) * (1 / r0)
                x = x * (t / s0) - m0 * (alphaT * phi) - d1 * (0.5 * (alphaT * phi))
            }
            tPrev = Array((tPrev + [t]).suffix(2))
            if step < steps {
                mPrev = Array((mPrev + [try dataPrediction(x, t)]).suffix(2))
                evaluations += 1
            }
            onStep?(SamplerStep(index: step - 1, count: steps, from: 1 - s0, to: 1 - t, x: x, evaluations: evaluations))
        }
        return x
    }
}

/// img2img start (design choice): x_t0 = t0 data + (1 - t0) noise on the flow path, with
/// t0 = 1 - strength; integrate `FlowSchedule.img2imgGrid` from there.
public func img2imgStart(data: Tensor, noise: Tensor, strength: Float) throws -> Tensor {
    guard strength >= 0, strength <= 1 else { throw SamplingError("strength must be in [0, 1]; got \(strength)") }
    guard data.shape == noise.shape else {
        throw SamplingError("img2img: latent shape \(data.shape) and noise shape \(noise.shape) differ")
    }
    let t0 = 1 - strength
    return data.to(.f32) * t0 + noise.to(.f32) * (1 - t0)
}
