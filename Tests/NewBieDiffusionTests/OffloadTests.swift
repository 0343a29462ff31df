import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// `--offload` on the CPU: the ring's planning (layout, sizing, which tensors travel, the order of
/// the copies) and the streamed DiT against the resident one. On the CPU a "copy to the device"
/// is a memcpy into the ring's slot, so the streamed forward runs exactly the same ops on exactly
/// the same values: outputs must be identical, bit for bit. (gpu-check has the GPU rows.)
final class OffloadTests: XCTestCase {
    static let dit: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("dit/reference.safetensors"))

    func model(offload: Bool, precision: ModulePrecision = .uniform(.f32)) throws -> NextDiT {
        let (source, json) = try NextDiT.openCheckpoint(path: Fixtures.path("dit/official"), configPath: nil)
        let (weights, config) = try NextDiT.checkedWeights(source: source, json: json)
        return try NextDiT(weights: weights, config: config, placement: ModelPlacement(name: "dit", precision: precision, offload: offload))
    }

    func forward(_ m: NextDiT) throws -> [Float] {
        let d = OffloadTests.dit
        let mask = try d.tensor("inputs/mask").toInts().map(Float.init)
        return try m.forward(try d.tensor("inputs/x"), t: try d.tensor("inputs/t").toFloats(), capFeats: try d.tensor("inputs/cap"),
                             capMask: Tensor(mask, shape: [2, 9]), clipPooled: try d.tensor("inputs/clip")).toFloats()
    }

    /// Elements whose bits differ (a count, so a failure prints one number, not two arrays).
    func differing(_ a: [Float], _ b: [Float]) -> Int {
        a.count == b.count ? zip(a, b).filter { $0.bitPattern != $1.bitPattern }.count : max(a.count, b.count)
    }

    func testPackedLayoutAlignsEveryTensor() {
        let l = PackedLayout(byteCounts: [10, 256, 257, 0, 4])
        XCTAssertEqual(l.offsets, [0, 256, 512, 1024, 1024])
        XCTAssertEqual(l.byteCount, 1280)
        XCTAssertTrue(l.offsets.allSatisfy { $0 % PackedLayout.alignment == 0 })
        XCTAssertEqual(PackedLayout(byteCounts: []).byteCount, 1)
    }

    func testRingNeedsTwoSlots() {
        XCTAssertThrowsError(try WeightRing(device: .cpu, slots: 1)) { e in
            XCTAssertTrue("\(e)".contains("--offload"), "\(e)")
            XCTAssertTrue("\(e)".contains("at least 2 slots"), "\(e)")
        }
    }

    /// Sizing and the order of copies: a group is copied once per pass, the next two ahead of use
    /// (cyclic: the last groups fetch the first of the next pass), and each slot hands back what
    /// was packed into it.
    func testRingCopiesAheadAndHandsBackWhatWasPacked() throws {
        let ring = try WeightRing(device: .cpu, slots: 3)
        var packed: [[Float]] = []
        for g in 0..<5 {
            let a = Tensor((0..<(3 + g)).map { Float($0 + 10 * g) }, shape: [3 + g])
            let b = Tensor([Float(g), -Float(g)], shape: [1, 2], dtype: .bf16)
            let (index, host) = try ring.add([a, b])
            XCTAssertEqual(index, g)
            XCTAssertEqual(host[0].toFloats(), a.toFloats())
            XCTAssertEqual(host[1].dtype, .bf16)
            packed.append(a.toFloats() + b.toFloats())
        }
        XCTAssertEqual(ring.groupCount, 5)
        XCTAssertEqual(ring.tensorCount(4), 2)
        XCTAssertEqual(ring.slotBytes, 512)                  // largest group: 7 floats (256) + 2 bf16 (256)
        XCTAssertEqual(ring.deviceBytes, 3 * 512)
        XCTAssertEqual(ring.hostBytes, 5 * 512)
        for pass in 1...2 {
            for g in 0..<5 {
                let got = ring.with(g) { $0[0].toFloats() + $0[1].toFloats() }
                XCTAssertEqual(got, packed[g], "pass \(pass) group \(g)")
            }
            XCTAssertEqual(ring.copies, 5 * pass + 2, "pass \(pass): each group once, plus the next pass's first two")
        }
        // out of order (a step cache skipping blocks): still the right values
        XCTAssertEqual(ring.with(3) { $0[0].toFloats() }, Array(packed[3].prefix(6)))
        XCTAssertEqual(ring.with(0) { $0[0].toFloats() }, Array(packed[0].prefix(3)))
    }

    /// Every per-block tensor travels, and nothing else (embedders, final layer stay resident).
    func testEveryBlockTensorTravelsAndOnlyThose() throws {
        let m = try model(offload: true)
        let ring = try XCTUnwrap(m.streamedBlocks)
        let c = m.config
        XCTAssertEqual(ring.groupCount, c.nContextRefiner + c.nNoiseRefiner + c.nLayers)
        let plan = try NextDiT.plan(c).requested.map(\.name)
        let inBlocks = plan.filter { ["context_refiner.", "noise_refiner.", "layers."].contains(where: $0.hasPrefix) }
        XCTAssertEqual((0..<ring.groupCount).reduce(0) { $0 + ring.tensorCount($1) }, inBlocks.count)
        XCTAssertLessThan(inBlocks.count, plan.count, "the embedders and the final layer stay resident")
        // the blocks hold host views into the pinned buffers, not device tensors
        XCTAssertTrue(m.layers.allSatisfy { $0.tensors.allSatisfy { $0.device == .cpu } })
        XCTAssertNil(try model(offload: false).streamedBlocks)
    }

    func testStreamedForwardIsIdenticalToResident() throws {
        let resident = try forward(try model(offload: false))
        let m = try model(offload: true)
        let streamed = try forward(m)
        XCTAssertFalse(resident.contains { !$0.isFinite })
        XCTAssertEqual(differing(streamed, resident), 0)
        XCTAssertEqual(differing(try forward(m), resident), 0, "a second pass (blocks prefetched across passes)")
        XCTAssertEqual(m.streamedBlocks?.copies, 2 * m.streamedBlocks!.groupCount + 2)
    }

    func testStreamedInt8AndBF16ForwardsAreIdenticalToResident() throws {
        for precision in [ModulePrecision(base: .f32, rules: [], quantization: ModuleQuantization(rules: [QuantRule(pattern: "", scheme: .int8)])),
                          ModulePrecision(base: .bf16, rules: [], quantization: ModuleQuantization(rules: [QuantRule(pattern: "", scheme: .int8g128)])),
                          ModulePrecision.uniform(.bf16)] {
            let resident = try forward(try model(offload: false, precision: precision))
            let m = try model(offload: true, precision: precision)
            XCTAssertFalse(resident.contains { !$0.isFinite })
            XCTAssertEqual(differing(try forward(m), resident), 0, "\(precision)")
            if !precision.quantization.isEmpty {
                XCTAssertTrue(m.layers[0].qkv.quantized != nil, "the int8 values are what travels")
                XCTAssertEqual(m.layers[0].qkv.streamedTensors.map(\.dtype), [.i8, .f32])
            }
        }
    }

    /// GGUF block weights travel as their blocks: a Q8_0 DiT streamed equals the same file resident
    /// (rebuilding a block weight over its device copy once hit a precondition: block schemes carry
    /// their logical shape apart from the bytes).
    func testStreamedGGUFBlocksAreIdenticalToResident() throws {
        func gguf(offload: Bool) throws -> NextDiT {
            let (source, json) = try NextDiT.openCheckpoint(path: Fixtures.path("quantfiles/dit.q8_0.gguf"), configPath: nil)
            let (weights, config) = try NextDiT.checkedWeights(source: source, json: json)
            return try NextDiT(weights: weights, config: config, placement: ModelPlacement(name: "dit", precision: .uniform(.f32), offload: offload))
        }
        let m = try gguf(offload: true)
        XCTAssertEqual(m.layers[0].qkv.quantized?.scheme, .q8_0)
        let resident = try tinyDiTForward(try gguf(offload: false)).toFloats()
        XCTAssertFalse(resident.contains { !$0.isFinite })
        XCTAssertEqual(differing(try tinyDiTForward(m).toFloats(), resident), 0)
    }
}
