#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The POSIX file operations every part of pipelined uses: the loader, `/proc`
/// reads, replay, the file and archive sinks, the `archive` commands. Each
/// call retries on EINTR and turns a failure into a ``SystemError`` that names
/// the path. Every call blocks: callers run on a thread of their own (a
/// sink's thread, a source's thread, or the CLI).
public enum FileIO {
    /// Opens `path` with `flags` (and `O_CLOEXEC`).
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws(SystemError) -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw SystemError("cannot open", errno, path: path)
        }
    }

    /// Writes every byte at the file's current offset.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws(SystemError) {
        var offset = 0
        while offset < bytes.count {
            let result = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if result < 0 {
                if errno == EINTR { continue }
                throw SystemError("write failed", errno, path: path)
            }
            offset += result
        }
    }

    /// Writes every byte of `bytes` at the file's current offset.
    public static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(SystemError) {
        // `withUnsafeBytes` rethrows untyped errors: carry the typed one out.
        let result = bytes.withUnsafeBytes { raw in
            Result { () throws(SystemError) in try writeAll(fd, raw, path: path) }
        }
        try result.get()
    }

    /// Reads up to `buffer.count` bytes at the file's current offset; 0 at the end of the file.
    public static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, path: String) throws(SystemError) -> Int {
        while true {
            let result = Glibc.read(fd, buffer.baseAddress!, buffer.count)
            if result >= 0 { return result }
            if errno == EINTR { continue }
            throw SystemError("read failed", errno, path: path)
        }
    }

    /// The bytes of the file at `path`, at most `limit` of them (a caller that
    /// must refuse bigger files asks for one byte more than it accepts). The
    /// one whole-file reader: pipeline files, the manifest, `/proc` files.
    /// Errors say "cannot open the file" or "cannot read the file" and why.
    public static func readAll(_ path: String, limit: Int = .max) throws(SystemError) -> [UInt8] {
        var fd: Int32
        repeat { fd = Glibc.open(path, O_RDONLY | O_CLOEXEC) } while fd < 0 && errno == EINTR
        guard fd >= 0 else { throw SystemError("cannot open the file", errno, path: path) }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while bytes.count < limit {
            let wanted = min(chunk.count, limit - bytes.count)
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, wanted) }
            if count < 0 {
                if errno == EINTR { continue }
                throw SystemError("cannot read the file", errno, path: path)
            }
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        return bytes
    }

    /// The file's text, invalid UTF-8 repaired; nil when it cannot be read
    /// (for files such as `/proc/self/status` whose absence has a meaning).
    public static func readText(_ path: String) -> String? {
        (try? readAll(path)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Flushes a file's data and metadata to the device.
    public static func fsync(_ fd: Int32, path: String) throws(SystemError) {
        while Glibc.fsync(fd) != 0 {
            if errno == EINTR { continue }
            throw SystemError("fsync failed", errno, path: path)
        }
    }

    /// Makes renames and unlinks in `directory` durable (fsync of the directory).
    public static func syncDirectory(_ directory: String) throws(SystemError) {
        let fd = try open(directory, O_RDONLY | O_DIRECTORY)
        defer { Glibc.close(fd) }
        try fsync(fd, path: directory)
    }

    /// Renames `from` to `to` (same file system; atomic).
    public static func rename(_ from: String, _ to: String) throws(SystemError) {
        guard Glibc.rename(from, to) == 0 else { throw SystemError("cannot rename to '\(to)'", errno, path: from) }
    }

    /// Removes a file; a file that is already gone is not an error.
    public static func unlink(_ path: String) throws(SystemError) {
        guard Glibc.unlink(path) == 0 || errno == ENOENT else { throw SystemError("cannot remove", errno, path: path) }
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
    public static func listDirectory(_ path: String) throws(SystemError) -> [String] {
        guard let dir = opendir(path) else { throw SystemError("cannot read directory", errno, path: path) }
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
    public static func makeDirectories(_ path: String) throws(SystemError) {
        if isDirectory(path) { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0, errno != EEXIST {
                throw SystemError("cannot create directory", errno, path: prefix)
            }
        }
        guard isDirectory(path) else { throw SystemError("cannot create directory", ENOTDIR, path: path) }
    }

    /// Writes `bytes` to `path` through a temporary file, fsync and rename, so
    /// that a crash leaves either the old or the new content, never a mix.
    public static func replaceAtomically(_ path: String, with bytes: [UInt8]) throws(SystemError) {
        let temporary = path + ".tmp"
        let fd = try open(temporary, O_WRONLY | O_CREAT | O_TRUNC)
        do throws(SystemError) {
            try writeAll(fd, bytes, path: temporary)
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
