import Foundation
import Hummingbird
import Logging
import NewBiePipeline
import NewBieQueue

/// `newbie serve` put together: the outputs folder (locked), the store in it, the resident models
/// and their worker, the API, the HTTP application.
public final class ServeSetup: @unchecked Sendable {
    public let outputs: String
    public let lock: StoreLock
    public let store: SQLiteJobStore
    public let hub = JobEventHub()
    public let worker: JobWorker
    public let api: ServerAPI
    public let pipeline: ResidentPipeline

    /// The store file in an outputs folder.
    public static func storePath(outputs: String) -> String { (outputs as NSString).appendingPathComponent("jobs.sqlite") }

    /// Opens the outputs folder and loads the models (the long part). Jobs left running by a
    /// previous process on this folder go back to the queue before the worker starts.
    public init(outputs: String, paths: ModelPaths, options: StageOptions, limits: JobLimits = JobLimits(),
                worker settings: WorkerSettings = WorkerSettings(), log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        try FileManager.default.createDirectory(atPath: outputs, withIntermediateDirectories: true)
        self.outputs = outputs
        lock = try StoreLock(path: (outputs as NSString).appendingPathComponent("serve.lock"))
        store = try SQLiteJobStore(path: Self.storePath(outputs: outputs))
        try store.expireAllLeases()
        let t0 = Date()
        pipeline = try ResidentPipeline(paths: paths, options: options)
        log(String(format: "models loaded in %.2f s (%@)", Date().timeIntervalSince(t0),
                   pipeline.loadSeconds.map { String(format: "%@ %.2f s", $0.0, $0.1) }.joined(separator: ", ")))
        worker = JobWorker(store: store, executor: pipeline, hub: hub, outputs: outputs, settings: settings)
        worker.log = log
        var models: [String: Any] = [
            "precision": options.placement.precisionSpec, "device": options.placement.deviceSpec,
            "load_seconds": Dictionary(pipeline.loadSeconds.map { ($0.0, $0.1) }, uniquingKeysWith: { a, _ in a }),
            "resident": true,
        ]
        // model names, not server paths: a client learns which checkpoint runs, not where it lives
        var parts: [String: Any] = [:]
        for slot in ModelSlot.allCases {
            if let p = paths.path(slot) { parts[slot.rawValue] = (p as NSString).lastPathComponent }
        }
        parts["dit_config"] = ["dim": pipeline.denoise.dit.config.dim, "layers": pipeline.denoise.dit.config.nLayers,
                               "latent_channels": pipeline.denoise.dit.config.inChannels]
        models["models"] = parts
        api = ServerAPI(store: store, hub: hub, worker: worker, outputs: outputs, limits: limits, models: models)
    }

    /// Starts the worker, serves until SIGTERM/SIGINT (graceful: open requests finish), then stops
    /// the worker (a job it was running goes back to the queue for the next start).
    public func run(options: ServerOptions, logger: Logger? = nil, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let app = try HTTPAdapter.application(api: api, options: options, logger: logger, onRunning: onRunning)
        worker.start()
        defer { worker.stop() }
        // The HTTP server's graceful shutdown waits for open requests, and an event stream lasts
        // as long as its job: on the signal, stop the worker and end the streams first.
        let sources = [SIGTERM, SIGINT].map { sig -> any DispatchSourceSignal in
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { [worker, hub] in
                worker.requestStop()
                hub.finishAll()
            }
            src.resume()
            return src
        }
        defer { sources.forEach { $0.cancel() } }
        try await app.runService()
    }
}
