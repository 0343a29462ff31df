import Foundation
import XCTest
import NewBieTestSupport

/// Runs the built `newbie` binary (found beside the test bundle, or at $NEWBIE_BIN) as a user would.
enum CLI {
    struct Result {
        var status: Int32
        /// False when the process died from a signal (a crash).
        var exited: Bool
        var stdout: Data
        var stderr: String
        var out: String { String(decoding: stdout, as: UTF8.self) }
        var all: String { out + stderr }
    }

    static let binary: String = {
        if let p = ProcessInfo.processInfo.environment["NEWBIE_BIN"] { return p }
        // the test bundle (or its runner) lives in the products folder, beside the newbie executable
        var candidates: [URL] = []
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { candidates.append(b.bundleURL.deletingLastPathComponent()) }
        candidates.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
        candidates.append(Bundle.main.bundleURL)
        for dir in candidates {
            let p = dir.appendingPathComponent("newbie").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return candidates.first!.appendingPathComponent("newbie").path
    }()

    /// Runs `newbie args...` in `cwd` with `stdin`; kills it after `timeout` seconds (a run that
    /// hangs then fails the test instead of the suite).
    @discardableResult
    static func run(_ args: [String], cwd: String? = nil, stdin: Data? = nil, timeout: Double = 120,
                    env: [String: String] = [:], executable: String? = nil) -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable ?? binary)
        p.arguments = args
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        p.environment = environment
        let dir = TestScratch.path("newbie-cli-io-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let outPath = dir + "/out", errPath = dir + "/err", inPath = dir + "/in"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        FileManager.default.createFile(atPath: inPath, contents: stdin ?? Data())
        let outH = FileHandle(forWritingAtPath: outPath)!, errH = FileHandle(forWritingAtPath: errPath)!
        let inH = FileHandle(forReadingAtPath: inPath)!
        p.standardOutput = outH
        p.standardError = errH
        p.standardInput = inH
        do { try p.run() } catch {
            XCTFail("cannot run \(binary): \(error) (build it with swift build, or set NEWBIE_BIN)")
            return Result(status: -1, exited: false, stdout: Data(), stderr: "\(error)")
        }
        let deadline = Date().addingTimeInterval(timeout)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        try? outH.close(); try? errH.close(); try? inH.close()
        let out = FileManager.default.contents(atPath: outPath) ?? Data()
        let err = String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self)
        return Result(status: p.terminationStatus, exited: p.terminationReason == .exit, stdout: out, stderr: err)
    }

    /// A tiny random model written once per test run with the binary itself.
    static let tinyModel: String = {
        let d = TestScratch.path("newbie-cli-tiny-\(getpid())")
        try? FileManager.default.removeItem(atPath: d)
        let r = run(["make-tiny-model", d, "--fixtures", Fixtures.root.path])
        precondition(r.status == 0, "make-tiny-model failed: \(r.all)")
        return d
    }()

    /// The quickest generation on the tiny model.
    static let quick = ["--width", "32", "--height", "32", "--steps", "2", "--quiet"]

    static func tempDir(_ name: String) -> String {
        let d = TestScratch.path("newbie-cli-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static let pngSignature = Data([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])

    /// The prompt a PNG made by newbie carries, as `newbie inspect PNG --json` reads it back (out of
    /// `newbie:command`, where generate stores it once).
    static func pngPrompt(_ path: String) -> String? {
        let r = run(["inspect", path, "--json"])
        guard r.status == 0, let o = try? JSONSerialization.jsonObject(with: r.stdout) as? [String: Any],
              let p = o["parameters"] as? [String: String] else { return nil }
        return p["newbie:prompt"]
    }

    static func isPNG(_ path: String) -> Bool {
        guard let d = FileManager.default.contents(atPath: path) else { return false }
        return d.prefix(8) == pngSignature
    }

    /// lstat's file type bits.
    static func fileType(_ path: String) -> mode_t? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return st.st_mode & S_IFMT
    }
}
