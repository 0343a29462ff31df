import Foundation

/// Events for jobs that other processes run. With a shared queue (PostgreSQL), a `newbie worker`
/// elsewhere moves a job through the store, not through this process's `JobEventHub`; the relay
/// reads the store every `interval` seconds while someone listens and publishes what changed:
/// `started` (a new claim), `step` (progress recorded by the worker's heartbeat, so at heartbeat
/// pace, not every step), the final event, and `queueChanged`. Jobs run by this process's own worker
/// (`localWorker`) are left to it. Previews and per-image events do not cross processes.
public final class StoreEventRelay: @unchecked Sendable {
    let store: any JobStore
    let hub: JobEventHub
    let localWorker: String?
    let interval: Double
    public var clock: @Sendable () -> Double = { Date().timeIntervalSince1970 }

    struct Seen: Equatable { var attempts: Int; var image: Int; var step: Int }
    private var seen: [String: Seen] = [:]
    private var lastQueued: Int?
    private let lock = NSLock()
    private var stopping = false
    private let done = DispatchSemaphore(value: 0)
    private var started = false

    public init(store: any JobStore, hub: JobEventHub, localWorker: String?, interval: Double = 0.5) {
        self.store = store; self.hub = hub; self.localWorker = localWorker; self.interval = interval
    }

    public func start() {
        lock.lock(); started = true; lock.unlock()
        let t = Thread { [self] in
            while !isStopping {
                if hub.listenerCount > 0 {
                    do { try tick() } catch { /* the store is unreachable now: the next tick tries again */ }
                } else {
                    lock.lock(); seen = [:]; lastQueued = nil; lock.unlock()
                }
                Thread.sleep(forTimeInterval: interval)
            }
            done.signal()
        }
        t.name = "newbie-event-relay"
        t.start()
    }

    public func stop() {
        lock.lock(); stopping = true; let wasStarted = started; started = false; lock.unlock()
        if wasStarted { _ = done.wait(timeout: .now() + interval + 5) }
    }

    var isStopping: Bool { lock.lock(); defer { lock.unlock() }; return stopping }

    /// One look at the store; publishes the differences from the last look.
    public func tick() throws {
        let now = clock()
        let running = try store.list(limit: 1000, before: nil, state: .running).filter { localWorker == nil || $0.leaseOwner != localWorker }
        lock.lock(); var known = seen; let previousQueued = lastQueued; lock.unlock()
        var changed = false
        var current: [String: Seen] = [:]
        for j in running {
            let s = Seen(attempts: j.attempts, image: j.progressImage, step: j.progressStep)
            current[j.id] = s
            let before = known[j.id]
            if before?.attempts != j.attempts {
                hub.publish(j.id, .started(attempt: j.attempts))
                changed = true
            }
            if j.progressStep > 0 && (before == nil || before!.image != s.image || before!.step != s.step) {
                let images = j.parameters.count
                let doneSteps = j.progressImage * j.progressSteps + j.progressStep
                let total = max(1, j.progressSteps) * images
                let elapsed = now - (j.startedAt ?? now)
                let eta = doneSteps > 0 ? max(0, elapsed / Double(doneSteps) * Double(total - doneSteps)) : 0
                hub.publish(j.id, .step(image: j.progressImage, images: images, step: j.progressStep, steps: j.progressSteps, t: 0, eta: eta))
            }
            known[j.id] = nil
        }
        // no longer running: ended, or back in the queue (its worker died)
        for id in known.keys {
            guard let j = try store.job(id) else { continue }
            switch j.state {
            case .done: hub.publish(id, .done(images: (0..<j.images.count).map { JobWorker.imageURL(job: id, index: $0) }))
            case .failed: hub.publish(id, .error(j.error ?? "failed"))
            case .cancelled: hub.publish(id, .cancelled)
            case .queued, .running: break
            }
            changed = true
        }
        let queued = try store.stats(now: now).queued
        if queued != previousQueued { changed = true }
        if changed { hub.publish("", .queueChanged) }
        lock.lock(); seen = current; lastQueued = queued; lock.unlock()
    }
}
