import Foundation
import XCTest

/// A throwaway PostgreSQL cluster for tests: `initdb` in a fresh folder under /tmp, the server on a
/// Unix socket in that folder (no TCP port), trust authentication for the user `newbie`, fsync off.
/// `initdb` refuses to run as root, so under root the cluster runs as the `postgres` user (Debian's
/// package creates it) through `runuser`. Tests skip with a message when the server binaries are not
/// installed (Debian: `apt-get install postgresql`).
final class PostgresCluster {
    let dir: String
    let bin: String
    let asUser: String?
    private var databases = 0

    /// The folder of `initdb`, `pg_ctl`, `psql`: $NEWBIE_PG_BIN, else the newest
    /// /usr/lib/postgresql/<version>/bin.
    static func binaries() -> String? {
        let fm = FileManager.default
        if let b = ProcessInfo.processInfo.environment["NEWBIE_PG_BIN"], fm.isExecutableFile(atPath: b + "/initdb") { return b }
        let root = "/usr/lib/postgresql"
        let versions = ((try? fm.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted(by: >)
        return versions.map { "\(root)/\($0)/bin" }.first { fm.isExecutableFile(atPath: $0 + "/initdb") }
    }

    /// Starts a cluster, or throws XCTSkip when PostgreSQL is not installed.
    init() throws {
        guard let bin = Self.binaries() else {
            throw XCTSkip("PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (Debian: apt-get install postgresql); the PostgreSQL queue is not tested")
        }
        self.bin = bin
        // short: a Unix socket path must fit in 107 bytes
        dir = "/tmp/nbpg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o755])
        if getuid() == 0 {
            guard let pw = getpwnam("postgres") else {
                throw XCTSkip("running as root and there is no `postgres` user to run initdb as (Debian's postgresql package creates it)")
            }
            guard chown(dir, pw.pointee.pw_uid, pw.pointee.pw_gid) == 0 else { throw XCTSkip("cannot hand \(dir) to the postgres user") }
            asUser = "postgres"
        } else {
            asUser = nil
        }
        try run(bin + "/initdb", ["-D", dir + "/data", "-A", "trust", "-U", "newbie", "-E", "UTF8", "--no-sync", "--no-instructions"])
        try run(bin + "/pg_ctl", ["-D", dir + "/data", "-l", dir + "/server.log", "-w", "-t", "60",
                                  "-o", "-k \(dir) -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
                                  "start"])
    }

    deinit { stop() }

    func stop() {
        guard FileManager.default.fileExists(atPath: dir + "/data/postmaster.pid") else { return }
        _ = try? run(bin + "/pg_ctl", ["-D", dir + "/data", "-m", "immediate", "-w", "stop"])
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Stops the server (fast: open connections are closed) and starts it again on the same data.
    func restart() throws {
        try run(bin + "/pg_ctl", ["-D", dir + "/data", "-m", "fast", "-w", "-t", "60", "-l", dir + "/server.log",
                                  "-o", "-k \(dir) -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50",
                                  "restart"])
    }

    /// A new empty database; its URL for `--queue`.
    func makeDatabase() throws -> String {
        databases += 1
        let name = "t\(databases)"
        try run(bin + "/psql", ["-h", dir, "-U", "newbie", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", "CREATE DATABASE \(name)"])
        return "postgres://newbie@/\(name)?host=\(dir)"
    }

    /// Runs a cluster program (as the postgres user under root) and throws its output when it fails.
    /// posix_spawn and waitpid rather than Foundation's Process: its wait did not return here after
    /// `pg_ctl start` (whose server outlives it).
    @discardableResult
    func run(_ program: String, _ args: [String]) throws -> String {
        var argv: [String]
        if let u = asUser {
            let runuser = FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser") ? "/usr/sbin/runuser" : "/sbin/runuser"
            argv = [runuser, "-u", u, "--", program] + args
        } else {
            argv = [program] + args
        }
        let outPath = dir + "/command-\(UInt32.random(in: 0...UInt32.max)).out"
        defer { unlink(outPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let cargs = argv.map { strdup($0) } + [nil]
        defer { cargs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cargs, environ)
        guard rc == 0 else { throw NSError(domain: "cannot start \(argv[0]): \(String(cString: strerror(rc)))", code: 1) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let exited = status & 0x7f == 0
        guard exited && (status >> 8) & 0xff == 0 else {
            throw NSError(domain: "\((program as NSString).lastPathComponent) \(args.joined(separator: " ")) failed (status \(status)): \(text)", code: 1)
        }
        return text
    }
}
