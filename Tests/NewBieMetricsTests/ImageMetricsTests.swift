import Foundation
import XCTest
import NewBieImage
import NewBieMetrics
import NewBieTestSupport

/// PSNR, SSIM (luminance and per channel) and VIFp against scikit-image 0.26.0 and piq 0.8.0
/// (Tests/Fixtures/metrics/metrics.json, written by tools/reference/make_metric_fixtures.py).
final class ImageMetricsTests: XCTestCase {
    struct Fixture: Decodable {
        struct Pair: Decodable {
            var reference: String
            var distorted: String
            var psnr: Value
            var ssim_luma: Double
            var ssim_rgb: Double
            var vif: Double
        }
        /// A number, or the string "inf".
        struct Value: Decodable {
            var value: Double
            init(from decoder: Decoder) throws {
                let c = try decoder.singleValueContainer()
                if let s = try? c.decode(String.self) { value = s == "inf" ? .infinity : .nan } else { value = try c.decode(Double.self) }
            }
        }
        var width: Int
        var height: Int
        var images: [String: String]
        var pairs: [Pair]
    }

    static let fixture: Fixture = {
        let data = try! Data(contentsOf: Fixtures.url("metrics/metrics.json"))
        return try! JSONDecoder().decode(Fixture.self, from: data)
    }()

    func image(_ name: String) -> RGBImage {
        let f = Self.fixture
        return RGBImage(width: f.width, height: f.height, pixels: [UInt8](Data(base64Encoded: f.images[name]!)!))
    }

    func testFixturePairsMatchScikitImageAndPiq() throws {
        XCTAssertEqual(Self.fixture.pairs.count, 12)
        for p in Self.fixture.pairs {
            let m = try ImageMetrics(reference: image(p.reference), image: image(p.distorted))
            let name = "\(p.reference) vs \(p.distorted)"
            if p.psnr.value.isInfinite {
                XCTAssertEqual(m.psnr, .infinity, name)
            } else {
                XCTAssertEqual(m.psnr, p.psnr.value, accuracy: 1e-4, name)
            }
            XCTAssertEqual(m.ssim, p.ssim_luma, accuracy: 1e-4, name)
            XCTAssertEqual(m.ssimRGB, p.ssim_rgb, accuracy: 1e-4, name)
            XCTAssertEqual(try XCTUnwrap(m.vif), p.vif, accuracy: 1e-4, name)
        }
    }

    func testMatchesTighterThanTheTolerance() throws {
        // the arithmetic is the same in Float64; only the summation order differs
        var worst = 0.0
        for p in Self.fixture.pairs {
            let m = try ImageMetrics(reference: image(p.reference), image: image(p.distorted))
            worst = max(worst, abs(m.ssim - p.ssim_luma), abs(m.ssimRGB - p.ssim_rgb), abs(m.vif! - p.vif))
            if p.psnr.value.isFinite { worst = max(worst, abs(m.psnr - p.psnr.value)) }
        }
        XCTAssertLessThan(worst, 1e-9)
    }

    func testSizeMismatchAndSmallImages() {
        let a = image("a")
        let small = RGBImage(width: 20, height: 20, pixels: [UInt8](repeating: 9, count: 20 * 20 * 3))
        XCTAssertThrowsError(try ImageMetrics(reference: a, image: small)) { e in
            XCTAssertTrue("\(e)".contains("48x44 and 20x20"), "\(e)")
        }
        // below 41x41 there is no VIFp; below 11x11 no SSIM
        let m = try? ImageMetrics(reference: small, image: small)
        XCTAssertNotNil(m)
        XCTAssertNil(m?.vif)
        XCTAssertEqual(m?.ssim ?? 0, 1, accuracy: 1e-12)
        let tiny = RGBImage(width: 8, height: 8, pixels: [UInt8](repeating: 9, count: 8 * 8 * 3))
        XCTAssertThrowsError(try ImageMetrics(reference: tiny, image: tiny))
    }

    func testGaussianWindow() {
        let k = Metrics.gaussian(taps: 11, sigma: 1.5)
        XCTAssertEqual(k.reduce(0, +), 1, accuracy: 1e-15)
        XCTAssertEqual(k[5], 0.266012, accuracy: 1e-6)
        XCTAssertEqual(k[0], k[10])
    }
}
