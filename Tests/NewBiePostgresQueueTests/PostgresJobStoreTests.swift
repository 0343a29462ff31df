import Foundation
import XCTest
@testable import NewBiePostgresQueue
import NewBieQueue

func params(_ prompt: String = "1girl", count: Int = 1, steps: Int = 3, size: Int = 32) -> JobParameters {
    var p = JobParameters(prompt: prompt)
    p.width = size; p.height = size; p.steps = steps; p.count = count
    return p
}

final class PostgresURLTests: XCTestCase {
    func testTCPAndSocketForms() throws {
        let a = try PostgresURL(parsing: "postgres://alice:s3cret@db.example:6543/queue")
        XCTAssertEqual(a, PostgresURL(endpoint: .tcp(host: "db.example", port: 6543), user: "alice", password: "s3cret", database: "queue"))
        XCTAssertEqual(a.description, "postgres://alice:***@db.example:6543/queue", "no password in logs")
        let b = try PostgresURL(parsing: "postgresql://bob@localhost/jobs")
        XCTAssertEqual(b.endpoint, .tcp(host: "localhost", port: 5432))
        XCTAssertNil(b.password)
        let c = try PostgresURL(parsing: "postgres://carol@/jobs?host=/run/postgresql&port=5433")
        XCTAssertEqual(c.endpoint, .unixSocket(path: "/run/postgresql/.s.PGSQL.5433"))
        XCTAssertEqual(try PostgresURL(parsing: "postgres://d@h/db?sslmode=disable").database, "db")
    }

    func testRefusalsNameTheProblem() {
        func refused(_ s: String, _ part: String, line: UInt = #line) {
            do { _ = try PostgresURL(parsing: s); XCTFail("accepted \(s)", line: line) } catch {
                XCTAssertTrue("\(error)".contains(part), "\(error)", line: line)
                XCTAssertTrue("\(error)".hasPrefix("--queue"), "\(error)", line: line)
                XCTAssertFalse("\(error)".contains("hunter2"), "a password in an error: \(error)", line: line)
            }
        }
        refused("mysql://u@h/db", "expected postgres://")
        refused("postgres://h/db", "no user")
        refused("postgres://u:hunter2@h/", "no database")
        refused("postgres://u@h/db?sslmode=require", "sslmode=require is not supported")
        refused("postgres://u@h/db?application=x", "unknown parameter application")
        refused("postgres://u@/db", "no host")
        refused("postgres://u@h/db?port=0", "port must be")
        refused("postgres://u@h/db?host=/tmp", "not both")
    }
}

/// The store against a real PostgreSQL server (a throwaway cluster per test class).
final class PostgresJobStoreTests: XCTestCase {
    nonisolated(unsafe) static var cluster: PostgresCluster?
    nonisolated(unsafe) static var skip: Error?

    override class func setUp() {
        do { cluster = try PostgresCluster() } catch { skip = error }
    }

    override class func tearDown() { cluster?.stop(); cluster = nil }

    func store() throws -> PostgresJobStore {
        if let e = Self.skip { throw e }
        let url = try Self.cluster!.makeDatabase()
        return try PostgresJobStore(url: try PostgresURL(parsing: url))
    }

    func testSubmitOrderPositionsAndQueueFull() throws {
        let s = try store()
        let a = try s.submit(params("a"), maxQueued: 3, now: 100)
        let b = try s.submit(params("b"), maxQueued: 3, now: 101)
        let c = try s.submit(params("c"), maxQueued: 3, now: 102)
        XCTAssertEqual(a.state, .queued)
        XCTAssertEqual(a.parameters, params("a"))
        XCTAssertLessThan(a.seq, b.seq)
        XCTAssertEqual(try s.position(a.id), 1)
        XCTAssertEqual(try s.position(c.id), 3)
        XCTAssertThrowsError(try s.submit(params("d"), maxQueued: 3, now: 103)) { e in
            XCTAssertEqual(e as? JobStoreError, .queueFull(limit: 3, queued: 3))
        }
        let claimed = try XCTUnwrap(s.claim(worker: "w", lease: 10, now: 110))
        XCTAssertEqual(claimed.id, a.id, "oldest first")
        XCTAssertEqual(claimed.attempts, 1)
        XCTAssertEqual(claimed.leaseOwner, "w")
        XCTAssertEqual(claimed.leaseExpires, 120)
        XCTAssertNil(try s.position(a.id))
        XCTAssertEqual(try s.position(c.id), 2)
        let st = try s.stats(now: 112)
        XCTAssertEqual(st.queued, 2)
        XCTAssertEqual(st.running, 1)
        XCTAssertEqual(st.oldestQueuedAge, 11)
        XCTAssertEqual(try s.job(b.id)?.parameters.prompt, "b")
        XCTAssertNil(try s.job(Job.newID()))
    }

    func testCompleteOnlyByTheLeaseHolderAndOnlyOnce() throws {
        let s = try store()
        let j = try s.submit(params(steps: 4), maxQueued: 10, now: 0)
        _ = try XCTUnwrap(s.claim(worker: "w1", lease: 10, now: 1))
        XCTAssertFalse(try s.heartbeat(id: j.id, worker: "w1", lease: 10, now: 2, progress: (0, 2, 4)))
        XCTAssertEqual(try s.job(j.id)?.progressStep, 2)
        XCTAssertThrowsError(try s.complete(id: j.id, worker: "w2", images: ["x"], now: 3)) { e in
            XCTAssertEqual(e as? JobStoreError, .leaseLost(job: j.id))
        }
        try s.complete(id: j.id, worker: "w1", images: ["jobs/\(j.id)/0.png"], now: 4)
        let done = try XCTUnwrap(s.job(j.id))
        XCTAssertEqual(done.state, .done)
        XCTAssertEqual(done.images, ["jobs/\(j.id)/0.png"])
        XCTAssertEqual(done.progressStep, 4)
        XCTAssertEqual(done.finishedAt, 4)
        XCTAssertNil(done.leaseOwner)
        XCTAssertThrowsError(try s.complete(id: j.id, worker: "w1", images: [], now: 5), "a second completion")
        XCTAssertThrowsError(try s.fail(id: j.id, worker: "w1", message: "late", now: 5))
        XCTAssertEqual(try s.job(j.id)?.state, .done)
    }

    func testExpiredLeaseRequeuesAndTheStaleWorkerCannotFinish() throws {
        let s = try store()
        let j = try s.submit(params(), maxQueued: 10, now: 0)
        _ = try s.claim(worker: "dead", lease: 5, now: 1)
        XCTAssertEqual(try s.requeueExpired(now: 5.5, maxAttempts: 3), [], "lease still valid")
        XCTAssertEqual(try s.requeueExpired(now: 7, maxAttempts: 3), [j.id])
        let back = try XCTUnwrap(s.job(j.id))
        XCTAssertEqual(back.state, .queued)
        XCTAssertNil(back.leaseOwner)
        let again = try XCTUnwrap(s.claim(worker: "alive", lease: 5, now: 8))
        XCTAssertEqual(again.attempts, 2)
        XCTAssertThrowsError(try s.heartbeat(id: j.id, worker: "dead", lease: 5, now: 9, progress: nil)) { e in
            XCTAssertEqual(e as? JobStoreError, .leaseLost(job: j.id))
        }
        XCTAssertThrowsError(try s.complete(id: j.id, worker: "dead", images: [], now: 9))
        try s.complete(id: j.id, worker: "alive", images: [], now: 10)
        XCTAssertEqual(try s.job(j.id)?.state, .done)
    }

    func testPoisonJobFailsAfterMaxAttemptsAndCancelWithDeadWorker() throws {
        let s = try store()
        let poison = try s.submit(params(), maxQueued: 10, now: 0)
        for k in 0..<3 {
            XCTAssertEqual(try s.claim(worker: "w\(k)", lease: 1, now: Double(10 * k))?.id, poison.id)
            XCTAssertEqual(try s.requeueExpired(now: Double(10 * k + 2), maxAttempts: 3), [poison.id])
        }
        let failed = try XCTUnwrap(s.job(poison.id))
        XCTAssertEqual(failed.state, .failed)
        XCTAssertEqual(failed.attempts, 3)
        XCTAssertTrue(failed.error?.contains("3 times") ?? false, failed.error ?? "")
        XCTAssertNil(try s.claim(worker: "w", lease: 1, now: 50), "a failed job is never claimed")

        let c = try s.submit(params(), maxQueued: 10, now: 60)
        _ = try s.claim(worker: "w", lease: 1, now: 60)
        XCTAssertEqual(try s.cancel(id: c.id, now: 60.5).state, .running, "running: the request is recorded")
        XCTAssertTrue(try s.job(c.id)?.cancelRequested ?? false)
        XCTAssertEqual(try s.requeueExpired(now: 62, maxAttempts: 3), [c.id])
        XCTAssertEqual(try s.job(c.id)?.state, .cancelled, "a cancelled job whose worker died is not run again")
    }

    func testCancelQueuedRunningAndEnded() throws {
        let s = try store()
        let q = try s.submit(params(), maxQueued: 10, now: 0)
        let r = try s.submit(params(), maxQueued: 10, now: 0)
        XCTAssertEqual(try s.cancel(id: q.id, now: 1).state, .cancelled)
        XCTAssertEqual(try s.job(q.id)?.error, "cancelled")
        XCTAssertEqual(try s.claim(worker: "w", lease: 10, now: 2)?.id, r.id, "a cancelled job is not claimed")
        XCTAssertEqual(try s.cancel(id: r.id, now: 3).state, .running)
        XCTAssertTrue(try s.heartbeat(id: r.id, worker: "w", lease: 10, now: 4, progress: nil), "the heartbeat brings the request")
        try s.finishCancelled(id: r.id, worker: "w", now: 5)
        XCTAssertEqual(try s.job(r.id)?.state, .cancelled)
        let after = try s.cancel(id: r.id, now: 6)
        XCTAssertEqual(after.state, .cancelled)
        XCTAssertEqual(after.finishedAt, 5, "an ended job is left as it is")
        XCTAssertThrowsError(try s.cancel(id: Job.newID(), now: 7)) { e in
            guard case .notFound = e as? JobStoreError else { return XCTFail("\(e)") }
        }
    }

    func testHistoryPagingAndStateFilter() throws {
        let s = try store()
        var ids: [String] = []
        for k in 0..<5 { ids.append(try s.submit(params("p\(k)"), maxQueued: 10, now: Double(k)).id) }
        _ = try s.cancel(id: ids[1], now: 9)
        let first = try s.list(limit: 2, before: nil, state: nil)
        XCTAssertEqual(first.map(\.id), [ids[4], ids[3]])
        let second = try s.list(limit: 2, before: first.last!.seq, state: nil)
        XCTAssertEqual(second.map(\.id), [ids[2], ids[1]])
        XCTAssertEqual(try s.list(limit: 10, before: nil, state: .cancelled).map(\.id), [ids[1]])
        XCTAssertEqual(try s.list(limit: 10, before: nil, state: .queued).count, 4)
    }

    /// Two stores (two connections, as two processes) claiming 40 jobs from 4 threads: every job
    /// is claimed exactly once (FOR UPDATE SKIP LOCKED).
    func testConcurrentClaimsTakeEachJobOnce() throws {
        let a = try store()
        let b = try PostgresJobStore(url: a.url)
        var submitted = Set<String>()
        for _ in 0..<40 { submitted.insert(try a.submit(params(), maxQueued: 100, now: 0).id) }
        let lock = NSLock()
        var claimed: [String] = []
        var errors: [String] = []
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            let s = t % 2 == 0 ? a : b
            while true {
                do {
                    guard let j = try s.claim(worker: "w\(t)", lease: 60, now: 1) else { break }
                    try s.complete(id: j.id, worker: "w\(t)", images: [], now: 2)
                    lock.lock(); claimed.append(j.id); lock.unlock()
                } catch {
                    lock.lock(); errors.append("\(error)"); lock.unlock()
                    break
                }
            }
        }
        XCTAssertEqual(errors, [])
        XCTAssertEqual(claimed.count, 40)
        XCTAssertEqual(Set(claimed), submitted)
        XCTAssertEqual(try a.stats(now: 3).byState[.done], 40)
        XCTAssertTrue(try a.list(limit: 100, before: nil, state: nil).allSatisfy { $0.attempts == 1 })
    }

    /// A database server restart closes the connection; the store opens a new one and nothing
    /// written before is lost (fsync is off in the test cluster, but a fast shutdown checkpoints).
    func testReconnectsAfterTheServerRestarts() throws {
        let s = try store()
        let j = try s.submit(params(), maxQueued: 10, now: 0)
        try Self.cluster!.restart()
        var answer: Job?
        var failures = 0
        for _ in 0..<50 where answer == nil {
            do { answer = try s.job(j.id) } catch {
                failures += 1
                XCTAssertTrue("\(error)".contains("PostgreSQL at postgres://newbie@/"), "\(error)")
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        XCTAssertEqual(answer?.id, j.id, "the job is still there after the restart")
        XCTAssertLessThanOrEqual(failures, 1, "at most the call that found the connection closed fails")
        XCTAssertEqual(try s.claim(worker: "w", lease: 10, now: 1)?.id, j.id)
    }

    func testUnreachableServerIsAClearError() throws {
        let url = try PostgresURL(parsing: "postgres://nobody@/none?host=/tmp/newbie-no-such-folder")
        XCTAssertThrowsError(try PostgresJobStore(url: url)) { e in
            XCTAssertTrue("\(e)".contains("cannot use the queue at postgres://nobody@/none"), "\(e)")
        }
    }
}
