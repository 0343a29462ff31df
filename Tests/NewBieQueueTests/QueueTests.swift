import Foundation
import XCTest
import NewBieHarness
import NewBieImage
import NewBiePipeline
@testable import NewBieQueue
import NewBieTestSupport

func tempDir(_ name: String) -> String {
    let d = TestScratch.path("newbie-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func params(_ prompt: String = "1girl", count: Int = 1, steps: Int = 3) -> JobParameters {
    var p = JobParameters(prompt: prompt)
    p.width = 32; p.height = 32; p.steps = steps; p.count = count
    return p
}

final class JobParametersTests: XCTestCase {
    let limits = JobLimits()

    func parse(_ json: String) throws -> JobParameters { try JobParameters.parse(json: Data(json.utf8), limits: limits, randomSeed: { 4242 }) }

    func refused(_ json: String, field: String?, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try parse(json)
            XCTFail("accepted \(json)", file: file, line: line)
        } catch let e as JobRequestError {
            XCTAssertEqual(e.field, field, "\(e)", file: file, line: line)
        } catch { XCTFail("\(error)", file: file, line: line) }
    }

    func testDefaultsAreTheOfficialDemo() throws {
        let p = try parse(#"{"prompt": "1girl"}"#)
        let s = try p.settings(image: 0)
        XCTAssertEqual(s, SamplingSettings.officialDemo)
        XCTAssertEqual(p.count, 1)
        XCTAssertEqual(p.systemPrompt, "auto")
    }

    func testEveryFieldAndSeeds() throws {
        let p = try parse(#"{"prompt": "<character_1></character_1>", "negative_prompt": "bad", "system_prompt": "none", "width": 512, "height": 768, "steps": 10, "sampler": "euler", "shift": 3, "cfg": 4, "cfg_trunc": 100, "renorm": 1, "seed": 9, "rng": "torch-scalar", "count": 3}"#)
        XCTAssertEqual(p.width, 512); XCTAssertEqual(p.height, 768); XCTAssertEqual(p.sampler, "euler"); XCTAssertEqual(p.count, 3)
        XCTAssertEqual(try p.settings(image: 2).seed, 11)
        XCTAssertEqual(try parse(#"{"prompt": "a", "seed": "random"}"#).seed, 4242)
        XCTAssertEqual(try parse(#"{"prompt": "a", "seed": "17"}"#).seed, 17)
        // stored form round trip
        XCTAssertEqual(try JobParameters.fromStored(p.jsonData()), p)
    }

    func testRefusals() {
        refused("[1]", field: nil)
        refused("not json", field: nil)
        refused(#"{"width": 64}"#, field: "prompt")
        refused(#"{"prompt": "a", "widht": 64}"#, field: "widht")
        refused(#"{"prompt": 3}"#, field: "prompt")
        refused(#"{"prompt": "a", "width": true}"#, field: "width")
        refused(#"{"prompt": "a", "width": "64"}"#, field: "width")
        refused(#"{"prompt": "a", "width": 64.5}"#, field: "width")
        refused(#"{"prompt": "a", "width": 4096}"#, field: "width")
        refused(#"{"prompt": "a", "steps": 1}"#, field: "steps")
        refused(#"{"prompt": "a", "steps": 100000}"#, field: "steps")
        refused(#"{"prompt": "a", "count": 0}"#, field: "count")
        refused(#"{"prompt": "a", "count": 99}"#, field: "count")
        refused(#"{"prompt": "a", "seed": -1}"#, field: "seed")
        refused(#"{"prompt": "a", "seed": "lucky"}"#, field: "seed")
        refused(#"{"prompt": "a", "seed": false}"#, field: "seed")
        refused(#"{"prompt": "\#(String(repeating: "x", count: 32 * 1024 + 1))"}"#, field: "prompt")
        // the pipeline's own rules, named without -- flags
        do {
            _ = try parse(#"{"prompt": "a", "width": 100}"#)
            XCTFail()
        } catch let e as JobRequestError {
            XCTAssertTrue(e.message.contains("width 100") && !e.message.contains("--"), e.message)
        } catch { XCTFail("\(error)") }
        do {
            _ = try parse(#"{"prompt": "a", "sampler": "ddim"}"#)
            XCTFail()
        } catch let e as JobRequestError {
            XCTAssertTrue(e.message.contains("sampler ddim"), e.message)
        } catch { XCTFail("\(error)") }
    }
}

final class JobStateMachineTests: XCTestCase {
    func testAllowedMoves() {
        let allowed: Set<String> = ["queued>running", "queued>cancelled", "queued>failed", "running>done", "running>failed",
                                    "running>cancelled", "running>queued"]
        for a in JobState.allCases {
            for b in JobState.allCases {
                XCTAssertEqual(JobState.allows(a, b), allowed.contains("\(a.rawValue)>\(b.rawValue)"), "\(a) -> \(b)")
            }
        }
        for s in [JobState.done, .failed, .cancelled] {
            XCTAssertTrue(s.isFinal)
            XCTAssertFalse(JobState.allCases.contains { JobState.allows(s, $0) }, "\(s) is final")
        }
    }

    func testIDs() {
        let id = Job.newID()
        XCTAssertTrue(Job.isValidID(id))
        XCTAssertNotEqual(id, Job.newID())
        for bad in ["", "../etc/passwd", String(repeating: "A", count: 32), String(repeating: "0", count: 31), id + "0"] {
            XCTAssertFalse(Job.isValidID(bad), bad)
        }
    }
}

final class SQLiteJobStoreTests: XCTestCase {
    var dir = ""
    var store: SQLiteJobStore!

    override func setUpWithError() throws {
        dir = tempDir("store")
        store = try SQLiteJobStore(path: dir + "/jobs.sqlite")
    }

    override func tearDown() { store = nil; try? FileManager.default.removeItem(atPath: dir) }

    func testWALAndSubmitClaimInOrder() throws {
        XCTAssertEqual(try store.journalMode().lowercased(), "wal")
        let a = try store.submit(params("a"), maxQueued: 10, now: 100)
        let b = try store.submit(params("b"), maxQueued: 10, now: 101)
        XCTAssertEqual(a.state, .queued)
        XCTAssertEqual(a.progressSteps, 2, "3 grid points: 2 sampler steps")
        XCTAssertEqual(try store.position(a.id), 1)
        XCTAssertEqual(try store.position(b.id), 2)
        let c1 = try XCTUnwrap(try store.claim(worker: "w1", lease: 30, now: 102))
        XCTAssertEqual(c1.id, a.id)
        XCTAssertEqual(c1.state, .running)
        XCTAssertEqual(c1.attempts, 1)
        XCTAssertEqual(c1.leaseOwner, "w1")
        XCTAssertEqual(c1.leaseExpires, 132)
        XCTAssertNil(try store.position(a.id))
        XCTAssertEqual(try store.position(b.id), 1)
        let c2 = try XCTUnwrap(try store.claim(worker: "w2", lease: 30, now: 102))
        XCTAssertEqual(c2.id, b.id)
        XCTAssertNil(try store.claim(worker: "w3", lease: 30, now: 102))
    }

    func testQueueFull() throws {
        for i in 0..<3 { _ = try store.submit(params("\(i)"), maxQueued: 3, now: 1) }
        XCTAssertThrowsError(try store.submit(params("x"), maxQueued: 3, now: 1)) { e in
            XCTAssertEqual(e as? JobStoreError, .queueFull(limit: 3, queued: 3))
        }
        // a running job does not count as waiting
        _ = try store.claim(worker: "w", lease: 30, now: 2)
        XCTAssertNoThrow(try store.submit(params("y"), maxQueued: 3, now: 3))
    }

    func testCompleteOnlyByTheLeaseHolderAndOnlyOnce() throws {
        let j = try store.submit(params(), maxQueued: 10, now: 0)
        _ = try store.claim(worker: "w1", lease: 30, now: 1)
        XCTAssertThrowsError(try store.complete(id: j.id, worker: "other", images: ["x"], now: 2)) {
            XCTAssertEqual($0 as? JobStoreError, .leaseLost(job: j.id))
        }
        XCTAssertFalse(try store.heartbeat(id: j.id, worker: "w1", lease: 30, now: 2, progress: (0, 1, 2)))
        XCTAssertEqual(try store.job(j.id)?.progressStep, 1)
        XCTAssertEqual(try store.job(j.id)?.leaseExpires, 32)
        try store.complete(id: j.id, worker: "w1", images: ["jobs/\(j.id)/0.png"], now: 3)
        let done = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(done.state, .done)
        XCTAssertEqual(done.images, ["jobs/\(j.id)/0.png"])
        XCTAssertEqual(done.finishedAt, 3)
        XCTAssertNil(done.leaseOwner)
        XCTAssertEqual(done.progressStep, done.progressSteps)
        // never finished twice, by anyone
        XCTAssertThrowsError(try store.complete(id: j.id, worker: "w1", images: [], now: 4))
        XCTAssertThrowsError(try store.fail(id: j.id, worker: "w1", message: "late", now: 4))
        XCTAssertThrowsError(try store.finishCancelled(id: j.id, worker: "w1", now: 4))
        XCTAssertEqual(try store.job(j.id)?.state, .done)
        XCTAssertEqual(try store.requeueExpired(now: 1e9, maxAttempts: 3), [])
    }

    func testCancelQueuedRunningAndFinal() throws {
        let q = try store.submit(params("q"), maxQueued: 10, now: 0)
        let r = try store.submit(params("r"), maxQueued: 10, now: 0)
        // r is claimed first only after q is cancelled
        XCTAssertEqual(try store.cancel(id: q.id, now: 1).state, .cancelled)
        let claimed = try store.claim(worker: "w", lease: 30, now: 2)
        XCTAssertEqual(claimed?.id, r.id)
        let afterCancel = try store.cancel(id: r.id, now: 3)
        XCTAssertEqual(afterCancel.state, .running)
        XCTAssertTrue(afterCancel.cancelRequested)
        XCTAssertTrue(try store.heartbeat(id: r.id, worker: "w", lease: 30, now: 4, progress: nil), "the worker learns of the cancel")
        try store.finishCancelled(id: r.id, worker: "w", now: 5)
        XCTAssertEqual(try store.job(r.id)?.state, .cancelled)
        // cancelling a final job changes nothing
        XCTAssertEqual(try store.cancel(id: q.id, now: 6).finishedAt, 1)
        XCTAssertThrowsError(try store.cancel(id: Job.newID(), now: 7))
    }

    func testLeaseExpiryRequeuesAndTheStaleWorkerCannotFinish() throws {
        let j = try store.submit(params(), maxQueued: 10, now: 0)
        _ = try store.claim(worker: "dead", lease: 10, now: 0)
        XCTAssertEqual(try store.requeueExpired(now: 9, maxAttempts: 3), [], "lease still running")
        XCTAssertEqual(try store.requeueExpired(now: 11, maxAttempts: 3), [j.id])
        var back = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(back.state, .queued)
        XCTAssertNil(back.leaseOwner)
        XCTAssertEqual(try store.position(j.id), 1)
        let again = try XCTUnwrap(try store.claim(worker: "alive", lease: 10, now: 12))
        XCTAssertEqual(again.attempts, 2)
        // the first worker wakes up: its heartbeat and its result are refused
        XCTAssertThrowsError(try store.heartbeat(id: j.id, worker: "dead", lease: 10, now: 13, progress: nil)) {
            XCTAssertEqual($0 as? JobStoreError, .leaseLost(job: j.id))
        }
        XCTAssertThrowsError(try store.complete(id: j.id, worker: "dead", images: ["stale"], now: 13))
        try store.complete(id: j.id, worker: "alive", images: ["fresh"], now: 14)
        back = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(back.images, ["fresh"])
        XCTAssertEqual(back.attempts, 2)
    }

    func testAJobThatKeepsKillingWorkersFails() throws {
        let j = try store.submit(params(), maxQueued: 10, now: 0)
        for k in 0..<3 {
            XCTAssertEqual(try store.claim(worker: "w\(k)", lease: 1, now: Double(k * 10))?.id, j.id)
            XCTAssertEqual(try store.requeueExpired(now: Double(k * 10 + 5), maxAttempts: 3), [j.id])
        }
        let failed = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(failed.state, .failed)
        XCTAssertTrue(failed.error?.contains("3 times") ?? false, failed.error ?? "")
    }

    func testCancelRequestedThenWorkerDiedEndsCancelled() throws {
        let j = try store.submit(params(), maxQueued: 10, now: 0)
        _ = try store.claim(worker: "w", lease: 5, now: 0)
        _ = try store.cancel(id: j.id, now: 1)
        _ = try store.requeueExpired(now: 10, maxAttempts: 3)
        XCTAssertEqual(try store.job(j.id)?.state, .cancelled)
    }

    func testHistoryPagingAndStats() throws {
        var ids: [String] = []
        for i in 0..<5 { ids.append(try store.submit(params("\(i)"), maxQueued: 10, now: Double(i)).id) }
        _ = try store.claim(worker: "w", lease: 30, now: 10)
        let page1 = try store.list(limit: 2, before: nil, state: nil)
        XCTAssertEqual(page1.map(\.id), [ids[4], ids[3]])
        let page2 = try store.list(limit: 2, before: page1.last!.seq, state: nil)
        XCTAssertEqual(page2.map(\.id), [ids[2], ids[1]])
        let page3 = try store.list(limit: 2, before: page2.last!.seq, state: nil)
        XCTAssertEqual(page3.map(\.id), [ids[0]])
        XCTAssertEqual(try store.list(limit: 10, before: nil, state: .running).map(\.id), [ids[0]])
        let s = try store.stats(now: 20)
        XCTAssertEqual(s.queued, 4)
        XCTAssertEqual(s.running, 1)
        XCTAssertEqual(s.oldestQueuedAge, 19)
    }

    func testTwoStoresOnOneFileClaimEachJobOnce() throws {
        let other = try SQLiteJobStore(path: dir + "/jobs.sqlite")
        for i in 0..<40 { _ = try store.submit(params("\(i)"), maxQueued: 100, now: 0) }
        let lock = NSLock()
        var claimed: [String] = []
        DispatchQueue.concurrentPerform(iterations: 4) { k in
            let s = k % 2 == 0 ? store! : other
            while let j = try? s.claim(worker: "w\(k)", lease: 30, now: 1) {
                try? s.complete(id: j.id, worker: "w\(k)", images: [], now: 2)
                lock.lock(); claimed.append(j.id); lock.unlock()
            }
        }
        XCTAssertEqual(claimed.count, 40)
        XCTAssertEqual(Set(claimed).count, 40)
        XCTAssertEqual(try store.stats(now: 3).byState[.done], 40)
    }

    func testStoreLockIsExclusive() throws {
        let lock = try StoreLock(path: dir + "/serve.lock")
        XCTAssertThrowsError(try StoreLock(path: dir + "/serve.lock"))
        _ = lock
    }
}

/// An executor that writes small PNGs and can be told to stop at a step (no models).
final class FakeExecutor: JobExecutor {
    var steps = 4
    var onStep: ((Int, JobRunContext) -> Void)?
    var fail: String?
    var ran: [String] = []

    func run(_ job: Job, outputs: [String], context: JobRunContext) throws {
        ran.append(job.id)
        for (i, out) in outputs.enumerated() {
            for s in 1...steps {
                try context.checkCancelled()
                onStep?(s, context)
                context.step(image: i, step: s, steps: steps, t: Double(s) / Double(steps))
            }
            if let f = fail { throw JobRequestError(f) }
            try PNG.write(RGBImage(width: 2, height: 2, pixels: [UInt8](repeating: UInt8(i), count: 12)), to: out)
            context.wrote(image: i)
        }
    }
}

final class JobWorkerTests: XCTestCase {
    func makeWorker(_ dir: String, _ exec: FakeExecutor, hub: JobEventHub = JobEventHub(), id: String = "w") throws -> (SQLiteJobStore, JobWorker) {
        let store = try SQLiteJobStore(path: dir + "/jobs.sqlite")
        var s = WorkerSettings()
        s.heartbeat = 0.05
        return (store, JobWorker(store: store, executor: exec, hub: hub, outputs: dir, id: id, settings: s))
    }

    func testRunsAJobToDoneWithEvents() async throws {
        let dir = tempDir("worker")
        let exec = FakeExecutor()
        let hub = JobEventHub()
        let (store, worker) = try makeWorker(dir, exec, hub: hub)
        let j = try store.submit(params(count: 2), maxQueued: 10, now: Date().timeIntervalSince1970)
        let events = hub.subscribe(job: j.id)
        XCTAssertTrue(try worker.runOnce())
        XCTAssertFalse(try worker.runOnce(), "queue empty")
        let done = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(done.state, .done)
        XCTAssertEqual(done.images, ["jobs/\(j.id)/0.png", "jobs/\(j.id)/1.png"])
        for p in done.images { XCTAssertNoThrow(try PNG.read(dir + "/" + p)) }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/jobs/\(j.id)")
        XCTAssertEqual(files.sorted(), ["0.png", "1.png"], "no temporary files left")
        var names: [String] = []
        for await (_, e) in events {
            names.append(e.name)
            if e.isFinal { break }
        }
        XCTAssertEqual(names.first, "started")
        XCTAssertEqual(names.filter { $0 == "step" }.count, 8)
        XCTAssertEqual(names.filter { $0 == "image" }.count, 2)
        XCTAssertEqual(names.last, "done")
        XCTAssertEqual(worker.imagesWritten, 2)
    }

    func testFailureIsRecorded() throws {
        let dir = tempDir("worker-fail")
        let exec = FakeExecutor()
        exec.fail = "the VAE produced NaN"
        let (store, worker) = try makeWorker(dir, exec)
        let j = try store.submit(params(), maxQueued: 10, now: 0)
        try worker.runOnce()
        let f = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(f.state, .failed)
        XCTAssertEqual(f.error, "the VAE produced NaN")
        XCTAssertEqual(f.images, [])
    }

    func testCancelTakesEffectWithinOneStep() throws {
        let dir = tempDir("worker-cancel")
        let exec = FakeExecutor()
        exec.steps = 50
        let (store, worker) = try makeWorker(dir, exec)
        let j = try store.submit(params(), maxQueued: 10, now: 0)
        var lastStep = 0
        exec.onStep = { s, _ in
            lastStep = s
            if s == 3 { worker.cancelIfRunning(j.id) }   // what DELETE does in the serving process
        }
        try worker.runOnce()
        XCTAssertEqual(try store.job(j.id)?.state, .cancelled)
        XCTAssertEqual(lastStep, 3, "stopped before the next step")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/jobs/\(j.id)/0.png"))
    }

    func testCancelFromAnotherProcessArrivesByHeartbeat() throws {
        let dir = tempDir("worker-cancel-hb")
        let exec = FakeExecutor()
        exec.steps = 1000
        let (store, worker) = try makeWorker(dir, exec)
        let j = try store.submit(params(), maxQueued: 10, now: 0)
        let other = try SQLiteJobStore(path: dir + "/jobs.sqlite")
        exec.onStep = { s, _ in
            if s == 2 { _ = try? other.cancel(id: j.id, now: 1) }
            usleep(2_000)
        }
        try worker.runOnce()
        XCTAssertEqual(try store.job(j.id)?.state, .cancelled)
    }

    /// A process claimed a job and died (no heartbeat, no result). The next process on the same
    /// outputs folder ends the dead leases at start and runs the job to done.
    func testJobRunningWhenTheProcessDiedCompletesAfterRestart() throws {
        let dir = tempDir("worker-restart")
        var store: SQLiteJobStore? = try SQLiteJobStore(path: dir + "/jobs.sqlite")
        let j = try store!.submit(params(count: 2), maxQueued: 10, now: Date().timeIntervalSince1970)
        _ = try store!.claim(worker: "process-that-died", lease: 3600, now: Date().timeIntervalSince1970)
        // half of an image on disk, as a crash mid-write would leave a temporary file
        try FileManager.default.createDirectory(atPath: dir + "/jobs/\(j.id)", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: dir + "/jobs/\(j.id)/.0.png.123.tmp", contents: Data([0x89, 0x50]))
        store = nil

        let exec = FakeExecutor()
        let (store2, worker) = try makeWorker(dir, exec, id: "new-process")
        XCTAssertFalse(try worker.runOnce(), "the lease of the dead process still runs")
        try store2.expireAllLeases()
        XCTAssertTrue(try worker.runOnce())
        let done = try XCTUnwrap(try store2.job(j.id))
        XCTAssertEqual(done.state, .done)
        XCTAssertEqual(done.attempts, 2)
        XCTAssertEqual(exec.ran, [j.id])
        for p in done.images { XCTAssertNoThrow(try PNG.read(dir + "/" + p)) }
        let files = try FileManager.default.contentsOfDirectory(atPath: dir + "/jobs/\(j.id)")
        XCTAssertEqual(files.sorted(), ["0.png", "1.png"], "the dead attempt's temporary file is gone")
    }

    func testStopInterruptsAndTheJobRunsAgainLater() throws {
        let dir = tempDir("worker-stop")
        let exec = FakeExecutor()
        exec.steps = 100_000
        let (store, worker) = try makeWorker(dir, exec)
        let j = try store.submit(params(), maxQueued: 10, now: Date().timeIntervalSince1970)
        let started = expectation(description: "started")
        exec.onStep = { s, _ in if s == 1 { started.fulfill() }; usleep(100) }
        worker.start()
        wait(for: [started], timeout: 10)
        worker.stop()
        let after = try XCTUnwrap(try store.job(j.id))
        XCTAssertEqual(after.state, .running, "not cancelled: its lease is ended for the next start")
        XCTAssertEqual(try store.requeueExpired(now: Date().timeIntervalSince1970, maxAttempts: 3), [j.id])
    }
}
