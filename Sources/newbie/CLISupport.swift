import ArgumentParser
import Foundation
import NewBiePipeline
import NewBieTensor
import NewBieQueue

// Input and output helpers shared by the commands: every failure names the option and the path.

/// Reads a text file given to `option` (`-`: standard input), telling apart a missing file, a
/// folder, a file that cannot be read and one that is not UTF-8.
func readTextFile(_ path: String, option: String) throws -> String {
    let data = try readFile(path, option: option)
    let name = option.isEmpty ? path : "\(option) \(path)"
    guard let text = String(data: data, encoding: .utf8) else {
        // where the first bad byte is
        var offset = 0
        let bytes = [UInt8](data)
        var it = bytes.makeIterator()
        var decoder = UTF8()
        loop: while true {
            switch decoder.decode(&it) {
            case .scalarValue(let u): offset += String(u).utf8.count
            case .emptyInput: break loop
            case .error: break loop
            }
        }
        throw PipelineError("\(name): not UTF-8 text (invalid byte at offset \(offset)); save it as UTF-8")
    }
    return text
}

/// Reads a whole file given to `option` (`-`: standard input).
func readFile(_ path: String, option: String) throws -> Data {
    if path == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
    let name = option.isEmpty ? path : "\(option) \(path)"
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw PipelineError("\(name): no such file")
    }
    if isDir.boolValue { throw PipelineError("\(name): is a folder, not a file") }
    guard let fh = FileHandle(forReadingAtPath: path) else {
        throw PipelineError("\(name): cannot open it (\(String(cString: strerror(errno))))")
    }
    defer { try? fh.close() }
    do { return try fh.readToEnd() ?? Data() } catch {
        throw PipelineError("\(name): cannot read it (\(error.localizedDescription))")
    }
}

/// Checks an output path before any work (see `OutputFile`), as an error naming the option.
func checkOutput(_ path: String, option: String = "--output", binary: Bool = true) throws {
    do { try OutputFile.check(path, binary: binary) } catch let e as OutputError {
        throw PipelineError("\(option) \(e.description)")
    }
}

/// A line on standard error.
func printError(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

/// "wrote PATH ..." on standard output, or on standard error when the data itself went to
/// standard output.
func reportWrote(_ path: String, _ detail: String = "") {
    if path == OutputFile.standardOutput { printError("wrote standard output\(detail)") } else { print("wrote \(path)\(detail)") }
}

/// Writes text through `OutputFile` (atomic, symbolic links followed, `-` = standard output).
func writeText(_ text: String, to path: String, option: String) throws {
    if path == OutputFile.standardOutput { print(text, terminator: ""); return }
    do { try OutputFile.write(Data(text.utf8), to: path, binary: false) } catch let e as OutputError {
        throw PipelineError("\(option) \(e.description)")
    }
}

/// `--resident all|stage|auto` of `serve` and `worker`.
enum ResidentOption {
    static let help = "Models kept loaded between jobs: all (loaded once at start; no load time in a job), stage (one stage at a time in stage order, loaded and freed in every job: for a device that cannot hold the text encoders, the DiT and the VAE together), or auto (all when the weights fit in 80% of each device's memory, else stage; docs/SERVER.md)."

    /// The value's spelling, checked before anything is opened or loaded.
    static func check(_ spec: String) throws {
        guard spec == "auto" || Residency(rawValue: spec) != nil else { throw ValidationError("--resident \(spec): expected all, stage or auto") }
    }

    static func resolve(_ spec: String, paths: ModelPaths, options: StageOptions, log: (String) -> Void) throws -> Residency {
        if spec == "auto" {
            let (choice, why) = try ResidencyChoice.choose(paths: paths, options: options) { device in
                switch device {
                case .cpu: return RunCheck.physicalMemory()
                case .cuda(let i): return try DeviceSupport.openCUDA(i, cuda: options.cuda).totalMemory
                case .emulated: return nil   // a test device: no memory of its own to judge
                }
            }
            log("--resident auto: \(choice.rawValue) (\(why))")
            return choice
        }
        try check(spec)
        return Residency(rawValue: spec) ?? .all
    }
}
