import ArgumentParser
import Foundation
import NewBiePipeline
import NewBieQueue
import NewBieServer

/// `newbie serve`: the HTTP API, the job queue and the web page, with the models loaded once
/// (docs/SERVER.md).
struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the HTTP API and the web page; the models load once and stay resident; jobs queue in a SQLite file in --outputs or in PostgreSQL (--queue postgres://...).",
        discussion: """
        Binds 127.0.0.1:8188 by default. Any other address needs --token-file (clients send Authorization: Bearer TOKEN). \
        Jobs, their parameters, state and images live in --outputs (jobs.sqlite in WAL mode, jobs/<id>/<n>.png); a job \
        running when the process stopped runs again at the next start. With --queue postgres://... the queue is shared \
        with other servers and `newbie worker` processes (--no-worker: API only, no model). The API is described at /openapi.json.
        """)

    @OptionGroup var models: ModelOptions
    @OptionGroup var deviceOptions: DeviceOptions

    @Option(help: "Address to bind (127.0.0.1: this machine only; anything else needs --token-file).")
    var host = "127.0.0.1"
    @Option(help: "Port (0: any free port, printed at start).")
    var port = 8188
    @Option(name: .customLong("token-file"), help: "File whose first line is the bearer token required on /v1 and /metrics (at least 16 characters).")
    var tokenFile: String?
    @Option(help: "Folder of the job store (jobs.sqlite) and the images (jobs/<id>/<n>.png).")
    var outputs = "newbie-outputs"
    @Option(help: "Queue backend: sqlite (jobs.sqlite in --outputs, WAL mode, this server the only worker), sqlite:PATH (that database file) or postgres://user@host[:port]/database (shared with other servers and `newbie worker` processes; they must see the same --outputs folder).")
    var queue = "sqlite"
    @Flag(name: .customLong("no-worker"), help: "API only: load no model and run no job (needs --queue postgres://...; `newbie worker` processes run the jobs).")
    var noWorker = false

    @Option(name: .customLong("max-queued"), help: "Waiting jobs before POST /v1/jobs answers 429 with Retry-After.")
    var maxQueued = 64
    @Option(name: .customLong("max-width"), help: "Largest width (and --max-height: height) a job may ask for.")
    var maxWidth = 2048
    @Option(name: .customLong("max-height"))
    var maxHeight = 2048
    @Option(name: .customLong("max-steps"), help: "Most steps a job may ask for.")
    var maxSteps = 200
    @Option(name: .customLong("max-count"), help: "Most images per job.")
    var maxCount = 8
    @Option(name: .customLong("preview-map"), help: "Live previews: the latent->RGB map written by `newbie fit-preview` (JSON).")
    var previewMap: String?
    @Option(name: .customLong("preview-every"), help: "With --preview-map: a preview event every N sampler steps.")
    var previewEvery = 2
    @Option(help: ArgumentHelp(ResidentOption.help))
    var resident = "all"
    @Option(help: "Seconds a worker's lease on a job lasts without a heartbeat (a job whose worker died runs again after it).")
    var lease: Double = 30

    func run() throws {
        try ResidentOption.check(resident)
        let backend: QueueBackend
        do { backend = try QueueBackend.parse(queue) } catch { throw ValidationError("\(error)") }
        if noWorker && backend.isSQLite {
            throw ValidationError("--no-worker needs --queue postgres://...: with the SQLite queue this server is the only worker")
        }
        var server = ServerOptions()
        server.host = host
        server.port = port
        if let f = tokenFile { server.token = try ServeOptionsSupport.token(f) }
        do { try server.check() } catch let e as JobRequestError { throw ValidationError(e.message) }
        var limits = JobLimits()
        limits.maxQueued = maxQueued; limits.maxWidth = maxWidth; limits.maxHeight = maxHeight
        limits.maxSteps = maxSteps; limits.maxCount = maxCount
        var ws = WorkerSettings()
        ws.lease = max(2, lease)
        ws.heartbeat = max(0.5, ws.lease / 6)
        let preview = try previewMap.map { try LatentPreview.load($0) }
        if preview != nil { ws.previewEvery = max(1, previewEvery) }
        let log: @Sendable (String) -> Void = { FileHandle.standardError.write(Data(("newbie serve: " + $0 + "\n").utf8)) }
        let modelChoice = noWorker ? nil : (paths: try models.paths(), options: try deviceOptions.stageOptions())
        let residency = try modelChoice.map { try ResidentOption.resolve(resident, paths: $0.paths, options: $0.options, log: log) } ?? .all
        let setup = try ServeSetup(outputs: outputs, queue: backend, models: modelChoice, residency: residency, limits: limits, worker: ws, log: log)
        setup.pipeline?.previewMap = preview
        let host = self.host
        let sem = DispatchSemaphore(value: 0)
        let box = ErrorBox()
        Task {
            do {
                try await setup.run(options: server) { port in
                    log("listening on http://\(host.contains(":") ? "[\(host)]" : host):\(port)/ (outputs: \(setup.outputs))")
                }
            } catch { box.error = error }
            sem.signal()
        }
        sem.wait()
        if let e = box.error { throw e }
        log("stopped")
    }
}

final class ErrorBox: @unchecked Sendable { var error: Error? }

enum ServeOptionsSupport {
    static func token(_ path: String) throws -> String {
        do { return try ServerOptions.readToken(path) } catch let e as JobRequestError { throw ValidationError(e.message) }
    }
}
