import Foundation
import Logging
import NewBieQueue
import NIOCore
import NIOPosix
import PostgresNIO

/// The scale-out queue: one table `newbie_job` in a PostgreSQL database shared by API servers
/// (`newbie serve --queue postgres://... --no-worker`) and any number of `newbie worker` processes.
///
/// Every move of a job is one SQL statement (so one transaction, with row locks), which keeps the
/// state machine of `JobState` across processes and machines:
/// - claim: `UPDATE ... WHERE seq = (SELECT seq ... WHERE state = 'queued' ORDER BY seq LIMIT 1
///   FOR UPDATE SKIP LOCKED)`: concurrent claimers skip a row another claimer holds instead of
///   waiting for it or taking it twice;
/// - heartbeat, complete, fail, cancelled: `WHERE id = $1 AND state = 'running' AND lease_owner =
///   $2`; no row changed means the lease was lost (`leaseLost`), so a job completes at most once;
/// - expired leases: one UPDATE moves them back to queued (or failed after `maxAttempts`).
///
/// Times are the callers' clocks (unix seconds), as for the SQLite store: machines running workers
/// need synchronised clocks (NTP); a skew eats into the lease.
///
/// The `JobStore` contract is synchronous (the worker runs on its own thread). Queries run on a
/// private event loop and the caller waits for the result, so a caller on another event loop or on
/// Swift's cooperative pool never waits for a thread it is itself holding.
public final class PostgresJobStore: JobStore, @unchecked Sendable {
    public let url: PostgresURL
    let group: MultiThreadedEventLoopGroup
    let logger: Logger
    private let lock = NSLock()
    private var connection: PostgresConnection?
    private var nextConnectionID = 1
    /// Submissions from this process one at a time (the queue-full check and the insert are two
    /// reads of the table; across API servers the limit can be passed by one job per server).
    private let submitLock = NSLock()

    /// Connects and creates the table when it is missing. Throws a message naming the URL (without
    /// its password) when the server cannot be reached.
    public init(url: PostgresURL, logger: Logger = Logger(label: "newbie.queue.postgres")) throws {
        self.url = url
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            _ = try connected()
            try migrate()
        } catch {
            try? group.syncShutdownGracefully()
            throw PostgresQueueError("cannot use the queue at \(url): \(Self.describe(error))")
        }
    }

    deinit {
        lock.lock(); let c = connection; connection = nil; lock.unlock()
        _ = try? c?.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// Closes the connection (a later call reconnects).
    public func close() {
        lock.lock(); let c = connection; connection = nil; lock.unlock()
        _ = try? c?.close().wait()
    }

    // MARK: connection

    func configuration() -> PostgresConnection.Configuration {
        var c: PostgresConnection.Configuration
        switch url.endpoint {
        case .tcp(let host, let port):
            c = .init(host: host, port: port, username: url.user, password: url.password, database: url.database, tls: .disable)
        case .unixSocket(let path):
            c = .init(unixSocketPath: path, username: url.user, password: url.password, database: url.database)
        }
        c.options.connectTimeout = .seconds(10)
        return c
    }

    /// The open connection, opening one when there is none or the last one closed (a restarted
    /// database server, a dropped network link).
    func connected() throws -> PostgresConnection {
        lock.lock()
        if let c = connection, !c.isClosed { lock.unlock(); return c }
        let id = nextConnectionID
        nextConnectionID += 1
        lock.unlock()
        let c = try PostgresConnection.connect(on: group.next(), configuration: configuration(), id: id, logger: logger).wait()
        lock.lock()
        if let other = connection, !other.isClosed {
            // another thread connected meanwhile: keep one
            lock.unlock()
            _ = try? c.close().wait()
            return other
        }
        connection = c
        lock.unlock()
        return c
    }

    @discardableResult
    func run(_ q: PostgresQuery) throws -> PostgresQueryResult {
        let c = try connected()
        do {
            return try c.query(q, logger: logger).wait()
        } catch let e as PSQLError {
            throw PostgresQueueError("PostgreSQL at \(url): \(Self.describe(e))")
        }
    }

    static func describe(_ e: Error) -> String {
        if let p = e as? PSQLError {
            if let m = p.serverInfo?[.message] { return m }
            return "\(p.code)" + (p.underlying.map { ": \($0)" } ?? "")
        }
        return "\(e)"
    }

    static let table = "newbie_job"

    func migrate() throws {
        // one creator at a time when several processes start together
        try run("SELECT pg_advisory_lock(1701)")
        defer { _ = try? run("SELECT pg_advisory_unlock(1701)") }
        try run(PostgresQuery(unsafeSQL: """
            CREATE TABLE IF NOT EXISTS \(Self.table) (
                seq BIGSERIAL PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
                params TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION,
                attempts BIGINT NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires DOUBLE PRECISION,
                cancel_requested BOOLEAN NOT NULL DEFAULT false,
                progress_image BIGINT NOT NULL DEFAULT 0,
                progress_step BIGINT NOT NULL DEFAULT 0,
                progress_steps BIGINT NOT NULL DEFAULT 0,
                images TEXT NOT NULL DEFAULT '[]',
                error TEXT
            )
            """))
        try run(PostgresQuery(unsafeSQL: "CREATE INDEX IF NOT EXISTS \(Self.table)_state_seq ON \(Self.table) (state, seq)"))
    }

    // MARK: rows

    static let columns = "seq, id, state, params, created_at, started_at, finished_at, attempts, lease_owner, lease_expires, cancel_requested, progress_image, progress_step, progress_steps, images, error"

    static func job(_ row: PostgresRow) throws -> Job {
        let r = row.makeRandomAccess()
        let params = try JobParameters.fromStored(Data(try r["params"].decode(String.self).utf8))
        let images = (try? JSONDecoder().decode([String].self, from: Data(try r["images"].decode(String.self).utf8))) ?? []
        return Job(id: try r["id"].decode(String.self), seq: try r["seq"].decode(Int64.self),
                   state: JobState(rawValue: try r["state"].decode(String.self)) ?? .failed, parameters: params,
                   createdAt: try r["created_at"].decode(Double.self), startedAt: try r["started_at"].decode(Double?.self),
                   finishedAt: try r["finished_at"].decode(Double?.self), attempts: Int(try r["attempts"].decode(Int64.self)),
                   leaseOwner: try r["lease_owner"].decode(String?.self), leaseExpires: try r["lease_expires"].decode(Double?.self),
                   cancelRequested: try r["cancel_requested"].decode(Bool.self),
                   progressImage: Int(try r["progress_image"].decode(Int64.self)), progressStep: Int(try r["progress_step"].decode(Int64.self)),
                   progressSteps: Int(try r["progress_steps"].decode(Int64.self)), images: images, error: try r["error"].decode(String?.self))
    }

    func jobs(_ q: PostgresQuery) throws -> [Job] { try run(q).rows.map(Self.job) }

    // MARK: JobStore

    public func submit(_ p: JobParameters, maxQueued: Int, now: Double) throws -> Job {
        submitLock.lock(); defer { submitLock.unlock() }
        let queued = try run("SELECT COUNT(*) FROM newbie_job WHERE state = 'queued'").rows.first?.decode(Int64.self) ?? 0
        guard queued < maxQueued else { throw JobStoreError.queueFull(limit: maxQueued, queued: Int(queued)) }
        let id = Job.newID()
        let params = String(decoding: p.jsonData(), as: UTF8.self)
        let steps = Int64(p.samplerSteps)
        let q: PostgresQuery = "INSERT INTO newbie_job (id, state, params, created_at, progress_steps) VALUES (\(id), 'queued', \(params), \(now), \(steps)) RETURNING \(unescaped: Self.columns)"
        guard let j = try jobs(q).first else { throw PostgresQueueError("PostgreSQL at \(url): the insert of job \(id) returned no row") }
        return j
    }

    public func requeueExpired(now: Double, maxAttempts: Int) throws -> [String] {
        // a job whose worker died maxAttempts times is not tried again (it may be what kills them)
        let max = Int64(maxAttempts)
        let rows = try run("""
            UPDATE newbie_job SET
                state = CASE WHEN attempts >= \(max) THEN 'failed' WHEN cancel_requested THEN 'cancelled' ELSE 'queued' END,
                finished_at = CASE WHEN attempts >= \(max) OR cancel_requested THEN \(now) ELSE NULL END,
                error = CASE WHEN attempts >= \(max) THEN 'the worker running it stopped ' || attempts || ' times (lease expired); not retried'
                             WHEN cancel_requested THEN 'cancelled' ELSE error END,
                lease_owner = NULL, lease_expires = NULL, progress_image = 0, progress_step = 0
            WHERE state = 'running' AND lease_expires < \(now)
            RETURNING id, seq
            """).rows
        return try rows.map { (try $0.decode((String, Int64).self)) }.sorted { $0.1 < $1.1 }.map(\.0)
    }

    public func claim(worker: String, lease: Double, now: Double) throws -> Job? {
        let q: PostgresQuery = """
            UPDATE newbie_job SET state = 'running', lease_owner = \(worker), lease_expires = \(now + lease),
                attempts = attempts + 1, started_at = \(now), progress_image = 0, progress_step = 0
            WHERE seq = (SELECT seq FROM newbie_job WHERE state = 'queued' ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED)
                AND state = 'queued'
            RETURNING \(unescaped: Self.columns)
            """
        return try jobs(q).first
    }

    public func heartbeat(id: String, worker: String, lease: Double, now: Double, progress: (image: Int, step: Int, steps: Int)?) throws -> Bool {
        let rows: [PostgresRow]
        if let p = progress {
            rows = try run("""
                UPDATE newbie_job SET lease_expires = \(now + lease), progress_image = \(Int64(p.image)),
                    progress_step = \(Int64(p.step)), progress_steps = \(Int64(p.steps))
                WHERE id = \(id) AND state = 'running' AND lease_owner = \(worker)
                RETURNING cancel_requested
                """).rows
        } else {
            rows = try run("""
                UPDATE newbie_job SET lease_expires = \(now + lease)
                WHERE id = \(id) AND state = 'running' AND lease_owner = \(worker)
                RETURNING cancel_requested
                """).rows
        }
        guard let r = rows.first else { throw JobStoreError.leaseLost(job: id) }
        return try r.decode(Bool.self)
    }

    public func finish(_ id: String, worker: String, state: JobState, images: [String] = [], error: String? = nil, now: Double) throws {
        let imagesJSON = String(decoding: (try? JSONEncoder().encode(images)) ?? Data("[]".utf8), as: UTF8.self)
        let s = state.rawValue
        let changed = try run("""
            UPDATE newbie_job SET state = \(s), images = \(imagesJSON), error = \(error), finished_at = \(now),
                lease_owner = NULL, lease_expires = NULL,
                progress_step = CASE WHEN \(s) = 'done' THEN progress_steps ELSE progress_step END
            WHERE id = \(id) AND state = 'running' AND lease_owner = \(worker)
            RETURNING id
            """).rows.count
        guard changed == 1 else { throw JobStoreError.leaseLost(job: id) }
    }

    public func cancel(id: String, now: Double) throws -> Job {
        // one statement: a queued job is cancelled at once, a running one gets the request for its
        // worker, a final one is left as it is
        let q: PostgresQuery = """
            UPDATE newbie_job SET
                cancel_requested = CASE WHEN state IN ('queued', 'running') THEN true ELSE cancel_requested END,
                finished_at = CASE WHEN state = 'queued' THEN \(now) ELSE finished_at END,
                error = CASE WHEN state = 'queued' THEN 'cancelled' ELSE error END,
                state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END
            WHERE id = \(id)
            RETURNING \(unescaped: Self.columns)
            """
        guard let j = try jobs(q).first else { throw JobStoreError.notFound(id) }
        return j
    }

    public func job(_ id: String) throws -> Job? {
        try jobs("SELECT \(unescaped: Self.columns) FROM newbie_job WHERE id = \(id)").first
    }

    public func position(_ id: String) throws -> Int? {
        let rows = try run("""
            SELECT (SELECT COUNT(*) FROM newbie_job q WHERE q.state = 'queued' AND q.seq <= j.seq)
            FROM newbie_job j WHERE j.id = \(id) AND j.state = 'queued'
            """).rows
        return try rows.first.map { Int(try $0.decode(Int64.self)) }
    }

    public func list(limit: Int, before: Int64?, state: JobState?) throws -> [Job] {
        let s = state?.rawValue
        var binds = PostgresBindings()
        binds.append(before)
        binds.append(s)
        binds.append(Int64(max(0, limit)))
        return try jobs(PostgresQuery(unsafeSQL: """
            SELECT \(Self.columns) FROM newbie_job
            WHERE ($1::BIGINT IS NULL OR seq < $1) AND ($2::TEXT IS NULL OR state = $2)
            ORDER BY seq DESC LIMIT $3
            """, binds: binds))
    }

    public func stats(now: Double) throws -> QueueStats {
        var by: [JobState: Int] = [:]
        for r in try run("SELECT state, COUNT(*) FROM newbie_job GROUP BY state").rows {
            let (s, n) = try r.decode((String, Int64).self)
            if let st = JobState(rawValue: s) { by[st] = Int(n) }
        }
        let oldest = try run("SELECT MIN(created_at) FROM newbie_job WHERE state = 'queued'").rows.first?.decode(Double?.self) ?? nil
        return QueueStats(byState: by, oldestQueuedAge: oldest.map { now - $0 })
    }
}

/// A PostgreSQL queue that cannot be reached or answered with an error.
public struct PostgresQueueError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ d: String) { description = d }
}
