import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import XCTest
import NewBieHarness
import NewBieImage
import NewBiePipeline
import NewBieQueue
@testable import NewBieServer
import NewBieTestSupport

func tempDir(_ name: String) -> String {
    let d = TestScratch.path("newbie-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

enum TinyServerFixture {
    static let model: String = try! TinyModel.writeTemporary("server-tiny", seed: 0, in: TestScratch.root)
}

/// One server in this process on a free port, on the tiny model on the CPU.
final class RunningServer: @unchecked Sendable {
    let setup: ServeSetup
    let base: URL
    let task: Task<Void, Error>
    let token: String?
    /// A session allowing 32 connections to the server (the load test's 20 clients each get one).
    static let session: URLSession = {
        let c = URLSessionConfiguration.ephemeral
        c.httpMaximumConnectionsPerHost = 32
        return URLSession(configuration: c)
    }()

    init(limits: JobLimits = JobLimits(), startWorker: Bool = true, token: String? = nil) async throws {
        let out = tempDir("serve")
        var ws = WorkerSettings()
        ws.heartbeat = 0.5
        setup = try ServeSetup(outputs: out, paths: try ModelPaths.resolve(root: TinyServerFixture.model), options: StageOptions(),
                               limits: limits, worker: ws)
        var options = ServerOptions()
        options.port = 0
        options.token = token
        self.token = token
        let portStream = AsyncStream<Int>.makeStream()
        var quiet = Logger(label: "newbie-serve-test")
        quiet.logLevel = .critical   // cancelling the server task at the end logs an error per open channel
        let app = try HTTPAdapter.application(api: setup.api, options: options, logger: quiet, onRunning: { port in
            portStream.continuation.yield(port)
        })
        if startWorker { setup.worker?.start() }
        task = Task { try await app.run() }
        var it = portStream.stream.makeAsyncIterator()
        let port = await it.next()!
        base = URL(string: "http://127.0.0.1:\(port)")!
    }

    func stop() {
        task.cancel()
        setup.worker?.stop()
    }

    struct Reply {
        let status: Int
        let headers: [String: String]
        let data: Data
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:] }
        var text: String { String(decoding: data, as: UTF8.self) }
    }

    func request(_ method: String, _ path: String, json: Any? = nil, body: Data? = nil, headers: [String: String] = [:],
                 auth: Bool = true) async throws -> Reply {
        var r = URLRequest(url: URL(string: path, relativeTo: base)!)
        r.httpMethod = method
        r.timeoutInterval = 60
        if let j = json { r.httpBody = try JSONSerialization.data(withJSONObject: j); r.setValue("application/json", forHTTPHeaderField: "Content-Type") }
        if let b = body { r.httpBody = b }
        if auth, let t = token { r.setValue("Bearer \(t)", forHTTPHeaderField: "Authorization") }
        for (k, v) in headers { r.setValue(v, forHTTPHeaderField: k) }
        let (data, response) = try await Self.session.data(for: r)
        let h = response as! HTTPURLResponse
        var hs: [String: String] = [:]
        for (k, v) in h.allHeaderFields { hs[String(describing: k).lowercased()] = String(describing: v) }
        return Reply(status: h.statusCode, headers: hs, data: data)
    }

    /// Polls the job until `until` holds (or 60 s pass).
    func waitJob(_ id: String, until: ([String: Any]) -> Bool) async throws -> [String: Any] {
        for _ in 0..<1200 {
            let j = try await request("GET", "/v1/jobs/\(id)").json
            if until(j) { return j }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        XCTFail("job \(id) never reached the state asked for")
        return [:]
    }
}

/// Server-sent events of a finished stream, as (event, data) pairs.
func parseSSE(_ text: String) -> [(String, [String: Any])] {
    text.components(separatedBy: "\n\n").compactMap { block in
        var name = "", data = ""
        for line in block.split(separator: "\n") {
            if line.hasPrefix("event: ") { name = String(line.dropFirst(7)) }
            if line.hasPrefix("data: ") { data = String(line.dropFirst(6)) }
        }
        guard !name.isEmpty else { return nil }
        return (name, (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any] ?? [:])
    }
}

final class ServerEndToEndTests: XCTestCase {
    func testJobThroughTheAPI() async throws {
        let s = try await RunningServer()
        defer { s.stop() }
        let health = try await s.request("GET", "/healthz")
        XCTAssertEqual(health.status, 200)
        XCTAssertEqual(health.json["status"] as? String, "ok")

        let created = try await s.request("POST", "/v1/jobs", json: ["prompt": "<character_1><n>miku</n></character_1>", "width": 64, "height": 32,
                                                                     "steps": 5, "count": 2, "seed": 3, "cfg_trunc": 100])
        XCTAssertEqual(created.status, 201, created.text)
        let id = try XCTUnwrap(created.json["id"] as? String)
        XCTAssertEqual(created.headers["location"], "/v1/jobs/\(id)")

        // the event stream runs until the job ends (it may join after the start)
        let events = try await s.request("GET", "/v1/jobs/\(id)/events")
        XCTAssertEqual(events.status, 200)
        XCTAssertTrue(events.headers["content-type"]?.hasPrefix("text/event-stream") ?? false)
        let ev = parseSSE(events.text)
        XCTAssertEqual(ev.last?.0, "done", events.text)
        let urls = try XCTUnwrap(ev.last?.1["images"] as? [String])
        XCTAssertEqual(urls, ["/v1/jobs/\(id)/images/0.png", "/v1/jobs/\(id)/images/1.png"])

        let job = try await s.request("GET", "/v1/jobs/\(id)").json
        XCTAssertEqual(job["state"] as? String, "done")
        XCTAssertEqual(job["attempts"] as? Int, 1)
        XCTAssertEqual((job["progress"] as? [String: Any])?["step"] as? Int, 4)

        // images: PNGs with the job and the parameters, matching the CLI's pixels
        let dir = tempDir("serve-images")
        let cli = try Pipeline.generate((0..<2).map { i in
            var st = SamplingSettings.officialDemo
            st.width = 64; st.height = 32; st.steps = 5; st.seed = UInt64(3 + i); st.cfg.truncation = 100
            return GenerationRequest(prompt: "<character_1><n>miku</n></character_1>", settings: st, output: dir + "/\(i).png")
        }, paths: try ModelPaths.resolve(root: TinyServerFixture.model), options: StageOptions())
        for (i, u) in urls.enumerated() {
            let img = try await s.request("GET", u)
            XCTAssertEqual(img.status, 200)
            XCTAssertEqual(img.headers["content-type"], "image/png")
            let f = dir + "/got-\(i).png"
            try img.data.write(to: URL(fileURLWithPath: f))
            let png = try PNG.read(f)
            XCTAssertEqual(png.textValue("newbie:job"), id)
            XCTAssertEqual(png.textValue("newbie:seed"), "\(3 + i)")
            XCTAssertEqual(png.image, try PNG.read(cli[i]).image, "same pixels as newbie generate")
        }
        let missing = try await s.request("GET", "/v1/jobs/\(id)/images/2.png")
        XCTAssertEqual(missing.status, 404)

        // history
        let second = try await s.request("POST", "/v1/jobs", json: ["prompt": "1girl", "width": 32, "height": 32, "steps": 2])
        XCTAssertEqual(second.status, 201)
        let page1 = try await s.request("GET", "/v1/jobs?limit=1")
        XCTAssertEqual(page1.status, 200)
        let jobs1 = try XCTUnwrap(page1.json["jobs"] as? [[String: Any]])
        XCTAssertEqual(jobs1.first?["id"] as? String, second.json["id"] as? String)
        let next = try XCTUnwrap(page1.json["next"] as? String)
        let page2 = try await s.request("GET", "/v1/jobs?limit=1&before=\(next)")
        XCTAssertEqual((page2.json["jobs"] as? [[String: Any]])?.first?["id"] as? String, id)
        XCTAssertTrue(page2.json["next"] is NSNull)
        do { let v = try await s.request("GET", "/v1/jobs?state=done").status; XCTAssertEqual(v, 200) }
        do { let v = try await s.request("GET", "/v1/jobs?limit=1000").status; XCTAssertEqual(v, 400) }
        do { let v = try await s.request("GET", "/v1/jobs?state=lost").status; XCTAssertEqual(v, 400) }

        // service endpoints
        let metrics = try await s.request("GET", "/metrics")
        XCTAssertTrue(metrics.text.contains("newbie_jobs{state=\"done\"}"), metrics.text)
        XCTAssertTrue(metrics.text.contains("newbie_http_requests_total{method=\"POST\",status=\"201\"}"), metrics.text)
        let models = try await s.request("GET", "/v1/models")
        XCTAssertEqual(models.json["resident"] as? Bool, true)
        XCTAssertFalse(models.text.contains(TinyServerFixture.model), "no server paths in /v1/models")
        let openapi = try await s.request("GET", "/openapi.json")
        XCTAssertEqual(openapi.status, 200)
        XCTAssertEqual(openapi.json["openapi"] as? String, "3.1.0")
        let page = try await s.request("GET", "/")
        XCTAssertEqual(page.status, 200)
        XCTAssertTrue(page.headers["content-type"]?.hasPrefix("text/html") ?? false)
        XCTAssertNotNil(page.headers["content-security-policy"])
        XCTAssertEqual(page.headers["x-content-type-options"], "nosniff")
        XCTAssertNil(page.headers["access-control-allow-origin"], "CORS is off")
        for asset in ["/app.js", "/style.css"] { let v = try await s.request("GET", asset).status; XCTAssertEqual(v, 200, asset) }
    }

    func testValidationLimitsAndQueueFull() async throws {
        var limits = JobLimits()
        limits.maxQueued = 2
        limits.maxBodyBytes = 64 * 1024
        let s = try await RunningServer(limits: limits, startWorker: false)
        defer { s.stop() }
        let unknown = try await s.request("POST", "/v1/jobs", json: ["prompt": "a", "stpes": 3])
        XCTAssertEqual(unknown.status, 400)
        XCTAssertEqual(unknown.json["field"] as? String, "stpes")
        let big = try await s.request("POST", "/v1/jobs", json: ["prompt": "a", "width": 8192])
        XCTAssertEqual(big.status, 400)
        XCTAssertEqual(big.json["field"] as? String, "width")
        do { let v = try await s.request("POST", "/v1/jobs", body: Data("{".utf8)).status; XCTAssertEqual(v, 400) }
        let huge = try await s.request("POST", "/v1/jobs", body: Data(("{\"prompt\": \"" + String(repeating: "x", count: 70 * 1024) + "\"}").utf8))
        XCTAssertEqual(huge.status, 413)
        let long = try await s.request("POST", "/v1/jobs", json: ["prompt": String(repeating: "x", count: 33 * 1024)])
        XCTAssertEqual(long.status, 400)

        // no worker: jobs wait; the third is refused with Retry-After
        let a = try await s.request("POST", "/v1/jobs", json: ["prompt": "a", "width": 32, "height": 32, "steps": 2])
        let b = try await s.request("POST", "/v1/jobs", json: ["prompt": "b", "width": 32, "height": 32, "steps": 2])
        XCTAssertEqual(a.status, 201); XCTAssertEqual(b.status, 201)
        XCTAssertEqual(a.json["position"] as? Int, 1)
        XCTAssertEqual(b.json["position"] as? Int, 2)
        let full = try await s.request("POST", "/v1/jobs", json: ["prompt": "c", "width": 32, "height": 32, "steps": 2])
        XCTAssertEqual(full.status, 429)
        XCTAssertNotNil(Int(full.headers["retry-after"] ?? ""), "\(full.headers)")

        // cancelling a queued job frees its place; the other moves up
        let aid = a.json["id"] as! String, bid = b.json["id"] as! String
        let cancelled = try await s.request("DELETE", "/v1/jobs/\(aid)")
        XCTAssertEqual(cancelled.status, 200)
        XCTAssertEqual(cancelled.json["state"] as? String, "cancelled")
        do { let v = try await s.request("DELETE", "/v1/jobs/\(aid)").status; XCTAssertEqual(v, 409) }
        do { let v = try await s.request("GET", "/v1/jobs/\(bid)").json["position"] as? Int; XCTAssertEqual(v, 1) }
        let ev = parseSSE(try await s.request("GET", "/v1/jobs/\(aid)/events").text)
        XCTAssertEqual(ev.map(\.0), ["cancelled"])
        do { let v = try await s.request("GET", "/v1/jobs/\(aid)/images/0.png").status; XCTAssertEqual(v, 404) }

        // a known path with another method: 405 and Allow
        let put = try await s.request("PUT", "/v1/jobs/\(bid)")
        XCTAssertEqual(put.status, 405)
        XCTAssertEqual(put.headers["allow"], "GET, DELETE")
        let bad = try await s.request("POST", "/v1/jobs", json: ["prompt": "a", "cfg": 1e300])
        XCTAssertEqual(bad.json["field"] as? String, "cfg")

        // ids are checked before anything else; nothing from the path reaches a file name
        for bad in ["/v1/jobs/nope", "/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/\(bid)/images/..%2Fjobs.sqlite",
                    "/v1/jobs/\(bid)/images/0.png", "/v1/jobs/\(Job.newID())", "/jobs.sqlite", "/v1/jobs/\(bid)/images/-1.png"] {
            let r = try await s.request("GET", bad)
            XCTAssertEqual(r.status, 404, bad)
        }
    }

    func testCancelARunningJob() async throws {
        let s = try await RunningServer()
        defer { s.stop() }
        let created = try await s.request("POST", "/v1/jobs", json: ["prompt": "1girl", "width": 128, "height": 128, "steps": 200])
        let id = try XCTUnwrap(created.json["id"] as? String)
        _ = try await s.waitJob(id) { (($0["progress"] as? [String: Any])?["step"] as? Int ?? 0) >= 2 }
        let del = try await s.request("DELETE", "/v1/jobs/\(id)")
        XCTAssertEqual(del.status, 202, del.text)
        let ev = parseSSE(try await s.request("GET", "/v1/jobs/\(id)/events").text)
        XCTAssertEqual(ev.last?.0, "cancelled")
        let j = try await s.waitJob(id) { ($0["state"] as? String) != "running" }
        XCTAssertEqual(j["state"] as? String, "cancelled")
        XCTAssertLessThan((j["progress"] as? [String: Any])?["step"] as? Int ?? 999, 199)
        XCTAssertEqual(j["images"] as? [String], [])
    }

    /// A queued job's stream sends keepalive comments; when the client drops it, its listener goes.
    func testEventStreamKeepaliveAndRelease() async throws {
        let s = try await RunningServer(startWorker: false)
        defer { s.stop() }
        s.setup.api.keepaliveSeconds = 0.2
        let created = try await s.request("POST", "/v1/jobs", json: ["prompt": "a", "width": 32, "height": 32, "steps": 2])
        let id = try XCTUnwrap(created.json["id"] as? String)
        func firstTwo() async -> [String] {
            guard case .events(let stream) = s.setup.api.events(id: id).body else { return [] }
            var chunks: [String] = []
            for await chunk in stream {
                chunks.append(chunk)
                if chunks.count == 2 { break }
            }
            return chunks
        }
        let chunks = await firstTwo()
        XCTAssertEqual(chunks.count, 2)
        guard chunks.count == 2 else { return }
        XCTAssertTrue(chunks[0].hasPrefix("event: queued"), chunks[0])
        XCTAssertEqual(chunks[1], ": keepalive\n\n")
        // the stream above is gone: its listener leaves the hub
        for _ in 0..<100 where s.setup.hub.listenerCount > 0 { try await Task.sleep(nanoseconds: 20_000_000) }
        XCTAssertEqual(s.setup.hub.listenerCount, 0)
    }

    func testPromptCheckAndFormat() async throws {
        let s = try await RunningServer(startWorker: false)
        defer { s.stop() }
        let bad = try await s.request("POST", "/v1/prompt/check", json: ["prompt": "<character_1>\n<n>miku</character_1>"])
        XCTAssertEqual(bad.status, 200)
        XCTAssertEqual(bad.json["valid"] as? Bool, false)
        let issue = try XCTUnwrap((bad.json["issues"] as? [[String: Any]])?.first)
        XCTAssertEqual(issue["line"] as? Int, 2)
        XCTAssertEqual(issue["severity"] as? String, "error")
        XCTAssertNotNil(issue["column"] as? Int)
        let plain = try await s.request("POST", "/v1/prompt/check", json: ["prompt": "1girl, solo"])
        XCTAssertEqual(plain.json["plain"] as? Bool, true)
        XCTAssertEqual(plain.json["valid"] as? Bool, true)
        let f = try await s.request("POST", "/v1/prompt/format", json: ["prompt": "<character_1><n>miku</n><gender>1girl</gender></character_1>"])
        XCTAssertEqual(f.status, 200)
        XCTAssertEqual(f.json["text"] as? String, "<character_1>\n<n>miku</n>\n<gender>1girl</gender>\n</character_1>")
        let ff = try await s.request("POST", "/v1/prompt/format", json: ["prompt": "<character_1><n>miku</character_1>"])
        XCTAssertEqual(ff.status, 422)
        XCTAssertFalse((ff.json["issues"] as? [Any] ?? []).isEmpty)
        do { let v = try await s.request("POST", "/v1/prompt/check", json: ["text": "x"]).status; XCTAssertEqual(v, 400) }
    }

    func testTokenAndBindRules() async throws {
        var o = ServerOptions()
        o.host = "0.0.0.0"
        XCTAssertThrowsError(try o.check(), "a non-local bind needs a token")
        o.token = "0123456789abcdef0123"
        XCTAssertNoThrow(try o.check())
        XCTAssertNoThrow(try ServerOptions().check(), "127.0.0.1 needs none")
        let tf = tempDir("token") + "/token"
        try "short\n".write(toFile: tf, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ServerOptions.readToken(tf))
        try "0123456789abcdef0123\n".write(toFile: tf, atomically: true, encoding: .utf8)
        XCTAssertEqual(try ServerOptions.readToken(tf), "0123456789abcdef0123")

        let s = try await RunningServer(startWorker: false, token: "0123456789abcdef0123")
        defer { s.stop() }
        let no = try await s.request("GET", "/v1/jobs", auth: false)
        XCTAssertEqual(no.status, 401)
        XCTAssertEqual(no.headers["www-authenticate"], "Bearer")
        do { let v = try await s.request("GET", "/v1/jobs", headers: ["Authorization": "Bearer 0123456789abcdef0124"], auth: false).status; XCTAssertEqual(v, 401) }
        do { let v = try await s.request("GET", "/metrics", auth: false).status; XCTAssertEqual(v, 401) }
        do { let v = try await s.request("GET", "/v1/jobs").status; XCTAssertEqual(v, 200) }
        do { let v = try await s.request("GET", "/healthz", auth: false).status; XCTAssertEqual(v, 200) }
        do { let v = try await s.request("GET", "/", auth: false).status; XCTAssertEqual(v, 200) }
    }

    func testSecondServerOnTheSameOutputsIsRefused() throws {
        let out = tempDir("serve-lock")
        let paths = try ModelPaths.resolve(root: TinyServerFixture.model)
        let first = try ServeSetup(outputs: out, paths: paths, options: StageOptions())
        XCTAssertThrowsError(try ServeSetup(outputs: out, paths: paths, options: StageOptions()))
        _ = first
    }

    /// `--queue sqlite:PATH`: the store (and its lock) where the path says, images still in the
    /// outputs folder; a second server on the same database is refused even with other outputs.
    func testSQLiteQueueAtAPath() throws {
        let db = tempDir("serve-db") + "/sub/queue.sqlite"
        let paths = try ModelPaths.resolve(root: TinyServerFixture.model)
        let models = (paths: paths, options: StageOptions())
        let first = try ServeSetup(outputs: tempDir("serve-db-out1"), queue: .sqlite(path: db), models: models)
        XCTAssertTrue(FileManager.default.fileExists(atPath: db))
        XCTAssertFalse(FileManager.default.fileExists(atPath: ServeSetup.storePath(outputs: first.outputs)))
        XCTAssertThrowsError(try ServeSetup(outputs: tempDir("serve-db-out2"), queue: .sqlite(path: db), models: models))
        _ = first
    }
}
