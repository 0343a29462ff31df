import Foundation
import NewBieQueue
import NewBieText

/// A response before it meets a transport: status, headers, and a body that is bytes or a stream
/// of server-sent events.
public struct APIResponse: Sendable, Error {
    public enum Body: Sendable {
        case bytes(Data)
        case events(AsyncStream<String>)
    }
    public var status: Int
    public var headers: [(String, String)]
    public var body: Body

    public init(status: Int, headers: [(String, String)] = [], body: Body = .bytes(Data())) {
        self.status = status; self.headers = headers; self.body = body
    }

    public static func json(_ status: Int, _ object: Any, headers: [(String, String)] = []) -> APIResponse {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .fragmentsAllowed, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return APIResponse(status: status, headers: [("Content-Type", "application/json")] + headers, body: .bytes(data))
    }

    /// `{"error": message, "field": field}`.
    public static func error(_ status: Int, _ message: String, field: String? = nil, headers: [(String, String)] = []) -> APIResponse {
        var o: [String: Any] = ["error": message]
        if let f = field { o["field"] = f }
        return json(status, o, headers: headers)
    }

    public var bytes: Data? { if case .bytes(let d) = body { return d }; return nil }
}

/// What the server runs: the store, the worker on the resident models (nil: an API-only server,
/// as in the PostgreSQL mode where workers run elsewhere), the limits, and a description of the
/// models for /v1/models.
public final class ServerAPI: @unchecked Sendable {
    public let store: any JobStore
    public let hub: JobEventHub
    public let worker: JobWorker?
    public let outputs: String
    public let limits: JobLimits
    public let models: [String: Any]
    public let started = Date()
    public var clock: @Sendable () -> Double = { Date().timeIntervalSince1970 }
    /// Seconds between keepalive comments on an event stream.
    public var keepaliveSeconds: Double = 15
    /// HTTP requests by method and status (for /metrics); the transport counts them.
    private let lock = NSLock()
    let metricsRegistry = ServerMetrics()

    public init(store: any JobStore, hub: JobEventHub, worker: JobWorker?, outputs: String, limits: JobLimits, models: [String: Any]) {
        self.store = store; self.hub = hub; self.worker = worker; self.outputs = outputs; self.limits = limits; self.models = models
    }

    public func countRequest(method: String, status: Int) {
        metricsRegistry.countRequest(method: method, status: status)
    }

    func countRejection(_ reason: String) { metricsRegistry.reject(reason) }

    // MARK: jobs

    /// The JSON of a job, with its queue position and image URLs.
    public func jobJSON(_ j: Job) -> [String: Any] {
        let p = j.parameters
        var o: [String: Any] = [
            "id": j.id, "state": j.state.rawValue, "created_at": j.createdAt, "attempts": j.attempts, "cancel_requested": j.cancelRequested,
            "progress": ["image": j.progressImage, "images": p.count, "step": j.progressStep, "steps": j.progressSteps],
            "parameters": (try? JSONSerialization.jsonObject(with: p.jsonData())) ?? [:],
            "images": j.state == .done ? (0..<j.images.count).map { JobWorker.imageURL(job: j.id, index: $0) } : [String](),
            "events": "/v1/jobs/\(j.id)/events",
        ]
        o["started_at"] = j.startedAt ?? NSNull()
        o["finished_at"] = j.finishedAt ?? NSNull()
        o["error"] = j.error ?? NSNull()
        o["position"] = j.state == .queued ? ((try? store.position(j.id)) ?? NSNull()) as Any : NSNull()
        return o
    }

    /// Seconds a client should wait before submitting again when the queue is full: until the
    /// running job ends and frees a place, from its remaining steps at the last measured step time
    /// (1 s per step before any job ran); at least 1 s, at most an hour.
    func retryAfter() -> Int {
        let perStep = worker?.stepSeconds ?? 1
        var remaining = Double(limits.maxSteps)
        if let r = (try? store.list(limit: 1, before: nil, state: .running))?.first {
            let steps = max(1, r.progressSteps)
            remaining = Double((steps - r.progressStep) + steps * max(0, r.parameters.count - 1 - r.progressImage))
        }
        return Int(max(1, min(3600, (perStep * remaining).rounded(.up))))
    }

    public func submit(body: Data) -> APIResponse {
        let p: JobParameters
        do { p = try JobParameters.parse(json: body, limits: limits) } catch let e as JobRequestError {
            countRejection("invalid")
            return .error(400, e.message, field: e.field)
        } catch { return .error(400, "\(error)") }
        do {
            let j = try store.submit(p, maxQueued: limits.maxQueued, now: clock())
            worker?.notify()
            hub.publish(j.id, .queueChanged)
            return .json(201, jobJSON(j), headers: [("Location", "/v1/jobs/\(j.id)")])
        } catch JobStoreError.queueFull(let limit, let queued) {
            countRejection("queue_full")
            return .error(429, JobStoreError.queueFull(limit: limit, queued: queued).description,
                          headers: [("Retry-After", "\(retryAfter())")])
        } catch {
            return .error(500, "\(error)")
        }
    }

    func lookup(_ id: String) -> Result<Job, APIResponse> {
        guard Job.isValidID(id) else { return .failure(.error(404, "no job \(id.prefix(64))")) }
        do {
            guard let j = try store.job(id) else { return .failure(.error(404, "no job \(id)")) }
            return .success(j)
        } catch { return .failure(.error(500, "\(error)")) }
    }

    public func get(id: String) -> APIResponse {
        switch lookup(id) {
        case .failure(let r): return r
        case .success(let j): return .json(200, jobJSON(j))
        }
    }

    /// Cancels: a queued job at once (200), a running one within a step (202, the worker finishes
    /// it as cancelled), a final one not at all (409 with the job).
    public func cancel(id: String) -> APIResponse {
        switch lookup(id) {
        case .failure(let r): return r
        case .success(let before):
            do {
                let j = try store.cancel(id: id, now: clock())
                switch (before.state, j.state) {
                case (.queued, .cancelled):
                    hub.publish(id, .cancelled)
                    hub.publish(id, .queueChanged)
                    return .json(200, jobJSON(j))
                case (_, .running):
                    worker?.cancelIfRunning(id)
                    return .json(202, jobJSON(j))
                default:
                    return .json(409, ["error": "job \(id) is already \(j.state.rawValue)", "job": jobJSON(j)])
                }
            } catch { return .error(500, "\(error)") }
        }
    }

    /// Newest first, `limit` (1...100, default 20) per page; `before` is the `next` cursor of the
    /// previous page; `state` filters.
    public func list(query: [String: String]) -> APIResponse {
        var limit = 20
        if let l = query["limit"] {
            guard let v = Int(l), (1...100).contains(v) else { return .error(400, "limit must be an integer 1...100", field: "limit") }
            limit = v
        }
        var before: Int64? = nil
        if let b = query["before"] {
            guard let v = Int64(b), v > 0 else { return .error(400, "before must be a positive integer (the previous page's next)", field: "before") }
            before = v
        }
        var state: JobState? = nil
        if let s = query["state"] {
            guard let v = JobState(rawValue: s) else {
                return .error(400, "state must be one of \(JobState.allCases.map(\.rawValue).joined(separator: ", "))", field: "state")
            }
            state = v
        }
        do {
            let jobs = try store.list(limit: limit + 1, before: before, state: state)
            let page = Array(jobs.prefix(limit))
            var o: [String: Any] = ["jobs": page.map(jobJSON)]
            o["next"] = jobs.count > limit ? "\(page.last!.seq)" : NSNull()
            return .json(200, o)
        } catch { return .error(500, "\(error)") }
    }

    /// A job's image `n` (file name `N.png`), once the job is done.
    public func image(id: String, file: String) -> APIResponse {
        switch lookup(id) {
        case .failure(let r): return r
        case .success(let j):
            guard file.hasSuffix(".png"), let n = Int(file.dropLast(4)), String(n) == String(file.dropLast(4)), n >= 0 else {
                return .error(404, "images are named 0.png, 1.png, ...")
            }
            guard j.state == .done else { return .error(404, "job \(id) is \(j.state.rawValue); images exist once it is done") }
            guard n < j.images.count else { return .error(404, "job \(id) has \(j.images.count) image(s)") }
            // the stored path is ours (jobs/<id>/<n>.png), never a client's
            let path = (outputs as NSString).appendingPathComponent(j.images[n])
            guard let data = FileManager.default.contents(atPath: path) else { return .error(410, "the image file is gone from the outputs folder") }
            return APIResponse(status: 200, headers: [("Content-Type", "image/png"), ("Cache-Control", "private, max-age=86400, immutable")],
                               body: .bytes(data))
        }
    }

    /// Server-sent events of a job: its state now (queued with position, started with progress,
    /// or its end), then every event until it ends.
    public func events(id: String) -> APIResponse {
        let subscription = hub.subscribe(job: id)
        let job: Job
        switch lookup(id) {
        case .failure(let r): return r
        case .success(let j): job = j
        }
        let store = self.store
        let keepaliveSeconds = self.keepaliveSeconds
        let stream = AsyncStream<String> { c in
            let task = Task {
                func final(_ j: Job) -> JobEvent {
                    switch j.state {
                    case .done: return .done(images: (0..<j.images.count).map { JobWorker.imageURL(job: j.id, index: $0) })
                    case .failed: return .error(j.error ?? "failed")
                    default: return .cancelled
                    }
                }
                var lastPosition: Int? = nil
                switch job.state {
                case .queued:
                    lastPosition = (try? store.position(id)) ?? nil
                    c.yield(JobEvent.queued(position: lastPosition ?? 0).sse)
                case .running:
                    c.yield(JobEvent.started(attempt: job.attempts).sse)
                    if job.progressStep > 0 {
                        c.yield(JobEvent.step(image: job.progressImage, images: job.parameters.count, step: job.progressStep,
                                              steps: job.progressSteps, t: 0, eta: 0).sse)
                    }
                case .done, .failed, .cancelled:
                    c.yield(final(job).sse)
                    c.finish()
                    return
                }
                for await (_, e) in subscription {
                    if Task.isCancelled { break }
                    if e == .queueChanged {
                        // positions move; the job may also have ended without an event here
                        guard let now = try? store.job(id) else { continue }
                        if now.state == .queued, let p = try? store.position(id), p != lastPosition {
                            lastPosition = p
                            c.yield(JobEvent.position(p).sse)
                        } else if now.state.isFinal {
                            c.yield(final(now).sse)
                            break
                        }
                        continue
                    }
                    c.yield(e.sse)
                    if e.isFinal { break }
                }
                c.finish()
            }
            // a comment line now and then: proxies keep the stream open, and a client that left is
            // noticed (the write fails) even while the job waits in the queue
            let keepalive = Task {
                while !Task.isCancelled {
                    try? await Task.sleep(nanoseconds: UInt64(keepaliveSeconds * 1e9))
                    if Task.isCancelled { break }
                    c.yield(": keepalive\n\n")
                }
            }
            c.onTermination = { _ in task.cancel(); keepalive.cancel() }
        }
        return APIResponse(status: 200, headers: [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                                                  ("X-Accel-Buffering", "no")], body: .events(stream))
    }

    // MARK: prompts

    static func promptBody(_ body: Data) -> Result<[String: Any], APIResponse> {
        guard let o = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] else {
            return .failure(.error(400, "the body must be a JSON object {\"prompt\": \"...\"}"))
        }
        guard let p = o["prompt"] as? String else { return .failure(.error(400, "a prompt string is required", field: "prompt")) }
        _ = p
        return .success(o)
    }

    static func issueJSON(_ i: PromptIssue) -> [String: Any] {
        ["severity": i.severity.rawValue, "kind": i.kind.rawValue, "line": i.position.line, "column": i.position.column, "message": i.message]
    }

    /// The XML checker of `newbie prompt check`: issues with line and column. 200 whatever the
    /// prompt holds (`valid` says); 400 only for a malformed request.
    public func promptCheck(body: Data) -> APIResponse {
        let o: [String: Any]
        switch Self.promptBody(body) { case .failure(let r): return r; case .success(let v): o = v }
        let text = o["prompt"] as! String
        guard text.utf8.count <= limits.maxPromptBytes else { return .error(400, "at most \(limits.maxPromptBytes) bytes", field: "prompt") }
        let doc = PromptDocument(parsing: text)
        var r: [String: Any] = ["valid": doc.isValid, "plain": doc.isPlainText, "issues": doc.issues.map(Self.issueJSON),
                                "errors": doc.errors.count, "warnings": doc.warnings.count]
        if !doc.isPlainText {
            r["characters"] = doc.characters.count
            r["general_tags"] = doc.generalTags?.children.count ?? 0
            r["caption"] = doc.caption != nil
        }
        return .json(200, r)
    }

    /// `newbie prompt format`: 200 with the text, or 422 with the issues that stop it.
    public func promptFormat(body: Data) -> APIResponse {
        let o: [String: Any]
        switch Self.promptBody(body) { case .failure(let r): return r; case .success(let v): o = v }
        let text = o["prompt"] as! String
        guard text.utf8.count <= limits.maxPromptBytes else { return .error(400, "at most \(limits.maxPromptBytes) bytes", field: "prompt") }
        var layout = PromptLayout()
        if let i = o["indent"] {
            guard let n = i as? Int, !(i is Bool), (0...16).contains(n) else { return .error(400, "indent must be an integer 0...16", field: "indent") }
            layout.indent = n
        }
        if let c = o["compact"] {
            guard let b = c as? Bool else { return .error(400, "compact must be a boolean", field: "compact") }
            layout.blankLineBetweenBlocks = !b
        }
        do {
            return .json(200, ["text": try PromptFormatter.format(text, layout: layout)])
        } catch let e as PromptError {
            return .json(422, ["error": e.message, "issues": e.issues.map(Self.issueJSON)])
        } catch { return .error(500, "\(error)") }
    }

    // MARK: service

    public func modelsJSON() -> APIResponse {
        var o = models
        o["limits"] = ["max_width": limits.maxWidth, "max_height": limits.maxHeight, "max_steps": limits.maxSteps, "max_count": limits.maxCount,
                       "max_prompt_bytes": limits.maxPromptBytes, "max_queued": limits.maxQueued, "max_body_bytes": limits.maxBodyBytes]
        o["samplers"] = ["euler", "midpoint", "rk4", "dpm"]
        o["system_prompts"] = ["auto", "xml", "text", "none"]
        return .json(200, o)
    }

    public func health() -> APIResponse {
        do {
            let s = try store.stats(now: clock())
            return .json(200, ["status": "ok", "queued": s.queued, "running": s.running, "worker": worker == nil ? "none" : (worker!.runningJob == nil ? "idle" : "busy"),
                               "uptime_s": Date().timeIntervalSince(started)])
        } catch {
            return .json(503, ["status": "error", "error": "\(error)"])
        }
    }

    /// Prometheus text exposition (version 0.0.4), through swift-metrics and swift-prometheus
    /// (`ServerMetrics`).
    public func metrics() -> APIResponse {
        let out = metricsRegistry.exposition(stats: try? store.stats(now: clock()), worker: worker, listenerCount: hub.listenerCount,
                                             loadSeconds: models["load_seconds"] as? [String: Double] ?? [:],
                                             uptimeSeconds: Date().timeIntervalSince(started))
        return APIResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: .bytes(Data(out.utf8)))
    }
}
