import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Path text helpers that work on any string (Foundation's `NSString.deletingLastPathComponent`
/// traps on some one-character names on Linux).
public enum PathName {
    /// The folder part of `path` ("" when the path has no slash; "/" for a file in the root).
    public static func parent(_ path: String) -> String {
        var s = Substring(path)
        while s.count > 1 && s.hasSuffix("/") { s = s.dropLast() }
        guard let i = s.lastIndex(of: "/") else { return "" }
        let head = s[..<i]
        if head.isEmpty { return "/" }
        var h = head
        while h.count > 1 && h.hasSuffix("/") { h = h.dropLast() }
        return String(h)
    }

    /// The last component of `path` (the name after the last slash).
    public static func lastComponent(_ path: String) -> String {
        var s = Substring(path)
        while s.count > 1 && s.hasSuffix("/") { s = s.dropLast() }
        guard let i = s.lastIndex(of: "/") else { return String(s) }
        return String(s[s.index(after: i)...])
    }

    /// `folder/name` (just `name` when the folder is empty).
    public static func join(_ folder: String, _ name: String) -> String {
        if folder.isEmpty { return name }
        return folder.hasSuffix("/") ? folder + name : folder + "/" + name
    }

    /// The extension of the last component without the dot ("" when none; a leading dot does not count).
    public static func pathExtension(_ path: String) -> String {
        let name = lastComponent(path)
        guard let i = name.lastIndex(of: "."), i != name.startIndex else { return "" }
        return String(name[name.index(after: i)...])
    }

    /// `path` without the extension of its last component.
    public static func deletingExtension(_ path: String) -> String {
        let ext = pathExtension(path)
        return ext.isEmpty ? path : String(path.dropLast(ext.count + 1))
    }
}

/// An output that cannot be written: names the path and the reason.
public struct OutputError: Error, CustomStringConvertible, LocalizedError, Equatable {
    public let path: String
    public let message: String
    public init(_ path: String, _ message: String) { self.path = path; self.message = message }
    public var description: String { path == "-" ? "standard output: \(message)" : "\(path): \(message)" }
    public var errorDescription: String? { description }
}

/// How NewBie writes files it makes (images, safetensors, prompts).
///
/// - `-` means standard output (refused when it is a terminal and the data is binary).
/// - Otherwise the destination must be absent or a regular file; symbolic links are followed, so
///   the file they point to is replaced and the link stays. Folders, devices, pipes and sockets are
///   refused: nothing that is not a regular file is ever replaced.
/// - The data goes to a hidden temporary file beside the destination, is flushed to disk and
///   renamed over it, so the destination is either the old file or the complete new one. An
///   interrupt (SIGINT, SIGTERM, SIGHUP) removes the temporary file.
public enum OutputFile {
    public static let standardOutput = "-"

    /// Where data for `path` goes.
    public enum Target: Equatable, Sendable {
        case standardOutput
        /// The regular file to (re)place, symbolic links resolved; `exists` when there is one now.
        case file(path: String, exists: Bool)
    }

    /// Checks a destination before any long work: `-` (unless `allowStandardOutput` is false), or
    /// a path whose final target (after symbolic links) is absent or a regular file we may
    /// replace, in a folder that exists (or, with `createFolders`, can be made) and is writable.
    @discardableResult
    public static func check(_ path: String, binary: Bool = true, allowStandardOutput: Bool = true,
                             createFolders: Bool = false) throws -> Target {
        if path == standardOutput {
            guard allowStandardOutput else {
                throw OutputError(path, "writing to standard output is not supported here; give a file name (./- for a file named -)")
            }
            if binary && isatty(1) != 0 {
                throw OutputError(path, "standard output is a terminal; redirect it (> file) or give a file name")
            }
            return .standardOutput
        }
        guard !path.isEmpty else { throw OutputError(path, "empty output path") }
        let final = try resolve(path)
        var st = stat()
        if lstat(final, &st) == 0 {
            let kind = st.st_mode & S_IFMT
            guard kind == S_IFREG else {
                let what = kind == S_IFDIR ? "a folder" : kind == S_IFCHR ? "a character device" : kind == S_IFBLK ? "a block device"
                    : kind == S_IFIFO ? "a named pipe" : kind == S_IFSOCK ? "a socket" : "not a regular file"
                let via = final == path ? "" : " (through the symbolic link, \(final))"
                throw OutputError(path, "is \(what)\(via); NewBie writes only regular files and never replaces anything else (give a file name\(binary ? ", or - for standard output" : ""))")
            }
            if access(final, W_OK) != 0 {
                throw OutputError(path, "the existing file is not writable (\(String(cString: strerror(errno)))); it is left as it is")
            }
        }
        let dir = PathName.parent(final)
        let folder = dir.isEmpty ? "." : dir
        var ds = stat()
        if stat(folder, &ds) != 0 {
            guard createFolders else { throw OutputError(path, "cannot create it: the folder \(folder) does not exist") }
            // the nearest existing ancestor must be a writable folder
            var up = folder
            while !up.isEmpty && up != "/" && stat(up, &ds) != 0 { up = PathName.parent(up) }
            let existing = up.isEmpty ? "." : up
            guard stat(existing, &ds) == 0, ds.st_mode & S_IFMT == S_IFDIR else {
                throw OutputError(path, "cannot create the folder \(folder): \(existing) is not a folder")
            }
            guard access(existing, W_OK) == 0 else {
                throw OutputError(path, "cannot create the folder \(folder): \(existing) is not writable")
            }
            return .file(path: final, exists: false)
        }
        guard ds.st_mode & S_IFMT == S_IFDIR else { throw OutputError(path, "\(folder) is not a folder") }
        guard access(folder, W_OK) == 0 else {
            throw OutputError(path, "the folder \(folder) is not writable (\(String(cString: strerror(errno))))")
        }
        return .file(path: final, exists: lstat(final, &st) == 0)
    }

    /// Follows symbolic links (up to 32) from `path` to the name that is not a link.
    static func resolve(_ path: String) throws -> String {
        var p = path
        for _ in 0..<32 {
            var st = stat()
            guard lstat(p, &st) == 0, st.st_mode & S_IFMT == S_IFLNK else { return p }
            var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            let n = readlink(p, &buf, buf.count - 1)
            guard n >= 0 else { throw OutputError(path, "cannot read the symbolic link \(p): \(String(cString: strerror(errno)))") }
            let target = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            p = target.hasPrefix("/") ? target : PathName.join(PathName.parent(p), target)
        }
        throw OutputError(path, "too many levels of symbolic links")
    }

    /// Writes through `body` (handed a file descriptor) to `path` as described above; `-` writes
    /// to standard output. On any error the destination is unchanged and the temporary file gone.
    public static func write(_ path: String, binary: Bool = true, createFolders: Bool = false,
                             _ body: (Int32) throws -> Void) throws {
        let target = try check(path, binary: binary, createFolders: createFolders)
        guard case .file(let final, let exists) = target else {
            try body(1)
            return
        }
        let dir = PathName.parent(final)
        let folder = dir.isEmpty ? "." : dir
        if createFolders && !FileManager.default.fileExists(atPath: folder) {
            do { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
                throw OutputError(path, "cannot create the folder \(folder): \(errnoText(error))")
            }
        }
        // The temporary file's name is registered for removal *before* the file is created: a
        // SIGINT sent to the process can land on any thread, so blocking signals on this one
        // (the earlier way) left a window in which another thread's handler missed the new file.
        TemporaryFiles.installSignalHandlers()
        var fd: Int32 = -1, tmp = "", slot = -1, createError: Int32 = 0
        for _ in 0..<100 {
            let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 36)
            tmp = PathName.join(folder, ".\(PathName.lastComponent(final)).tmp-\(getpid())-\(suffix)")
            slot = TemporaryFiles.register(tmp)
            fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            createError = errno
            if fd >= 0 { break }
            TemporaryFiles.unregister(slot)
            slot = -1
            if createError != EEXIST { break }
        }
        guard fd >= 0 else {
            throw OutputError(path, "cannot create a temporary file in \(folder) (\(String(cString: strerror(createError))))")
        }
        var closed = false
        defer {
            if !closed { close(fd) }
            unlink(tmp)  // gone after a rename, removed after a failure
            TemporaryFiles.unregister(slot)
        }
        // a replaced file keeps its permissions; a new one gets 0666 minus the umask
        var st = stat()
        if exists && stat(final, &st) == 0 {
            fchmod(fd, st.st_mode & 0o7777)
        } else {
            let mask = umask(0); umask(mask)
            fchmod(fd, 0o666 & ~mask)
        }
        try body(fd)
        guard fsync(fd) == 0 else { throw OutputError(path, "cannot flush to disk (\(String(cString: strerror(errno))))") }
        closed = true
        guard close(fd) == 0 else { throw OutputError(path, "close failed (\(String(cString: strerror(errno))))") }
        guard rename(tmp, final) == 0 else {
            throw OutputError(path, "cannot move the finished file into place (\(String(cString: strerror(errno))))")
        }
        let dfd = open(folder, O_RDONLY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    /// Writes all of `bytes` to `fd`, retrying short writes.
    public static func writeAll(_ fd: Int32, _ p: UnsafeRawPointer?, _ n: Int, path: String) throws {
        var written = 0
        while written < n {
            let r = systemWrite(fd, p! + written, Swift.min(n - written, 1 << 30))
            if r < 0 {
                if errno == EINTR { continue }
                throw OutputError(path, "write failed (\(String(cString: strerror(errno))))")
            }
            written += r
        }
    }

    /// Writes `data` to `path` (see `write`).
    public static func write(_ data: Data, to path: String, binary: Bool = true, createFolders: Bool = false) throws {
        try write(path, binary: binary, createFolders: createFolders) { fd in
            try data.withUnsafeBytes { try writeAll(fd, $0.baseAddress, $0.count, path: path) }
        }
    }

    static func errnoText(_ error: Error) -> String {
        if let e = error as? CocoaError, let u = e.userInfo[NSUnderlyingErrorKey] as? NSError, u.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(u.code)))
        }
        if let e = error as NSError?, e.domain == NSPOSIXErrorDomain { return String(cString: strerror(Int32(e.code))) }
        return error.localizedDescription
    }
}

/// write(2), named apart from the `write` functions above.
private func systemWrite(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    #if canImport(Glibc)
    return Glibc.write(fd, p, n)
    #else
    return Darwin.write(fd, p, n)
    #endif
}

/// Temporary files being written, removed by a signal handler on SIGINT, SIGTERM and SIGHUP (then
/// the signal's default action runs, so the process still ends as it would have).
public enum TemporaryFiles {
    static let capacity = 64
    static let signals: [Int32] = [SIGINT, SIGTERM, SIGHUP]
    nonisolated(unsafe) static let slots: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> = {
        let p = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: capacity)
        p.initialize(repeating: nil, count: capacity)
        return p
    }()
    static let lock = NSLock()
    nonisolated(unsafe) static var installed = false

    /// Installs the handlers (once).
    public static func installSignalHandlers() {
        lock.lock(); defer { lock.unlock() }
        if installed { return }
        installed = true
        _ = slots
        for sig in signals {
            signal(sig) { s in
                for i in 0..<TemporaryFiles.capacity { if let p = TemporaryFiles.slots[i] { unlink(p) } }
                signal(s, SIG_DFL)
                raise(s)
            }
        }
    }

    static func register(_ path: String) -> Int {
        lock.lock(); defer { lock.unlock() }
        for i in 0..<capacity where slots[i] == nil {
            slots[i] = strdup(path)
            return i
        }
        return -1
    }

    static func unregister(_ slot: Int) {
        guard slot >= 0 else { return }
        lock.lock(); defer { lock.unlock() }
        let p = slots[slot]
        slots[slot] = nil
        free(p)
    }
}
