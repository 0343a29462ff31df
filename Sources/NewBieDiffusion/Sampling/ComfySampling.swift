import Foundation
import NewBieTensor

// ComfyUI's sampling of flow models, as its NewBie template runs it (issue 16 item 5): the model
// sampling `ModelSamplingAuraFlow` installs (ModelSamplingDiscreteFlow with multiplier 1 and the
// CONST prediction), its schedulers over that model's 1000 sigmas, and the k-diffusion samplers
// in ComfyUI's copy (comfy/k_diffusion/sampling.py). Facts read in ComfyUI's source (Comfy-Org
// ComfyUI a125cd84, 2025-10-12), checked against it by tools/reference/make_comfy_sampling_fixtures.py.
//
// - sigma = noise level, 1 at pure noise; the NewBie DiT's time is t = 1 - sigma (ComfyUI's
//   Lumina 2 model computes `t = 1.0 - timesteps` and returns the negated velocity, so with CONST
//   the denoised image is D(x, sigma) = x + sigma * v(x, 1 - sigma)).
// - The model sampling's sigmas: sigma_k = shift * t_k / (1 + (shift - 1) t_k), t_k = k / 1000,
//   k = 1...1000 (Float32, as torch computes them).
// - Start: x = sigma_0 * noise + (1 - sigma_0) * 0 (the empty latent); end: x / (1 - sigma_last).
// - Classifier-free guidance is applied to D (uncond + scale (cond - uncond)), which is the same
//   as applying it to v; no truncation, no renormalisation.

/// ComfyUI's schedulers (the sigma lists its KSampler node offers) that this engine implements.
public enum ComfyScheduler: String, CaseIterable, Sendable {
    case simple, normal, karras, beta
}

/// ComfyUI's k-diffusion samplers that this engine implements (deterministic given the noise stream).
public enum ComfySampler: String, CaseIterable, Sendable {
    case euler
    case eulerAncestral = "euler_ancestral"
    case dpmpp2m = "dpmpp_2m"
    /// DPM-Solver++(2M) SDE (eta 1, midpoint), noise from torchsde's Brownian tree for the seed.
    case dpmpp2mSDE = "dpmpp_2m_sde"
    /// DPM-Solver++ (stochastic, r 1/2, eta 1): two model evaluations a step, Brownian-tree noise.
    case dpmppSDE = "dpmpp_sde"
    case resMultistep = "res_multistep"
}

/// The model sampling ComfyUI's `ModelSamplingAuraFlow` node (shift) sets on a flow model.
public struct ComfyFlowModelSampling: Sendable {
    public let shift: Float
    /// sigma_k for k = 1...1000, increasing (sigma_min first).
    public let sigmas: [Float]

    public init(shift: Float) {
        self.shift = shift
        sigmas = (1...1000).map { k in ComfyFlowModelSampling.timeSNRShift(shift, Float(k) / 1000) }
    }

    /// time_snr_shift(alpha, t) = alpha t / (1 + (alpha - 1) t), in Float32 as torch computes it.
    @inline(__always) public static func timeSNRShift(_ alpha: Float, _ t: Float) -> Float {
        if alpha == 1 { return t }
        return alpha * t / (1 + (alpha - 1) * t)
    }

    public var sigmaMin: Float { sigmas[0] }
    public var sigmaMax: Float { sigmas[sigmas.count - 1] }
    /// timestep(sigma) = sigma * multiplier (1).
    public func timestep(_ sigma: Float) -> Float { sigma }
    public func sigma(_ timestep: Float) -> Float { ComfyFlowModelSampling.timeSNRShift(shift, timestep) }

    /// The scheduler's sigmas for `steps` steps, ending in 0 (steps + 1 values).
    public func schedule(_ scheduler: ComfyScheduler, steps: Int) throws -> [Float] {
        guard steps >= 1 else { throw SamplingError("a ComfyUI schedule needs at least 1 step") }
        switch scheduler {
        case .simple:
            // sigs = [sigmas[-(1 + int(x * ss))] for x in range(steps)], ss = len / steps
            let ss = Double(sigmas.count) / Double(steps)
            return (0..<steps).map { x in sigmas[sigmas.count - 1 - Int(Double(x) * ss)] } + [0]
        case .normal:
            let start = timestep(sigmaMax), end = timestep(sigmaMin)
            var n = steps
            var appendZero = true
            if abs(Double(sigma(end))) <= 0.00001 { n += 1; appendZero = false }
            let ts = ComfyFlowModelSampling.linspace(start, end, n)
            return ts.map { sigma($0) } + (appendZero ? [0] : [])
        case .karras:
            // k-diffusion get_sigmas_karras, rho 7: (max^(1/rho) + ramp (min^(1/rho) - max^(1/rho)))^rho
            let rho = 7.0
            let minInv = Float(pow(Double(sigmaMin), 1 / rho)), maxInv = Float(pow(Double(sigmaMax), 1 / rho))
            let ramp = ComfyFlowModelSampling.linspace(0, 1, steps)
            return ramp.map { r in Float(pow(Double(maxInv + r * (minInv - maxInv)), rho)) } + [0]
        case .beta:
            // ts = rint(beta.ppf(1 - linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999), repeats dropped
            let total = Double(sigmas.count - 1)
            var out: [Float] = []
            var last = -1.0
            for i in 0..<steps {
                let q = 1 - Double(i) / Double(steps)
                let t = (BetaDistribution.quantile(q, a: 0.6, b: 0.6) * total).rounded(.toNearestOrEven)
                if t != last { out.append(sigmas[Int(t)]) }
                last = t
            }
            return out + [0]
        }
    }

    /// torch.linspace in Float32: the first half counted from the start, the second from the end.
    static func linspace(_ start: Float, _ end: Float, _ n: Int) -> [Float] {
        if n == 1 { return [start] }
        let step = (end - start) / Float(n - 1)
        let half = n / 2
        return (0..<n).map { i in i < half ? start + step * Float(i) : end - step * Float(n - 1 - i) }
    }
}

/// The regularized incomplete beta function and its inverse (for the `beta` scheduler, as
/// scipy.stats.beta.ppf).
enum BetaDistribution {
    /// I_x(a, b) by the continued fraction (Numerical Recipes' betacf), Double precision.
    static func cdf(_ x: Double, a: Double, b: Double) -> Double {
        if x <= 0 { return 0 }
        if x >= 1 { return 1 }
        let lbeta = lgamma(a + b) - lgamma(a) - lgamma(b)
        let front = exp(lbeta + a * log(x) + b * log(1 - x))
        if x < (a + 1) / (a + b + 2) { return front * cf(x, a, b) / a }
        return 1 - front * cf(1 - x, b, a) / b
    }

    static func cf(_ x: Double, _ a: Double, _ b: Double) -> Double {
        let tiny = 1e-300
        var c = 1.0, d = 1 - (a + b) * x / (a + 1)
        if abs(d) < tiny { d = tiny }
        d = 1 / d
        var h = d
        for m in 1...500 {
            let m = Double(m), m2 = 2 * m
            var aa = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
            d = 1 + aa * d; if abs(d) < tiny { d = tiny }
            c = 1 + aa / c; if abs(c) < tiny { c = tiny }
            d = 1 / d; h *= d * c
            aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
            d = 1 + aa * d; if abs(d) < tiny { d = tiny }
            c = 1 + aa / c; if abs(c) < tiny { c = tiny }
            d = 1 / d
            let del = d * c
            h *= del
            if abs(del - 1) < 1e-15 { break }
        }
        return h
    }

    /// x with I_x(a, b) = q, by bisection to Double resolution.
    static func quantile(_ q: Double, a: Double, b: Double) -> Double {
        if q <= 0 { return 0 }
        if q >= 1 { return 1 }
        var lo = 0.0, hi = 1.0
        for _ in 0..<200 {
            let mid = (lo + hi) / 2
            if mid == lo || mid == hi { break }
            if cdf(mid, a: a, b: b) < q { lo = mid } else { hi = mid }
        }
        return (lo + hi) / 2
    }
}

/// One of ComfyUI's k-diffusion samplers over a sigma schedule, driving the velocity model
/// (model time t = 1 - sigma). Ancestral noise comes from a torch CPU generator seeded with the
/// run's seed, as ComfyUI's `default_noise_sampler(x, seed)` draws it (its first draw equals the
/// initial noise).
public struct ComfyKSampler: FlowSampler {
    public let sampler: ComfySampler
    /// The schedule, from sigma_max down to 0.
    public let sigmas: [Float]
    public let seed: UInt64
    public let rng: NoiseRNG
    /// The model sampling's shift (dpmpp_2m_sde moves a first sigma of 1 to shift(1 - 1e-4)).
    public let shift: Float

    public init(sampler: ComfySampler, sigmas: [Float], seed: UInt64, rng: NoiseRNG = .torch, shift: Float = 6) {
        self.sampler = sampler; self.sigmas = sigmas; self.seed = seed; self.rng = rng; self.shift = shift
    }

    public var stepCount: Int { max(sigmas.count - 1, 0) }
    /// One evaluation a step; dpmpp_sde two, except on a last step to sigma 0.
    public var evaluationCount: Int {
        guard sampler == .dpmppSDE else { return stepCount }
        return (0..<stepCount).reduce(0) { $0 + (sigmas[$1 + 1] == 0 ? 1 : 2) }
    }

    /// `noise` is the initial noise (x = sigma_0 * noise, the empty latent being 0).
    public func sample(_ noise: Tensor, model: VelocityFunction, onStep: ((SamplerStep) -> Void)?) throws -> Tensor {
        guard sigmas.count >= 2 else { throw SamplingError("a ComfyUI schedule needs at least 2 sigmas") }
        for i in 1..<sigmas.count where !(sigmas[i] < sigmas[i - 1]) || sigmas[i] < 0 || sigmas[0] > 1 {
            throw SamplingError("ComfyUI sigmas must decrease from at most 1 to 0 (index \(i): \(sigmas[i - 1]) -> \(sigmas[i]))")
        }
        var x = noise.to(.f32) * sigmas[0]
        var noiseGen = TorchGenerator(seed: seed, mode: rng)
        func denoised(_ x: Tensor, _ s: Float) throws -> Tensor {
            let v = try velocity(model, x, 1 - s)
            return x + v * s
        }
        var oldDenoised: Tensor? = nil
        // dpmpp_2m_sde: the Brownian tree spans the schedule's sigmas as given; the first sigma is
        // then moved just below 1 (offset_first_sigma_for_snr: percent_to_sigma(1e-4))
        var sigmas = self.sigmas
        var brownian: BrownianTreeNoiseSampler? = nil
        var hLast: Float = 0
        var evaluations = 0
        if sampler == .dpmpp2mSDE || sampler == .dpmppSDE {
            let positive = sigmas.filter { $0 > 0 }
            brownian = BrownianTreeNoiseSampler(shape: x.shape, sigmaMin: positive.min()!, sigmaMax: sigmas.max()!, seed: seed)
            if sigmas[0] >= 1 {
                let shift = Double(self.shift)
                let t = 1.0 - 1e-4
                sigmas[0] = Float(shift == 1 ? t : shift * t / (1 + (shift - 1) * t))
            }
        }
        for i in 0..<stepCount {
            let s = sigmas[i], sn = sigmas[i + 1]
            let d0 = try denoised(x, s)
            evaluations += 1
            switch sampler {
            case .euler:
                // x + (x - D) / sigma * (sigma_next - sigma)
                x = x + (x - d0) * (1 / s) * (sn - s)
            case .eulerAncestral:
                // sample_euler_ancestral_RF, eta 1, s_noise 1
                if sn == 0 {
                    x = d0
                } else {
                    let ratio = 1 + (sn / s - 1)
                    let sDown = sn * ratio
                    let aNext = 1 - sn, aDown = 1 - sDown
                    let renoise = (sn * sn - sDown * sDown * aNext * aNext / (aDown * aDown)).squareRoot()
                    let r = sDown / s
                    x = x * r + d0 * (1 - r)
                    x = x * (aNext / aDown) + noiseGen.randn(x.shape).to(device: x.device) * renoise
                }
            case .dpmpp2mSDE:
                if sn == 0 {
                    x = d0
                } else {
                    // half log-SNR of a flow model: -logit(sigma)
                    let ls = Foundation.log((1 - s) / s), lt = Foundation.log((1 - sn) / sn)
                    let h = lt - ls, hEta = 2 * h
                    let alphaT = sn * Foundation.exp(lt)
                    let c = -Foundation.expm1(-hEta)
                    x = x * (sn / s * Foundation.exp(-h)) + d0 * (alphaT * c)
                    if let old = oldDenoised {
                        let r = hLast / h
                        x = x + (d0 - old) * (0.5 * alphaT * c * (1 / r))
                    }
                    x = x + brownian!(s, sn).to(device: x.device) * (sn * (-Foundation.expm1(-2 * h)).squareRoot())
                    hLast = h
                }
            case .dpmppSDE:
                if sn == 0 {
                    x = d0
                } else {
                    // half log-SNR lambda = -logit(sigma); sigma(lambda) = sigmoid(-lambda)
                    let ls = Foundation.log((1 - s) / s), lt = Foundation.log((1 - sn) / sn)
                    let h = lt - ls
                    let ls1 = ls + 0.5 * h
                    let s1 = 1 / (1 + Foundation.exp(ls1))
                    let aS = s * Foundation.exp(ls), aS1 = s1 * Foundation.exp(ls1), aT = sn * Foundation.exp(lt)
                    func ancestral(_ from: Float, _ to: Float) -> (down: Float, up: Float) {
                        let up = min(to, (to * to * (from * from - to * to) / (from * from)).squareRoot())
                        return ((to * to - up * up).squareRoot(), up)
                    }
                    // step 1: to sigma_s1 with noise
                    var (sd, su) = ancestral(Foundation.exp(-ls), Foundation.exp(-ls1))
                    var hh = -Foundation.log(sd) - ls
                    var x2 = x * (aS1 / aS * Foundation.exp(-hh)) - d0 * (aS1 * Foundation.expm1(-hh))
                    x2 = x2 + brownian!(s, s1).to(device: x.device) * (aS1 * su)
                    let d2 = try denoised(x2, s1)
                    evaluations += 1
                    // step 2: to sigma_next with the midpoint's denoised
                    (sd, su) = ancestral(Foundation.exp(-ls), Foundation.exp(-lt))
                    hh = -Foundation.log(sd) - ls
                    x = x * (aT / aS * Foundation.exp(-hh)) - d2 * (aT * Foundation.expm1(-hh))
                    x = x + brownian!(s, sn).to(device: x.device) * (aT * su)
                }
            case .dpmpp2m:
                let t = -Foundation.log(s), tn = -Foundation.log(sn)   // tn = +inf at sigma 0
                let h = tn - t
                let a = sn / s, b = -Foundation.expm1(-h)               // exp(-tn)/exp(-t), -(e^-h - 1)
                if let old = oldDenoised, sn != 0 {
                    let hLast = t - (-Foundation.log(sigmas[i - 1]))
                    let r = hLast / h
                    let dd = d0 * (1 + 1 / (2 * r)) - old * (1 / (2 * r))
                    x = x * a + dd * b
                } else {
                    x = x * a + d0 * b
                }
            case .resMultistep:
                // res_multistep with eta 0: Euler first and at sigma 0, else the second-order
                // multistep exponential integrator (old sigma_down = sigma_i)
                if sn == 0 || oldDenoised == nil {
                    x = x + (x - d0) * (1 / s) * (sn - s)
                } else {
                    let t = -Foundation.log(Double(s)), tNext = -Foundation.log(Double(sn)), tPrev = -Foundation.log(Double(sigmas[i - 1]))
                    let h = tNext - t
                    let c2 = (tPrev - t) / h
                    let phi1 = Foundation.expm1(-h) / -h
                    let phi2 = (phi1 - 1) / -h
                    let b1 = phi1 - phi2 / c2, b2 = phi2 / c2
                    x = x * Float(Foundation.exp(-h)) + (d0 * Float(h * b1) + oldDenoised! * Float(h * b2))
                }
            }
            oldDenoised = d0
            onStep?(SamplerStep(index: i, count: stepCount, from: 1 - s, to: 1 - sn, x: x, evaluations: evaluations))
        }
        // inverse noise scaling at the last sigma (0: x itself)
        let last = sigmas[sigmas.count - 1]
        return last == 0 ? x : x * (1 / (1 - last))
    }
}
