import XCTest
@testable import NewBieCUDA

/// The cuBLASLt plan's candidate list and its one-time tuning (`NEWBIE_GEMM_AUTOTUNE=1`), without a
/// GPU: heuristic results are byte records (algo 64, workspace 8, state 4, waves 4, reserved 16).
final class GEMMTuningTests: XCTestCase {
    func record(algoByte: UInt8, state: Int32) -> [UInt8] {
        var r = [UInt8](repeating: algoByte, count: 64) + [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: state.littleEndian) { r += $0 }
        return r + [UInt8](repeating: 0, count: 20)
    }

    func testCandidatesKeepOnlySuccessfulResultsAndTheFirstIsTheAlgorithm() {
        let results = record(algoByte: 1, state: 7) + record(algoByte: 2, state: 0) + record(algoByte: 3, state: 0)
            + record(algoByte: 9, state: 0)   // past `found`: ignored
        XCTAssertEqual(results.count, 4 * CUBLASLt.heuristicResultBytes)
        let plan = CUBLASLt.Plan()
        plan.take(heuristicResults: results, found: 3)
        XCTAssertEqual(plan.candidates.map { $0[0] }, [2, 3])
        XCTAssertEqual(plan.algo, [UInt8](repeating: 2, count: 64))
    }

    func testTuningPicksTheTunersChoiceOnceAndNeverForAccumulatingProducts() {
        let results = (1...3).flatMap { record(algoByte: UInt8($0), state: 0) }
        let plan = CUBLASLt.Plan()
        plan.take(heuristicResults: results, found: 3)
        var runs: [UInt8] = []
        let tuner: CUBLASLt.Tuner = { count, run in
            XCTAssertEqual(count, 3)
            for i in 0..<count { _ = run(i) }
            return 2
        }
        plan.tuneOnce(tuner, accumulates: false) { runs.append($0[0]); return true }
        XCTAssertEqual(runs, [1, 2, 3])
        XCTAssertEqual(plan.algo[0], 3)
        plan.tuneOnce({ _, _ in XCTFail("tuned twice"); return 0 }, accumulates: false) { _ in true }
        XCTAssertEqual(plan.algo[0], 3)

        let accumulating = CUBLASLt.Plan()
        accumulating.take(heuristicResults: results, found: 3)
        accumulating.tuneOnce({ _, _ in XCTFail("an accumulating product was timed"); return 1 }, accumulates: true) { _ in true }
        XCTAssertEqual(accumulating.algo[0], 1)
        let untuned = CUBLASLt.Plan()
        untuned.take(heuristicResults: results, found: 3)
        untuned.tuneOnce({ _, _ in nil }, accumulates: false) { _ in true }
        XCTAssertEqual(untuned.algo[0], 1, "no choice (recording a graph): the heuristic's first stays")
    }
}
