import Foundation
import NewBieTensor

// The noise of ComfyUI's SDE samplers (dpmpp_2m_sde): torchsde's BrownianTree (a Brownian
// interval with the dyadic "halfway" dependency tree, tol 1e-6, pool size 24), seeded as ComfyUI
// seeds it (entropy = the run's seed), each node's normals drawn from a torch CPU generator
// seeded by NumPy's SeedSequence(entropy, spawn_key = (key, depth)). Facts read in torchsde 0.2.6
// (torchsde/_brownian/brownian_interval.py, derived.py) and NumPy's bit_generator SeedSequence;
// checked against them by tools/reference/make_comfy_sampling_fixtures.py.

/// NumPy's `SeedSequence` (entropy and spawn key as non-negative integers), its `generate_state`
/// in 32-bit words.
struct NumpySeedSequence {
    static let initA: UInt32 = 0x43b0_d7e5, multA: UInt32 = 0x931e_8875
    static let initB: UInt32 = 0x8b51_f9dd, multB: UInt32 = 0x58f3_8ded
    static let mixMultL: UInt32 = 0xca01_f9dd, mixMultR: UInt32 = 0x4973_f715
    static let xshift: UInt32 = 16

    var pool: [UInt32]

    init(entropy: UInt64, spawnKey: [UInt64] = [], poolSize: Int = 4) {
        func words(_ v: UInt64) -> [UInt32] {
            // _coerce_to_uint32_array: little-endian 32-bit words, at least one
            if v == 0 { return [0] }
            var out: [UInt32] = [], x = v
            while x > 0 { out.append(UInt32(truncatingIfNeeded: x)); x >>= 32 }
            return out
        }
        var run = words(entropy)
        let spawn = spawnKey.flatMap(words)
        if !spawn.isEmpty && run.count < poolSize { run += [UInt32](repeating: 0, count: poolSize - run.count) }
        let entropyArray = run + spawn
        var hashConst = NumpySeedSequence.initA
        func hashmix(_ value: UInt32) -> UInt32 {
            var v = value ^ hashConst
            hashConst = hashConst &* NumpySeedSequence.multA
            v = v &* hashConst
            v ^= v >> NumpySeedSequence.xshift
            return v
        }
        func mix(_ x: UInt32, _ y: UInt32) -> UInt32 {
            var r = (NumpySeedSequence.mixMultL &* x) &- (NumpySeedSequence.mixMultR &* y)
            r ^= r >> NumpySeedSequence.xshift
            return r
        }
        var mixer = [UInt32](repeating: 0, count: poolSize)
        for i in 0..<poolSize { mixer[i] = hashmix(i < entropyArray.count ? entropyArray[i] : 0) }
        for src in 0..<poolSize {
            for dst in 0..<poolSize where src != dst { mixer[dst] = mix(mixer[dst], hashmix(mixer[src])) }
        }
        if entropyArray.count > poolSize {
            for src in poolSize..<entropyArray.count {
                for dst in 0..<poolSize { mixer[dst] = mix(mixer[dst], hashmix(entropyArray[src])) }
            }
        }
        pool = mixer
    }

    func generateState(_ n: Int) -> [UInt32] {
        var hashConst = NumpySeedSequence.initB
        return (0..<n).map { i in
            var v = pool[i % pool.count] ^ hashConst
            hashConst = hashConst &* NumpySeedSequence.multB
            v = v &* hashConst
            v ^= v >> NumpySeedSequence.xshift
            return v
        }
    }
}

/// torchsde's `BrownianTree(t0, w0 = 0, t1, entropy, tol = 1e-6, pool_size = 24)`: W(ta, tb) for
/// t0 <= ta <= tb <= t1, a function of the entropy alone (not of the queries' order).
final class BrownianTree {
    final class Node {
        let start: Double, end: Double
        weak var parent: Node?
        let isLeft: Bool
        var midway: Double? = nil
        var spawnKey: UInt64 = 0, depth: UInt64 = 0
        var wSeed: UInt32 = 0
        var left: Node? = nil, right: Node? = nil
        init(start: Double, end: Double, parent: Node?, isLeft: Bool) {
            self.start = start; self.end = end; self.parent = parent; self.isLeft = isLeft
        }
    }

    let shape: [Int]
    let entropy: UInt64
    let poolSize = 24
    let root: Node
    let rootW: Tensor
    /// Increments computed recently (torchsde keeps an LRU of 45; the values do not depend on it).
    private var cache: [ObjectIdentifier: Tensor] = [:]
    private var cacheOrder: [ObjectIdentifier] = []
    /// Every node, kept alive (parents are weak in the nodes).
    private var nodes: [Node] = []

    init(t0: Double, t1: Double, shape: [Int], entropy: UInt64) {
        self.shape = shape; self.entropy = entropy
        root = Node(start: BrownianTree.round(t0), end: BrownianTree.round(t1), parent: nil, isLeft: false)
        nodes.append(root)
        let seeds = NumpySeedSequence(entropy: entropy, poolSize: poolSize).generateState(3)
        rootW = BrownianTree.randn(shape, seed: seeds[0]) * Float((t1 - t0).squareRoot())
    }

    /// Python's round(x, 6) (tol 1e-6): the correctly rounded decimal, as printf's.
    static func round(_ x: Double) -> Double { Double(String(format: "%.6f", x))! }

    static func randn(_ shape: [Int], seed: UInt32) -> Tensor {
        var g = TorchGenerator(seed: UInt64(seed), mode: .torch)
        return g.randn(shape)
    }

    func splitExact(_ n: Node, _ midway: Double) {
        let m = BrownianTree.round(midway)
        n.midway = m
        if let p = n.parent {
            n.spawnKey = 2 * p.spawnKey + (n.isLeft ? 0 : 1)
            n.depth = p.depth + 1
        } else {
            n.spawnKey = 0; n.depth = 0
        }
        n.wSeed = NumpySeedSequence(entropy: entropy, spawnKey: [n.spawnKey, n.depth], poolSize: poolSize).generateState(4)[0]
        // (the children's edges are the unrounded midway, rounded in their initialiser)
        let l = Node(start: n.start, end: BrownianTree.round(midway), parent: n, isLeft: true)
        let r = Node(start: BrownianTree.round(midway), end: n.end, parent: n, isLeft: false)
        n.left = l; n.right = r
        nodes += [l, r]
    }

    func split(_ n: Node, _ midway: Double) {
        splitExact(n, 0.5 * (n.end + n.start))
        if midway > n.midway! { split(n.right!, midway) } else if midway < n.midway! { split(n.left!, midway) }
    }

    func locate(_ n: Node, _ ta: Double, _ tb: Double, _ out: inout [Node]) {
        if ta < n.start || tb > n.end { locate(n.parent!, ta, tb, &out); return }
        if ta == n.start && tb == n.end { out.append(n); return }
        if n.midway == nil {
            if ta == n.start { split(n, tb); locate(n.left!, ta, tb, &out); return }
            split(n, ta); locate(n.right!, ta, tb, &out); return
        }
        let m = n.midway!
        if tb <= m { locate(n.left!, ta, tb, &out); return }
        if ta >= m { locate(n.right!, ta, tb, &out); return }
        locate(n.left!, ta, m, &out)
        locate(n.right!, m, tb, &out)
    }

    /// The increment over a node: the root's draw, else the Brownian bridge from its parent's.
    func increment(_ n: Node) -> Tensor {
        guard let p = n.parent else { return rootW }
        let id = ObjectIdentifier(n)
        if let w = cache[id] { return w }
        let W = increment(p)
        let hReciprocal = 1 / (p.end - p.start)
        let leftDiff = p.midway! - p.start, rightDiff = p.end - p.midway!
        let mean = W * Float(leftDiff) * Float(hReciprocal)
        let variance = leftDiff * rightDiff * hReciprocal
        let noise = BrownianTree.randn(shape, seed: p.wSeed)
        let leftW = mean + noise * Float(variance.squareRoot())
        let out = n.isLeft ? leftW : W - leftW
        cache[id] = out
        cacheOrder.append(id)
        if cacheOrder.count > 45 { cache[cacheOrder.removeFirst()] = nil }
        return out
    }

    private var last: Node? = nil

    /// W(tb) - W(ta).
    func callAsFunction(_ ta0: Double, _ tb0: Double) -> Tensor {
        let ta = max(ta0, root.start), tb = min(tb0, root.end)
        if ta == tb { return Tensor.zeros(shape) }
        var out: [Node] = []
        locate(last ?? root, BrownianTree.round(ta), BrownianTree.round(tb), &out)
        last = out.last
        var w = increment(out[0])
        for n in out.dropFirst() { w = w + increment(n) }
        return w
    }
}

/// ComfyUI's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)`: noise for the
/// step sigma -> sigma_next is the tree's increment over it divided by sqrt(|sigma_next - sigma|).
struct BrownianTreeNoiseSampler {
    let tree: BrownianTree
    let sign: Float

    init(shape: [Int], sigmaMin: Float, sigmaMax: Float, seed: UInt64) {
        let (a, b, s): (Float, Float, Float) = sigmaMin < sigmaMax ? (sigmaMin, sigmaMax, 1) : (sigmaMax, sigmaMin, -1)
        tree = BrownianTree(t0: Double(a), t1: Double(b), shape: shape, entropy: seed)
        sign = s
    }

    func callAsFunction(_ sigma: Float, _ sigmaNext: Float) -> Tensor {
        let (a, b, s): (Float, Float, Float) = sigma < sigmaNext ? (sigma, sigmaNext, 1) : (sigmaNext, sigma, -1)
        let w = tree(Double(a), Double(b)) * (sign * s)
        return w * (1 / abs(sigmaNext - sigma).squareRoot())
    }
}
