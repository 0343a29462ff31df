import Foundation

/// Work splitting for the CPU backend: `concurrentPerform` over as many chunks as cores, so each
/// worker gets one contiguous range (good for caches, no per-item dispatch).
enum Parallel {
    static let cores: Int = {
        if let s = ProcessInfo.processInfo.environment["NEWBIE_THREADS"], let n = Int(s), n > 0 { return n }
        return max(1, ProcessInfo.processInfo.activeProcessorCount)
    }()

    /// Calls `body` on disjoint ranges covering 0..<count; ranges hold at least `grain` items.
    static func forEach(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        if count <= 0 { return }
        let chunks = Swift.min(cores, Swift.max(1, count / Swift.max(grain, 1)))
        if chunks == 1 { body(0..<count); return }
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = count * c / chunks, hi = count * (c + 1) / chunks
            if lo < hi { body(lo..<hi) }
        }
    }

    /// Like `forEach`, with many more chunks than cores, for uneven work (attention tiles).
    static func forEachDynamic(_ count: Int, _ body: (Int) -> Void) {
        if count <= 0 { return }
        if cores == 1 || count == 1 { for i in 0..<count { body(i) }; return }
        DispatchQueue.concurrentPerform(iterations: count, execute: body)
    }
}

/// A per-thread Float scratch buffer, reused across calls to avoid an allocation per row.
final class Scratch {
    private(set) var pointer: UnsafeMutablePointer<Float>
    private(set) var capacity: Int
    init(_ n: Int = 0) {
        capacity = Swift.max(n, 16)
        pointer = .allocate(capacity: capacity)
    }
    func reserve(_ n: Int) -> UnsafeMutablePointer<Float> {
        if n > capacity {
            pointer.deallocate()
            capacity = n
            pointer = .allocate(capacity: n)
        }
        return pointer
    }
    deinit { pointer.deallocate() }
}
