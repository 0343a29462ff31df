import Foundation
import XCTest
import NewBieTestSupport

/// `--offload` from the command line: on the CPU there is nothing to stream, so it is refused with
/// exit 1 and a message naming the flag, before anything is written (the GPU runs are gpu-check's).
final class OffloadCLITests: XCTestCase {
    func testOffloadOnTheCPUIsRefusedNamingTheFlag() {
        let dir = CLI.tempDir("offload")
        for command in [["generate", "--model", CLI.tinyModel, "1girl"] + CLI.quick + ["-o", "x.png"],
                        ["precision-report", "--model", CLI.tinyModel, "--prompt", "1girl", "-o", dir + "/r"]] {
            let r = CLI.run(command + ["--offload"], cwd: dir)
            XCTAssertEqual(r.status, 1, r.all)
            XCTAssertTrue(r.stderr.contains("--offload: the models it streams (dit, gemma) run on the CPU"), r.stderr)
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.png"))
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/r"))
        }
    }
}
