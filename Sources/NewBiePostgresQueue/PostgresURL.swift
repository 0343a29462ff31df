import Foundation

/// Where a PostgreSQL queue lives, parsed from `--queue postgres://...`.
///
/// Accepted forms (libpq's URL syntax, the subset a queue needs):
/// - `postgres://user[:password]@host[:port]/database` (TCP; port 5432 by default)
/// - `postgres://user@/database?host=/run/postgresql` (a Unix socket: the folder holding
///   `.s.PGSQL.<port>`, as libpq's `host=` parameter)
/// `postgresql://` is accepted too. TLS is not in this build: `sslmode` other than `disable` is
/// refused (use a Unix socket or a private network).
public struct PostgresURL: Equatable, Sendable, CustomStringConvertible {
    public enum Endpoint: Equatable, Sendable {
        case tcp(host: String, port: Int)
        /// The socket file itself (folder + `.s.PGSQL.<port>`).
        case unixSocket(path: String)
    }

    public var endpoint: Endpoint
    public var user: String
    public var password: String?
    public var database: String

    public init(endpoint: Endpoint, user: String, password: String? = nil, database: String) {
        self.endpoint = endpoint; self.user = user; self.password = password; self.database = database
    }

    /// Whether `s` asks for PostgreSQL (and not the SQLite queue).
    public static func isPostgres(_ s: String) -> Bool { s.hasPrefix("postgres://") || s.hasPrefix("postgresql://") }

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let description: String
        init(_ m: String) { description = "--queue: \(m)" }
    }

    public init(parsing s: String) throws {
        guard Self.isPostgres(s) else { throw ParseError("expected postgres://user@host[:port]/database, got \(Self.redacted(s))") }
        guard let c = URLComponents(string: s) else { throw ParseError("not a URL: \(Self.redacted(s))") }
        guard let user = c.user, !user.isEmpty else { throw ParseError("no user name (postgres://USER@host/database)") }
        let db = String(c.path.drop { $0 == "/" })
        guard !db.isEmpty, !db.contains("/") else { throw ParseError("no database name (postgres://user@host/DATABASE)") }
        var socketDir: String?
        var portParameter: Int?
        for item in c.queryItems ?? [] {
            switch item.name {
            case "host": socketDir = item.value
            case "port":
                guard let p = item.value.flatMap(Int.init), (1...65535).contains(p) else { throw ParseError("port must be 1 to 65535") }
                portParameter = p
            case "sslmode":
                guard item.value == "disable" else {
                    throw ParseError("sslmode=\(item.value ?? "") is not supported (no TLS in this build); use a Unix socket or sslmode=disable on a private network")
                }
            default: throw ParseError("unknown parameter \(item.name) (known: host, port, sslmode)")
            }
        }
        if let p = c.port, !(1...65535).contains(p) { throw ParseError("port must be 1 to 65535") }
        let port = c.port ?? portParameter ?? 5432
        let host = c.host ?? ""
        if let dir = socketDir, dir.hasPrefix("/") {
            guard host.isEmpty else { throw ParseError("give either a host name or ?host=/socket/folder, not both") }
            endpoint = .unixSocket(path: (dir as NSString).appendingPathComponent(".s.PGSQL.\(port)"))
        } else if let h = socketDir ?? (host.isEmpty ? nil : host) {
            endpoint = .tcp(host: h, port: port)
        } else {
            throw ParseError("no host (postgres://user@HOST/database, or ?host=/socket/folder for a Unix socket)")
        }
        self.user = user
        self.password = c.password
        self.database = db
    }

    /// The URL without its password (for logs and errors).
    public var description: String {
        let who = user + (password == nil ? "" : ":***")
        switch endpoint {
        case .tcp(let h, let p): return "postgres://\(who)@\(h.contains(":") ? "[\(h)]" : h):\(p)/\(database)"
        case .unixSocket(let path): return "postgres://\(who)@/\(database)?host=\((path as NSString).deletingLastPathComponent)"
        }
    }

    /// `s` with any password replaced, for messages about a URL that did not parse.
    static func redacted(_ s: String) -> String {
        guard let at = s.range(of: "@"), let scheme = s.range(of: "://"), scheme.upperBound < at.lowerBound else { return s }
        let userinfo = s[scheme.upperBound..<at.lowerBound]
        guard let colon = userinfo.firstIndex(of: ":") else { return s }
        return String(s[..<colon]) + ":***" + String(s[at.lowerBound...])
    }
}
