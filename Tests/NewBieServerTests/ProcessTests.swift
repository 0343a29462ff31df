import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest
import NewBieImage

/// The built `newbie` binary as a separate process: started, killed with SIGKILL mid-job, started
/// again on the same outputs folder.
final class ServeProcessTests: XCTestCase {
    static var binary: String? {
        let dir = Bundle.main.executableURL?.deletingLastPathComponent().path ?? ""
        let candidates = [dir + "/newbie", FileManager.default.currentDirectoryPath + "/.build/debug/newbie"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    final class Server {
        let process = Process()
        var port = 0
        var log = ""

        init(binary: String, model: String, outputs: String) throws {
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["serve", "--model", model, "--outputs", outputs, "--port", "0", "--lease", "10"]
            let err = Pipe()
            process.standardError = err
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            // the port is in the "listening on" line
            let h = err.fileHandleForReading
            let deadline = Date().addingTimeInterval(60)
            while port == 0 && Date() < deadline {
                let d = h.availableData
                if d.isEmpty { break }
                log += String(decoding: d, as: UTF8.self)
                if let r = log.range(of: "listening on http://127.0.0.1:") {
                    port = Int(log[r.upperBound...].prefix { $0.isNumber }) ?? 0
                }
            }
            // keep draining stderr so the child never blocks on a full pipe
            h.readabilityHandler = { _ = $0.availableData }
            guard port != 0 else { process.terminate(); throw NSError(domain: "serve did not start: \(log)", code: 1) }
        }

        func kill9() { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        func stop() { process.terminate(); process.waitUntilExit() }

        func call(_ method: String, _ path: String, json: Any? = nil) async throws -> (Int, [String: Any], Data) {
            var r = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
            r.httpMethod = method
            if let j = json { r.httpBody = try JSONSerialization.data(withJSONObject: j) }
            let (d, resp) = try await URLSession.shared.data(for: r)
            return ((resp as! HTTPURLResponse).statusCode, (try? JSONSerialization.jsonObject(with: d)) as? [String: Any] ?? [:], d)
        }
    }

    /// kill -9 the server mid-job; the next start on the same outputs folder runs the job to done
    /// (attempt 2), with whole images only.
    func testKill9MidJobThenRestartCompletesTheJob() async throws {
        guard let bin = Self.binary else { throw XCTSkip("the newbie binary is not built (swift build --product newbie)") }
        let out = tempDir("serve-kill")
        let first = try Server(binary: bin, model: TinyServerFixture.model, outputs: out)
        let (status, created, _) = try await first.call("POST", "/v1/jobs", json: ["prompt": "1girl", "width": 128, "height": 128, "steps": 40, "count": 2])
        XCTAssertEqual(status, 201)
        let id = try XCTUnwrap(created["id"] as? String)
        var step = 0
        for _ in 0..<600 where step < 3 {
            let (_, j, _) = try await first.call("GET", "/v1/jobs/\(id)")
            step = (j["progress"] as? [String: Any])?["step"] as? Int ?? 0
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        XCTAssertGreaterThanOrEqual(step, 3, "the job never got going")
        first.kill9()
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: out + "/jobs/\(id)")) ?? []
        XCTAssertFalse(leftovers.contains("1.png"), "killed before the second image: \(leftovers)")

        let second = try Server(binary: bin, model: TinyServerFixture.model, outputs: out)
        defer { second.stop() }
        var job: [String: Any] = [:]
        for _ in 0..<3600 {
            job = try await second.call("GET", "/v1/jobs/\(id)").1
            if let s = job["state"] as? String, s != "queued" && s != "running" { break }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        XCTAssertEqual(job["state"] as? String, "done", "\(job)")
        XCTAssertEqual(job["attempts"] as? Int, 2)
        let files = try FileManager.default.contentsOfDirectory(atPath: out + "/jobs/\(id)").sorted()
        XCTAssertEqual(files, ["0.png", "1.png"], "no temporary files left")
        for n in 0..<2 {
            let (code, _, data) = try await second.call("GET", "/v1/jobs/\(id)/images/\(n).png")
            XCTAssertEqual(code, 200)
            let f = out + "/check-\(n).png"
            try data.write(to: URL(fileURLWithPath: f))
            XCTAssertEqual(try PNG.read(f).textValue("newbie:job"), id)
        }
    }

    /// SIGTERM while a client follows a running job's events: the server stops within seconds (not
    /// when the job would end), the stream closes, and the job runs again at the next start.
    func testSigtermWithAnOpenEventStreamStopsPromptly() async throws {
        guard let bin = Self.binary else { throw XCTSkip("the newbie binary is not built (swift build --product newbie)") }
        let out = tempDir("serve-term")
        let server = try Server(binary: bin, model: TinyServerFixture.model, outputs: out)
        let (_, created, _) = try await server.call("POST", "/v1/jobs", json: ["prompt": "1girl", "width": 128, "height": 128, "steps": 200])
        let id = try XCTUnwrap(created["id"] as? String)
        let port = server.port
        let follower = Task { () -> String in
            let (d, _) = try await URLSession.shared.data(from: URL(string: "http://127.0.0.1:\(port)/v1/jobs/\(id)/events")!)
            return String(decoding: d, as: UTF8.self)
        }
        var step = 0
        for _ in 0..<600 where step < 2 {
            step = ((try await server.call("GET", "/v1/jobs/\(id)").1["progress"] as? [String: Any])?["step"] as? Int) ?? 0
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        let t0 = Date()
        server.process.terminate()
        server.process.waitUntilExit()
        let seconds = Date().timeIntervalSince(t0)
        XCTAssertLessThan(seconds, 10, "graceful stop took \(seconds) s")
        let events = try await follower.value
        XCTAssertTrue(events.contains("event: step"), events)
        let again = try Server(binary: bin, model: TinyServerFixture.model, outputs: out)
        defer { again.stop() }
        let (_, j, _) = try await again.call("GET", "/v1/jobs/\(id)")
        XCTAssertTrue(["queued", "running"].contains(j["state"] as? String ?? ""), "\(j)")
        _ = try await again.call("DELETE", "/v1/jobs/\(id)")
    }
}
