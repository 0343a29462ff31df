import Foundation

/// Run-time compilation of the kernel sources with NVRTC (libnvrtc.so.13, dlopen), for the
/// running GPU's architecture; the cubin is cached on disk under a hash of source, options and
/// NVRTC version, so later runs skip compilation.
final class NVRTC: @unchecked Sendable {
    typealias FCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
                                        UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias FCompile = @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias FGetSize = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Int32
    typealias FGet = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Int32
    typealias FDestroy = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias FVersion = @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32

    let lib: DynamicLibrary
    let create: FCreate, compile: FCompile, destroy: FDestroy
    let cubinSize: FGetSize, cubin: FGet, logSize: FGetSize, log: FGet
    let version: String

    init() throws {
        lib = try DynamicLibrary(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"])
        create = try lib.symbol("nvrtcCreateProgram", as: FCreate.self)
        compile = try lib.symbol("nvrtcCompileProgram", as: FCompile.self)
        destroy = try lib.symbol("nvrtcDestroyProgram", as: FDestroy.self)
        cubinSize = try lib.symbol("nvrtcGetCUBINSize", as: FGetSize.self)
        cubin = try lib.symbol("nvrtcGetCUBIN", as: FGet.self)
        logSize = try lib.symbol("nvrtcGetProgramLogSize", as: FGetSize.self)
        log = try lib.symbol("nvrtcGetProgramLog", as: FGet.self)
        let v = try lib.symbol("nvrtcVersion", as: FVersion.self)
        var major: Int32 = 0, minor: Int32 = 0
        _ = v(&major, &minor)
        version = "\(major).\(minor)"
    }

    static var cacheDirectory: URL {
        let env = ProcessInfo.processInfo.environment
        if let d = env["NEWBIE_KERNEL_CACHE"], !d.isEmpty { return URL(fileURLWithPath: d) }
        let base = env["XDG_CACHE_HOME"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache")
        return base.appendingPathComponent("newbie/kernels")
    }

    /// 64-bit FNV-1a, enough to key a cache (collisions would need adversarial sources).
    static func fnv1a(_ s: String) -> String {
        var h: UInt64 = 0xcbf29ce484222325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        return String(h, radix: 16)
    }

    /// Compiles `source` for `sm_<arch>` ("86", "90", or "90a" for Hopper-only instructions such as
    /// wgmma) and returns the cubin (from the cache when present).
    /// `headers` are what the source may `#include "name"`: NVRTC reads no files, so each is handed
    /// over by name with its text (and is part of the cache key).
    func cubin(source: String, name: String, arch: String, headers: [(name: String, source: String)] = []) throws -> Data {
        var options = ["--gpu-architecture=sm_\(arch)", "--std=c++17", "-default-device", "--fmad=true", "-lineinfo"]
        // register and spill report from ptxas in the log (cache key includes it, so it recompiles)
        if ProcessInfo.processInfo.environment["NEWBIE_NVRTC_VERBOSE"] != nil { options.append("--ptxas-options=-v") }
        let headerKey = headers.map { "\($0.name)\n\($0.source)" }.joined(separator: "|")
        let key = NVRTC.fnv1a(version + "|" + options.joined(separator: " ") + "|" + headerKey + "|" + source)
        let dir = NVRTC.cacheDirectory
        let file = dir.appendingPathComponent("\(name)-sm\(arch)-\(key).cubin")
        if let data = try? Data(contentsOf: file), !data.isEmpty { return data }

        let (data, logText) = try compileProgram(source: source, name: name, arch: arch, headers: headers, options: options)
        if ProcessInfo.processInfo.environment["NEWBIE_NVRTC_VERBOSE"] != nil { print("NVRTC \(name):\n\(logText)") }
        // Cache write is best effort: write a temporary file, then rename it into place.
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let tmp = dir.appendingPathComponent(".\(UUID().uuidString).tmp")
        if (try? data.write(to: tmp)) != nil {
            if rename(tmp.path, file.path) != 0 { try? FileManager.default.removeItem(at: tmp) }
        }
        return data
    }

    /// ptxas's report for a module (registers, spills, and warnings such as C7512, "wgmma
    /// instructions are serialized"): compiled afresh with `--ptxas-options=-v`, never cached.
    func ptxasReport(source: String, name: String, arch: String, headers: [(name: String, source: String)] = []) throws -> String {
        let options = ["--gpu-architecture=sm_\(arch)", "--std=c++17", "-default-device", "--fmad=true", "-lineinfo",
                       "--ptxas-options=-v"]
        return try compileProgram(source: source, name: name, arch: arch, headers: headers, options: options).log
    }

    private func compileProgram(source: String, name: String, arch: String, headers: [(name: String, source: String)],
                                options: [String]) throws -> (cubin: Data, log: String) {
        var prog: OpaquePointer? = nil
        let headerTexts = headers.map { strdup($0.source) }, headerNames = headers.map { strdup($0.name) }
        defer { (headerTexts + headerNames).forEach { free($0) } }
        let rc = source.withCString { src in
            name.withCString { nm in
                headerTexts.map { UnsafePointer($0) }.withUnsafeBufferPointer { texts in
                    headerNames.map { UnsafePointer($0) }.withUnsafeBufferPointer { names in
                        create(&prog, src, nm, Int32(headers.count), headers.isEmpty ? nil : texts.baseAddress,
                               headers.isEmpty ? nil : names.baseAddress)
                    }
                }
            }
        }
        guard rc == 0 else { throw CUDAError("nvrtcCreateProgram(\(name)) failed (\(rc))") }
        defer { _ = destroy(&prog) }
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        let status = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { compile(prog, Int32(options.count), $0.baseAddress) }
        var n = 0
        _ = logSize(prog, &n)
        var logText = ""
        if n > 1 {
            var buf = [CChar](repeating: 0, count: n)
            _ = log(prog, &buf)
            logText = String(cString: buf)
        }
        guard status == 0 else { throw CUDAError("NVRTC could not compile \(name) for sm_\(arch):\n\(logText)") }
        _ = cubinSize(prog, &n)
        var bin = [CChar](repeating: 0, count: n)
        _ = cubin(prog, &bin)
        return (bin.withUnsafeBytes { Data($0) }, logText)
    }
}
