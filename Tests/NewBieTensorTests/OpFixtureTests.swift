import Foundation
import XCTest
import NewBieTensor
import NewBieTestSupport

/// Every CPU op against the reference fixtures in Tests/Fixtures/ops (written by
/// tools/reference/make_op_fixtures.py from torch / diffusers / transformers).
/// Tolerances: relative L2 <= 1e-5 in fp32, <= 1e-2 in bf16/fp16; exact where the op only moves data.
final class OpFixtureTests: XCTestCase {

    func testLinear() throws {
        try forEachCase("linear", atLeast: 14) { fx, c in
            let x = try fx.tensor(c, "x"), w = try fx.tensor(c, "w")
            let b = try fx.optionalTensor(c, "b")
            XCTAssertEqual(b != nil, c.bool("bias"), c.name)
            checkOp(x.linear(w, bias: b), try fx.tensor(c, "out"), tol: OpTolerance.of(c.dtype), "linear \(c.name)")
        }
    }

    func testMatmul() throws {
        try forEachCase("matmul", atLeast: 15) { fx, c in
            let a = try fx.tensor(c, "a"), b = try fx.tensor(c, "b")
            checkOp(a.matmul(b, transposeB: c.bool("transposeB")), try fx.tensor(c, "out"),
                    tol: OpTolerance.of(c.dtype), "matmul \(c.name)")
        }
    }

    func testBinary() throws {
        try forEachCase("binary", atLeast: 167) { fx, c in
            var a = try fx.tensor(c, "a")
            let b = try fx.tensor(c, "b")
            if let shape = c.ints("expand") { a = a.expand(shape) }
            if let order = c.ints("permute") { a = a.permute(order) }
            let y: Tensor
            switch c.string("op") {
            case "add": y = a + b
            case "sub": y = a - b
            case "mul": y = a * b
            case "div": y = a / b
            case "maximum": y = a.binary(.maximum, b)
            case "minimum": y = a.binary(.minimum, b)
            default: XCTFail("\(c.name): unknown op"); return
            }
            // maximum/minimum only pick one of their inputs: exact
            let exact = c.string("op") == "maximum" || c.string("op") == "minimum"
            checkOp(y, try fx.tensor(c, "out"), tol: exact ? 0 : OpTolerance.of(c.dtype), "binary \(c.name)")
        }
    }

    func testUnary() throws {
        try forEachCase("unary", atLeast: 153) { fx, c in
            var x = try fx.tensor(c, "x")
            if c.bool("transpose") { x = x.transpose(0, 1) }
            let y: Tensor
            switch c.string("op") {
            case "silu": y = x.silu()
            case "gelu_tanh": y = x.gelu(approximate: true)
            case "gelu_erf": y = x.gelu(approximate: false)
            case "tanh": y = x.tanh()
            case "exp": y = x.exp()
            case "sigmoid": y = x.sigmoid()
            case "sqrt": y = x.sqrt()
            case "rsqrt": y = x.apply(.rsqrt)
            case "log": y = x.apply(.log)
            case "square": y = x.square()
            case "neg": y = x.apply(.neg)
            case "abs": y = x.apply(.abs)
            case "relu": y = x.apply(.relu)
            case "identity": y = x.apply(.identity)
            case "scaled": y = x.scaled(c.float("s")!)
            case "affine": y = x.affine(scale: c.float("scale")!, shift: c.float("shift")!)
            case "clamp": y = x.clamp(c.float("lo")!, c.float("hi")!)
            default: XCTFail("\(c.name): unknown op"); return
            }
            let exact = ["neg", "abs", "relu", "identity", "clamp"].contains(c.string("op")!)
            checkOp(y, try fx.tensor(c, "out"), tol: exact ? 0 : OpTolerance.of(c.dtype), "unary \(c.name)")
        }
    }

    func testReduce() throws {
        try forEachCase("reduce", atLeast: 93) { fx, c in
            let x = try fx.tensor(c, "x")
            let op: ReduceOp
            switch c.string("op") {
            case "sum": op = .sum
            case "mean": op = .mean
            case "max": op = .max
            case "min": op = .min
            case "sumSquares": op = .sumSquares
            default: XCTFail("\(c.name): unknown op"); return
            }
            let y = x.reduce(op, axes: c.ints("axes")!, keepDims: c.bool("keepDims"))
            let exact = op == .max || op == .min
            checkOp(y, try fx.tensor(c, "out"), tol: exact ? 0 : OpTolerance.of(c.dtype), "reduce \(c.name)")
        }
    }

    func testSoftmax() throws {
        try forEachCase("softmax", atLeast: 12) { fx, c in
            checkOp(try fx.tensor(c, "x").softmax(), try fx.tensor(c, "out"), tol: OpTolerance.of(c.dtype), "softmax \(c.name)")
        }
    }

    func testNorms() throws {
        try forEachCase("norm", atLeast: 41) { fx, c in
            let x = try fx.tensor(c, "x")
            let w = try fx.optionalTensor(c, "w"), b = try fx.optionalTensor(c, "b")
            XCTAssertEqual(w != nil, c.bool("weight"), c.name)
            let eps = c.float("eps")!
            let y: Tensor
            switch c.string("op") {
            case "rms":
                let style: RMSNormStyle = c.string("style") == "gemmaOnePlusWeight" ? .gemmaOnePlusWeight : .roundThenWeight
                y = x.rmsNorm(weight: w, eps: eps, style: style)
            case "layer": y = x.layerNorm(weight: w, bias: b, eps: eps)
            case "group": y = x.groupNorm(groups: c.int("groups")!, weight: w, bias: b, eps: eps)
            default: XCTFail("\(c.name): unknown op"); return
            }
            if let r = c.string("compareAfterRoundingTo"), let rounded = DType(userName: r) {
                // the published module returns `rounded`; ours keeps the input's dtype and must round to it
                XCTAssertEqual(y.dtype, x.dtype, c.name)
                checkOp(y.to(rounded), try fx.tensor(c, "out"), tol: OpTolerance.of(rounded), "norm \(c.name)")
            } else {
                checkOp(y, try fx.tensor(c, "out"), tol: OpTolerance.of(c.dtype), "norm \(c.name)")
            }
        }
    }

    func testRoPE() throws {
        try forEachCase("rope", atLeast: 12) { fx, c in
            let x = try fx.tensor(c, "x")
            let layout: RoPELayout = c.string("layout") == "rotateHalf" ? .rotateHalf : .interleaved
            let y = x.rope(cos: try fx.tensor(c, "cos"), sin: try fx.tensor(c, "sin"), layout: layout)
            checkOp(y, try fx.tensor(c, "out"), tol: OpTolerance.of(c.dtype), "rope \(c.name)")
        }
    }

    func testAttention() throws {
        try forEachCase("attention", atLeast: 42) { fx, c in
            let q = try fx.tensor(c, "q"), k = try fx.tensor(c, "k"), v = try fx.tensor(c, "v")
            let opts = AttentionOptions(scale: c.float("scale"), causal: c.bool("causal"), slidingWindow: c.int("window"),
                                        keyPaddingMask: try fx.optionalTensor(c, "mask"), bias: try fx.optionalTensor(c, "bias"))
            checkOp(q.attention(k: k, v: v, options: opts), try fx.tensor(c, "out"), tol: OpTolerance.of(c.dtype),
                    "attention \(c.name)")
        }
    }

    func testConv2d() throws {
        try forEachCase("conv", atLeast: 25) { fx, c in
            let x: Tensor
            if let shape = c.ints("inputShape") {
                // input given as a formula (too large to store): ((c*7 + h*13 + w*3) mod 17 - 8) / 8
                XCTAssertEqual(c.string("inputFormula"), "((c*7 + h*13 + w*3) mod 17 - 8) / 8")
                var v = [Float](repeating: 0, count: shape.reduce(1, *))
                var i = 0
                for _ in 0..<shape[0] { for ci in 0..<shape[1] { for hi in 0..<shape[2] { for wi in 0..<shape[3] {
                    v[i] = Float((ci * 7 + hi * 13 + wi * 3) % 17 - 8) / 8
                    i += 1
                } } } }
                x = Tensor(v, shape: shape)
            } else {
                x = try fx.tensor(c, "x")
            }
            let w = try fx.tensor(c, "w")
            let b = try fx.optionalTensor(c, "b")
            XCTAssertEqual(b != nil, c.bool("bias"), c.name)
            let opts = c.bool("downsampleAsymmetric") ? Conv2dOptions.downsampleAsymmetric
                : Conv2dOptions(stride: c.int("stride")!, padding: c.int("padding")!)
            checkOp(x.conv2d(w, bias: b, options: opts), try fx.tensor(c, "out"), tol: OpTolerance.of(c.dtype), "conv2d \(c.name)")
        }
    }

    func testUpsampleNearest() throws {
        try forEachCase("upsample", atLeast: 9) { fx, c in
            checkOp(try fx.tensor(c, "x").upsampleNearest2x(), try fx.tensor(c, "out"), tol: 0, "upsample \(c.name)")
        }
    }

    func testEmbedding() throws {
        try forEachCase("embedding", atLeast: 8) { fx, c in
            let table = try fx.tensor(c, "table"), ids = try fx.tensor(c, "ids")
            let outType = c.string("outDtype").flatMap { DType(userName: $0) }
            checkOp(table.embedding(ids, dtype: outType), try fx.tensor(c, "out"), tol: 0, "embedding \(c.name)")
        }
    }

    func testViews() throws {
        try forEachCase("views", atLeast: 48) { fx, c in
            let base = c.name.split(separator: ".").first.map(String.init) ?? c.name
            switch base {
            case "split", "chunk":
                let x = try fx.tensor(c, "x")
                let parts = base == "split" ? x.split(c.ints("sizes")!, axis: c.int("axis")!)
                    : x.chunk(c.int("chunks")!, axis: c.int("axis")!)
                XCTAssertEqual(parts.count, 2, c.name)
                for (i, p) in parts.enumerated() {
                    checkOp(p.contiguous(), try fx.tensor(c, "out\(i)"), tol: 0, "views \(c.name)[\(i)]")
                }
            case let s where s.hasPrefix("concat"):
                var a = try fx.tensor(c, "a"), b = try fx.tensor(c, "b")
                if let order = c.ints("permuteA") { a = a.permute(order) }
                if let n = c.ints("narrowB") { b = b.narrow(n[0], start: n[1], length: n[2]) }
                checkOp(Tensor.concat([a, b], axis: c.int("axis")!), try fx.tensor(c, "out"), tol: 0, "views \(c.name)")
            default:
                var x = try fx.tensor(c, "x")
                for step in c.list("ops") ?? [] {
                    guard let s = step as? [Any], let op = s.first as? String else { XCTFail("\(c.name): bad op list"); return }
                    let n = s.dropFirst().map { $0 as? NSNumber }
                    let arg = { (i: Int) -> Int in n[i]!.intValue }
                    let list = { (i: Int) -> [Int] in (s[i + 1] as! [Any]).map { ($0 as! NSNumber).intValue } }
                    switch op {
                    case "permute": x = x.permute(list(0))
                    case "transpose": x = x.transpose(arg(0), arg(1))
                    case "narrow": x = x.narrow(arg(0), start: arg(1), length: arg(2))
                    case "select": x = x.select(arg(0), arg(1))
                    case "reshape": x = x.reshape(list(0))
                    case "unsqueeze": x = x.unsqueeze(arg(0))
                    case "squeeze": x = x.squeeze(arg(0))
                    case "expand": x = x.expand(list(0))
                    case "flatten": x = x.flatten(from: arg(0))
                    default: XCTFail("\(c.name): unknown view op \(op)"); return
                    }
                }
                checkOp(x.contiguous(), try fx.tensor(c, "out"), tol: 0, "views \(c.name)")
            }
        }
    }

    /// Float32 -> bf16/fp16 bit for bit against torch `.to()`, through the row (vector) path, the
    /// strided (scalar) path and the public scalar functions. NaN must stay NaN; fp16 NaN bits match
    /// torch exactly, bf16 NaN bits are not compared (torch itself gives 0xFFFF from its vectorised
    /// loop and 0x7FC0 from its scalar one).
    func testConversionsFromFloat32() throws {
        let fx = try OpFixture("convert")
        guard let c = fx.cases.first(where: { $0.name == "f32_to_half" }) else { return XCTFail("no f32_to_half case") }
        let x = try fx.tensor(c, "x")
        let xs = x.toFloats()
        XCTAssertGreaterThan(xs.count, 2000)
        XCTAssertTrue(xs.contains { $0.isNaN } && xs.contains { $0.isInfinite } && xs.contains { $0.isSubnormal })
        for (dtype, role) in [(DType.bf16, "bf16"), (DType.f16, "f16")] {
            let want = halfBits(try fx.tensor(c, role))
            let vector = halfBits(x.to(dtype))
            // strided destination: every element through the scalar store
            let wide = Tensor.empty([xs.count, 2], dtype: dtype)
            CPUBackend.shared.copy(x, into: wide.select(1, 0))
            let strided = halfBits(wide.select(1, 0))
            let scalar = xs.map { dtype == .bf16 ? Half.bf16Bits($0) : Half.f16Bits($0) }
            for (path, got) in [("rows", vector), ("strided", strided), ("scalar", scalar)] {
                var bad: [String] = []
                for i in 0..<want.count {
                    let toFloat = { (h: UInt16) -> Float in dtype == .bf16 ? Half.bf16ToFloat(h) : Half.f16ToFloat(h) }
                    let ok = dtype == .bf16 && xs[i].isNaN ? toFloat(got[i]).isNaN : got[i] == want[i]
                    if !ok && bad.count < 8 {
                        bad.append(String(format: "x=0x%08x got 0x%04x want 0x%04x", xs[i].bitPattern, got[i], want[i]))
                    }
                }
                XCTAssertEqual(got.count, want.count)
                XCTAssertTrue(bad.isEmpty, "f32 -> \(dtype) (\(path)): \(bad.joined(separator: ", "))")
                OpReport.record("convert f32->\(dtype) \(path) mismatches", Double(bad.count), 0)
            }
        }
    }

    /// fp16/bf16 patterns to float32 and between the two 16-bit types (one rounding, through float32).
    func testConversionsFromHalf() throws {
        let fx = try OpFixture("convert")
        guard let c = fx.cases.first(where: { $0.name == "half_to_other" }) else { return XCTFail("no half_to_other case") }
        let f16 = try fx.tensor(c, "f16"), bf16 = try fx.tensor(c, "bf16")
        XCTAssertEqual(f16.dtype, .f16)
        XCTAssertEqual(bf16.dtype, .bf16)
        // to float32: bit exact, NaN payloads included
        for (src, role) in [(f16, "f16_to_f32"), (bf16, "bf16_to_f32")] {
            let want = floatBits(try fx.tensor(c, role))
            let got = floatBits(src.to(.f32))
            XCTAssertEqual(got.count, want.count)
            let bad = zip(got, want).filter { $0 != $1 }.prefix(8).map { String(format: "got 0x%08x want 0x%08x", $0, $1) }
            XCTAssertTrue(bad.isEmpty, "\(role): \(bad.joined(separator: ", "))")
            OpReport.record("convert \(role) mismatches", Double(bad.count), 0)
        }
        // between the 16-bit types
        for (src, dst, role) in [(f16, DType.bf16, "f16_to_bf16"), (bf16, DType.f16, "bf16_to_f16")] {
            let want = halfBits(try fx.tensor(c, role))
            let got = halfBits(src.to(dst))
            let srcFloats = src.toFloats()
            XCTAssertEqual(got.count, want.count)
            var bad: [String] = []
            for i in 0..<want.count {
                let ok = dst == .bf16 && srcFloats[i].isNaN ? Half.bf16ToFloat(got[i]).isNaN : got[i] == want[i]
                if !ok && bad.count < 8 { bad.append(String(format: "#%d got 0x%04x want 0x%04x", i, got[i], want[i])) }
            }
            XCTAssertTrue(bad.isEmpty, "\(role): \(bad.joined(separator: ", "))")
            OpReport.record("convert \(role) mismatches", Double(bad.count), 0)
        }
    }
}
