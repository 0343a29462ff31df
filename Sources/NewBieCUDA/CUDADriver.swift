import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The CUDA driver API, loaded with dlopen from libcuda.so.1 at run time: nothing CUDA is needed
/// to build or link, so CI without a GPU builds and tests the same code.
public struct CUDAError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

typealias CUresult = Int32
typealias CUdeviceptr = UInt64

/// Opens the first library of `names` that loads and resolves symbols from it.
final class DynamicLibrary: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    let name: String

    init(_ names: [String]) throws {
        for n in names {
            if let h = dlopen(n, RTLD_NOW | RTLD_GLOBAL) { handle = h; name = n; return }
        }
        throw CUDAError("cannot load \(names.joined(separator: " or ")): \(String(cString: dlerror()))")
    }

    func symbol<T>(_ name: String, as type: T.Type) throws -> T {
        try symbol([name], as: type)
    }

    /// The first of `names` that the library exports (for versioned entry points).
    func symbol<T>(_ names: [String], as type: T.Type) throws -> T {
        for n in names { if let s = dlsym(handle, n) { return unsafeBitCast(s, to: type) } }
        throw CUDAError("\(name) has none of the symbols \(names.joined(separator: ", "))")
    }
}

final class CUDADriver: @unchecked Sendable {
    typealias FInit = @convention(c) (UInt32) -> CUresult
    typealias FDeviceGet = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> CUresult
    typealias FDeviceGetAttribute = @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> CUresult
    typealias FDeviceGetName = @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> CUresult
    typealias FDeviceTotalMem = @convention(c) (UnsafeMutablePointer<Int>, Int32) -> CUresult
    typealias FPrimaryCtxRetain = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> CUresult
    typealias FCtxSetCurrent = @convention(c) (OpaquePointer?) -> CUresult
    typealias FMemAlloc = @convention(c) (UnsafeMutablePointer<CUdeviceptr>, Int) -> CUresult
    typealias FMemFree = @convention(c) (CUdeviceptr) -> CUresult
    typealias FMemHostAlloc = @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int, UInt32) -> CUresult
    typealias FMemFreeHost = @convention(c) (UnsafeMutableRawPointer?) -> CUresult
    typealias FMemcpyHtoDAsync = @convention(c) (CUdeviceptr, UnsafeRawPointer?, Int, OpaquePointer?) -> CUresult
    typealias FMemcpyDtoHAsync = @convention(c) (UnsafeMutableRawPointer?, CUdeviceptr, Int, OpaquePointer?) -> CUresult
    typealias FMemcpyDtoDAsync = @convention(c) (CUdeviceptr, CUdeviceptr, Int, OpaquePointer?) -> CUresult
    typealias FMemsetD8Async = @convention(c) (CUdeviceptr, UInt8, Int, OpaquePointer?) -> CUresult
    typealias FModuleLoadData = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer?) -> CUresult
    typealias FModuleGetFunction = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UnsafePointer<CChar>) -> CUresult
    typealias FLaunchKernel = @convention(c) (OpaquePointer?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, OpaquePointer?,
                                              UnsafeMutablePointer<UnsafeMutableRawPointer?>?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> CUresult
    typealias FFuncSetAttribute = @convention(c) (OpaquePointer?, Int32, Int32) -> CUresult
    typealias FStreamCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> CUresult
    typealias FStreamSynchronize = @convention(c) (OpaquePointer?) -> CUresult
    typealias FEventCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> CUresult
    typealias FEventRecord = @convention(c) (OpaquePointer?, OpaquePointer?) -> CUresult
    typealias FEventSynchronize = @convention(c) (OpaquePointer?) -> CUresult
    typealias FStreamWaitEvent = @convention(c) (OpaquePointer?, OpaquePointer?, UInt32) -> CUresult
    typealias FEventElapsedTime = @convention(c) (UnsafeMutablePointer<Float>, OpaquePointer?, OpaquePointer?) -> CUresult
    typealias FEventDestroy = @convention(c) (OpaquePointer?) -> CUresult
    typealias FGetErrorString = @convention(c) (CUresult, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> CUresult
    typealias FMemGetInfo = @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> CUresult
    // CUDA graphs (stream capture)
    typealias FStreamBeginCapture = @convention(c) (OpaquePointer?, Int32) -> CUresult
    typealias FStreamEndCapture = @convention(c) (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>) -> CUresult
    typealias FGraphInstantiate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UInt64) -> CUresult
    typealias FGraphLaunch = @convention(c) (OpaquePointer?, OpaquePointer?) -> CUresult
    typealias FGraphDestroy = @convention(c) (OpaquePointer?) -> CUresult

    let lib: DynamicLibrary
    let cuInit: FInit
    let cuDeviceGet: FDeviceGet
    let cuDeviceGetAttribute: FDeviceGetAttribute
    let cuDeviceGetName: FDeviceGetName
    let cuDeviceTotalMem: FDeviceTotalMem
    let cuDevicePrimaryCtxRetain: FPrimaryCtxRetain
    let cuCtxSetCurrent: FCtxSetCurrent
    let cuMemAlloc: FMemAlloc
    let cuMemFree: FMemFree
    let cuMemHostAlloc: FMemHostAlloc
    let cuMemFreeHost: FMemFreeHost
    let cuMemcpyHtoDAsync: FMemcpyHtoDAsync
    let cuMemcpyDtoHAsync: FMemcpyDtoHAsync
    let cuMemcpyDtoDAsync: FMemcpyDtoDAsync
    let cuMemsetD8Async: FMemsetD8Async
    let cuModuleLoadData: FModuleLoadData
    let cuModuleGetFunction: FModuleGetFunction
    let cuLaunchKernel: FLaunchKernel
    let cuFuncSetAttribute: FFuncSetAttribute
    let cuStreamCreate: FStreamCreate
    let cuStreamSynchronize: FStreamSynchronize
    let cuEventCreate: FEventCreate
    let cuEventRecord: FEventRecord
    let cuEventSynchronize: FEventSynchronize
    let cuStreamWaitEvent: FStreamWaitEvent
    let cuEventElapsedTime: FEventElapsedTime
    let cuEventDestroy: FEventDestroy
    let cuGetErrorString: FGetErrorString
    let cuMemGetInfo: FMemGetInfo
    let cuStreamBeginCapture: FStreamBeginCapture
    let cuStreamEndCapture: FStreamEndCapture
    let cuGraphInstantiateWithFlags: FGraphInstantiate
    let cuGraphLaunch: FGraphLaunch
    let cuGraphExecDestroy: FGraphDestroy
    let cuGraphDestroy: FGraphDestroy

    init() throws {
        lib = try DynamicLibrary(["libcuda.so.1", "libcuda.so"])
        cuInit = try lib.symbol("cuInit", as: FInit.self)
        cuDeviceGet = try lib.symbol("cuDeviceGet", as: FDeviceGet.self)
        cuDeviceGetAttribute = try lib.symbol("cuDeviceGetAttribute", as: FDeviceGetAttribute.self)
        cuDeviceGetName = try lib.symbol("cuDeviceGetName", as: FDeviceGetName.self)
        cuDeviceTotalMem = try lib.symbol("cuDeviceTotalMem_v2", as: FDeviceTotalMem.self)
        cuDevicePrimaryCtxRetain = try lib.symbol("cuDevicePrimaryCtxRetain", as: FPrimaryCtxRetain.self)
        cuCtxSetCurrent = try lib.symbol("cuCtxSetCurrent", as: FCtxSetCurrent.self)
        cuMemAlloc = try lib.symbol("cuMemAlloc_v2", as: FMemAlloc.self)
        cuMemFree = try lib.symbol("cuMemFree_v2", as: FMemFree.self)
        cuMemHostAlloc = try lib.symbol("cuMemHostAlloc", as: FMemHostAlloc.self)
        cuMemFreeHost = try lib.symbol("cuMemFreeHost", as: FMemFreeHost.self)
        cuMemcpyHtoDAsync = try lib.symbol("cuMemcpyHtoDAsync_v2", as: FMemcpyHtoDAsync.self)
        cuMemcpyDtoHAsync = try lib.symbol("cuMemcpyDtoHAsync_v2", as: FMemcpyDtoHAsync.self)
        cuMemcpyDtoDAsync = try lib.symbol("cuMemcpyDtoDAsync_v2", as: FMemcpyDtoDAsync.self)
        cuMemsetD8Async = try lib.symbol("cuMemsetD8Async", as: FMemsetD8Async.self)
        cuModuleLoadData = try lib.symbol("cuModuleLoadData", as: FModuleLoadData.self)
        cuModuleGetFunction = try lib.symbol("cuModuleGetFunction", as: FModuleGetFunction.self)
        cuLaunchKernel = try lib.symbol("cuLaunchKernel", as: FLaunchKernel.self)
        cuFuncSetAttribute = try lib.symbol("cuFuncSetAttribute", as: FFuncSetAttribute.self)
        cuStreamCreate = try lib.symbol("cuStreamCreate", as: FStreamCreate.self)
        cuStreamSynchronize = try lib.symbol("cuStreamSynchronize", as: FStreamSynchronize.self)
        cuEventCreate = try lib.symbol("cuEventCreate", as: FEventCreate.self)
        cuEventRecord = try lib.symbol("cuEventRecord", as: FEventRecord.self)
        cuEventSynchronize = try lib.symbol("cuEventSynchronize", as: FEventSynchronize.self)
        cuStreamWaitEvent = try lib.symbol("cuStreamWaitEvent", as: FStreamWaitEvent.self)
        cuEventElapsedTime = try lib.symbol(["cuEventElapsedTime_v2", "cuEventElapsedTime"], as: FEventElapsedTime.self)
        cuEventDestroy = try lib.symbol("cuEventDestroy_v2", as: FEventDestroy.self)
        cuStreamBeginCapture = try lib.symbol(["cuStreamBeginCapture_v2", "cuStreamBeginCapture"], as: FStreamBeginCapture.self)
        cuStreamEndCapture = try lib.symbol("cuStreamEndCapture", as: FStreamEndCapture.self)
        cuGraphInstantiateWithFlags = try lib.symbol("cuGraphInstantiateWithFlags", as: FGraphInstantiate.self)
        cuGraphLaunch = try lib.symbol("cuGraphLaunch", as: FGraphLaunch.self)
        cuGraphExecDestroy = try lib.symbol("cuGraphExecDestroy", as: FGraphDestroy.self)
        cuGraphDestroy = try lib.symbol("cuGraphDestroy", as: FGraphDestroy.self)
        cuGetErrorString = try lib.symbol("cuGetErrorString", as: FGetErrorString.self)
        cuMemGetInfo = try lib.symbol("cuMemGetInfo_v2", as: FMemGetInfo.self)
    }

    func errorString(_ r: CUresult) -> String {
        var p: UnsafePointer<CChar>? = nil
        _ = cuGetErrorString(r, &p)
        return p.map { String(cString: $0) } ?? "CUDA error \(r)"
    }

    /// Throws with the call's name and the driver's message unless `r` is CUDA_SUCCESS.
    func check(_ r: CUresult, _ what: @autoclosure () -> String) throws {
        if r != 0 { throw CUDAError("\(what()) failed: \(errorString(r)) (\(r))") }
    }

    /// The first failure of a hot-path call, kept until `takeFailure` reads it ("sticky"): ops
    /// cannot throw, so they record it, later work is skipped, and the backend's `checkErrors`
    /// throws it at the next synchronisation point.
    private var failure: String?
    private let failureLock = NSLock()

    /// Like `check`, for calls on the hot path: records the first failure instead of throwing.
    /// Returns whether the call succeeded.
    @discardableResult
    func must(_ r: CUresult, _ what: @autoclosure () -> String) -> Bool {
        guard r != 0 else { return true }
        fail("\(what()) failed: \(errorString(r)) (\(r))")
        return false
    }

    /// Records a failure (the first one wins).
    func fail(_ message: String) {
        failureLock.lock(); defer { failureLock.unlock() }
        if failure == nil { failure = message }
    }

    /// True once something failed and was not yet reported.
    var failed: Bool { failureLock.lock(); defer { failureLock.unlock() }; return failure != nil }

    /// The recorded failure, cleared.
    func takeFailure() -> String? {
        failureLock.lock(); defer { failureLock.unlock() }
        let f = failure
        failure = nil
        return f
    }
}
