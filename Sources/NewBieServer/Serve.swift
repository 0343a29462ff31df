import Foundation
import Hummingbird
import Logging
import ServiceLifecycle
import NewBiePipeline
import NewBieQueue
import NewBiePostgresQueue

/// Where the jobs are kept (`--queue`).
public enum QueueBackend: Sendable, Equatable {
    /// A SQLite file, one server process: `jobs.sqlite` in the outputs folder (path nil, the
    /// default) or the file `sqlite:PATH` names.
    case sqlite(path: String?)
    /// A PostgreSQL database shared by API servers and `newbie worker` processes.
    case postgres(PostgresURL)

    public var isSQLite: Bool { if case .sqlite = self { return true } else { return false } }

    /// `sqlite`, `sqlite:PATH` or a `postgres://` URL (see `PostgresURL`); throws a message naming `--queue`.
    public static func parse(_ s: String) throws -> QueueBackend {
        if s == "sqlite" { return .sqlite(path: nil) }
        if s.hasPrefix("sqlite:") {
            let path = String(s.dropFirst("sqlite:".count))
            guard !path.isEmpty, !path.hasSuffix("/") else {
                throw JobRequestError("--queue \(s): sqlite:PATH needs the database file's path (e.g. sqlite:/var/lib/newbie/jobs.sqlite)")
            }
            return .sqlite(path: path)
        }
        if PostgresURL.isPostgres(s) { return .postgres(try PostgresURL(parsing: s)) }
        throw JobRequestError("--queue \(s): expected sqlite, sqlite:PATH or postgres://user@host[:port]/database")
    }
}

/// `newbie serve` put together: the outputs folder, the store (SQLite in the folder, locked; or
/// PostgreSQL), the resident models and their worker (none in an API-only server), the API, the
/// HTTP application.
public final class ServeSetup: @unchecked Sendable {
    public let outputs: String
    /// The outputs folder's lock (SQLite queue only: PostgreSQL is shared on purpose).
    public let lock: StoreLock?
    public let store: any JobStore
    public let queue: QueueBackend
    public let hub = JobEventHub()
    /// nil: API only (`--no-worker`; `newbie worker` processes run the jobs).
    public let worker: JobWorker?
    public let api: ServerAPI
    public let pipeline: ResidentPipeline?
    /// PostgreSQL queue: turns other processes' progress, seen in the store, into events.
    public let relay: StoreEventRelay?

    /// The store file in an outputs folder.
    public static func storePath(outputs: String) -> String { (outputs as NSString).appendingPathComponent("jobs.sqlite") }

    /// A server with a worker on resident models and the SQLite queue.
    public convenience init(outputs: String, paths: ModelPaths, options: StageOptions, limits: JobLimits = JobLimits(),
                            worker settings: WorkerSettings = WorkerSettings(), log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        try self.init(outputs: outputs, queue: .sqlite(path: nil), models: (paths, options), limits: limits, worker: settings, log: log)
    }

    /// Opens the outputs folder and the queue, and loads the models when there are any (the long
    /// part). With the SQLite queue, jobs left running by a previous process on this folder go back
    /// to the queue before the worker starts; `models` nil (API only) needs the PostgreSQL queue,
    /// where workers run elsewhere.
    public init(outputs: String, queue: QueueBackend, models modelChoice: (paths: ModelPaths, options: StageOptions)?,
                residency: Residency = .all, limits: JobLimits = JobLimits(), worker settings: WorkerSettings = WorkerSettings(),
                log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        if modelChoice == nil && queue.isSQLite {
            throw JobRequestError("--no-worker needs --queue postgres://...: with the SQLite queue this server is the only worker")
        }
        try FileManager.default.createDirectory(atPath: outputs, withIntermediateDirectories: true)
        self.outputs = outputs
        self.queue = queue
        switch queue {
        case .sqlite(let path):
            // one server per store: the lock sits beside the database file
            let db = path ?? Self.storePath(outputs: outputs)
            if path != nil { try FileManager.default.createDirectory(atPath: (db as NSString).deletingLastPathComponent, withIntermediateDirectories: true) }
            lock = try StoreLock(path: path.map { $0 + ".lock" } ?? (outputs as NSString).appendingPathComponent("serve.lock"))
            let sqlite = try SQLiteJobStore(path: db)
            try sqlite.expireAllLeases()
            store = sqlite
        case .postgres(let url):
            // other servers and workers share the queue: their leases stay; expired ones are
            // re-queued by whichever worker looks first
            lock = nil
            store = try PostgresJobStore(url: url)
        }
        var models: [String: Any] = ["resident": modelChoice != nil]
        if let (paths, options) = modelChoice {
            let t0 = Date()
            let pipeline = try ResidentPipeline(paths: paths, options: options, residency: residency)
            log(String(format: "models loaded in %.2f s (%@)", Date().timeIntervalSince(t0),
                       pipeline.loadSeconds.map { String(format: "%@ %.2f s", $0.0, $0.1) }.joined(separator: ", ")))
            let worker = JobWorker(store: store, executor: pipeline, hub: hub, outputs: outputs, settings: settings)
            worker.log = log
            self.pipeline = pipeline
            self.worker = worker
            models["precision"] = options.placement.precisionSpec
            models["device"] = options.placement.deviceSpec
            models["load_seconds"] = Dictionary(pipeline.loadSeconds.map { ($0.0, $0.1) }, uniquingKeysWith: { a, _ in a })
            models["residency"] = pipeline.residency.rawValue
            // model names, not server paths: a client learns which checkpoint runs, not where it lives
            var parts: [String: Any] = [:]
            for slot in ModelSlot.allCases {
                if let p = paths.path(slot) { parts[slot.rawValue] = (p as NSString).lastPathComponent }
            }
            parts["dit_config"] = ["dim": pipeline.ditConfig.dim, "layers": pipeline.ditConfig.nLayers,
                                   "latent_channels": pipeline.ditConfig.inChannels]
            models["models"] = parts
        } else {
            pipeline = nil
            worker = nil
            models["precision"] = "none"
            models["device"] = "none"
            models["models"] = [String: Any]()
        }
        if case .postgres = queue {
            relay = StoreEventRelay(store: store, hub: hub, localWorker: worker?.id)
        } else {
            relay = nil
        }
        api = ServerAPI(store: store, hub: hub, worker: worker, outputs: outputs, limits: limits, models: models)
    }

    /// Starts the worker, serves until SIGTERM/SIGINT (graceful: open requests finish), then stops
    /// the worker (a job it was running goes back to the queue for the next start). One
    /// swift-service-lifecycle `ServiceGroup` runs the HTTP server and the queue's service; on the
    /// signal it shuts them down in reverse order, the queue first: the worker stops and every event
    /// stream ends, so the HTTP server's graceful shutdown, which waits for open requests, does not
    /// wait for a followed job to finish.
    public func run(options: ServerOptions, logger: Logger? = nil, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let app = try HTTPAdapter.application(api: api, options: options, logger: logger, onRunning: onRunning)
        let queueService = QueueService(worker: worker, relay: relay, hub: hub)
        let group = ServiceGroup(configuration: .init(services: [.init(service: app), .init(service: queueService)],
                                                      gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger ?? Logger(label: "newbie-serve")))
        try await group.run()
    }
}

/// The worker and the event relay as a service of the server's `ServiceGroup`.
struct QueueService: Service {
    let worker: JobWorker?
    let relay: StoreEventRelay?
    let hub: JobEventHub

    func run() async throws {
        worker?.start()
        relay?.start()
        // until the group shuts down (a signal) or is cancelled (a test ends the server)
        try? await gracefulShutdown()
        worker?.requestStop()
        hub.finishAll()
        // JobWorker.stop waits on a semaphore: off the cooperative pool
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread { [worker, relay] in
                worker?.stop()
                relay?.stop()
                c.resume()
            }
        }
    }
}
