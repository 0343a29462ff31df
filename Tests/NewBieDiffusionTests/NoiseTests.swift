import Foundation
import XCTest
@testable import NewBieDiffusion
import NewBieTensor
import NewBieTestSupport
import NewBieWeights

/// torch.randn on the CPU, bit for bit (tools/reference/make_sampling_fixtures.py writes
/// Tests/Fixtures/sampling/noise.safetensors: "avx2" = torch's vectorised path, "default" = torch
/// with ATEN_CPU_CAPABILITY=default).
final class NoiseTests: XCTestCase {
    static let file = try! SafeTensorsFile(path: Fixtures.path("sampling/noise.safetensors"))
    static let cases: [[String: Any]] = {
        let json = file.metadata["cases"]!.data(using: .utf8)!
        return try! JSONSerialization.jsonObject(with: json) as! [[String: Any]]
    }()

    func assertBitEqual(_ got: [Float], _ want: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(got.count, want.count, what, file: file, line: line)
        var bad = 0, first = -1
        for i in 0..<min(got.count, want.count) where got[i].bitPattern != want[i].bitPattern {
            bad += 1
            if first < 0 { first = i }
        }
        if bad > 0 {
            XCTFail("\(what): \(bad) of \(want.count) values differ; first at \(first): \(got[first]) vs \(want[first])",
                    file: file, line: line)
        }
    }

    func testMT19937KnownValue() {
        // The C++ standard's check: the 10000th output of mt19937 seeded with 5489 is 4123659995.
        var e = MT19937(seed: 5489)
        var v: UInt32 = 0
        for _ in 0..<10000 { v = e.next() }
        XCTAssertEqual(v, 4_123_659_995)
        // torch seeds with the low 32 bits
        var a = MT19937(seed: (1 << 32) + 5), b = MT19937(seed: 5)
        XCTAssertEqual((0..<5).map { _ in a.next() }, (0..<5).map { _ in b.next() })
    }

    func testRandnMatchesTorchBitForBit() throws {
        let all = Self.cases.filter { $0["shape"] != nil }
        XCTAssertEqual(all.count, 15)
        for c in all {
            let name = c["name"] as! String
            let shape = c["shape"] as! [Int]
            let seed = UInt64(c["seed"] as! Int)
            for (mode, role) in [(NoiseRNG.torch, "avx2"), (.torchScalar, "default")] {
                var g = TorchGenerator(seed: seed, mode: mode)
                let t = g.randn(shape)
                XCTAssertEqual(t.shape, shape)
                var got = t.toFloats()
                if (c["keep"] as! String) == "ends" { got = Array(got.prefix(1000)) + Array(got.suffix(1000)) }
                XCTAssertTrue(got.allSatisfy { $0.isFinite }, name)
                assertBitEqual(got, try Self.file.tensor("\(name)/\(role)").toFloats(), "\(name) \(mode)")
            }
        }
    }

    func testRandnCallSequenceUsesTheCachedValue() throws {
        // manual_seed(99); randn(3); randn(5); randn(20); randn(1): small calls share the
        // Box-Muller cache across calls; the vectorised call in between does not touch it.
        let c = try XCTUnwrap(Self.cases.first { $0["calls"] != nil })
        let name = c["name"] as! String
        let calls = c["calls"] as! [Int]
        for (mode, role) in [(NoiseRNG.torch, "avx2"), (.torchScalar, "default")] {
            var g = TorchGenerator(seed: UInt64(c["seed"] as! Int), mode: mode)
            let got = calls.flatMap { g.randn(count: $0) }
            assertBitEqual(got, try Self.file.tensor("\(name)/\(role)").toFloats(), "\(name) \(mode)")
        }
    }

    func testModesParseFromCommandLineNames() {
        XCTAssertEqual(NoiseRNG(rawValue: "torch"), .torch)
        XCTAssertEqual(NoiseRNG(rawValue: "torch-scalar"), .torchScalar)
        XCTAssertNil(NoiseRNG(rawValue: "numpy"))
    }
}
