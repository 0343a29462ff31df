import Foundation

/// A job's state. The allowed moves (`JobState.allows`):
///
///     queued ──claim──> running ──complete──> done
///        │                │ │ └──fail──────> failed
///        │                │ └────cancelled─> cancelled   (a cancel request seen by the worker)
///        │                └──lease expired─> queued      (the worker died or hung; attempts + 1)
///        └──cancel────────────────────────> cancelled
///
/// done, failed and cancelled are final: nothing leaves them, so a job is finished at most once.
public enum JobState: String, Sendable, Codable, CaseIterable {
    case queued, running, done, failed, cancelled

    public var isFinal: Bool { self == .done || self == .failed || self == .cancelled }

    /// The moves of the state machine above.
    public static func allows(_ from: JobState, _ to: JobState) -> Bool {
        switch (from, to) {
        case (.queued, .running), (.queued, .cancelled): return true
        case (.running, .done), (.running, .failed), (.running, .cancelled), (.running, .queued): return true
        // a job whose lease ran out too often fails without running again
        case (.queued, .failed): return true
        default: return false
        }
    }
}

/// One job as the store holds it.
public struct Job: Sendable, Equatable {
    /// Opaque public id (hex), the only handle clients get.
    public var id: String
    /// Submission order (queue order and history paging).
    public var seq: Int64
    public var state: JobState
    public var parameters: JobParameters
    /// Unix seconds.
    public var createdAt: Double
    public var startedAt: Double?
    public var finishedAt: Double?
    /// How many times a worker claimed it (1 for a job that ran once).
    public var attempts: Int
    public var leaseOwner: String?
    public var leaseExpires: Double?
    public var cancelRequested: Bool
    /// Progress of the current attempt: image (0-based), sampler step done, steps per image.
    public var progressImage: Int
    public var progressStep: Int
    public var progressSteps: Int
    /// Image files, relative to the outputs folder, in image order (set when the job is done).
    public var images: [String]
    public var error: String?

    public init(id: String, seq: Int64, state: JobState, parameters: JobParameters, createdAt: Double, startedAt: Double? = nil,
                finishedAt: Double? = nil, attempts: Int = 0, leaseOwner: String? = nil, leaseExpires: Double? = nil,
                cancelRequested: Bool = false, progressImage: Int = 0, progressStep: Int = 0, progressSteps: Int = 0,
                images: [String] = [], error: String? = nil) {
        self.id = id; self.seq = seq; self.state = state; self.parameters = parameters; self.createdAt = createdAt
        self.startedAt = startedAt; self.finishedAt = finishedAt; self.attempts = attempts; self.leaseOwner = leaseOwner
        self.leaseExpires = leaseExpires; self.cancelRequested = cancelRequested; self.progressImage = progressImage
        self.progressStep = progressStep; self.progressSteps = progressSteps; self.images = images; self.error = error
    }

    /// Whether `s` is a well-formed job id (what routes accept before they touch the store).
    public static func isValidID(_ s: String) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    public static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }
}

/// What the store refuses.
public enum JobStoreError: Error, Equatable, CustomStringConvertible {
    /// The queue holds `limit` waiting jobs; try again later.
    case queueFull(limit: Int, queued: Int)
    /// The worker no longer holds the job's lease (it expired and the job went back to the queue,
    /// or the job was finished by someone else): its result must be dropped.
    case leaseLost(job: String)
    case notFound(String)
    /// Another process serves this store.
    case locked(String)

    public var description: String {
        switch self {
        case .queueFull(let l, let q): return "the queue is full (\(q) jobs waiting, limit \(l)); try again later"
        case .leaseLost(let j): return "job \(j): the lease was lost; the result is dropped"
        case .notFound(let j): return "no job \(j)"
        case .locked(let m): return m
        }
    }
}

/// Counts by state and the queue's shape, for /metrics and /healthz.
public struct QueueStats: Sendable, Equatable {
    public var byState: [JobState: Int]
    public var oldestQueuedAge: Double?
    public init(byState: [JobState: Int], oldestQueuedAge: Double?) { self.byState = byState; self.oldestQueuedAge = oldestQueuedAge }
    public var queued: Int { byState[.queued] ?? 0 }
    public var running: Int { byState[.running] ?? 0 }
}

/// The queue contract every backend keeps (SQLite here, PostgreSQL in NewBiePostgresQueue, which
/// claims with `FOR UPDATE SKIP LOCKED`). Time is passed in (`now`, unix seconds) so tests drive the clock.
public protocol JobStore: Sendable {
    /// Adds a queued job; throws `queueFull` when `maxQueued` jobs already wait.
    func submit(_ p: JobParameters, maxQueued: Int, now: Double) throws -> Job
    /// Moves running jobs whose lease ended before `now` back to the queue (or to failed after
    /// `maxAttempts` claims); returns their ids.
    func requeueExpired(now: Double, maxAttempts: Int) throws -> [String]
    /// Takes the oldest queued job for `worker` with a lease until `now + lease`.
    func claim(worker: String, lease: Double, now: Double) throws -> Job?
    /// Renews the lease and records progress; returns whether a cancel was requested. Throws
    /// `leaseLost` when the worker no longer holds the job.
    func heartbeat(id: String, worker: String, lease: Double, now: Double, progress: (image: Int, step: Int, steps: Int)?) throws -> Bool
    /// running -> `state` (done with its images, failed or cancelled with a message), only while
    /// `worker` holds the lease; else `leaseLost`. `complete`, `fail` and `finishCancelled` below
    /// are its three uses.
    func finish(_ id: String, worker: String, state: JobState, images: [String], error: String?, now: Double) throws
    /// A client's cancel: queued -> cancelled at once; running: the request is recorded for the
    /// worker; final: nothing. Returns the job after it.
    func cancel(id: String, now: Double) throws -> Job
    func job(_ id: String) throws -> Job?
    /// 1-based place among queued jobs (1 = next to run); nil when not queued.
    func position(_ id: String) throws -> Int?
    /// Newest first; `before` is a `seq` cursor from the previous page.
    func list(limit: Int, before: Int64?, state: JobState?) throws -> [Job]
    func stats(now: Double) throws -> QueueStats
}

extension JobStore {
    /// running -> done with the images.
    public func complete(id: String, worker: String, images: [String], now: Double) throws {
        try finish(id, worker: worker, state: .done, images: images, error: nil, now: now)
    }
    /// running -> failed.
    public func fail(id: String, worker: String, message: String, now: Double) throws {
        try finish(id, worker: worker, state: .failed, images: [], error: message, now: now)
    }
    /// running -> cancelled (the worker saw the request).
    public func finishCancelled(id: String, worker: String, now: Double) throws {
        try finish(id, worker: worker, state: .cancelled, images: [], error: "cancelled", now: now)
    }
}
