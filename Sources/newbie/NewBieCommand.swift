import ArgumentParser
import Foundation
import NewBieTensor

@main
struct NewBie: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "newbie",
        abstract: "NewBie image Exp0.1 inference engine.",
        discussion: """
        Exit status: 0 success; 1 an error in a file, a value or the run (the message names the file, \
        tensor, tag or option at fault); 3 gpu-check found no usable GPU; 64 the command line cannot be \
        parsed (unknown option, missing value). Interrupted runs leave no temporary files behind.
        """,
        subcommands: [
            BenchCommand.self,
            BenchDiTCommand.self,
            BenchPipelineCommand.self,
            CompareCommand.self,
            EncodeTextCommand.self,
            GenerateCommand.self, EncodeCommand.self, DenoiseCommand.self, DecodeCommand.self, MakeTinyModelCommand.self,
            GPUCheckCommand.self,
            InspectCommand.self,
            QuantizeCommand.self,
            MiniEvalCommand.self,
            PrecisionReportCommand.self,
            PromptCommand.self,
            ServeCommand.self, WorkerCommand.self, FitPreviewCommand.self,
            VAEDecodeCommand.self, VAEEncodeCommand.self, VAETilingCommand.self,
        ])

    @Flag(name: .customLong("version"), help: "Print the version, the source commit, the build date and the backends available.")
    var version = false

    func run() throws {
        if version { print(BuildInfo.versionText()); return }
        throw CleanExit.helpRequest(NewBie.self)
    }

    /// Parses and runs like ArgumentParser's own `main()`, with two additions: temporary output
    /// files are removed on SIGINT/SIGTERM/SIGHUP, and a value that looks like a negative number
    /// (`--width -1`) gets a hint to write it as `--width=-1`.
    static func main() {
        TemporaryFiles.installSignalHandlers()
        let arguments = Array(CommandLine.arguments.dropFirst())
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            let code = exitCode(for: error)
            var message = fullMessage(for: error)
            if code != .success, let hint = negativeNumberHint(arguments, message: message) { message += "\n" + hint }
            if code == .success {
                if !message.isEmpty { print(message) }
            } else if !message.isEmpty {
                FileHandle.standardError.write(Data((message + "\n").utf8))
            }
            Foundation.exit(code.rawValue)
        }
    }

    /// "Missing value for '--width <width>'" when the next argument is a negative number: the parser
    /// takes "-1" for an option, so say how to pass it.
    static func negativeNumberHint(_ arguments: [String], message: String) -> String? {
        for (i, a) in arguments.enumerated() where a.hasPrefix("--") && i + 1 < arguments.count {
            let next = arguments[i + 1]
            guard next.count > 1, next.hasPrefix("-"), Double(next) != nil, message.contains("'\(a) ") || message.contains("'\(a)'") else { continue }
            return "Hint: a negative value must be joined to its option with =: \(a)=\(next)"
        }
        return nil
    }
}

/// What `newbie --version` prints.
enum BuildInfo {
    static let version = "0.1.0"

    static func versionText() -> String {
        var lines = ["newbie \(version)"]
        lines.append("commit: \(sourceCommit() ?? "unknown (not built from a git checkout)")")
        lines.append("built: \(buildDate() ?? "unknown")")
        let blas = BLAS.shared.map { "BLAS \($0.libraryPath)" } ?? "no BLAS library found (apt-get install libopenblas0)"
        lines.append("backends: cpu (\(blas)); cuda (\(cudaDriver()))")
        return lines.joined(separator: "\n")
    }

    /// The commit of the source checkout this binary was compiled from (read from its git
    /// folder now; "+ changes" when the work tree differs).
    static func sourceCommit() -> String? {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        guard FileManager.default.fileExists(atPath: root + "/.git") else { return nil }
        func git(_ args: [String]) -> String? {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["git", "-C", root] + args
            let out = Pipe()
            p.standardOutput = out
            p.standardError = FileHandle.nullDevice
            do { try p.run() } catch { return nil }
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { return nil }
            return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let head = git(["rev-parse", "--short=12", "HEAD"]) else { return nil }
        let dirty = (git(["status", "--porcelain", "--untracked-files=no"]) ?? "").isEmpty ? "" : " + uncommitted changes"
        return "\(head)\(dirty) (source \(root))"
    }

    /// When the executable was linked (its modification time).
    static func buildDate() -> String? {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        guard let d = (try? FileManager.default.attributesOfItem(atPath: exe))?[.modificationDate] as? Date else { return nil }
        let f = ISO8601DateFormatter()
        return f.string(from: d)
    }

    static func cudaDriver() -> String {
        for lib in ["libcuda.so.1", "libcuda.so"] {
            if let h = dlopen(lib, RTLD_LAZY | RTLD_LOCAL) { dlclose(h); return "driver \(lib) found; use --device cuda" }
        }
        return "no NVIDIA driver (libcuda.so.1) on this machine"
    }
}
