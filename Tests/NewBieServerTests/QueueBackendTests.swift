import Foundation
import NewBieTestSupport
import XCTest
import NewBiePipeline
import NewBiePostgresQueue
import NewBieQueue
@testable import NewBieServer

/// `--queue` and the API-only rule, before anything is opened or loaded.
final class QueueBackendTests: XCTestCase {
    func testParse() throws {
        XCTAssertEqual(try QueueBackend.parse("sqlite"), .sqlite(path: nil))
        XCTAssertEqual(try QueueBackend.parse("sqlite:/tmp/x.db"), .sqlite(path: "/tmp/x.db"))
        XCTAssertEqual(try QueueBackend.parse("postgres://q@db/jobs"),
                       .postgres(PostgresURL(endpoint: .tcp(host: "db", port: 5432), user: "q", database: "jobs")))
        for bad in ["sqlite:", "sqlite:/tmp/dir/", "mysql://u@h/d", ""] {
            XCTAssertThrowsError(try QueueBackend.parse(bad)) { XCTAssertTrue("\($0)".hasPrefix("--queue"), "\($0)") }
        }
        XCTAssertThrowsError(try QueueBackend.parse("postgres://db/jobs")) { XCTAssertTrue("\($0)".contains("no user"), "\($0)") }
    }

    /// No worker needs a queue that someone else works: refused with SQLite, before the folder is
    /// created or locked.
    func testNoWorkerNeedsPostgres() {
        let out = TestScratch.path("newbie-noworker-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        XCTAssertThrowsError(try ServeSetup(outputs: out, queue: .sqlite(path: nil), models: nil)) {
            XCTAssertTrue("\($0)".contains("--no-worker needs --queue postgres://"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }
}
