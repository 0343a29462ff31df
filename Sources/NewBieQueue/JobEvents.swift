import Foundation

/// What happens to a job, as the events endpoint sends it (server-sent events: `event:` is `name`,
/// `data:` the JSON of `fields`).
public enum JobEvent: Sendable, Equatable {
    case queued(position: Int)
    case position(Int)
    case started(attempt: Int)
    /// A sampler step done: image (0-based) of images, step (1-based) of steps, the time t reached,
    /// and the estimated seconds left for the whole job.
    case step(image: Int, images: Int, step: Int, steps: Int, t: Double, eta: Double)
    /// A small PNG of the current latent, base64.
    case preview(image: Int, step: Int, png: String)
    /// Image `index` is written; its URL path.
    case image(index: Int, url: String)
    case done(images: [String])
    case error(String)
    case cancelled
    /// Something about the queue changed (a job started or ended): queued jobs' positions moved.
    case queueChanged

    public var name: String {
        switch self {
        case .queued: return "queued"
        case .position: return "position"
        case .started: return "started"
        case .step: return "step"
        case .preview: return "preview"
        case .image: return "image"
        case .done: return "done"
        case .error: return "error"
        case .cancelled: return "cancelled"
        case .queueChanged: return "queue"
        }
    }

    public var isFinal: Bool {
        switch self {
        case .done, .error, .cancelled: return true
        default: return false
        }
    }

    public var fields: [String: Any] {
        switch self {
        case .queued(let p): return ["position": p]
        case .position(let p): return ["position": p]
        case .started(let a): return ["attempt": a]
        case let .step(image, images, step, steps, t, eta):
            return ["image": image, "images": images, "step": step, "steps": steps, "t": t, "eta_s": eta]
        case let .preview(image, step, png): return ["image": image, "step": step, "png": png]
        case let .image(index, url): return ["index": index, "url": url]
        case .done(let images): return ["images": images]
        case .error(let m): return ["message": m]
        case .cancelled, .queueChanged: return [:]
        }
    }

    /// One server-sent event, `event:` and `data:` lines and the blank line.
    public var sse: String {
        let data = (try? JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
        return "event: \(name)\ndata: \(String(decoding: data, as: UTF8.self))\n\n"
    }
}

/// In-process fan-out of job events to listeners (the SSE streams). Events are not stored: the
/// store holds the state, and a listener that joins late starts from the job's row.
public final class JobEventHub: @unchecked Sendable {
    private let lock = NSLock()
    private var listeners: [UUID: (job: String?, continuation: AsyncStream<(String, JobEvent)>.Continuation)] = [:]

    public init() {}

    /// Events of `job` (nil: of every job) and every `queueChanged`, until the stream is dropped.
    public func subscribe(job: String?) -> AsyncStream<(String, JobEvent)> {
        let key = UUID()
        let (stream, c) = AsyncStream<(String, JobEvent)>.makeStream(bufferingPolicy: .bufferingNewest(256))
        c.onTermination = { [weak self] _ in self?.remove(key) }
        lock.lock()
        if closed { lock.unlock(); c.finish(); return stream }
        listeners[key] = (job, c)
        lock.unlock()
        return stream
    }

    private var closed = false

    /// Ends every stream, now and later (shutdown: open event streams must not hold it up).
    public func finishAll() {
        lock.lock()
        closed = true
        let all = listeners.values
        listeners = [:]
        lock.unlock()
        for l in all { l.continuation.finish() }
    }

    private func remove(_ key: UUID) { lock.lock(); listeners[key] = nil; lock.unlock() }

    public var listenerCount: Int { lock.lock(); defer { lock.unlock() }; return listeners.count }

    public func publish(_ job: String, _ e: JobEvent) {
        lock.lock()
        let targets = listeners.values.filter { $0.job == nil || $0.job == job || e == .queueChanged }
        lock.unlock()
        for t in targets { t.continuation.yield((job, e)) }
    }
}
