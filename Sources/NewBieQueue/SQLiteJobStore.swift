import Foundation
import GRDB

/// The embedded queue: one SQLite file (WAL mode, through GRDB's DatabasePool) in the outputs
/// folder. Every move of a job is one conditional UPDATE inside a write transaction, so the state
/// machine of `JobState` holds even with several processes on the same file: a claim takes only a
/// queued job, and complete/fail/cancelled apply only while the caller holds the lease.
public final class SQLiteJobStore: JobStore, @unchecked Sendable {
    public let path: String
    let pool: DatabasePool

    /// Opens (creating when needed) the store at `path`.
    public init(path: String) throws {
        self.path = path
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }
        var config = Configuration()
        // other processes (a second server on the same file, `sqlite3`) wait instead of failing
        config.busyMode = .timeout(10)
        config.label = "newbie-jobs"
        pool = try DatabasePool(path: path, configuration: config)
        try Self.migrator.migrate(pool)
    }

    static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE job (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    id TEXT NOT NULL UNIQUE,
                    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
                    params TEXT NOT NULL,
                    created_at DOUBLE NOT NULL,
                    started_at DOUBLE,
                    finished_at DOUBLE,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    lease_owner TEXT,
                    lease_expires DOUBLE,
                    cancel_requested INTEGER NOT NULL DEFAULT 0,
                    progress_image INTEGER NOT NULL DEFAULT 0,
                    progress_step INTEGER NOT NULL DEFAULT 0,
                    progress_steps INTEGER NOT NULL DEFAULT 0,
                    images TEXT NOT NULL DEFAULT '[]',
                    error TEXT
                );
                CREATE INDEX job_state_seq ON job(state, seq);
                """)
        }
        return m
    }

    /// Whether the file is in WAL mode (checked by the tests).
    public func journalMode() throws -> String {
        try pool.read { db in try String.fetchOne(db, sql: "PRAGMA journal_mode") ?? "" }
    }

    // MARK: rows

    static func job(_ r: Row) throws -> Job {
        let params = try JobParameters.fromStored(Data((r["params"] as String).utf8))
        let images = (try? JSONDecoder().decode([String].self, from: Data((r["images"] as String).utf8))) ?? []
        return Job(id: r["id"], seq: r["seq"], state: JobState(rawValue: r["state"]) ?? .failed, parameters: params,
                   createdAt: r["created_at"], startedAt: r["started_at"], finishedAt: r["finished_at"], attempts: r["attempts"],
                   leaseOwner: r["lease_owner"], leaseExpires: r["lease_expires"], cancelRequested: (r["cancel_requested"] as Int) != 0,
                   progressImage: r["progress_image"], progressStep: r["progress_step"], progressSteps: r["progress_steps"],
                   images: images, error: r["error"])
    }

    static func fetch(_ db: Database, _ id: String) throws -> Job? {
        try Row.fetchOne(db, sql: "SELECT * FROM job WHERE id = ?", arguments: [id]).map(job)
    }

    // MARK: JobStore

    public func submit(_ p: JobParameters, maxQueued: Int, now: Double) throws -> Job {
        try pool.write { db in
            let queued = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM job WHERE state = 'queued'") ?? 0
            guard queued < maxQueued else { throw JobStoreError.queueFull(limit: maxQueued, queued: queued) }
            let id = Job.newID()
            try db.execute(sql: "INSERT INTO job (id, state, params, created_at, progress_steps) VALUES (?, 'queued', ?, ?, ?)",
                           arguments: [id, String(decoding: p.jsonData(), as: UTF8.self), now, p.samplerSteps])
            return try Self.fetch(db, id)!
        }
    }

    public func requeueExpired(now: Double, maxAttempts: Int) throws -> [String] {
        try pool.write { db in
            let ids = try String.fetchAll(db, sql: "SELECT id FROM job WHERE state = 'running' AND lease_expires < ? ORDER BY seq",
                                          arguments: [now])
            guard !ids.isEmpty else { return [] }
            // a job whose worker died maxAttempts times is not tried again (it may be what kills them)
            try db.execute(sql: """
                UPDATE job SET state = 'failed', finished_at = ?, lease_owner = NULL, lease_expires = NULL,
                    error = 'the worker running it stopped ' || attempts || ' times (lease expired); not retried'
                WHERE state = 'running' AND lease_expires < ? AND attempts >= ?
                """, arguments: [now, now, maxAttempts])
            try db.execute(sql: """
                UPDATE job SET state = CASE WHEN cancel_requested != 0 THEN 'cancelled' ELSE 'queued' END,
                    finished_at = CASE WHEN cancel_requested != 0 THEN ? ELSE NULL END,
                    lease_owner = NULL, lease_expires = NULL, progress_image = 0, progress_step = 0
                WHERE state = 'running' AND lease_expires < ?
                """, arguments: [now, now])
            return ids
        }
    }

    public func claim(worker: String, lease: Double, now: Double) throws -> Job? {
        try pool.write { db in
            guard let id = try String.fetchOne(db, sql: "SELECT id FROM job WHERE state = 'queued' ORDER BY seq LIMIT 1") else {
                return nil
            }
            try db.execute(sql: """
                UPDATE job SET state = 'running', lease_owner = ?, lease_expires = ?, attempts = attempts + 1,
                    started_at = ?, progress_image = 0, progress_step = 0
                WHERE id = ? AND state = 'queued'
                """, arguments: [worker, now + lease, now, id])
            guard db.changesCount == 1 else { return nil }
            return try Self.fetch(db, id)
        }
    }

    /// The condition under which a worker may touch a job: it is running and the worker holds its
    /// lease (an expired lease still counts until another call re-queues the job: the worker
    /// finishing just after its deadline is not a second run).
    static let held = "id = ? AND state = 'running' AND lease_owner = ?"

    public func heartbeat(id: String, worker: String, lease: Double, now: Double, progress: (image: Int, step: Int, steps: Int)?) throws -> Bool {
        try pool.write { db in
            if let p = progress {
                try db.execute(sql: "UPDATE job SET lease_expires = ?, progress_image = ?, progress_step = ?, progress_steps = ? WHERE \(Self.held)",
                               arguments: [now + lease, p.image, p.step, p.steps, id, worker])
            } else {
                try db.execute(sql: "UPDATE job SET lease_expires = ? WHERE \(Self.held)", arguments: [now + lease, id, worker])
            }
            guard db.changesCount == 1 else { throw JobStoreError.leaseLost(job: id) }
            return try Bool.fetchOne(db, sql: "SELECT cancel_requested != 0 FROM job WHERE id = ?", arguments: [id]) ?? false
        }
    }

    public func finish(_ id: String, worker: String, state: JobState, images: [String] = [], error: String? = nil, now: Double) throws {
        let imagesJSON = String(decoding: (try? JSONEncoder().encode(images)) ?? Data("[]".utf8), as: UTF8.self)
        try pool.write { db in
            try db.execute(sql: """
                UPDATE job SET state = ?, images = ?, error = ?, finished_at = ?, lease_owner = NULL, lease_expires = NULL,
                    progress_step = CASE WHEN ? = 'done' THEN progress_steps ELSE progress_step END
                WHERE \(Self.held)
                """, arguments: [state.rawValue, imagesJSON, error, now, state.rawValue, id, worker])
            guard db.changesCount == 1 else { throw JobStoreError.leaseLost(job: id) }
        }
    }

    public func cancel(id: String, now: Double) throws -> Job {
        try pool.write { db in
            guard let j = try Self.fetch(db, id) else { throw JobStoreError.notFound(id) }
            switch j.state {
            case .queued:
                try db.execute(sql: "UPDATE job SET state = 'cancelled', cancel_requested = 1, finished_at = ?, error = 'cancelled' WHERE id = ? AND state = 'queued'",
                               arguments: [now, id])
            case .running:
                try db.execute(sql: "UPDATE job SET cancel_requested = 1 WHERE id = ? AND state = 'running'", arguments: [id])
            case .done, .failed, .cancelled:
                break
            }
            return try Self.fetch(db, id)!
        }
    }

    public func job(_ id: String) throws -> Job? {
        try pool.read { db in try Self.fetch(db, id) }
    }

    public func position(_ id: String) throws -> Int? {
        try pool.read { db in
            guard let seq = try Int64.fetchOne(db, sql: "SELECT seq FROM job WHERE id = ? AND state = 'queued'", arguments: [id]) else { return nil }
            return (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM job WHERE state = 'queued' AND seq <= ?", arguments: [seq])) ?? 1
        }
    }

    public func list(limit: Int, before: Int64?, state: JobState?) throws -> [Job] {
        try pool.read { db in
            var sql = "SELECT * FROM job WHERE 1"
            var args: [any DatabaseValueConvertible] = []
            if let b = before { sql += " AND seq < ?"; args.append(b) }
            if let s = state { sql += " AND state = ?"; args.append(s.rawValue) }
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(max(0, limit))
            return try Row.fetchAll(db, sql: sql, arguments: StatementArguments(args)).map(Self.job)
        }
    }

    public func stats(now: Double) throws -> QueueStats {
        try pool.read { db in
            var by: [JobState: Int] = [:]
            for r in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM job GROUP BY state") {
                if let s = JobState(rawValue: r["state"]) { by[s] = r["n"] }
            }
            let oldest = try Double.fetchOne(db, sql: "SELECT MIN(created_at) FROM job WHERE state = 'queued'")
            return QueueStats(byState: by, oldestQueuedAge: oldest.map { now - $0 })
        }
    }

    /// At the start of a process that is the store's only user (held by `StoreLock`): every running
    /// job belonged to a process that is gone, so its lease is ended now instead of waiting for it.
    public func expireAllLeases() throws {
        try pool.write { db in try db.execute(sql: "UPDATE job SET lease_expires = 0 WHERE state = 'running'") }
    }
}

/// An exclusive lock on a file beside the store (`flock`), held while a server uses an outputs
/// folder: a second `newbie serve` on the same folder is refused instead of sharing the queue.
public final class StoreLock: @unchecked Sendable {
    let fd: Int32
    public let path: String

    public init(path: String) throws {
        self.path = path
        fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw JobStoreError.locked("cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            close(fd)
            throw JobStoreError.locked("\(path) is locked: another `newbie serve` uses this outputs folder")
        }
    }

    deinit { flock(fd, LOCK_UN); close(fd) }
}
