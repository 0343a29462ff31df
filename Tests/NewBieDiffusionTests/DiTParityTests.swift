import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// NextDiT against the diffusers Lumina2 reference + NewBie CLIP pathway
/// (tools/reference/make_dit_fixtures.py; fixtures in Tests/Fixtures/dit/).
final class DiTParityTests: XCTestCase {
    struct Inputs {
        let x: Tensor, t: [Float], cap: Tensor, mask: Tensor, clip: Tensor
    }

    static let reference: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("dit/reference.safetensors"))

    func ref(_ name: String) throws -> Tensor { try DiTParityTests.reference.tensor(name) }

    func inputs() throws -> Inputs {
        let maskInts = try ref("inputs/mask").toInts()
        return Inputs(x: try ref("inputs/x"), t: try ref("inputs/t").toFloats(), cap: try ref("inputs/cap"),
                      mask: Tensor(maskInts.map(Float.init), shape: [2, 9]), clip: try ref("inputs/clip"))
    }

    func cfgCase(_ name: String) throws -> (t: Float, options: CFGOptions) {
        let cases = try JSONSerialization.jsonObject(with: Data(DiTParityTests.reference.metadata["cases"]!.utf8)) as! [[String: Any]]
        let c = cases.first { ($0["name"] as? String) == name }!
        func f(_ k: String) -> Float { Float(c[k] as! Double) }
        return (f("t"), CFGOptions(scale: f("scale"), truncation: f("trunc"), renorm: f("renorm")))
    }

    func check(_ got: Tensor, _ name: String, tolerance: Double, file: StaticString = #filePath, line: UInt = #line) throws {
        let want = try ref(name + "/out")
        XCTAssertEqual(got.shape, want.shape, file: file, line: line)
        let err = relativeL2(got.toFloats(), want.toFloats())
        print("DiT parity \(name): relative L2 \(String(format: "%.3e", err)) (tolerance \(tolerance))")
        XCTAssertLessThanOrEqual(err, tolerance, "\(name)", file: file, line: line)
    }

    func forward(_ model: NextDiT, _ i: Inputs) throws -> Tensor {
        try model.forward(i.x, t: i.t, capFeats: i.cap, capMask: i.mask, clipPooled: i.clip)
    }

    // MARK: single forwards

    func testOfficialNamingFP32() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        XCTAssertEqual(m.config.dim, 72); XCTAssertEqual(m.config.nHeads, 6); XCTAssertEqual(m.config.nKVHeads, 2)
        XCTAssertEqual(m.config.ffnHidden, 160); XCTAssertEqual(m.config.axesDims, [4, 4, 4])
        XCTAssertEqual(m.config.axesLens, [64, 32, 32]); XCTAssertEqual(m.config.clipTextDim, 32)
        let out = try forward(m, try inputs())
        XCTAssertEqual(out.dtype, .f32)
        try check(out, "a.fwd.f32", tolerance: 1e-4)
    }

    func testOfficialNamingBF16() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official/model.safetensors"), dtype: .bf16)
        let out = try forward(m, try inputs())
        try check(out, "a.fwd.bf16", tolerance: 2e-2)
    }

    /// ComfyUI prefix, fp16 storage, no config.json: everything inferred from shapes.
    func testComfyPrefixFP16FileInferredConfig() throws {
        let official = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        let m = try NextDiT.load(path: Fixtures.path("dit/comfy_a_fp16.safetensors"), dtype: .f32)
        // everything but the RoPE table lengths (not in any tensor shape; NewBie's [1024, 512, 512]
        // apply) is inferred from the shapes; head_dim 12 -> axes [4, 4, 4]
        var expected = official.config
        expected.axesLens = NextDiTConfig.newBieExp01.axesLens
        XCTAssertEqual(m.config, expected)
        try check(try forward(m, try inputs()), "a.fwd.f32", tolerance: 1e-4)
        let h = try NextDiT.load(path: Fixtures.path("dit/comfy_a_fp16.safetensors"), dtype: .f16)
        try check(try forward(h, try inputs()), "a.fwd.f16", tolerance: 2e-2)
    }

    /// Model B: diffusers naming (split q/k/v, norm1.linear, norm_out...), fp32 storage, RoPE axes [2,4,6].
    func testDiffusersNamingFP32() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/diffusers"), dtype: .f32)
        XCTAssertEqual(m.config.axesDims, [2, 4, 6])
        XCTAssertEqual(m.config.nLayers, 2); XCTAssertEqual(m.config.nNoiseRefiner, 1); XCTAssertEqual(m.config.nContextRefiner, 1)
        try check(try forward(m, try inputs()), "b.fwd.f32", tolerance: 1e-4)
    }

    /// A sample's output does not depend on the other samples of the batch (offsets, padding).
    func testBatchIndependence() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        let i = try inputs()
        let both = try forward(m, i)
        let one = try m.forward(i.x.narrow(0, start: 1, length: 1), t: [i.t[1]],
                                capFeats: i.cap.narrow(0, start: 1, length: 1).narrow(1, start: 0, length: 5),
                                capMask: Tensor([Float](repeating: 1, count: 5), shape: [1, 5]),
                                clipPooled: i.clip.narrow(0, start: 1, length: 1))
        let err = relativeL2(one.toFloats(), both.narrow(0, start: 1, length: 1).toFloats())
        XCTAssertLessThanOrEqual(err, 1e-5)
    }

    // MARK: forward_with_cfg

    func runCFG(_ m: NextDiT, _ name: String) throws -> Tensor {
        let i = try inputs()
        let (t, opts) = try cfgCase(name)
        let x0 = i.x.narrow(0, start: 0, length: 1)
        let xc = Tensor.concat([x0, x0], axis: 0)
        return try m.forwardWithCFG(xc, t: [t, t], capFeats: i.cap, capMask: i.mask, clipPooled: i.clip, options: opts)
    }

    func testCFGFP32() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        for name in ["a.cfg_renorm.f32", "a.cfg_trunc.f32", "a.cfg_plain.f32"] {
            try check(try runCFG(m, name), name, tolerance: 1e-4)
        }
        // the renorm case really differs from plain guidance at the same scale
        let (_, o) = try cfgCase("a.cfg_renorm.f32")
        let i = try inputs()
        let x0 = i.x.narrow(0, start: 0, length: 1)
        let noRenorm = try m.forwardWithCFG(Tensor.concat([x0, x0], axis: 0), t: [0.2, 0.2], capFeats: i.cap, capMask: i.mask,
                                            clipPooled: i.clip, options: CFGOptions(scale: o.scale, truncation: o.truncation, renorm: 0))
        XCTAssertGreaterThan(relativeL2(noRenorm.toFloats(), try ref("a.cfg_renorm.f32/out").toFloats()), 1e-2)
    }

    /// The sampler-facing call: cond and uncond given separately (uncond with only its 5 real
    /// tokens, so the captions are padded to a common length inside).
    func testGuidedVelocity() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        let i = try inputs()
        let (t, opts) = try cfgCase("a.cfg_renorm.f32")
        let cond = DiTConditioning(capFeats: i.cap.narrow(0, start: 0, length: 1), capMask: i.mask.narrow(0, start: 0, length: 1),
                                   clipPooled: i.clip.narrow(0, start: 0, length: 1))
        let uncond = DiTConditioning(capFeats: i.cap.narrow(0, start: 1, length: 1).narrow(1, start: 0, length: 5),
                                     capMask: Tensor([Float](repeating: 1, count: 5), shape: [1, 5]),
                                     clipPooled: i.clip.narrow(0, start: 1, length: 1))
        let v = try m.guidedVelocity(i.x.narrow(0, start: 0, length: 1), t: t, cond: cond, uncond: uncond, options: opts)
        XCTAssertEqual(v.shape, [1, 16, 16, 24])
        let want = try ref("a.cfg_renorm.f32/out").narrow(0, start: 0, length: 1)
        XCTAssertLessThanOrEqual(relativeL2(v.toFloats(), want.toFloats()), 1e-4)
    }

    func testCFGBF16() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .bf16)
        for name in ["a.cfg_renorm.bf16", "a.cfg_trunc.bf16"] {
            try check(try runCFG(m, name), name, tolerance: 2e-2)
        }
    }

    // MARK: input checks

    func testRejectsBadInputs() throws {
        let m = try NextDiT.load(path: Fixtures.path("dit/official"), dtype: .f32)
        let i = try inputs()
        let holey = Tensor([1, 0, 1, 0, 0, 0, 0, 0, 0] + [Float](repeating: 1, count: 9), shape: [2, 9])
        XCTAssertThrowsError(try m.forward(i.x, t: i.t, capFeats: i.cap, capMask: holey, clipPooled: i.clip))
        XCTAssertThrowsError(try m.forward(i.x, t: i.t, capFeats: i.cap, capMask: i.mask, clipPooled: nil))
        XCTAssertThrowsError(try m.forward(i.x.narrow(2, start: 0, length: 15), t: i.t, capFeats: i.cap, capMask: i.mask, clipPooled: i.clip))
    }
}
