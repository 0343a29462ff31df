import Foundation
import NewBieTestSupport
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest
import NewBieHarness
import NewBiePostgresQueue
import NewBieQueue

/// `newbie worker` processes (the built binary) on a throwaway PostgreSQL cluster and the tiny
/// model: two workers share 50 jobs, each done exactly once; a worker killed with SIGKILL mid-job
/// loses the job to another after its lease expires, and that one completes it.
final class WorkerProcessTests: XCTestCase {
    static var binary: String? {
        let dir = Bundle.main.executableURL?.deletingLastPathComponent().path ?? ""
        let candidates = [dir + "/newbie", FileManager.default.currentDirectoryPath + "/.build/debug/newbie"]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    nonisolated(unsafe) static var cluster: PostgresCluster?
    nonisolated(unsafe) static var skip: Error?
    nonisolated(unsafe) static var model = ""

    override class func setUp() {
        do {
            cluster = try PostgresCluster()
            model = try TinyModel.writeTemporary("pg-worker-tiny", seed: 0, in: TestScratch.root)
        } catch { skip = error }
    }

    override class func tearDown() { cluster?.stop(); cluster = nil }

    final class Worker {
        let process = Process()
        let logPath: String

        init(binary: String, queue: String, outputs: String, name: String, lease: Double) throws {
            logPath = outputs + "/\(name).log"
            FileManager.default.createFile(atPath: logPath, contents: nil)
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["worker", "--queue", queue, "--model", WorkerProcessTests.model, "--outputs", outputs,
                                 "--lease", "\(lease)", "--poll", "0.2", "--name", name]
            let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
            process.standardError = log
            process.standardOutput = log
            try process.run()
        }

        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        func kill9() { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        func stop() {
            guard process.isRunning else { return }
            process.terminate()
            process.waitUntilExit()
        }
    }

    func setUpQueue() throws -> (String, PostgresJobStore, String) {
        if let e = Self.skip { throw e }
        guard let bin = Self.binary else { throw XCTSkip("the newbie binary is not built (swift build --product newbie)") }
        let url = try Self.cluster!.makeDatabase()
        let out = TestScratch.path("newbie-pg-workers-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        _ = bin
        return (url, try PostgresJobStore(url: try PostgresURL(parsing: url)), out)
    }

    func waitUntil(_ seconds: Double, _ what: String, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTFail("not within \(seconds) s: \(what)")
    }

    func testTwoWorkersFiftyJobsEachDoneExactlyOnce() throws {
        let (url, store, out) = try setUpQueue()
        var ids: [String] = []
        for k in 0..<50 { ids.append(try store.submit(params("1girl, job \(k)", steps: 2), maxQueued: 100, now: Date().timeIntervalSince1970).id) }
        let a = try Worker(binary: Self.binary!, queue: url, outputs: out, name: "worker-a", lease: 10)
        let b = try Worker(binary: Self.binary!, queue: url, outputs: out, name: "worker-b", lease: 10)
        defer { a.stop(); b.stop() }
        let t0 = Date()
        try waitUntil(600, "all 50 jobs done") { try store.stats(now: 0).byState[.done] == 50 || !a.process.isRunning || !b.process.isRunning }
        print("two workers: 50 jobs in \(String(format: "%.1f", Date().timeIntervalSince(t0))) s")
        a.stop(); b.stop()
        XCTAssertEqual(try store.stats(now: 0).byState[.done], 50, "worker a: \(a.log)\nworker b: \(b.log)")
        // exactly once: one "done" line per job over both workers, and one claim each
        let doneLines = (a.log + b.log).split(separator: "\n").filter { $0.contains(": done (") }
        for id in ids {
            XCTAssertEqual(doneLines.filter { $0.contains("job \(id): done") }.count, 1, "job \(id)")
            let j = try XCTUnwrap(store.job(id))
            XCTAssertEqual(j.state, .done)
            XCTAssertEqual(j.attempts, 1)
            XCTAssertEqual(j.images, ["jobs/\(id)/0.png"])
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out + "/jobs/\(id)"), ["0.png"], "no temporary files")
        }
        XCTAssertEqual(doneLines.count, 50)
        let byA = a.log.components(separatedBy: ": done (").count - 1
        let byB = b.log.components(separatedBy: ": done (").count - 1
        print("worker a: \(byA) jobs, worker b: \(byB) jobs")
        XCTAssertGreaterThan(byA, 0, "both workers took jobs")
        XCTAssertGreaterThan(byB, 0, "both workers took jobs")
    }

    func testKill9MidJobRequeuedAfterLeaseAndCompletedByAnotherWorker() throws {
        let (url, store, out) = try setUpQueue()
        let lease = 2.0
        let job = try store.submit(params("1girl", count: 2, steps: 40, size: 128), maxQueued: 10, now: Date().timeIntervalSince1970)
        let first = try Worker(binary: Self.binary!, queue: url, outputs: out, name: "doomed", lease: lease)
        defer { first.stop() }
        try waitUntil(300, "the job running with 3 steps done") { (try store.job(job.id)?.progressStep ?? 0) >= 3 || !first.process.isRunning }
        first.kill9()
        let killedAt = Date().timeIntervalSince1970
        let leftovers = (try? FileManager.default.contentsOfDirectory(atPath: out + "/jobs/\(job.id)")) ?? []
        XCTAssertFalse(leftovers.contains("1.png"), "killed before the second image: \(leftovers)")
        let stale = try XCTUnwrap(store.job(job.id))
        XCTAssertEqual(stale.state, .running, "still claimed by the dead worker until its lease ends")
        XCTAssertEqual(stale.leaseOwner, "doomed")

        let second = try Worker(binary: Self.binary!, queue: url, outputs: out, name: "rescuer", lease: lease)
        defer { second.stop() }
        var restartedAt: Double?
        try waitUntil(300, "the job done by the second worker") {
            let j = try store.job(job.id)
            if restartedAt == nil, j?.leaseOwner == "rescuer" { restartedAt = Date().timeIntervalSince1970 }
            return j?.state.isFinal ?? true || !second.process.isRunning
        }
        let done = try XCTUnwrap(store.job(job.id))
        XCTAssertEqual(done.state, .done, second.log)
        XCTAssertEqual(done.attempts, 2)
        if let r = restartedAt, let expires = stale.leaseExpires {
            XCTAssertGreaterThanOrEqual(r, expires - 0.5, "re-claimed only after the dead worker's lease ended (killed at \(killedAt))")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out + "/jobs/\(job.id)").sorted(), ["0.png", "1.png"],
                       "whole images only, no temporary files")
        XCTAssertTrue(second.log.contains("job \(job.id): done (2 images, attempt 2)"), second.log)
        XCTAssertTrue(second.log.contains("lease expired; back in the queue"), second.log)
    }
}

/// `newbie serve --queue postgres://... --no-worker` (no model) with one `newbie worker`: a job
/// submitted over HTTP runs in the worker, its events reach the client through the store (the
/// relay), and the server serves the worker's image.
final class APIOnlyServerTests: XCTestCase {
    override class func tearDown() { WorkerProcessTests.cluster?.stop(); WorkerProcessTests.cluster = nil }

    func testAPIServerWithoutModelsAndAWorkerProcess() async throws {
        if WorkerProcessTests.cluster == nil && WorkerProcessTests.skip == nil { WorkerProcessTests.setUp() }
        if let e = WorkerProcessTests.skip { throw e }
        guard let bin = WorkerProcessTests.binary else { throw XCTSkip("the newbie binary is not built (swift build --product newbie)") }
        let url = try WorkerProcessTests.cluster!.makeDatabase()
        let out = TestScratch.path("newbie-pg-api-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)

        let server = Process()
        server.executableURL = URL(fileURLWithPath: bin)
        server.arguments = ["serve", "--queue", url, "--no-worker", "--outputs", out, "--port", "0"]
        let logPath = out + "/serve.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        server.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        server.standardOutput = FileHandle.nullDevice
        try server.run()
        defer { if server.isRunning { server.terminate(); server.waitUntilExit() } }
        var port = 0
        for _ in 0..<600 where port == 0 {
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            if let r = log.range(of: "listening on http://127.0.0.1:") { port = Int(log[r.upperBound...].prefix { $0.isNumber }) ?? 0 }
            if !server.isRunning { break }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        XCTAssertNotEqual(port, 0, (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "")
        guard port != 0 else { return }
        let base = "http://127.0.0.1:\(port)"
        let serverLog = { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
        XCTAssertFalse(serverLog().contains("models loaded"), "an API-only server loads no model")

        var post = URLRequest(url: URL(string: base + "/v1/jobs")!)
        post.httpMethod = "POST"
        post.httpBody = Data(#"{"prompt": "1girl", "width": 64, "height": 64, "steps": 12}"#.utf8)
        let (body, resp) = try await URLSession.shared.data(for: post)
        XCTAssertEqual((resp as? HTTPURLResponse)?.statusCode, 201)
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: body) as? [String: Any])?["id"] as? String)
        let health = try await URLSession.shared.data(from: URL(string: base + "/healthz")!).0
        XCTAssertTrue(String(decoding: health, as: UTF8.self).contains("\"worker\":\"none\""), String(decoding: health, as: UTF8.self))

        // follow the events while a worker starts and runs the job
        let events = Task { () -> String in
            let (d, _) = try await URLSession.shared.data(from: URL(string: base + "/v1/jobs/\(id)/events")!)
            return String(decoding: d, as: UTF8.self)
        }
        let worker = try WorkerProcessTests.Worker(binary: bin, queue: url, outputs: out, name: "gpu-0", lease: 5)
        defer { worker.stop() }
        let text = try await events.value
        XCTAssertTrue(text.hasPrefix("event: queued"), text)
        XCTAssertTrue(text.contains("event: started"), text)
        XCTAssertTrue(text.hasSuffix("event: done\ndata: {\"images\":[\"/v1/jobs/\(id)/images/0.png\"]}\n\n"), text)
        let (png, imageResponse) = try await URLSession.shared.data(from: URL(string: base + "/v1/jobs/\(id)/images/0.png")!)
        XCTAssertEqual((imageResponse as? HTTPURLResponse)?.statusCode, 200)
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
        let job = try await URLSession.shared.data(from: URL(string: base + "/v1/jobs/\(id)")!).0
        let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: job) as? [String: Any])
        XCTAssertEqual(j["state"] as? String, "done")
        XCTAssertEqual(j["attempts"] as? Int, 1)
        XCTAssertTrue(worker.log.contains("job \(id): done (1 image, attempt 1)"), worker.log)
    }
}
