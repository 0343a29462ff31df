import CoreMetrics
import Foundation
import NewBieQueue
import Prometheus

/// The server's metrics, recorded through swift-metrics and exposed by swift-prometheus.
///
/// Each server owns its registry and hands its factory to every metric, instead of bootstrapping
/// the process-wide `MetricsSystem` (which may be done once per process: tests run many servers in
/// one). Events are counted when they happen (HTTP requests, refused submissions); the rest is read
/// at scrape time and recorded just before the exposition is written (queue counts, the worker).
final class ServerMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory
    private let lock = NSLock()
    private var httpRequests: [String: CoreMetrics.Counter] = [:]
    private var rejected: [String: CoreMetrics.Counter] = [:]
    private let jobs: [JobState: CoreMetrics.Gauge]
    private let oldestQueued: CoreMetrics.Gauge
    private let workerBusy: CoreMetrics.Gauge
    private let stepSeconds: CoreMetrics.Gauge
    private let listeners: CoreMetrics.Gauge
    private let uptime: CoreMetrics.Gauge
    private let workerJobs: CoreMetrics.Counter
    private let workerImages: CoreMetrics.Counter
    private var workerJobsSeen = 0, workerImagesSeen = 0
    private var modelLoad: [String: CoreMetrics.Gauge] = [:]

    init() {
        let factory = PrometheusMetricsFactory(registry: registry)
        self.factory = factory
        jobs = Dictionary(uniqueKeysWithValues: JobState.allCases.map {
            ($0, CoreMetrics.Gauge(label: "newbie_jobs", dimensions: [("state", $0.rawValue)], factory: factory))
        })
        oldestQueued = CoreMetrics.Gauge(label: "newbie_queue_oldest_seconds", factory: factory)
        workerBusy = CoreMetrics.Gauge(label: "newbie_worker_busy", factory: factory)
        stepSeconds = CoreMetrics.Gauge(label: "newbie_step_seconds", factory: factory)
        listeners = CoreMetrics.Gauge(label: "newbie_event_listeners", factory: factory)
        uptime = CoreMetrics.Gauge(label: "newbie_uptime_seconds", factory: factory)
        workerJobs = CoreMetrics.Counter(label: "newbie_worker_jobs_total", factory: factory)
        workerImages = CoreMetrics.Counter(label: "newbie_worker_images_total", factory: factory)
        // both reasons show from the start (0), so a rate() has a series before the first refusal
        for r in ["invalid", "queue_full"] { reject(r, by: 0) }
    }

    func countRequest(method: String, status: Int) {
        let key = "\(method) \(status)"
        lock.lock()
        let c = httpRequests[key] ?? CoreMetrics.Counter(label: "newbie_http_requests_total",
                                                          dimensions: [("method", method), ("status", String(status))], factory: factory)
        httpRequests[key] = c
        lock.unlock()
        c.increment()
    }

    func reject(_ reason: String, by n: Int = 1) {
        lock.lock()
        let c = rejected[reason] ?? CoreMetrics.Counter(label: "newbie_jobs_rejected_total", dimensions: [("reason", reason)], factory: factory)
        rejected[reason] = c
        lock.unlock()
        c.increment(by: n)
    }

    /// Records what is read at scrape time and returns the Prometheus text exposition.
    func exposition(stats: QueueStats?, worker: JobWorker?, listenerCount: Int, loadSeconds: [String: Double], uptimeSeconds: Double) -> String {
        if let s = stats {
            for (state, g) in jobs { g.record(s.byState[state] ?? 0) }
            oldestQueued.record(s.oldestQueuedAge ?? 0)
        }
        lock.lock()
        if let w = worker {
            workerBusy.record(w.runningJob == nil ? 0 : 1)
            stepSeconds.record(w.stepSeconds ?? 0)
            // the worker keeps totals; the counters advance by what is new since the last scrape
            let (j, i) = (w.jobsRun, w.imagesWritten)
            if j > workerJobsSeen { workerJobs.increment(by: j - workerJobsSeen); workerJobsSeen = j }
            if i > workerImagesSeen { workerImages.increment(by: i - workerImagesSeen); workerImagesSeen = i }
        }
        for (model, seconds) in loadSeconds {
            let g = modelLoad[model] ?? CoreMetrics.Gauge(label: "newbie_model_load_seconds", dimensions: [("model", model)], factory: factory)
            modelLoad[model] = g
            g.record(seconds)
        }
        lock.unlock()
        listeners.record(listenerCount)
        uptime.record(uptimeSeconds.rounded())
        return registry.emitToString()
    }
}
