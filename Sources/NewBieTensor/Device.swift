import Foundation

/// Where a tensor's memory lives. The tensor's device picks the backend that runs its ops, so
/// model code never names a device.
public enum Device: Hashable, Sendable, CustomStringConvertible {
    case cpu
    case cuda(Int)
    /// A stand-in accelerator for tests on machines without one (host memory that only its own
    /// backend reads); never parsed from user input.
    case emulated(Int)

    public var description: String {
        switch self {
        case .cpu: return "cpu"
        case .cuda(let i): return "cuda:\(i)"
        case .emulated(let i): return "emulated:\(i)"
        }
    }

    /// The backend family: "cpu", "cuda", "emulated" (the key of `Backends.registerOpener`).
    public var kind: String {
        switch self {
        case .cpu: return "cpu"
        case .cuda: return "cuda"
        case .emulated: return "emulated"
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

/// A device that cannot be opened (no driver, no library, no such GPU) or that failed while
/// working (a kernel launch, a library call, out of memory). The message names the device, the op
/// and the reason.
public struct DeviceError: Error, CustomStringConvertible, LocalizedError {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
    public var errorDescription: String? { message }
}

/// Maps devices to the backends that run them. A device opens itself on first use: the CPU
/// backend is built in, other kinds are opened by the opener registered for their kind (the CUDA
/// module registers one for "cuda"). `open` throws with the reason when that fails; tensor ops
/// then never meet an unopened device, because every model opens its device before it moves a
/// weight there.
public enum Backends {
    public typealias Opener = @Sendable (Device) throws -> Backend
    private static let lock = NSLock()
    nonisolated(unsafe) private static var table: [Device: Backend] = [:]
    nonisolated(unsafe) private static var openers: [String: Opener] = [:]

    public static func register(_ backend: Backend) {
        lock.lock(); defer { lock.unlock() }
        table[backend.device] = backend
    }

    /// How to open devices of a kind ("cuda"); replaces an earlier opener of that kind.
    public static func registerOpener(kind: String, _ opener: @escaping Opener) {
        lock.lock(); defer { lock.unlock() }
        openers[kind] = opener
    }

    /// The device's backend, opened now if it is not yet: throws a `DeviceError` naming the device
    /// and the reason (no BLAS library for the CPU, no driver or no such GPU for CUDA).
    @discardableResult
    public static func open(_ device: Device) throws -> Backend {
        // checked before the table: `backend(for: .cpu)` registers the CPU without a BLAS, and the
        // CPU's matrix products would then trap instead of this error being thrown
        if device == .cpu && BLAS.shared == nil { throw DeviceError("cpu: \(BLAS.loadError)") }
        lock.lock()
        if let b = table[device] { lock.unlock(); return b }
        let opener = openers[device.kind]
        lock.unlock()
        if device == .cpu {
            let cpu = CPUBackend.shared
            register(cpu)
            return cpu
        }
        guard let open = opener else {
            throw DeviceError("\(device): this build cannot open \(device.kind) devices (no \(device.kind) support registered)")
        }
        let b: Backend
        do { b = try open(device) } catch let e as DeviceError { throw e } catch {
            throw DeviceError("\(device): \(error)")
        }
        register(b)
        return b
    }

    /// The backend of an open device. Ops reach devices only through tensors that were put there,
    /// which `open` did first; the CPU is always usable this way.
    public static func backend(for device: Device) -> Backend {
        lock.lock()
        if let b = table[device] { lock.unlock(); return b }
        lock.unlock()
        if device == .cpu {
            let cpu = CPUBackend.shared
            register(cpu)
            return cpu
        }
        do { return try open(device) } catch {
            // unreachable through the library's entry points, which open their devices first
            fatalError("\(error) (open the device with Backends.open before putting tensors on it)")
        }
    }

    public static func isAvailable(_ device: Device) -> Bool {
        if device == .cpu { return BLAS.shared != nil }
        lock.lock(); defer { lock.unlock() }
        return table[device] != nil
    }

    /// Throws the first error the device met since the last check (a failed launch or library
    /// call, out of memory), naming the op; nothing for a device that is not open.
    public static func check(_ device: Device) throws {
        lock.lock(); let b = table[device]; lock.unlock()
        try b?.checkErrors()
    }
}
