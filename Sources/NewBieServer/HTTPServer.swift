import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NewBieQueue

/// How the server listens and whom it lets in.
public struct ServerOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 8188
    /// Bearer token every /v1 and /metrics request must carry (nil: none; only on a local address).
    public var token: String?
    public init() {}

    /// Loopback addresses: the only ones a server binds without a token.
    public static func isLoopback(_ host: String) -> Bool {
        host == "127.0.0.1" || host == "::1" || host == "localhost" || host.hasPrefix("127.")
    }

    /// Refuses a non-local bind without a token (issue 17 item 5).
    public func check() throws {
        if !Self.isLoopback(host) && (token ?? "").isEmpty {
            throw JobRequestError("--host \(host) is not a loopback address: give --token-file FILE (a bearer token clients must send), or bind 127.0.0.1")
        }
        guard (0...65535).contains(port) else { throw JobRequestError("--port \(port): must be 0...65535") }
    }

    /// A token from a file: the first line, trimmed; at least 16 characters.
    public static func readToken(_ path: String) throws -> String {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw JobRequestError("--token-file \(path): cannot read it") }
        let t = text.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard t.count >= 16 else { throw JobRequestError("--token-file \(path): the token (first line) must be at least 16 characters") }
        return t
    }
}

/// The static web page and the OpenAPI document (resources of this target).
public enum StaticFiles {
    static let types = ["html": "text/html; charset=utf-8", "js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
                        "json": "application/json", "svg": "image/svg+xml"]
    /// The files served, by URL path.
    public static let routes: [String: String] = ["/": "index.html", "/index.html": "index.html", "/app.js": "app.js", "/style.css": "style.css",
                                                  "/openapi.json": "openapi.json"]

    public static func data(_ name: String) -> Data? {
        guard let url = Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Static") else { return nil }
        return try? Data(contentsOf: url)
    }

    public static func response(_ name: String) -> APIResponse {
        guard let d = data(name) else { return .error(404, "\(name) is missing from the server's resources") }
        let ext = (name as NSString).pathExtension
        return APIResponse(status: 200, headers: [("Content-Type", types[ext] ?? "application/octet-stream"), ("Cache-Control", "no-cache")],
                           body: .bytes(d))
    }
}

/// Token check, body cap, security headers and request counting, in front of every route.
struct GuardMiddleware: RouterMiddleware {
    typealias Context = BasicRequestContext
    let api: ServerAPI
    let token: String?

    static func constantTimeEquals(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) { diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0) }
        return diff == 0
    }

    /// The methods a path has (nil: no such path), for 405 with Allow.
    static func allowedMethods(_ path: String) -> [String]? {
        let c = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map(String.init)
        if StaticFiles.routes[path] != nil || ["/healthz", "/metrics", "/v1/models"].contains(path) { return ["GET"] }
        if path == "/v1/prompt/check" || path == "/v1/prompt/format" { return ["POST"] }
        guard c.count >= 2, c[0] == "v1", c[1] == "jobs" else { return nil }
        switch c.count {
        case 2: return ["GET", "POST"]
        case 3: return ["GET", "DELETE"]
        case 4 where c[3] == "events": return ["GET"]
        case 5 where c[3] == "images": return ["GET"]
        default: return nil
        }
    }

    static func needsToken(_ path: String) -> Bool { path.hasPrefix("/v1/") || path == "/v1" || path == "/metrics" }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        let path = request.uri.path
        if let t = token, Self.needsToken(path),
           !Self.constantTimeEquals(request.headers[.authorization] ?? "", "Bearer \(t)") {
            response = HTTPAdapter.response(.error(401, "a bearer token is required (Authorization: Bearer TOKEN)",
                                                   headers: [("WWW-Authenticate", "Bearer")]))
        } else if let allowed = Self.allowedMethods(path), !allowed.contains(request.method.rawValue) {
            response = HTTPAdapter.response(.error(405, "\(request.method.rawValue) is not allowed here; use \(allowed.joined(separator: " or "))",
                                                   headers: [("Allow", allowed.joined(separator: ", "))]))
        } else if let cl = request.headers[.contentLength].flatMap(Int.init), cl > api.limits.maxBodyBytes {
            response = HTTPAdapter.response(.error(413, "request bodies are capped at \(api.limits.maxBodyBytes) bytes"))
        } else {
            do {
                response = try await next(request, context)
            } catch let e as HTTPError {
                response = HTTPAdapter.response(.error(Int(e.status.code), e.body ?? e.status.reasonPhrase))
            }
        }
        response.headers[.init("X-Content-Type-Options")!] = "nosniff"
        response.headers[.init("Referrer-Policy")!] = "no-referrer"
        response.headers[.init("X-Frame-Options")!] = "DENY"
        if response.headers[.contentType]?.hasPrefix("text/html") == true {
            response.headers[.init("Content-Security-Policy")!] =
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
        }
        api.countRequest(method: request.method.rawValue, status: Int(response.status.code))
        return response
    }
}

/// Routes of the API (docs/SERVER.md, Static/openapi.json) onto `ServerAPI`.
public enum HTTPAdapter {
    static func response(_ r: APIResponse) -> Response {
        var headers = HTTPFields()
        for (k, v) in r.headers { if let n = HTTPField.Name(k) { headers.append(HTTPField(name: n, value: v)) } }
        let status = HTTPResponse.Status(code: r.status)
        switch r.body {
        case .bytes(let d):
            return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: d)))
        case .events(let stream):
            return Response(status: status, headers: headers, body: ResponseBody { writer in
                for await chunk in stream { try await writer.write(ByteBuffer(string: chunk)) }
                try await writer.finish(nil)
            })
        }
    }

    static func body(_ request: Request, _ api: ServerAPI) async throws -> Data {
        var buffer = try await request.body.collect(upTo: api.limits.maxBodyBytes)
        return Data(buffer.readBytes(length: buffer.readableBytes) ?? [])
    }

    public static func router(api: ServerAPI, token: String?) -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: GuardMiddleware(api: api, token: token))
        for (path, file) in StaticFiles.routes {
            router.get(RouterPath(stringLiteral: path)) { _, _ in response(StaticFiles.response(file)) }
        }
        router.get("/healthz") { _, _ in response(api.health()) }
        router.get("/metrics") { _, _ in response(api.metrics()) }
        router.get("/v1/models") { _, _ in response(api.modelsJSON()) }
        router.post("/v1/jobs") { request, _ in response(api.submit(body: try await body(request, api))) }
        router.get("/v1/jobs") { request, _ in
            var q: [String: String] = [:]
            for (k, v) in request.uri.queryParameters { q[String(k)] = String(v) }
            return response(api.list(query: q))
        }
        router.get("/v1/jobs/:id") { _, context in response(api.get(id: context.parameters.get("id") ?? "")) }
        router.delete("/v1/jobs/:id") { _, context in response(api.cancel(id: context.parameters.get("id") ?? "")) }
        router.get("/v1/jobs/:id/events") { _, context in response(api.events(id: context.parameters.get("id") ?? "")) }
        router.get("/v1/jobs/:id/images/:file") { _, context in
            response(api.image(id: context.parameters.get("id") ?? "", file: context.parameters.get("file") ?? ""))
        }
        router.post("/v1/prompt/check") { request, _ in response(api.promptCheck(body: try await body(request, api))) }
        router.post("/v1/prompt/format") { request, _ in response(api.promptFormat(body: try await body(request, api))) }
        return router
    }

    /// The application on `options.host:options.port`; `onRunning` gets the bound port (useful
    /// with port 0).
    public static func application(api: ServerAPI, options: ServerOptions, logger: Logger? = nil,
                                   onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) throws -> some ApplicationProtocol {
        try options.check()
        var log = logger ?? Logger(label: "newbie-serve")
        if logger == nil { log.logLevel = .notice }
        return Application(router: router(api: api, token: options.token),
                           configuration: ApplicationConfiguration(address: .hostname(options.host, port: options.port), serverName: "newbie"),
                           onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? options.port) },
                           logger: log)
    }
}
