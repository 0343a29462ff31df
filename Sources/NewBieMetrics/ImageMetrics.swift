import Foundation
import NewBieImage

// Full-reference image metrics on 8-bit RGB images, computed in Float64:
//
//   PSNR   10 log10(255^2 / MSE) over every byte of the two images (+infinity when identical), as
//          scikit-image's peak_signal_noise_ratio(data_range=255).
//   SSIM   Wang, Bovik, Sheikh and Simoncelli (2004): local means, variances and covariance under
//          an 11x11 Gaussian window (sigma 1.5, the window truncated at 3.5 sigma), population
//          covariance, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2, averaged over the pixels whose
//          window lies inside the image; as scikit-image's structural_similarity(gaussian_weights=
//          True, sigma=1.5, use_sample_covariance=False, data_range=255). On the luminance
//          Y = 0.299 R + 0.587 G + 0.114 B (not rounded) and per channel (the mean of R, G and B).
//   VIFp   Sheikh and Bovik's visual information fidelity in the pixel domain, over four scales
//          (Gaussian windows of 17, 9, 5, 3 taps, sigma = taps / 5, valid filtering, every second
//          sample kept between scales), noise variance 2, on Y; as piq's vif_p(distorted,
//          reference, data_range=255). Not symmetric: 1 for identical images, below 1 when
//          information is lost, above 1 for a contrast-enhanced image. Needs at least 41x41.
//
// Tests/NewBieMetricsTests checks every metric against the PyPI implementations
// (tools/reference/make_metric_fixtures.py) to 1e-4.

public struct ImageMetricsError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// The metrics of one image against a reference.
public struct ImageMetrics: Codable, Sendable, Equatable {
    /// dB; +infinity for identical images.
    public var psnr: Double
    /// SSIM on the luminance Y.
    public var ssim: Double
    /// SSIM per channel, averaged over R, G, B.
    public var ssimRGB: Double
    /// Pixel-domain VIF on Y (nil when an image is smaller than 41x41).
    public var vif: Double?

    public init(psnr: Double, ssim: Double, ssimRGB: Double, vif: Double?) {
        self.psnr = psnr; self.ssim = ssim; self.ssimRGB = ssimRGB; self.vif = vif
    }

    /// `image` measured against `reference`; the images must have the same size.
    public init(reference: RGBImage, image: RGBImage) throws {
        guard reference.width == image.width, reference.height == image.height else {
            throw ImageMetricsError("the images differ in size: \(reference.width)x\(reference.height) and \(image.width)x\(image.height); the metrics compare images of the same size")
        }
        guard reference.width >= Metrics.ssimWindow, reference.height >= Metrics.ssimWindow else {
            throw ImageMetricsError("the images are \(reference.width)x\(reference.height); SSIM needs at least \(Metrics.ssimWindow)x\(Metrics.ssimWindow)")
        }
        let (w, h) = (reference.width, reference.height)
        psnr = Metrics.psnr(reference.pixels, image.pixels)
        let yr = Plane.luma(reference), yi = Plane.luma(image)
        ssim = Metrics.ssim(yr, yi)
        var s = 0.0
        for c in 0..<3 { s += Metrics.ssim(Plane.channel(reference, c), Plane.channel(image, c)) }
        ssimRGB = s / 3
        vif = w >= Metrics.vifMinimumSize && h >= Metrics.vifMinimumSize ? Metrics.vifP(reference: yr, distorted: yi) : nil
    }
}

/// A single-channel image in Float64, rows top to bottom.
public struct Plane: Sendable {
    public let width: Int
    public let height: Int
    public var values: [Double]

    public init(width: Int, height: Int, values: [Double]) {
        precondition(values.count == width * height, "\(values.count) values do not fill \(width)x\(height)")
        self.width = width; self.height = height; self.values = values
    }

    /// Y = 0.299 R + 0.587 G + 0.114 B, in 0...255, not rounded.
    public static func luma(_ im: RGBImage) -> Plane {
        let n = im.width * im.height
        var v = [Double](repeating: 0, count: n)
        im.pixels.withUnsafeBufferPointer { p in
            for i in 0..<n {
                v[i] = 0.299 * Double(p[3 * i]) + 0.587 * Double(p[3 * i + 1]) + 0.114 * Double(p[3 * i + 2])
            }
        }
        return Plane(width: im.width, height: im.height, values: v)
    }

    /// Channel `c` (0 R, 1 G, 2 B) as 0...255.
    public static func channel(_ im: RGBImage, _ c: Int) -> Plane {
        let n = im.width * im.height
        var v = [Double](repeating: 0, count: n)
        im.pixels.withUnsafeBufferPointer { p in for i in 0..<n { v[i] = Double(p[3 * i + c]) } }
        return Plane(width: im.width, height: im.height, values: v)
    }

    static func * (a: Plane, b: Plane) -> Plane {
        var v = a.values
        for i in v.indices { v[i] *= b.values[i] }
        return Plane(width: a.width, height: a.height, values: v)
    }

    /// Cross-correlation with the separable kernel `k` (odd length) in both directions, keeping
    /// only the samples whose window lies inside the plane ("valid"): (w - n + 1) x (h - n + 1).
    func filteredValid(_ k: [Double]) -> Plane {
        let n = k.count
        let ow = width - n + 1, oh = height - n + 1
        precondition(ow > 0 && oh > 0, "a \(n)-tap window does not fit \(width)x\(height)")
        // rows first (every row, valid columns), then columns
        var rows = [Double](repeating: 0, count: height * ow)
        var out = [Double](repeating: 0, count: oh * ow)
        k.withUnsafeBufferPointer { kp in
            values.withUnsafeBufferPointer { src in
                rows.withUnsafeMutableBufferPointer { r in
                    for y in 0..<height {
                        let base = y * width
                        for x in 0..<ow {
                            var s = 0.0
                            for j in 0..<n { s += kp[j] * src[base + x + j] }
                            r[y * ow + x] = s
                        }
                    }
                }
            }
            rows.withUnsafeBufferPointer { r in
                out.withUnsafeMutableBufferPointer { o in
                    for y in 0..<oh {
                        for j in 0..<n {
                            let w = kp[j], base = (y + j) * ow
                            for x in 0..<ow { o[y * ow + x] += w * r[base + x] }
                        }
                    }
                }
            }
        }
        return Plane(width: ow, height: oh, values: out)
    }

    /// Every second sample in both directions, starting at the first.
    func decimated() -> Plane {
        let ow = (width + 1) / 2, oh = (height + 1) / 2
        var out = [Double](repeating: 0, count: ow * oh)
        for y in 0..<oh { for x in 0..<ow { out[y * ow + x] = values[2 * y * width + 2 * x] } }
        return Plane(width: ow, height: oh, values: out)
    }
}

public enum Metrics {
    public static let ssimSigma = 1.5
    /// 2 * int(3.5 * 1.5 + 0.5) + 1, as scipy.ndimage's Gaussian with truncate = 3.5.
    public static let ssimWindow = 11
    public static let vifMinimumSize = 41

    /// Normalised 1-D Gaussian weights exp(-x^2 / (2 sigma^2)) over `taps` points centred on 0.
    public static func gaussian(taps: Int, sigma: Double) -> [Double] {
        let r = Double(taps - 1) / 2
        let w = (0..<taps).map { i -> Double in let x = Double(i) - r; return exp(-x * x / (2 * sigma * sigma)) }
        let s = w.reduce(0, +)
        return w.map { $0 / s }
    }

    /// PSNR over two byte arrays of equal length, peak 255.
    public static func psnr(_ a: [UInt8], _ b: [UInt8]) -> Double {
        precondition(a.count == b.count && !a.isEmpty)
        var se = 0.0
        for i in a.indices { let d = Double(a[i]) - Double(b[i]); se += d * d }
        let mse = se / Double(a.count)
        return mse == 0 ? .infinity : 10 * log10(255 * 255 / mse)
    }

    /// Mean SSIM of two planes of equal size (data range 255).
    public static func ssim(_ x: Plane, _ y: Plane) -> Double {
        precondition(x.width == y.width && x.height == y.height)
        let k = gaussian(taps: ssimWindow, sigma: ssimSigma)
        let ux = x.filteredValid(k), uy = y.filteredValid(k)
        let uxx = (x * x).filteredValid(k), uyy = (y * y).filteredValid(k), uxy = (x * y).filteredValid(k)
        let c1 = (0.01 * 255) * (0.01 * 255), c2 = (0.03 * 255) * (0.03 * 255)
        var sum = 0.0
        for i in ux.values.indices {
            let mx = ux.values[i], my = uy.values[i]
            let vx = uxx.values[i] - mx * mx, vy = uyy.values[i] - my * my, vxy = uxy.values[i] - mx * my
            sum += ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        }
        return sum / Double(ux.values.count)
    }

    /// Pixel-domain VIF of `distorted` against `reference` (planes in 0...255, at least 41x41).
    public static func vifP(reference: Plane, distorted: Plane, noiseVariance sigmaNSq: Double = 2) -> Double {
        precondition(reference.width == distorted.width && reference.height == distorted.height)
        let eps = 1e-8
        var x = distorted, y = reference
        var num = 0.0, den = 0.0
        for scale in 0..<4 {
            let taps = (1 << (4 - scale)) + 1
            let k = gaussian(taps: taps, sigma: Double(taps) / 5)
            if scale > 0 {
                x = x.filteredValid(k).decimated()
                y = y.filteredValid(k).decimated()
            }
            let mx = x.filteredValid(k), my = y.filteredValid(k)
            let xx = (x * x).filteredValid(k), yy = (y * y).filteredValid(k), xy = (x * y).filteredValid(k)
            for i in mx.values.indices {
                let ux = mx.values[i], uy = my.values[i]
                let sx = max(xx.values[i] - ux * ux, 0)
                var sy = max(yy.values[i] - uy * uy, 0)
                let sxy = xy.values[i] - ux * uy
                var g = sxy / (sy + eps)
                var sv = sx - g * sxy
                if !(sy >= eps) { g = 0; sv = sx; sy = 0 }
                if !(sx >= eps) { g = 0; sv = 0 }
                if !(g >= 0) { sv = sx }
                g = max(g, 0)
                if !(sv > eps) { sv = eps }
                num += log10(1 + g * g * sy / (sv + sigmaNSq))
                den += log10(1 + sy / sigmaNSq)
            }
        }
        return (num + eps) / (den + eps)
    }
}
