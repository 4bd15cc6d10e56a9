#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A failure reading or writing an archive, with the path and the system's reason.
public struct ArchiveError: Error, CustomStringConvertible, Sendable, Equatable {
    public var path: String
    public var message: String

    /// An error about `path`, with a message that says what went wrong.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    /// An error for a failed system call, with `strerror(code)` as the reason.
    public static func system(_ path: String, _ what: String, _ code: Int32) -> ArchiveError {
        ArchiveError(path: path, message: "\(what): \(String(cString: strerror(code)))")
    }

    public var description: String { "\(path): \(message)" }
}

/// The small set of POSIX file operations the archive needs, each retrying on
/// EINTR and turning failures into ``ArchiveError``s that name the path.
/// Every call blocks: callers run on a thread of their own (a sink's thread,
/// a source's thread, or the CLI).
public enum ArchiveIO {
    /// Opens `path` with `flags`; throws with the path and reason on failure.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw ArchiveError.system(path, "cannot open", errno)
        }
    }

    /// Writes every byte at the file's current offset.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        var offset = 0
        while offset < bytes.count {
            let result = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if result < 0 {
                if errno == EINTR { continue }
                throw ArchiveError.system(path, "write failed", errno)
            }
            offset += result
        }
    }

    /// Reads up to `count` bytes into `buffer` at `offset`; 0 at the end of the file.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws -> Int {
        while true {
            let result = Glibc.read(fd, buffer.baseAddress!, buffer.count)
            if result >= 0 { return result }
            if errno == EINTR { continue }
            throw ArchiveError.system(path, "read failed", errno)
        }
    }

    /// The bytes of the file at `path`, at most `limit` of them (a caller that
    /// must refuse bigger files asks for one byte more than it accepts).
    /// Errors say "cannot open the file" or "cannot read the file" and why.
    public static func readAll(_ path: String, limit: Int = .max) throws -> [UInt8] {
        var fd: Int32
        repeat { fd = Glibc.open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw ArchiveError.system(path, "cannot open the file", errno) }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while bytes.count < limit {
            let wanted = min(chunk.count, limit - bytes.count)
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, wanted) }
            if count < 0 {
                if errno == EINTR { continue }
                throw ArchiveError.system(path, "cannot read the file", errno)
            }
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        return bytes
    }

    /// Flushes a file's data and metadata to the device.
    public static func fsync(_ fd: Int32, path: String) throws {
        while Glibc.fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw ArchiveError.system(path, "fsync failed", errno)
        }
    }

    /// Makes renames and unlinks in `directory` durable (fsync of the directory).
    public static func syncDirectory(_ directory: String) throws {
        let fd = try open(directory, O_RDONLY | O_DIRECTORY)
        defer { Glibc.close(fd) }
        try fsync(fd, path: directory)
    }

    /// Renames `from` to `to` (same directory; atomic).
    public static func rename(_ from: String, _ to: String) throws {
        guard Glibc.rename(from, to) == 0 else { throw ArchiveError.system(from, "cannot rename to '\(to)'", errno) }
    }

    /// Removes a file; a file that is already gone is not an error.
    public static func unlink(_ path: String) throws {
        guard Glibc.unlink(path) == 0 || errno == ENOENT else { throw ArchiveError.system(path, "cannot remove", errno) }
    }

    /// The size of the file at `path`, nil when it does not exist.
    public static func fileSize(_ path: String) -> Int? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Int(info.st_size)
    }

    /// True when `path` names a directory.
    public static func isDirectory(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
    }

    /// The names in a directory (not `.` or `..`), unsorted.
    public static func listDirectory(_ path: String) throws -> [String] {
        guard let dir = opendir(path) else { throw ArchiveError.system(path, "cannot read directory", errno) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != ".", name != ".." { names.append(name) }
        }
        return names
    }

    /// Creates `path` and any missing parents (mode 0755); an existing directory is fine.
    public static func makeDirectories(_ path: String) throws {
        if isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0, errno != EEXIST {
                throw ArchiveError.system(prefix, "cannot create directory", errno)
            }
        }
        guard isDirectory(path) else { throw ArchiveError(path: path, message: "exists and is not a directory") }
    }

    /// Writes `bytes` to `path` through a temporary file, fsync and rename, so
    /// that a crash leaves either the old or the new content, never a mix.
    public static func replaceAtomically(_ path: String, with bytes: [UInt8]) throws {
        let temporary = path + ".tmp"
        let fd = try open(temporary, O_WRONLY | O_CREAT | O_TRUNC)
        do {
            try bytes.withUnsafeBytes { raw in try writeAll(fd, raw, path: temporary) }
            try fsync(fd, path: temporary)
        } catch {
            Glibc.close(fd)
            try? unlink(temporary)
            throw error
        }
        Glibc.close(fd)
        try rename(temporary, path)
        try syncDirectory(directoryOf(path))
    }

    /// The directory part of a path (`.` for a bare name).
    public static func directoryOf(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let directory = String(path[..<slash])
        return directory.isEmpty ? "/" : directory
    }

    /// The last component of a path.
    public static func baseName(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }
}
