import Foundation
import NewBieTensor

/// When and how to decode in tiles.
///
/// The decoder's bottom (conv_in and the mid block with its attention over all positions) runs
/// on the whole latent: it works at latent resolution, where activations are small (FLUX: 512
/// floats per latent cell against 128 x 64 = 8192 per cell at the top level). Everything above
/// it runs window by window: windows of `tileLatent` cells overlapping by at least
/// `overlapLatent`, each window owning the core up to the middle of its overlaps, blended with
/// linear ramps `blendLatent` cells wide centred on the core boundaries.
///
/// GroupNorm normalises over the whole image, which a window cannot see. With
/// `globalNormStatistics` (the default) the statistics of every GroupNorm are gathered over the
/// window cores before any window is normalised with them: GroupNorm k's statistics need a pass
/// over all windows up to GroupNorm k, so the top of the decoder runs about K/2 times (K = 25
/// GroupNorms in FLUX's top). The result then equals the untiled decode wherever the margin (half
/// the overlap) covers the receptive field (about 12.3 latent cells for the FLUX layout). Since
/// that costs about ten untiled decodes, `.auto` tiles only where the untiled decode would not fit
/// (see `autoAboveLatentCells`). Without it each window normalises itself (one pass, as
/// diffusers' `tiled_decode` does), which is fast but lets windows of smooth content drift apart
/// in tone. (Recording every GroupNorm's statistics in one pass over per-window-normalised
/// windows, and refining them over 2-3 such passes, was tried: on the fixture VAE it stayed at
/// 9-14% relative L2 from the untiled decode, against 19% for per-window statistics, without
/// improving steadily with more passes, so it was not kept.)
///
/// Working memory, on the model's device: one window's decode, plus the latent-resolution bottom,
/// the output image and one Float of blend weight per output pixel, whatever the image size.
public struct VAETiling: Sendable, Equatable {
    public enum Mode: String, Sendable { case auto, always, never }
    public var mode: Mode
    /// Largest window side in latent cells (128 = 1024 pixels with FLUX's x8: what decodes untiled
    /// anyway). Windows are made as small as the count of windows along the axis allows.
    public var tileLatent: Int
    /// Minimum overlap of neighbouring windows in latent cells; half of it is context each window
    /// sees beyond its core.
    public var overlapLatent: Int
    /// Width in latent cells of the linear blend across each core boundary (at most the overlap).
    public var blendLatent: Int
    public var globalNormStatistics: Bool
    /// With `.auto`, tile when the latent has more cells than this (192*192 = 1536x1536 pixels).
    /// Tiling exists for memory, and with exact statistics it costs about ten untiled decodes:
    /// `RunCheck` estimates the untiled decode of the full FLUX VAE at 1536x1536 in fp32 at about
    /// 9 GiB of activations, which a 24 GiB machine holds (at 1024x1024, the old limit, 4 GiB).
    public var autoAboveLatentCells: Int

    public init(mode: Mode = .auto, tileLatent: Int = 128, overlapLatent: Int = 32, blendLatent: Int = 4,
                globalNormStatistics: Bool = true, autoAboveLatentCells: Int = 192 * 192) {
        self.mode = mode; self.tileLatent = tileLatent; self.overlapLatent = overlapLatent
        self.blendLatent = blendLatent; self.globalNormStatistics = globalNormStatistics
        self.autoAboveLatentCells = autoAboveLatentCells
    }

    /// Passes over all windows a tiled decode makes: one per GroupNorm of the decoder's tiled
    /// part (`groupNorms`) for the statistics, then the output pass.
    public func passes(groupNorms: Int) -> Int { globalNormStatistics ? groupNorms + 1 : 1 }

    public static let auto = VAETiling()
    public static let never = VAETiling(mode: .never)
    public static let always = VAETiling(mode: .always)

    /// Whether a latent of this size is decoded in tiles.
    public func tiles(latentHeight h: Int, latentWidth w: Int) -> Bool {
        switch mode {
        case .never: return false
        case .always: return h > tileLatent || w > tileLatent
        case .auto: return h * w > autoAboveLatentCells && (h > tileLatent || w > tileLatent)
        }
    }

    /// Windows along an axis of `n` latent cells: the fewest of side at most `tileLatent` that
    /// overlap by at least `overlapLatent`.
    public func windowCount(_ n: Int) -> Int {
        let t = tileLatent
        if n <= t { return 1 }
        let step = t - overlapLatent
        return 1 + (n - t + step - 1) / step
    }

    /// Window side along an axis of `n` cells: the smallest that covers the axis with
    /// `windowCount(n)` windows overlapping by `overlapLatent` (less work than `tileLatent` where
    /// the last window would mostly repeat its neighbour).
    public func windowLength(_ n: Int) -> Int {
        let c = windowCount(n)
        if c == 1 { return Swift.min(tileLatent, n) }
        return Swift.min(tileLatent, (n + (c - 1) * overlapLatent + c - 1) / c)
    }

    /// Window starts along an axis of `n` latent cells: evenly spread, first at 0, last ending at
    /// n, neighbours overlapping by at least `overlapLatent`.
    public func starts(_ n: Int) -> [Int] {
        let count = windowCount(n), t = windowLength(n)
        if count == 1 { return [0] }
        return (0..<count).map { i in Int((Double(i) * Double(n - t) / Double(count - 1)).rounded()) }
    }

    /// One window along an axis: the cells it decodes and the core it owns (cores partition the axis).
    public struct AxisTile: Sendable, Equatable {
        public var start: Int, length: Int, coreStart: Int, coreEnd: Int
    }

    public func axisTiles(_ n: Int) -> [AxisTile] {
        let s = starts(n)
        let len = windowLength(n)
        return s.indices.map { i in
            let coreStart = i == 0 ? 0 : (s[i] + s[i - 1] + len) / 2
            let coreEnd = i == s.count - 1 ? n : (s[i + 1] + s[i] + len) / 2
            return AxisTile(start: s[i], length: len, coreStart: coreStart, coreEnd: coreEnd)
        }
    }

    func validate() {
        precondition(tileLatent >= 1 && overlapLatent >= 0 && overlapLatent < tileLatent,
                     "VAE tiling: overlap \(overlapLatent) must be smaller than the tile \(tileLatent)")
        precondition(blendLatent >= 0 && blendLatent <= 2 * (overlapLatent / 2),
                     "VAE tiling: blend width \(blendLatent) must fit in the overlap \(overlapLatent)")
    }
}

/// One pass of tiled decoding's GroupNorm bookkeeping. GroupNorm calls before `gatherIndex` are
/// normalised with the finished statistics `known`; call `gatherIndex` accumulates its input's
/// statistics over the current window's core (Chan et al.'s pairwise combination of count, mean
/// and centred sum of squares, in Double) and ends the window's forward pass. With `gatherIndex`
/// nil every call is normalised with `known` (the output pass).
final class TileStatistics: VAENormHook {
    struct Acc { var n = 0.0, mean = 0.0, m2 = 0.0 }
    let known: [[(Double, Double)]]
    let gatherIndex: Int?
    var accumulator: [Acc] = []
    var call = 0
    var finished = false
    /// Whether any window reached GroupNorm `gatherIndex` (false: there are no more GroupNorms).
    var reached = false
    /// Current window's core, in latent cells relative to the window, and the window's height.
    var core = (y0: 0, y1: 0, x0: 0, x1: 0)
    var windowHeight = 1

    init(known: [[(Double, Double)]], gatherIndex: Int?) { self.known = known; self.gatherIndex = gatherIndex }

    func startWindow(coreY: Range<Int>, coreX: Range<Int>, windowHeight: Int) {
        core = (coreY.lowerBound, coreY.upperBound, coreX.lowerBound, coreX.upperBound)
        self.windowHeight = windowHeight
        call = 0
        finished = false
    }

    func normalize(_ x: Tensor, _ norm: VAEGroupNorm) -> Tensor {
        let k = call
        call += 1
        let (b, c) = (x.shape[0], x.shape[1])
        let g = norm.groups
        if k == gatherIndex {
            reached = true
            finished = true
            accumulate(x, groups: g, into: &accumulator)
            return x  // the pass ends here; the value is not used
        }
        precondition(k < known.count && known[k].count == b * g, "VAE tiling: GroupNorm statistics do not match the decoder")
        let meanT = Tensor(known[k].map { Float($0.0) }, shape: [b, g, 1], device: x.device)
        let rstdT = Tensor(known[k].map { Float($0.1) }, shape: [b, g, 1], device: x.device)
        let xf = x.to(.f32).reshape([b, g, -1])
        let y = ((xf - meanT) * rstdT).reshape(x.shape)
        let w = norm.weight.to(.f32).reshape([1, c, 1, 1]), bias = norm.bias.to(.f32).reshape([1, c, 1, 1])
        return (y * w + bias).to(x.dtype)
    }

    /// Adds the statistics of `x` over the current window's core to `acc`, per batch x group.
    func accumulate(_ x: Tensor, groups g: Int, into acc: inout [Acc]) {
        let b = x.shape[0]
        let s = x.shape[2] / windowHeight
        let region = x.narrow(2, start: core.y0 * s, length: (core.y1 - core.y0) * s)
            .narrow(3, start: core.x0 * s, length: (core.x1 - core.x0) * s)
            .to(.f32).reshape([b, g, -1])
        let n = Double(region.shape[2])
        let mean = region.reduce(.mean, axes: [2], keepDims: true)
        let m2 = (region - mean).reduce(.sumSquares, axes: [2]).toFloats()
        let means = mean.toFloats()
        if acc.isEmpty { acc = [Acc](repeating: Acc(), count: b * g) }
        for i in 0..<(b * g) {
            var a = acc[i]
            let total = a.n + n, delta = Double(means[i]) - a.mean
            a.mean += delta * n / total
            a.m2 += Double(m2[i]) + delta * delta * a.n * n / total
            a.n = total
            acc[i] = a
        }
    }

    /// (mean, 1/sqrt(var + eps)) per batch x group of GroupNorm `gatherIndex`.
    func statistics(eps: Float) -> [(Double, Double)] {
        accumulator.map { a in (a.mean, 1 / (a.m2 / a.n + Double(eps)).squareRoot()) }
    }
}

extension AutoencoderKL {
    /// NewBie latent -> image in about [-1, 1] (Float32, on the model's device), tiled or not as
    /// `tiling` decides.
    /// `progress` sees (windows decoded, windows in all passes) after each window of a tiled decode.
    public func decode(_ x: Tensor, tiling: VAETiling, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) -> Tensor {
        decodeRaw(unscale(x), tiling: tiling, progress: progress)
    }

    /// VAE latent -> image (Float32, on the model's device), tiled or not as `tiling` decides.
    public func decodeRaw(_ z: Tensor, tiling: VAETiling, progress: ((_ done: Int, _ total: Int) -> Void)? = nil) -> Tensor {
        checkLatent(z)
        guard tiling.tiles(latentHeight: z.shape[2], latentWidth: z.shape[3]) else { return decodeRaw(z).to(.f32) }
        tiling.validate()
        let decoder = requireDecoder()
        let (b, h, w) = (z.shape[0], z.shape[2], z.shape[3])
        let f = config.downscale, cout = config.outChannels
        let (oh, ow) = (h * f, w * f)
        let ys = tiling.axisTiles(h), xs = tiling.axisTiles(w)
        let bottom = decoder.lower(z)
        let windows = ys.count * xs.count
        var done = 0
        let total = tiling.passes(groupNorms: decoder.upperGroupNorms) * windows

        func run(_ hook: TileStatistics?, _ body: (VAETiling.AxisTile, VAETiling.AxisTile, Tensor) -> Void) {
            for ty in ys {
                for tx in xs {
                    let window = bottom.narrow(2, start: ty.start, length: ty.length)
                        .narrow(3, start: tx.start, length: tx.length).contiguous()
                    hook?.startWindow(coreY: (ty.coreStart - ty.start)..<(ty.coreEnd - ty.start),
                                      coreX: (tx.coreStart - tx.start)..<(tx.coreEnd - tx.start), windowHeight: ty.length)
                    body(ty, tx, decoder.upper(window, hook))
                    done += 1
                    progress?(done, total)
                }
            }
        }

        var final: TileStatistics? = nil
        if tiling.globalNormStatistics {
            var known: [[(Double, Double)]] = []
            // one pass per GroupNorm; the decoder's count ends the loop (no pass only to find none left)
            while known.count < decoder.upperGroupNorms {
                let pass = TileStatistics(known: known, gatherIndex: known.count)
                run(pass) { _, _, _ in }
                precondition(pass.reached, "VAE tiling: the decoder has fewer GroupNorms than counted")
                known.append(pass.statistics(eps: config.normEps))
            }
            final = TileStatistics(known: known, gatherIndex: nil)
        }

        // Blend weight along an axis: 1 on the core, linear ramps across interior core boundaries.
        let ramp = Float(tiling.blendLatent * f)
        func axisWeights(_ t: VAETiling.AxisTile, total: Int) -> [Float] {
            (0..<(t.length * f)).map { i in
                let p = Float(t.start * f + i) + 0.5
                var v: Float = 1
                if t.coreStart > 0 {
                    let edge = Float(t.coreStart * f)
                    v = Swift.min(v, ramp > 0 ? Swift.max(0, Swift.min(1, (p - edge) / ramp + 0.5)) : (p >= edge ? 1 : 0))
                }
                if t.coreEnd < total {
                    let edge = Float(t.coreEnd * f)
                    v = Swift.min(v, ramp > 0 ? Swift.max(0, Swift.min(1, (edge - p) / ramp + 0.5)) : (p < edge ? 1 : 0))
                }
                return v
            }
        }

        // The weighted sum and the weights accumulate on the model's device, window by window.
        let out = Tensor.zeros([b, cout, oh, ow], dtype: .f32, device: device)
        let weightSum = Tensor.zeros([1, 1, oh, ow], dtype: .f32, device: device)
        run(final) { ty, tx, tileOut in
            let (py, px, ph, pw) = (ty.start * f, tx.start * f, ty.length * f, tx.length * f)
            let wy = Tensor(axisWeights(ty, total: h), shape: [ph, 1], device: device)
            let wx = Tensor(axisWeights(tx, total: w), shape: [1, pw], device: device)
            let weight = (wy * wx).reshape([1, 1, ph, pw])
            func accumulate(_ sum: Tensor, _ value: Tensor) {
                let region = sum.narrow(2, start: py, length: ph).narrow(3, start: px, length: pw)
                region.backend.copy(region + value, into: region)
            }
            accumulate(weightSum, weight)
            accumulate(out, weight * tileOut.to(.f32))
        }
        return out / weightSum
    }
}
