import ArgumentParser
import Foundation
import NewBieHarness
import NewBieTensor

/// `newbie gpu-check`: prints the GPU self-check's table; exits 1 on any failed row and 3 when
/// there is no usable GPU (so scripts can tell "broken" from "absent").
struct GPUCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gpu-check",
        abstract: "Check every CUDA op and model against the CPU backend (needs an NVIDIA GPU).",
        discussion: "Exit status: 0 all rows pass, 1 a row failed, 3 no usable CUDA device.")

    @Option(help: "Random seed for the inputs.")
    var seed: UInt64 = UInt64(Date().timeIntervalSince1970)

    func run() throws {
        let rows: [GPUCheck.Row]
        do { rows = try GPUCheck(seed: seed).run() } catch let e as DeviceError {
            print("SKIP: no usable CUDA device (\(e))")
            throw ExitCode(3)
        }
        print(pad("check", 36) + pad("dtype/policy", 14) + pad("rel. L2", 12, left: true) + pad("limit", 9, left: true) + "  result")
        for r in rows {
            print(pad(r.name, 36) + pad(r.dtype, 14) + pad(String(format: "%.2e", r.error), 12, left: true)
                  + pad(String(format: "%.2g", r.limit), 9, left: true) + "  " + (r.passed ? "ok" : "FAIL"))
        }
        let failed = rows.filter { !$0.passed }.count
        print("\(rows.count - failed) passed, \(failed) failed")
        if failed > 0 { throw ExitCode(1) }
    }
}
