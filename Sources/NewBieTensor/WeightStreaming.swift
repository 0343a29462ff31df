import Foundation

/// What a device offers `--offload`: page-locked host memory, and copies from it that run beside
/// the computation (a second queue), ordered against it by two sync points per ring slot.
/// The CPU backend's version copies at once and waits for nothing (`HostWeightStreaming`): the
/// ring then works, and is testable, on the CPU, but saves nothing there.
public protocol WeightStreaming: AnyObject {
    /// Host memory that asynchronous copies can read (pinned on CUDA), freed with the buffer.
    func pinnedHostBuffer(byteCount: Int) throws -> Buffer
    /// A new pair of sync points for one ring slot ("its last copy is done", "its last reader is queued").
    func makeSlotSync() -> SlotSync
    /// Queues on the copy queue: wait until the compute work marked `sync` free, copy `bytes` into
    /// `buffer`, then mark `sync` ready.
    func streamIn(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, sync: SlotSync)
    /// Compute work queued from now on waits for the slot's last copy.
    func waitUntilReady(_ sync: SlotSync)
    /// The compute work queued so far is the slot's last reader: the next copy into it waits for it.
    func markFree(_ sync: SlotSync)
}

/// A ring slot's sync points (CUDA: two events).
public protocol SlotSync: AnyObject {}

/// The CPU's streaming: a plain copy, no ordering needed (everything runs in program order).
public final class HostWeightStreaming: WeightStreaming {
    final class NoSync: SlotSync {}
    let backend: Backend
    public init(backend: Backend) { self.backend = backend }
    public func pinnedHostBuffer(byteCount: Int) throws -> Buffer { Tensor.empty([Swift.max(byteCount, 1)], dtype: .u8).buffer }
    public func makeSlotSync() -> SlotSync { NoSync() }
    public func streamIn(_ bytes: UnsafeRawBufferPointer, to buffer: Buffer, sync: SlotSync) {
        backend.upload(bytes, to: buffer, byteOffset: 0)
    }
    public func waitUntilReady(_ sync: SlotSync) {}
    public func markFree(_ sync: SlotSync) {}
}

/// Where each tensor of one group (a transformer block's weights) sits in its packed buffer:
/// byte offsets in order, each aligned to `alignment` (what the GEMM library wants of a matrix).
public struct PackedLayout: Equatable, Sendable {
    public static let alignment = 256
    public let offsets: [Int]
    public let byteCount: Int

    public init(byteCounts: [Int]) {
        var offsets: [Int] = [], at = 0
        for n in byteCounts {
            offsets.append(at)
            at += (n + PackedLayout.alignment - 1) / PackedLayout.alignment * PackedLayout.alignment
        }
        self.offsets = offsets
        byteCount = Swift.max(at, 1)
    }
}

/// Weights kept in host memory in groups (one per transformer block) and streamed to the device a
/// few groups ahead of use (`--offload`, docs/MEMORY.md).
///
/// Each group's tensors are packed into one page-locked host buffer (`add`), so that a group
/// travels as one copy. The device holds `slots` buffers of the largest group's size; `acquire(i)`
/// hands out group i's tensors as views into the slot it was copied to, after queuing the copies
/// of the next `slots - 1` groups (in cyclic order, so the last block of one forward pass fetches
/// the first of the next); `release(i)` marks the slot reusable once the work queued so far is done.
/// The copies run beside the computation; only the ordering points wait.
public final class WeightRing: @unchecked Sendable {
    struct Group {
        let host: Buffer
        let layout: PackedLayout
        let specs: [(dtype: DType, shape: [Int])]
    }
    struct Slot {
        let buffer: Buffer
        let sync: SlotSync
        var group: Int?
    }

    public let device: Device
    /// Device buffers in the ring (2 or more: with 2, block i+1 travels while block i computes).
    public let slotCount: Int
    let streaming: WeightStreaming
    private var groups: [Group] = []
    private var slots: [Slot] = []
    private var nextSlot = 0
    private var inUse: Int?
    private let lock = NSLock()
    /// Groups copied so far (for tests and reports).
    public private(set) var copies = 0

    public init(device: Device, slots: Int = 3) throws {
        guard slots >= 2 else { throw TensorError("--offload: a weight ring needs at least 2 slots (one computing, one arriving), not \(slots)") }
        self.device = device
        slotCount = slots
        streaming = Backends.backend(for: device).weightStreaming
    }

    public var groupCount: Int { groups.count }
    /// Tensors in group `index` (what travels for one block).
    public func tensorCount(_ index: Int) -> Int { groups[index].specs.count }
    /// Bytes one device slot holds: the largest group, packed.
    public var slotBytes: Int { groups.map(\.layout.byteCount).max() ?? 0 }
    /// Device bytes the ring holds while in use.
    public var deviceBytes: Int { slotBytes * slotCount }
    /// Host bytes of all groups, packed.
    public var hostBytes: Int { groups.reduce(0) { $0 + $1.layout.byteCount } }

    /// Packs `tensors` (any devices) into one pinned host buffer as group `groupCount`; returns the
    /// group's index and host views of the packed copies (the originals can then be dropped).
    public func add(_ tensors: [Tensor]) throws -> (index: Int, host: [Tensor]) {
        let parts = tensors.map { $0.contiguous() }
        let layout = PackedLayout(byteCounts: parts.map(\.byteCount))
        let host = try streaming.pinnedHostBuffer(byteCount: layout.byteCount)
        guard let base = host.host else { throw TensorError("--offload: the pinned buffer for group \(groups.count) is not host-addressable") }
        var views: [Tensor] = []
        for (t, off) in zip(parts, layout.offsets) {
            let dst = UnsafeMutableRawBufferPointer(start: base + off, count: t.byteCount)
            if t.device == .cpu { dst.copyMemory(from: UnsafeRawBufferPointer(start: t.hostPointer, count: t.byteCount)) }
            else { t.backend.download(t.buffer, byteOffset: t.offset * t.dtype.byteSize, into: dst) }
            views.append(Tensor(buffer: host, dtype: t.dtype, shape: t.shape, offset: off / t.dtype.byteSize))
        }
        lock.lock(); defer { lock.unlock() }
        groups.append(Group(host: host, layout: layout, specs: parts.map { ($0.dtype, $0.shape) }))
        return (groups.count - 1, views)
    }

    /// Group `index`'s tensors on the device, valid until `release(index)`; queues the next groups' copies.
    public func acquire(_ index: Int) -> [Tensor] {
        lock.lock(); defer { lock.unlock() }
        precondition(inUse == nil, "WeightRing: group \(inUse!) acquired and not released")
        precondition(index >= 0 && index < groups.count, "WeightRing: no group \(index)")
        if slots.isEmpty {
            let backend = Backends.backend(for: device)
            let bytes = groups.map(\.layout.byteCount).max() ?? 1
            slots = (0..<slotCount).map { _ in Slot(buffer: backend.allocate(byteCount: bytes), sync: streaming.makeSlotSync(), group: nil) }
            // the pool may hand out memory that work already queued still reads (or a poisoning
            // fill still writes): the first copies wait for everything queued so far
            for s in slots { streaming.markFree(s.sync) }
        }
        let s = slotIndex(holding: index) ?? load(index)
        inUse = s
        for k in 1..<slotCount where slotIndex(holding: (index + k) % groups.count) == nil {
            _ = load((index + k) % groups.count)
        }
        streaming.waitUntilReady(slots[s].sync)
        let g = groups[index], buffer = slots[s].buffer
        return zip(g.specs, g.layout.offsets).map { spec, off in
            Tensor(buffer: buffer, dtype: spec.dtype, shape: spec.shape, offset: off / spec.dtype.byteSize)
        }
    }

    /// The work queued since `acquire(index)` is the last to read its slot.
    public func release(_ index: Int) {
        lock.lock(); defer { lock.unlock() }
        guard let s = inUse, slots[s].group == index else { preconditionFailure("WeightRing: release(\(index)) of a group not acquired") }
        streaming.markFree(slots[s].sync)
        inUse = nil
    }

    /// Runs `body` with group `index` on the device (acquire, body, release).
    public func with<T>(_ index: Int, _ body: ([Tensor]) throws -> T) rethrows -> T {
        let ts = acquire(index)
        defer { release(index) }
        return try body(ts)
    }

    /// Gives the device slots back (the next `acquire` allocates them again). Compute work queued
    /// later waits for the copies still in flight, so the pool can hand the memory out again.
    public func releaseDevice() {
        lock.lock(); defer { lock.unlock() }
        precondition(inUse == nil, "WeightRing: releaseDevice while a group is in use")
        for s in slots { streaming.waitUntilReady(s.sync) }
        slots = []
        nextSlot = 0
    }

    deinit { for s in slots { streaming.waitUntilReady(s.sync) } }

    private func slotIndex(holding group: Int) -> Int? { slots.firstIndex { $0.group == group } }

    /// Queues the copy of `group` into the next slot round the ring that is not in use.
    private func load(_ group: Int) -> Int {
        var s = nextSlot
        if s == inUse { s = (s + 1) % slotCount }
        nextSlot = (s + 1) % slotCount
        let g = groups[group]
        streaming.streamIn(UnsafeRawBufferPointer(start: g.host.host, count: g.layout.byteCount), to: slots[s].buffer, sync: slots[s].sync)
        slots[s].group = group
        copies += 1
        return s
    }
}
