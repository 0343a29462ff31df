import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport
@testable import NewBieDiffusion

/// LoRA and LoKr adapters on the tiny official-naming DiT against PyPI peft and lycoris-lora
/// (tools/reference/make_lora_fixtures.py; fixtures in Tests/Fixtures/lora/).
final class AdapterTests: XCTestCase {
    static let reference: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("lora/reference.safetensors"))
    static let dit: SafeTensorsFile = try! SafeTensorsFile(path: Fixtures.path("dit/reference.safetensors"))

    /// Model A's checked weights and config, and its plan (linear layers, tensor names).
    func modelA() throws -> (ModelWeights, NextDiTConfig, WeightLoader) {
        let (source, json) = try NextDiT.openCheckpoint(path: Fixtures.path("dit/official"), configPath: nil)
        let (weights, config) = try NextDiT.checkedWeights(source: source, json: json)
        return (weights, config, try NextDiT.plan(config))
    }

    func adapters(_ specs: [AdapterSpec], mode: AdapterMode, lenient: Bool = false) throws -> ModelAdapters {
        let (_, _, plan) = try modelA()
        return try ModelAdapters.load(specs, mode: mode, lenient: lenient, linears: plan.linears)
    }

    static let files: [String: [AdapterSpec]] = [
        "peft": [AdapterSpec(path: Fixtures.path("lora/peft"))],
        "kohya": [AdapterSpec(path: Fixtures.path("lora/kohya.safetensors"))],
        "comfy_noalpha": [AdapterSpec(path: Fixtures.path("lora/comfy_noalpha.safetensors"))],
        "lokr_full": [AdapterSpec(path: Fixtures.path("lora/lokr_full.safetensors"))],
        "lokr_lowrank": [AdapterSpec(path: Fixtures.path("lora/lokr_lowrank.safetensors"))],
        "combined": [AdapterSpec(path: Fixtures.path("lora/peft/adapter_model.safetensors"), strength: 0.7),
                     AdapterSpec(path: Fixtures.path("lora/lokr_lowrank.safetensors"), strength: 1.3)],
    ]

    /// Every adapted layer, built by the layer kit (merged or unmerged), on the library's inputs.
    func checkLayers(_ name: String, mode: AdapterMode, file: StaticString = #filePath, line: UInt = #line) throws {
        let (weights, _, plan) = try modelA()
        let ad = try adapters(AdapterTests.files[name]!, mode: mode)
        let loader = try WeightLoader(weights: weights, placement: ModelPlacement(name: "dit", precision: .uniform(.f32), adapters: ad))
        let biases = Set(plan.requested.map(\.name))
        let cases = AdapterTests.reference.names.filter { $0.hasPrefix("\(name).\(mode.rawValue)/") && $0.hasSuffix(".y") }
        XCTAssertFalse(cases.isEmpty, file: file, line: line)
        XCTAssertEqual(Set(ad.terms.keys), Set(cases.map { String($0.dropFirst("\(name).\(mode.rawValue)/".count).dropLast(2)) }),
                       "\(name): adapted modules", file: file, line: line)
        var worst = 0.0
        for c in cases {
            let module = String(c.dropFirst("\(name).\(mode.rawValue)/".count).dropLast(2))
            let x = try AdapterTests.reference.tensor("\(name).unmerged/\(module).x")
            let want = try AdapterTests.reference.tensor(c)
            let shape = plan.linears[module]!
            let lin = try loader.root.linear(module, in: shape[1], out: shape[0], bias: biases.contains(module + ".bias"))
            XCTAssertEqual(lin.adapters.count, mode == .merged ? 0 : ad.terms[module]!.count, file: file, line: line)
            let got = lin(x)
            let scale = max(1.0, maxAbsDiff(want.toFloats(), [Float](repeating: 0, count: want.count)))
            let err = maxAbsDiff(got.toFloats(), want.toFloats()) / scale
            worst = max(worst, err)
            XCTAssertLessThanOrEqual(err, 1e-5, "\(name) \(mode) \(module)", file: file, line: line)
        }
        print("adapter \(name) \(mode.rawValue): \(cases.count) layers, max error \(String(format: "%.2e", worst)) (tolerance 1e-5)")
    }

    func testPEFTLayers() throws { for m in AdapterMode.allCases { try checkLayers("peft", mode: m) } }
    func testKohyaLayers() throws { for m in AdapterMode.allCases { try checkLayers("kohya", mode: m) } }
    func testComfyNoAlphaLayers() throws { for m in AdapterMode.allCases { try checkLayers("comfy_noalpha", mode: m) } }
    func testLoKrFullLayers() throws { for m in AdapterMode.allCases { try checkLayers("lokr_full", mode: m) } }
    func testLoKrLowRankLayers() throws { for m in AdapterMode.allCases { try checkLayers("lokr_lowrank", mode: m) } }
    func testLoRAAndLoKrTogetherLayers() throws { for m in AdapterMode.allCases { try checkLayers("combined", mode: m) } }

    func forward(_ name: String, mode: AdapterMode) throws -> Tensor {
        let (weights, config, _) = try modelA()
        let m = try NextDiT(weights: weights, config: config,
                            placement: ModelPlacement(name: "dit", precision: .uniform(.f32), adapters: try adapters(AdapterTests.files[name]!, mode: mode)))
        let d = AdapterTests.dit
        let mask = try d.tensor("inputs/mask").toInts().map(Float.init)
        return try m.forward(try d.tensor("inputs/x"), t: try d.tensor("inputs/t").toFloats(), capFeats: try d.tensor("inputs/cap"),
                             capMask: Tensor(mask, shape: [2, 9]), clipPooled: try d.tensor("inputs/clip"))
    }

    /// The whole DiT with adapters against diffusers with the library-merged weights, and merged
    /// against unmerged in Swift: fp32, relative L2 within 1e-5 (measured: about 6e-7).
    func testDiTForwardEveryAdapter() throws {
        for name in AdapterTests.files.keys.sorted() {
            let want = try AdapterTests.reference.tensor("dit.\(name)/out")
            let merged = try forward(name, mode: .merged), unmerged = try forward(name, mode: .unmerged)
            let e1 = relativeL2(merged, want), e2 = relativeL2(unmerged, want), e3 = relativeL2(merged, unmerged)
            print("adapter DiT \(name): merged \(String(format: "%.2e", e1)), unmerged \(String(format: "%.2e", e2)) vs diffusers; merged vs unmerged \(String(format: "%.2e", e3))")
            XCTAssertLessThanOrEqual(e1, 1e-5, name)
            XCTAssertLessThanOrEqual(e2, 1e-5, name)
            XCTAssertLessThanOrEqual(e3, 1e-5, name)
        }
    }

    /// Unmerged adapters read their strength at every forward: 0 is the base model exactly, and
    /// back to 1 is the adapter again, without reloading.
    func testUnmergedStrengthChangesWithoutReloading() throws {
        let (weights, config, _) = try modelA()
        let ad = try adapters(AdapterTests.files["combined"]!, mode: .unmerged)
        let m = try NextDiT(weights: weights, config: config, placement: ModelPlacement(name: "dit", precision: .uniform(.f32), adapters: ad))
        let base = try NextDiT(weights: weights, config: config, placement: ModelPlacement(name: "dit", precision: .uniform(.f32)))
        let d = AdapterTests.dit
        let mask = Tensor(try d.tensor("inputs/mask").toInts().map(Float.init), shape: [2, 9])
        func run(_ model: NextDiT) throws -> Tensor {
            try model.forward(try d.tensor("inputs/x"), t: try d.tensor("inputs/t").toFloats(), capFeats: try d.tensor("inputs/cap"),
                              capMask: mask, clipPooled: try d.tensor("inputs/clip"))
        }
        XCTAssertLessThanOrEqual(relativeL2(try run(m), try AdapterTests.reference.tensor("dit.combined/out")), 1e-5)
        for s in ad.strengths { s.value = 0 }
        XCTAssertEqual(try run(m).toFloats(), try run(base).toFloats())
        ad.strengths[0].value = 1   // the PEFT LoRA alone at strength 1
        XCTAssertLessThanOrEqual(relativeL2(try run(m), try AdapterTests.reference.tensor("dit.peft/out")), 1e-5)
    }

    /// On another device (the emulated one: device memory the CPU backend cannot touch) the merge
    /// and the side products run there, with the CPU's results.
    func testOnTheModelsDevice() throws {
        let (weights, config, _) = try modelA()
        let dev = EmulatedDevice.shared.device
        let d = AdapterTests.dit
        let mask = Tensor(try d.tensor("inputs/mask").toInts().map(Float.init), shape: [2, 9])
        let want = try AdapterTests.reference.tensor("dit.combined/out")
        for mode in AdapterMode.allCases {
            let m = try NextDiT(weights: weights, config: config,
                                placement: ModelPlacement(name: "dit", device: dev, precision: .uniform(.f32),
                                                          adapters: try adapters(AdapterTests.files["combined"]!, mode: mode)))
            let out = try m.forward(try d.tensor("inputs/x"), t: try d.tensor("inputs/t").toFloats(), capFeats: try d.tensor("inputs/cap"),
                                    capMask: mask, clipPooled: try d.tensor("inputs/clip"))
            XCTAssertEqual(out.device, dev)
            XCTAssertLessThanOrEqual(relativeL2(out.to(device: .cpu), want), 1e-5, "\(mode)")
        }
    }

    /// Adapters trained on diffusers' Lumina2 model (to_q / to_k / to_v onto the fused qkv's rows,
    /// to_out.0, feed_forward.linear_2, norm1.linear), as PEFT saves them and with a diffusers
    /// pipeline's `transformer.` names, against PEFT on the diffusers model itself.
    func testDiffusersNamedAdapters() throws {
        let (weights, config, plan) = try modelA()
        let aliases = NextDiTNaming.adapterAliases(config, linears: plan.linears)
        XCTAssertEqual(aliases["layers.0.attn.to_q"], AdapterAlias(module: "layers.0.attention.qkv", rows: 0..<72))
        XCTAssertEqual(aliases["layers.0.attn.to_v"], AdapterAlias(module: "layers.0.attention.qkv", rows: 96..<120))
        XCTAssertEqual(aliases["norm_out.linear_2"], AdapterAlias(module: "final_layer.linear", rows: 0..<64))
        let d = AdapterTests.dit
        let mask = Tensor(try d.tensor("inputs/mask").toInts().map(Float.init), shape: [2, 9])
        for file in ["lora/diffusers_peft", "lora/diffusers_transformer.safetensors"] {
            for mode in AdapterMode.allCases {
                let ad = try ModelAdapters.load([AdapterSpec(path: Fixtures.path(file))], mode: mode, lenient: false,
                                                linears: plan.linears, aliases: aliases)
                XCTAssertEqual(Set(ad.terms.values.flatMap { $0.map(\.scale) }), [1])
                XCTAssertEqual(ad.terms["layers.1.attention.qkv"]?.count, 3)   // q, k and v
                let m = try NextDiT(weights: weights, config: config, placement: ModelPlacement(name: "dit", precision: .uniform(.f32), adapters: ad))
                let out = try m.forward(try d.tensor("inputs/x"), t: try d.tensor("inputs/t").toFloats(), capFeats: try d.tensor("inputs/cap"),
                                        capMask: mask, clipPooled: try d.tensor("inputs/clip"))
                let want = try AdapterTests.reference.tensor("dit.diffusers_peft/" + (mode == .merged ? "out" : "unmerged"))
                let e = relativeL2(out, want)
                print("adapter DiT diffusers-named \(file) \(mode.rawValue): \(String(format: "%.2e", e))")
                XCTAssertLessThanOrEqual(e, 1e-5, "\(file) \(mode)")
            }
        }
        // without the aliases the diffusers names match nothing: one error listing them
        XCTAssertThrowsError(try ModelAdapters.load([AdapterSpec(path: Fixtures.path("lora/diffusers_peft"))], mode: .merged, lenient: false,
                                                    linears: plan.linears)) { XCTAssertTrue("\($0)".contains("attn.to_q"), "\($0)") }
    }

    // MARK: alpha, scale, messages

    func testScalesFromConfigAndTensors() throws {
        func scales(_ specs: [AdapterSpec]) throws -> Set<Float> { Set(try adapters(specs, mode: .merged).terms.values.flatMap { $0.map(\.scale) }) }
        XCTAssertEqual(try scales(AdapterTests.files["peft"]!), [0.5])                     // alpha 2 / r 4 (adapter_config.json)
        XCTAssertEqual(try scales([AdapterSpec(path: Fixtures.path("lora/peft"), strength: 0.6)]), [0.3])
        XCTAssertEqual(try scales(AdapterTests.files["kohya"]!), [1.5])                    // alpha tensor 3 / rank 2
        XCTAssertEqual(try scales(AdapterTests.files["comfy_noalpha"]!), [1])              // no alpha: scale 1
        XCTAssertEqual(try scales(AdapterTests.files["lokr_full"]!), [1])                  // full factors: scale 1
        XCTAssertEqual(try scales(AdapterTests.files["lokr_lowrank"]!), [1.5])             // alpha 3 / rank 2
    }

    /// PEFT without adapter_config.json: alpha = rank, said in a note naming the official trainer's
    /// alpha 4 / rank 8; at strength 0.5 it is the configured adapter.
    func testPEFTWithoutConfigSaysWhichAlpha() throws {
        let ad = try adapters([AdapterSpec(path: Fixtures.path("lora/peft_noconfig"))], mode: .merged)
        XCTAssertEqual(Set(ad.terms.values.flatMap { $0.map(\.scale) }), [1])
        let note = ad.notes.first { $0.contains("adapter_config.json") }
        XCTAssertNotNil(note)
        XCTAssertTrue(note?.contains("alpha = rank") ?? false, note ?? "")
        XCTAssertTrue(note?.contains("twice") ?? false, note ?? "")
        let half = try adapters([AdapterSpec(path: Fixtures.path("lora/peft_noconfig"), strength: 0.5)], mode: .merged)
        XCTAssertEqual(Set(half.terms.values.flatMap { $0.map(\.scale) }), [0.5])
    }

    func testUnmatchedKeysAreOneErrorOrAWarning() throws {
        let dir = URL(fileURLWithPath: TestScratch.path("newbie-lora-\(UUID().uuidString)"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("odd.safetensors")
        let down = Tensor([Float](repeating: 0.1, count: 2 * 72), shape: [2, 72]), up = Tensor([Float](repeating: 0.1, count: 72 * 2), shape: [72, 2])
        try SafeTensorsWriter.write([
            ("lora_unet_layers_0_attention_out.lora_down.weight", down), ("lora_unet_layers_0_attention_out.lora_up.weight", up),
            ("lora_unet_layers_7_attention_out.lora_down.weight", down), ("lora_unet_layers_7_attention_out.lora_up.weight", up),
            ("lora_unet_nonsense.lora_down.weight", down), ("lora_unet_nonsense.lora_up.weight", up),
        ], metadata: [:], to: url)
        XCTAssertThrowsError(try adapters([AdapterSpec(path: url.path)], mode: .merged)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains("2 adapter keys"), m)
            XCTAssertTrue(m.contains("lora_unet_layers_7_attention_out.lora_down.weight") && m.contains("lora_unet_nonsense.lora_down.weight"), m)
            XCTAssertTrue(m.contains(url.path), m)
            XCTAssertTrue(m.contains("--lora-lenient"), m)
        }
        let ad = try adapters([AdapterSpec(path: url.path)], mode: .merged, lenient: true)
        XCTAssertEqual(Array(ad.terms.keys), ["layers.0.attention.out"])
        XCTAssertTrue(ad.notes.contains { $0.hasPrefix("warning") && $0.contains("lora_unet_nonsense") })
    }

    func testBadFilesNameFileAndTensor() throws {
        let dir = URL(fileURLWithPath: TestScratch.path("newbie-lora-\(UUID().uuidString)"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // not a safetensors file
        let junk = dir.appendingPathComponent("junk.safetensors")
        try Data("not a safetensors file".utf8).write(to: junk)
        XCTAssertThrowsError(try adapters([AdapterSpec(path: junk.path)], mode: .merged)) { XCTAssertTrue("\($0)".contains(junk.path), "\($0)") }
        // missing file
        XCTAssertThrowsError(try adapters([AdapterSpec(path: dir.appendingPathComponent("none.safetensors").path)], mode: .merged)) {
            XCTAssertTrue("\($0)".contains("no such file"), "\($0)")
        }
        // wrong shape for the module
        let shape = dir.appendingPathComponent("shape.safetensors")
        try SafeTensorsWriter.write([
            ("diffusion_model.layers.0.attention.out.lora_down.weight", Tensor([Float](repeating: 0.1, count: 2 * 50), shape: [2, 50])),
            ("diffusion_model.layers.0.attention.out.lora_up.weight", Tensor([Float](repeating: 0.1, count: 72 * 2), shape: [72, 2])),
        ], metadata: [:], to: shape)
        XCTAssertThrowsError(try adapters([AdapterSpec(path: shape.path)], mode: .merged)) { e in
            let m = "\(e)"
            XCTAssertTrue(m.contains(shape.path) && m.contains("diffusion_model.layers.0.attention.out.lora_down.weight") && m.contains("[72, 72]"), m)
        }
        // an up without its down
        let half = dir.appendingPathComponent("half.safetensors")
        try SafeTensorsWriter.write([("lora_unet_layers_0_attention_out.lora_up.weight", Tensor([Float](repeating: 0.1, count: 72 * 2), shape: [72, 2]))],
                                    metadata: [:], to: half)
        XCTAssertThrowsError(try adapters([AdapterSpec(path: half.path)], mode: .merged)) { e in
            XCTAssertTrue("\(e)".contains("lora_down"), "\(e)")
        }
        // a layout not read here (LoHa)
        let loha = dir.appendingPathComponent("loha.safetensors")
        try SafeTensorsWriter.write([("lycoris_layers_0_attention_out.hada_w1_a", Tensor([Float](repeating: 0.1, count: 4), shape: [2, 2]))],
                                    metadata: [:], to: loha)
        XCTAssertThrowsError(try adapters([AdapterSpec(path: loha.path)], mode: .merged)) { e in
            XCTAssertTrue("\(e)".contains("hada_w1_a") && "\(e)".contains("not supported"), "\(e)")
        }
    }

    func testSpecParsing() throws {
        XCTAssertEqual(try AdapterSpec.parse("a.safetensors"), AdapterSpec(path: "a.safetensors"))
        XCTAssertEqual(try AdapterSpec.parse("a.safetensors:0.5"), AdapterSpec(path: "a.safetensors", strength: 0.5))
        XCTAssertEqual(try AdapterSpec.parse("dir:x/a.safetensors:-1"), AdapterSpec(path: "dir:x/a.safetensors", strength: -1))
        XCTAssertEqual(try AdapterSpec.parse("dir:x/a.safetensors"), AdapterSpec(path: "dir:x/a.safetensors"))
        XCTAssertThrowsError(try AdapterSpec.parse(":0.5"))
    }

    /// Merged at load into bf16 weights (fp32 merge, then cast) and unmerged in bf16 both stay close
    /// to the fp32 result.
    func testBF16() throws {
        let (weights, config, _) = try modelA()
        let want = try AdapterTests.reference.tensor("dit.combined/out")
        for mode in AdapterMode.allCases {
            let m = try NextDiT(weights: weights, config: config,
                                placement: ModelPlacement(name: "dit", precision: .uniform(.bf16), adapters: try adapters(AdapterTests.files["combined"]!, mode: mode)))
            let d = AdapterTests.dit
            let mask = try d.tensor("inputs/mask").toInts().map(Float.init)
            let out = try m.forward(try d.tensor("inputs/x"), t: try d.tensor("inputs/t").toFloats(), capFeats: try d.tensor("inputs/cap"),
                                    capMask: Tensor(mask, shape: [2, 9]), clipPooled: try d.tensor("inputs/clip"))
            let e = relativeL2(out, want)
            print("adapter DiT combined bf16 \(mode.rawValue): \(String(format: "%.2e", e)) vs fp32 diffusers")
            XCTAssertLessThanOrEqual(e, 3e-2)
        }
    }
}
