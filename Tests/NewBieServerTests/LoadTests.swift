import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest
import NewBieQueue
@testable import NewBieServer

/// 200 submissions from 20 concurrent clients against a queue of 16: every request gets 201 or
/// 429 (with Retry-After), every accepted job ends done exactly once, none is lost.
final class ServerLoadTests: XCTestCase {
    func testTwoHundredRequestsFromTwentyClients() async throws {
        var limits = JobLimits()
        limits.maxQueued = 16
        let s = try await RunningServer(limits: limits)
        defer { s.stop() }
        let t0 = Date()
        let results = try await withThrowingTaskGroup(of: [(Int, Double, String?, String?)].self) { group in
            for client in 0..<20 {
                group.addTask {
                    var out: [(Int, Double, String?, String?)] = []
                    for k in 0..<10 {
                        let start = Date()
                        let r = try await s.request("POST", "/v1/jobs", json: ["prompt": "client \(client) job \(k)", "width": 32, "height": 32,
                                                                               "steps": 2, "seed": client * 100 + k])
                        out.append((r.status, Date().timeIntervalSince(start), r.json["id"] as? String, r.headers["retry-after"]))
                    }
                    return out
                }
            }
            var all: [(Int, Double, String?, String?)] = []
            for try await part in group { all += part }
            return all
        }
        XCTAssertEqual(results.count, 200)
        let accepted = results.filter { $0.0 == 201 }.compactMap(\.2)
        let refused = results.filter { $0.0 == 429 }
        XCTAssertEqual(accepted.count + refused.count, 200, "only 201 or 429: \(Set(results.map(\.0)))")
        XCTAssertTrue(refused.allSatisfy { Int($0.3 ?? "") != nil }, "every 429 has Retry-After")
        XCTAssertEqual(Set(accepted).count, accepted.count)
        // every accepted job ends done
        for id in accepted {
            let j = try await s.waitJob(id) { ($0["state"] as? String) == "done" }
            XCTAssertEqual(j["attempts"] as? Int, 1, id)
        }
        let total = try await s.request("GET", "/v1/jobs?state=done&limit=100")
        XCTAssertNotNil(total.json["jobs"])
        XCTAssertEqual(try s.setup.store.stats(now: 0).byState[.done], accepted.count, "done exactly once each, none lost")
        let lat = results.map(\.1).sorted()
        func pct(_ p: Double) -> Double { lat[min(lat.count - 1, Int(Double(lat.count) * p))] * 1000 }
        print(String(format: "load: 200 POSTs from 20 clients: %d accepted, %d refused (429); POST latency p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms; all accepted jobs done after %.1f s",
                     accepted.count, refused.count, pct(0.5), pct(0.9), pct(0.99), lat.last! * 1000, Date().timeIntervalSince(t0)))
    }
}
