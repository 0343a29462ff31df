import Foundation

/// Errors of the sampling code (bad settings), with a message meant for the user.
public struct SamplingError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Time grids for flow-matching sampling. Time t runs 0 (pure noise) -> 1 (clean).
/// All arithmetic is float32 in the order of the official PyTorch code, so the grids equal the
/// official ones bit for bit.
public enum FlowSchedule {
    /// `torch.linspace(start, end, count)` in float32 as torch computes it on the CPU (the official
    /// code builds its grid on the CPU): step = (end - start) / (count - 1); element i is
    /// start + step i in the first half (i < count / 2) and end - step (count - 1 - i) in the
    /// second, each with one rounding (torch's x86-64 AVX2 build fuses the multiply-add; checked
    /// against torch for every count up to 300).
    public static func linspace(_ start: Float, _ end: Float, _ count: Int) -> [Float] {
        precondition(count >= 0)
        if count == 0 { return [] }
        if count == 1 { return [start] }
        let step = (end - start) / Float(count - 1)
        let half = count / 2
        return (0..<count).map { i in
            i < half ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(count - 1 - i))
        }
    }

    /// The static shift t = u / (u + s - s u) (official `time_shifting_factor`; equals the SD3 /
    /// AuraFlow shift s sigma / (1 + (s - 1) sigma) of sigma = 1 - u). Shift 1 leaves u unchanged.
    @inline(__always) public static func shift(_ u: Float, _ s: Float) -> Float {
        u / ((u + s) - s * u)
    }

    /// The official ODE grid: `points` time points (so points - 1 integration intervals),
    /// t_k = shift(k / (points - 1)), from 0 to 1. A shift of 0 means none, as in the official code.
    public static func timeGrid(points: Int, shift s: Float) throws -> [Float] {
        guard points >= 2 else { throw SamplingError("the time grid needs at least 2 points (1 step); got \(points)") }
        guard s >= 0, s.isFinite else { throw SamplingError("shift must be a finite number >= 0; got \(s)") }
        let u = linspace(0, 1, points)
        return s == 0 ? u : u.map { shift($0, s) }
    }

    /// The DPM-Solver "time_uniform_flow" grid of the official `transport/dpm_solver.py`: `steps` + 1
    /// noise levels sigma (alpha = 1 - sigma), from shift(0.999) down to 0; the model is called at
    /// t = 1 - sigma. sigma_k = shift(1 - b_k) with b = linspace(1, 1/1000, steps + 1), reversed.
    public static func dpmSigmas(steps: Int, shift s: Float) throws -> [Float] {
        guard steps >= 2 else { throw SamplingError("DPM-Solver++ 2M needs at least 2 steps; got \(steps)") }
        guard s > 0, s.isFinite else { throw SamplingError("shift must be a finite number > 0; got \(s)") }
        let betas = linspace(1, Float(1.0 / 1000), steps + 1)
        let sigmas = betas.map { b -> Float in
            let sigma = 1 - b
            return (s * sigma) / (1 + (s - 1) * sigma)
        }
        return sigmas.reversed()
    }

    /// img2img (a design choice: there is no official procedure): start at
    /// t0 = 1 - strength and integrate the rest of the shifted grid, i.e. [t0] followed by the grid
    /// points greater than t0. strength 1 gives the whole grid; strength 0 gives [1] (no step).
    public static func img2imgGrid(points: Int, shift s: Float, strength: Float) throws -> [Float] {
        guard strength >= 0, strength <= 1 else { throw SamplingError("strength must be in [0, 1]; got \(strength)") }
        let grid = try timeGrid(points: points, shift: s)
        let t0 = 1 - strength
        return [t0] + grid.filter { $0 > t0 }
    }
}
