import Foundation
import XCTest
import NewBieTensor
import NewBieWeights
import NewBieTestSupport

/// One file of op fixtures written by tools/reference/make_op_fixtures.py: tensors named
/// "<case>/<role>", case parameters as a JSON list in `__metadata__["cases"]`.
final class OpFixture {
    let name: String
    let file: SafeTensorsFile
    let cases: [OpCase]

    init(_ name: String) throws {
        self.name = name
        file = try SafeTensorsFile(path: Fixtures.path("ops/\(name).safetensors"))
        guard let json = file.metadata["cases"], let data = json.data(using: .utf8),
              let list = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] else {
            throw WeightsError("ops/\(name).safetensors: no \"cases\" list in the metadata")
        }
        var cases: [OpCase] = []
        for entry in list {
            guard let n = entry["name"] as? String else { throw WeightsError("ops/\(name): case without a name") }
            cases.append(OpCase(name: n, params: entry))
        }
        self.cases = cases
    }

    /// A fresh, aligned, contiguous copy of "<case>/<role>" (the mapping itself may be unaligned).
    func tensor(_ c: OpCase, _ role: String) throws -> Tensor {
        let mapped = try file.tensor("\(c.name)/\(role)")
        let t = Tensor.empty(mapped.shape, dtype: mapped.dtype)
        if mapped.byteCount > 0 {
            t.hostPointer.copyMemory(from: mapped.hostPointer, byteCount: mapped.byteCount)
        }
        return t
    }

    func optionalTensor(_ c: OpCase, _ role: String) throws -> Tensor? {
        file.info("\(c.name)/\(role)") == nil ? nil : try tensor(c, role)
    }
}

struct OpCase {
    let name: String
    let params: [String: Any]

    var dtype: DType {
        guard let s = params["dtype"] as? String, let d = DType(userName: s) else { return .f32 }
        return d
    }
    func string(_ k: String) -> String? { params[k] as? String }
    func bool(_ k: String) -> Bool { (params[k] as? Bool) ?? false }
    func int(_ k: String) -> Int? { (params[k] as? NSNumber)?.intValue }
    func float(_ k: String) -> Float? { (params[k] as? NSNumber)?.floatValue }
    func ints(_ k: String) -> [Int]? { (params[k] as? [Any])?.compactMap { ($0 as? NSNumber)?.intValue } }
    func list(_ k: String) -> [Any]? { params[k] as? [Any] }
}

/// Tolerances on the relative L2 error. The project's bound is 1e-5 for fp32 and 1e-2 for bf16/fp16;
/// the reduced-precision bounds here are tighter because every op computes in Float32 and rounds once,
/// as the reference does: results may differ only where the two Float32 values straddle a rounding
/// boundary (a one-ulp flip in a small fraction of elements; measured <= 1.2e-4 bf16, <= 3e-5 fp16).
/// An op that rounded an intermediate to bf16 would show about 1e-3 and more.
enum OpTolerance {
    static func of(_ dtype: DType) -> Double {
        switch dtype {
        case .f32: return 1e-5
        case .bf16: return 5e-4
        case .f16: return 1e-4
        default: return 0
        }
    }
}

/// Compares against the fixture, records the error, and fails above `tol`.
/// Shapes and dtypes must match; NaN anywhere gives +inf (so it never passes).
@discardableResult
func checkOp(_ got: Tensor, _ want: Tensor, tol: Double, _ label: String,
             file: StaticString = #filePath, line: UInt = #line) -> Double {
    XCTAssertEqual(got.shape, want.shape, "\(label): shape", file: file, line: line)
    XCTAssertEqual(got.dtype, want.dtype, "\(label): dtype", file: file, line: line)
    let err = got.shape == want.shape ? relativeL2(got.toFloats(), want.toFloats()) : .infinity
    OpReport.record(label, err, tol)
    XCTAssertLessThanOrEqual(err, tol, "\(label): relative L2 error \(err) above \(tol)", file: file, line: line)
    return err
}

/// Prints one line per compared case (grep "[op-error]" in the test log for the table).
enum OpReport {
    static func record(_ label: String, _ err: Double, _ tol: Double) {
        print(String(format: "[op-error] %@ %.3e (tol %.0e)", label, err, tol))
    }
}

/// Loads a fixture file and runs `body` for every case, failing when the file has fewer cases than expected.
func forEachCase(_ fileName: String, atLeast minimum: Int, file: StaticString = #filePath, line: UInt = #line,
                 _ body: (OpFixture, OpCase) throws -> Void) throws {
    let fx = try OpFixture(fileName)
    XCTAssertGreaterThanOrEqual(fx.cases.count, minimum, "ops/\(fileName): too few cases", file: file, line: line)
    for c in fx.cases {
        try body(fx, c)
    }
}

/// Raw 16-bit patterns of a contiguous f16/bf16 tensor.
func halfBits(_ t: Tensor) -> [UInt16] {
    precondition(t.dtype.byteSize == 2)
    if t.rank == 1 {  // read through the view's stride, without a conversion
        let p = t.hostPointer.assumingMemoryBound(to: UInt16.self)
        return (0..<t.count).map { p[$0 * t.strides[0]] }
    }
    let c = t.contiguous()
    let p = c.hostPointer.assumingMemoryBound(to: UInt16.self)
    return (0..<c.count).map { p[$0] }
}

/// Raw 32-bit patterns of a contiguous f32 tensor.
func floatBits(_ t: Tensor) -> [UInt32] {
    precondition(t.dtype == .f32)
    return t.toFloats().map { $0.bitPattern }
}
