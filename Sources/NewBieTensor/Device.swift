import Foundation

/// Where a tensor's memory lives. The tensor's device picks the backend that runs its ops, so
/// model code never names a device.
public enum Device: Hashable, Sendable, CustomStringConvertible {
    case cpu
    case cuda(Int)

    public var description: String {
        switch self {
        case .cpu: return "cpu"
        case .cuda(let i): return "cuda:\(i)"
        }
    }

    /// Parses `cpu`, `cuda`, `cuda:1`.
    public init?(_ text: String) {
        let t = text.lowercased()
        if t == "cpu" { self = .cpu; return }
        if t == "cuda" || t == "gpu" { self = .cuda(0); return }
        if t.hasPrefix("cuda:"), let i = Int(t.dropFirst(5)), i >= 0 { self = .cuda(i); return }
        return nil
    }
}

/// A block of memory on one device. CPU buffers are host addressable (`host`); device buffers
/// carry an opaque address (`deviceAddress`). `release` runs once, when the last tensor that uses
/// the buffer goes away; a buffer may also borrow memory owned by something else (a memory-mapped
/// checkpoint), which `owner` then keeps alive.
public final class Buffer: @unchecked Sendable {
    public let device: Device
    public let byteCount: Int
    public let host: UnsafeMutableRawPointer?
    public let deviceAddress: UInt64
    private let owner: AnyObject?
    private let release: (() -> Void)?

    public init(device: Device, byteCount: Int, host: UnsafeMutableRawPointer?, deviceAddress: UInt64 = 0,
                owner: AnyObject? = nil, release: (() -> Void)? = nil) {
        self.device = device
        self.byteCount = byteCount
        self.host = host
        self.deviceAddress = deviceAddress
        self.owner = owner
        self.release = release
    }

    deinit { release?() }
}

/// Errors from tensor construction and ops. Messages name the op and the shapes at fault.
public struct TensorError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// Maps devices to the backends that run them. The CPU backend is always present; a CUDA
/// backend registers itself when its libraries load.
public enum Backends {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var table: [Device: Backend] = [:]

    public static func register(_ backend: Backend) {
        lock.lock(); defer { lock.unlock() }
        table[backend.device] = backend
    }

    public static func backend(for device: Device) -> Backend {
        lock.lock()
        if let b = table[device] { lock.unlock(); return b }
        lock.unlock()
        if device == .cpu {
            let cpu = CPUBackend.shared
            register(cpu)
            return cpu
        }
        fatalError("no backend is registered for device \(device); load it first (e.g. --device cuda needs the CUDA libraries)")
    }

    public static func isAvailable(_ device: Device) -> Bool {
        if device == .cpu { return true }
        lock.lock(); defer { lock.unlock() }
        return table[device] != nil
    }
}
