import Foundation
import NewBieTestSupport
import XCTest
import NewBieTensor
@testable import NewBieWeights

/// A fresh temporary folder, removed by `tearDown` of the test case that made it.
final class TempDir {
    let url: URL
    init() throws {
        url = URL(fileURLWithPath: TestScratch.path("newbie-st-\(UUID().uuidString)"), isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    func file(_ name: String) -> URL { url.appendingPathComponent(name) }
    func remove() { try? FileManager.default.removeItem(at: url) }
    /// Names in the folder (hidden ones included).
    func listing() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: url.path)) ?? []).sorted() }
}

/// Raw safetensors bytes: 8-byte length, the header text (optionally padded with spaces to 8),
/// then `data`.
func rawSafetensors(header: String, data: [UInt8] = [], declaredLength: UInt64? = nil, pad: Bool = true) -> [UInt8] {
    var h = Array(header.utf8)
    if pad { while h.count % 8 != 0 { h.append(0x20) } }
    return rawSafetensors(headerBytes: h, data: data, declaredLength: declaredLength)
}

func rawSafetensors(headerBytes h: [UInt8], data: [UInt8] = [], declaredLength: UInt64? = nil) -> [UInt8] {
    var out: [UInt8] = []
    var n = (declaredLength ?? UInt64(h.count)).littleEndian
    withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
    return out + h + data
}

func writeBytes(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Runs `body`, which must throw a `WeightsError` of `kind` whose message names `file` (when
/// given) and `tensor` (when given) and contains each of `contains`. Returns the error.
@discardableResult
func assertWeightsError<T>(_ kind: WeightsError.Kind, file: String?, tensor: String? = nil, contains: [String] = [],
                           _ body: () throws -> T, line: UInt = #line) -> WeightsError? {
    do {
        _ = try body()
        XCTFail("expected a \(kind) error, got success", line: line)
        return nil
    } catch let e as WeightsError {
        XCTAssertEqual(e.kind, kind, "wrong kind; message: \(e.message)", line: line)
        if let f = file {
            XCTAssertEqual(e.file, f, "message: \(e.message)", line: line)
            XCTAssertTrue(e.message.contains(f), "message does not name the file \(f): \(e.message)", line: line)
        }
        if let t = tensor {
            XCTAssertEqual(e.tensor, t, "message: \(e.message)", line: line)
            XCTAssertTrue(e.message.contains("\"\(t)\""), "message does not name the tensor \(t): \(e.message)", line: line)
        }
        for c in contains {
            XCTAssertTrue(e.message.contains(c), "message lacks \"\(c)\": \(e.message)", line: line)
        }
        return e
    } catch {
        XCTFail("expected WeightsError, got \(type(of: error)): \(error)", line: line)
        return nil
    }
}

/// Raw bytes of a tensor as a flat array (contiguous CPU copy).
func tensorBytes(_ t: Tensor) -> [UInt8] {
    let c = t.contiguous().to(device: .cpu)
    guard c.byteCount > 0 else { return [] }
    return Array(UnsafeRawBufferPointer(start: c.hostPointer, count: c.byteCount))
}
