import Foundation

/// Thrown by an executor that saw the job's cancel request (or a lost lease) between two model
/// evaluations.
public struct JobCancelled: Error, Equatable {
    public init() {}
}

/// What an executor gets besides the job: the cancel check and the progress reports.
public final class JobRunContext: @unchecked Sendable {
    private let lock = NSLock()
    private var _cancelRequested = false
    private var _leaseLost = false
    private var _progress: (image: Int, step: Int, steps: Int)?
    let onStep: (_ image: Int, _ step: Int, _ steps: Int, _ t: Double) -> Void
    let onImage: (_ index: Int) -> Void
    let onPreview: (_ image: Int, _ step: Int, _ png: Data) -> Void
    /// Send a preview every this many steps (0: none).
    public let previewEvery: Int

    public init(previewEvery: Int = 0, onStep: @escaping (Int, Int, Int, Double) -> Void = { _, _, _, _ in },
                onImage: @escaping (Int) -> Void = { _ in }, onPreview: @escaping (Int, Int, Data) -> Void = { _, _, _ in }) {
        self.previewEvery = previewEvery; self.onStep = onStep; self.onImage = onImage; self.onPreview = onPreview
    }

    public var isCancelled: Bool { lock.lock(); defer { lock.unlock() }; return _cancelRequested || _leaseLost }
    public var leaseLost: Bool { lock.lock(); defer { lock.unlock() }; return _leaseLost }
    public func requestCancel() { lock.lock(); _cancelRequested = true; lock.unlock() }
    func loseLease() { lock.lock(); _leaseLost = true; lock.unlock() }
    var progress: (image: Int, step: Int, steps: Int)? { lock.lock(); defer { lock.unlock() }; return _progress }

    /// Throws `JobCancelled` once a cancel was requested or the lease was lost.
    public func checkCancelled() throws { if isCancelled { throw JobCancelled() } }

    /// Sampler step `step` (1-based) of `steps` of image `image` reached time `t`.
    public func step(image: Int, step: Int, steps: Int, t: Double) {
        lock.lock(); _progress = (image, step, steps); lock.unlock()
        onStep(image, step, steps, t)
    }

    public func wrote(image: Int) { onImage(image) }
    public func preview(image: Int, step: Int, png: Data) { onPreview(image, step, png) }
}

/// Runs one job: writes `outputs.count` PNG files (each atomically: a temporary file renamed into
/// place) and returns; throws `JobCancelled` when `context` says so.
public protocol JobExecutor: AnyObject {
    func run(_ job: Job, outputs: [String], context: JobRunContext) throws
}

/// Settings of a worker's lease and polling.
public struct WorkerSettings: Sendable {
    /// Seconds a claim or heartbeat holds the job.
    public var lease: Double = 30
    /// Seconds between heartbeats (well under `lease`).
    public var heartbeat: Double = 5
    /// Claims after which a job whose worker keeps dying fails instead of running again.
    public var maxAttempts = 3
    /// Seconds between looks at an empty queue (a submit in this process wakes the worker at once).
    public var poll: Double = 1
    /// Preview every N sampler steps (0: off).
    public var previewEvery = 0
    public init() {}
}

/// The loop that takes jobs from the store and runs them on one executor (the resident models),
/// one at a time, on its own thread (model code is synchronous and CPU- or GPU-bound; it stays off
/// the server's event loops and Swift's cooperative pool).
public final class JobWorker: @unchecked Sendable {
    public let store: any JobStore
    public let executor: any JobExecutor
    public let hub: JobEventHub
    /// The outputs folder; images go to `jobs/<id>/<n>.png` under it.
    public let outputs: String
    public let id: String
    public let settings: WorkerSettings
    public var clock: @Sendable () -> Double = { Date().timeIntervalSince1970 }
    public var log: @Sendable (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }

    private let lock = NSLock()
    private var stopping = false
    private var thread: Thread?
    private let wake = DispatchSemaphore(value: 0)
    private let finished = DispatchSemaphore(value: 0)
    private var current: (job: String, context: JobRunContext)?
    /// Mean seconds per sampler step seen so far (for ETAs of the next jobs).
    public private(set) var stepSeconds: Double?
    /// Jobs run to the end by this worker (any final state) and images written.
    public private(set) var jobsRun = 0
    public private(set) var imagesWritten = 0

    public init(store: any JobStore, executor: any JobExecutor, hub: JobEventHub, outputs: String,
                id: String = "\(ProcessInfo.processInfo.hostName):\(getpid()):\(Job.newID().prefix(8))", settings: WorkerSettings = WorkerSettings()) {
        self.store = store; self.executor = executor; self.hub = hub; self.outputs = outputs; self.id = id; self.settings = settings
    }

    /// The image files of a job, relative to the outputs folder.
    public static func imagePaths(job: String, count: Int) -> [String] { (0..<count).map { "jobs/\(job)/\($0).png" } }

    /// The URL path of a job's image.
    public static func imageURL(job: String, index: Int) -> String { "/v1/jobs/\(job)/images/\(index).png" }

    // MARK: the loop

    public func start() {
        let t = Thread { [self] in
            loop()
            finished.signal()
        }
        t.name = "newbie-worker"
        t.stackSize = 16 << 20
        lock.lock(); thread = t; lock.unlock()
        t.start()
    }

    /// Asks the loop to stop after the current job's next cancel check (the job is cancelled and
    /// goes back to the queue by its lease: it runs again after a restart) and waits up to
    /// `timeout` seconds.
    public func stop(timeout: Double = 30) {
        requestStop()
        lock.lock(); let running = thread != nil; lock.unlock()
        if running { _ = finished.wait(timeout: .now() + timeout) }
    }

    /// `stop` without waiting: the running job stops at its next cancel check.
    public func requestStop() {
        lock.lock()
        stopping = true
        let c = current
        lock.unlock()
        c?.context.requestCancel()
        wake.signal()
    }

    /// A job was submitted: look now instead of at the next poll.
    public func notify() { wake.signal() }

    /// Cancels `job` at once when this worker runs it (the store holds the request for the others).
    public func cancelIfRunning(_ job: String) {
        lock.lock(); let c = current; lock.unlock()
        if let c, c.job == job { c.context.requestCancel() }
    }

    public var runningJob: String? { lock.lock(); defer { lock.unlock() }; return current?.job }

    var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return stopping }

    func loop() {
        while !isStopping {
            var ran = false
            do { ran = try runOnce() } catch {
                log("worker \(id): \(error)")
            }
            if !ran && !isStopping { _ = wake.wait(timeout: .now() + settings.poll) }
        }
    }

    /// Re-queues expired jobs, claims one and runs it. Returns whether a job was run.
    @discardableResult
    public func runOnce() throws -> Bool {
        for j in try store.requeueExpired(now: clock(), maxAttempts: settings.maxAttempts) {
            log("job \(j): its worker's lease expired; back in the queue")
            hub.publish(j, .queueChanged)
        }
        guard !isStopping, let job = try store.claim(worker: id, lease: settings.lease, now: clock()) else { return false }
        run(job)
        return true
    }

    func run(_ job: Job) {
        let p = job.parameters
        let started = clock()
        let totalSteps = max(1, job.progressSteps) * p.count
        let context = JobRunContext(previewEvery: settings.previewEvery, onStep: { [self] image, step, steps, t in
            let done = image * steps + step
            let elapsed = clock() - started
            let eta = done > 0 ? elapsed / Double(done) * Double(max(0, totalSteps - done)) : 0
            hub.publish(job.id, .step(image: image, images: p.count, step: step, steps: steps, t: t, eta: eta))
        }, onImage: { [self] i in
            hub.publish(job.id, .image(index: i, url: Self.imageURL(job: job.id, index: i)))
        }, onPreview: { [self] image, step, png in
            hub.publish(job.id, .preview(image: image, step: step, png: png.base64EncodedString()))
        })
        if job.cancelRequested { context.requestCancel() }
        lock.lock(); current = (job.id, context); lock.unlock()
        defer { lock.lock(); current = nil; jobsRun += 1; lock.unlock() }
        hub.publish(job.id, .started(attempt: job.attempts))
        hub.publish(job.id, .queueChanged)

        // heartbeat: renews the lease, records progress, brings cancel requests from other processes
        let beat = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "newbie-heartbeat"))
        beat.schedule(deadline: .now() + settings.heartbeat, repeating: settings.heartbeat)
        beat.setEventHandler { [self] in
            do {
                if try store.heartbeat(id: job.id, worker: id, lease: settings.lease, now: clock(), progress: context.progress) {
                    context.requestCancel()
                }
            } catch JobStoreError.leaseLost {
                log("job \(job.id): lease lost; stopping it here")
                context.loseLease()
            } catch {
                log("job \(job.id): heartbeat failed: \(error)")
            }
        }
        beat.resume()
        if isStopping { context.requestCancel() }

        let relative = Self.imagePaths(job: job.id, count: p.count)
        let absolute = relative.map { (outputs as NSString).appendingPathComponent($0) }
        var outcome: Result<Void, Error>
        do {
            let jobDir = (absolute[0] as NSString).deletingLastPathComponent
            try FileManager.default.createDirectory(atPath: jobDir, withIntermediateDirectories: true)
            // temporary files of an earlier attempt that died mid-write
            for f in (try? FileManager.default.contentsOfDirectory(atPath: jobDir)) ?? [] where f.hasPrefix(".") && f.hasSuffix(".tmp") {
                try? FileManager.default.removeItem(atPath: (jobDir as NSString).appendingPathComponent(f))
            }
            try executor.run(job, outputs: absolute, context: context)
            // every image is on disk (renamed into place) before the job is marked done
            for a in absolute where !FileManager.default.fileExists(atPath: a) {
                throw JobRequestError("the executor did not write \((a as NSString).lastPathComponent)")
            }
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        beat.cancel()
        if context.leaseLost {
            log("job \(job.id): dropped here (lease lost); another worker has it")
            return
        }
        let now = clock()
        do {
            switch outcome {
            case .success:
                try store.complete(id: job.id, worker: id, images: relative, now: now)
                log("job \(job.id): done (\(p.count) image\(p.count == 1 ? "" : "s"), attempt \(job.attempts))")
                lock.lock(); imagesWritten += p.count; lock.unlock()
                if let s = context.progress, s.step > 0 {
                    let per = (now - started) / Double(s.image * s.steps + s.step)
                    lock.lock(); stepSeconds = per; lock.unlock()
                }
                hub.publish(job.id, .done(images: (0..<p.count).map { Self.imageURL(job: job.id, index: $0) }))
            case .failure(let e) where e is JobCancelled:
                let requested = try store.job(job.id)?.cancelRequested ?? false
                if isStopping && !requested {
                    // shutting down: the job is not the client's to lose; its lease ends now and it
                    // runs again at the next start
                    _ = try store.heartbeat(id: job.id, worker: id, lease: -1, now: now, progress: nil)
                    log("job \(job.id): interrupted by shutdown; back in the queue at the next start")
                } else {
                    try store.finishCancelled(id: job.id, worker: id, now: now)
                    hub.publish(job.id, .cancelled)
                }
            case .failure(let e):
                let message = "\(e)"
                try store.fail(id: job.id, worker: id, message: message, now: now)
                hub.publish(job.id, .error(message))
            }
        } catch {
            log("job \(job.id): could not record its end: \(error)")
        }
        hub.publish(job.id, .queueChanged)
    }
}
