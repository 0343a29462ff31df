import ArgumentParser
import Foundation
import NewBiePipeline
import NewBieQueue
import NewBiePostgresQueue

/// `newbie worker`: one GPU (or CPU) worker on a shared PostgreSQL queue (docs/SERVER.md, "Worker
/// deployment"): loads the models once, then claims jobs, runs them and writes their images into
/// the outputs folder the API servers read.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run jobs from a PostgreSQL queue (fed by `newbie serve --queue postgres://...`) on models loaded once.",
        discussion: """
        Claims the oldest queued job (SELECT ... FOR UPDATE SKIP LOCKED), renews its lease every lease/6 seconds, writes \
        its images (each through a temporary file renamed into place) to --outputs/jobs/<id>/<n>.png, then marks it done. \
        A job whose worker died goes back to the queue when its lease expires. SIGTERM/SIGINT: the running job stops at \
        its next step and goes back to the queue at once. --outputs must be the folder the API servers read (a shared \
        file system when they run on other machines); the machines' clocks must agree (NTP).
        """)

    @Option(help: "The queue: postgres://user[:password]@host[:port]/database, or postgres://user@/database?host=/socket/folder.")
    var queue: String
    @OptionGroup var models: ModelOptions
    @OptionGroup var deviceOptions: DeviceOptions
    @Option(help: "Folder the images go to (jobs/<id>/<n>.png); the API servers' --outputs.")
    var outputs = "newbie-outputs"
    @Option(help: "Seconds a lease on a job lasts without a heartbeat (a job whose worker died runs again after it).")
    var lease: Double = 30
    @Option(help: ArgumentHelp(ResidentOption.help))
    var resident = "all"
    @Option(help: "Seconds between looks at an empty queue.")
    var poll: Double = 1
    @Option(help: "This worker's name in the queue (default: host:pid:random).")
    var name: String?

    func run() throws {
        guard PostgresURL.isPostgres(queue) else {
            throw ValidationError("--queue \(queue): a worker needs a PostgreSQL queue (postgres://...); the SQLite queue is run by `newbie serve` itself")
        }
        let url: PostgresURL
        do { url = try PostgresURL(parsing: queue) } catch { throw ValidationError("\(error)") }
        try ResidentOption.check(resident)
        guard lease >= 1, lease <= 3600 else { throw ValidationError("--lease \(lease): expected 1 to 3600 seconds") }
        guard poll > 0, poll <= 60 else { throw ValidationError("--poll \(poll): expected more than 0 and at most 60 seconds") }
        let paths = try models.paths()
        let options = try deviceOptions.stageOptions()
        try FileManager.default.createDirectory(atPath: outputs, withIntermediateDirectories: true)
        let log: @Sendable (String) -> Void = { FileHandle.standardError.write(Data(("newbie worker: " + $0 + "\n").utf8)) }
        // the queue first: a wrong URL is reported before minutes of loading
        let store = try PostgresJobStore(url: url)
        let t0 = Date()
        let residency = try ResidentOption.resolve(resident, paths: paths, options: options, log: log)
        let pipeline = try ResidentPipeline(paths: paths, options: options, residency: residency)
        var ws = WorkerSettings()
        ws.lease = lease
        ws.heartbeat = max(0.2, lease / 6)
        ws.poll = poll
        let worker = name.map { JobWorker(store: store, executor: pipeline, hub: JobEventHub(), outputs: outputs, id: $0, settings: ws) }
            ?? JobWorker(store: store, executor: pipeline, hub: JobEventHub(), outputs: outputs, settings: ws)
        worker.log = log
        let stop = DispatchSemaphore(value: 0)
        let sources = [SIGTERM, SIGINT].map { sig -> any DispatchSourceSignal in
            signal(sig, SIG_IGN)
            let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            src.setEventHandler { stop.signal() }
            src.resume()
            return src
        }
        defer { sources.forEach { $0.cancel() } }
        log(String(format: "%@ ready on %@ (models loaded in %.2f s)", worker.id, url.description, Date().timeIntervalSince(t0)))
        worker.start()
        stop.wait()
        log("stopping")
        worker.stop(timeout: 60)
        log("stopped")
    }
}
