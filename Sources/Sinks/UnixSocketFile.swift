#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import PipelineCore

/// Unix stream socket paths: connecting, and creating a listening socket file
/// whose mode is never more open than asked, not even for an instant.
public enum UnixSocketPath {
    /// Calls `body` with a `sockaddr_un` for `path`; nil when the path does
    /// not fit (more than 107 bytes) or holds a NUL.
    static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity, !bytes.contains(0) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// Opens a stream socket connected to `path`. Returns the descriptor, or
    /// the `errno` of the failing call (ENAMETOOLONG for a path that does not
    /// fit a `sockaddr_un`). `nonBlocking` makes a full listen backlog fail
    /// with EAGAIN instead of waiting.
    public static func connect(_ path: String, nonBlocking: Bool = false) -> Result<Int32, SystemError> {
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        let fd = socket(AF_UNIX, type, 0)
        guard fd >= 0 else { return .failure(SystemError("socket", errno)) }
        let result = withAddress(path) { address, length in
            while true {
                if Glibc.connect(fd, address, length) == 0 { return Int32(0) }
                if errno != EINTR { return errno }
            }
        }
        guard let code = result else {
            Glibc.close(fd)
            return .failure(SystemError("connect", ENAMETOOLONG))
        }
        if code != 0 {
            Glibc.close(fd)
            return .failure(SystemError("connect", code))
        }
        return .success(fd)
    }
}

/// Why a `unix_socket` sink could not create its socket: each message names
/// the path and says what to do.
public struct UnixSocketError: Error, Sendable, CustomStringConvertible {
    public var description: String

    public init(_ description: String) { self.description = description }
}

/// The listening socket file a `unix_socket` sink serves on.
///
/// Creation is race-free: the socket is bound inside a fresh directory of
/// mode 0700 next to the path (so nobody else can reach it), given its mode,
/// and only then renamed into place, atomically replacing a stale socket
/// file. Before binding, the socket's own inode is `fchmod`ed to the mode,
/// which Linux uses (less the umask) for the file it creates: belt and braces.
struct UnixSocketFile {
    let path: String
    let fd: Int32
    /// The device and inode of the file created, so that ``remove()`` never
    /// unlinks a file some other process put at the path later.
    let device: UInt64
    let inode: UInt64
    /// True when a stale socket file was replaced.
    let replacedStale: Bool

    /// Creates, binds and listens. Throws a ``UnixSocketError`` when a live
    /// server answers at `path`, when `path` is not a socket, or when a
    /// system call fails.
    static func create(path: String, mode: UInt32, backlog: Int32 = 256) throws -> UnixSocketFile {
        let stale = try checkExisting(path)
        let directory = FileIO.directoryOf(path)
        var template = Array((directory == "/" ? "" : directory).utf8CString.dropLast()) + Array("/.pipelined-XXXXXX".utf8CString)
        guard let created = mkdtemp(&template) else {
            throw UnixSocketError("cannot create the socket '\(path)': cannot make a private directory in '\(directory)': \(String(cString: strerror(errno)))")
        }
        let privateDirectory = String(cString: created)
        let temporary = privateDirectory + "/s"
        defer { rmdir(privateDirectory) }

        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw UnixSocketError("cannot create the socket '\(path)': socket: \(String(cString: strerror(errno)))") }
        var succeeded = false
        defer {
            if !succeeded {
                Glibc.close(fd)
                unlink(temporary)
            }
        }
        func fail(_ step: String, _ code: Int32 = errno) -> UnixSocketError {
            UnixSocketError("cannot create the socket '\(path)': \(step): \(String(cString: strerror(code)))")
        }
        guard fchmod(fd, mode_t(mode)) == 0 else { throw fail("fchmod") }
        guard let bound = UnixSocketPath.withAddress(temporary, { bind(fd, $0, $1) }) else {
            throw UnixSocketError("cannot create the socket '\(path)': its directory's name is too long for a unix socket (a temporary name in it, '\(temporary)', passes \(UnixSocketSinkOptions.maxPathBytes) bytes)")
        }
        guard bound == 0 else { throw fail("bind") }
        // The umask may have narrowed the mode; set exactly what was asked
        // while the file is still in the private directory.
        guard chmod(temporary, mode_t(mode)) == 0 else { throw fail("chmod") }
        guard listen(fd, backlog) == 0 else { throw fail("listen") }
        guard rename(temporary, path) == 0 else { throw fail("rename into place") }
        var info = stat()
        guard lstat(path, &info) == 0 else { throw fail("stat") }
        succeeded = true
        return UnixSocketFile(path: path, fd: fd, device: UInt64(info.st_dev), inode: UInt64(info.st_ino), replacedStale: stale)
    }

    /// Looks at what is at `path`: nothing (false), a stale socket that no
    /// process listens on (true), or an error for a live socket or a file
    /// that is not a socket.
    private static func checkExisting(_ path: String) throws -> Bool {
        var info = stat()
        if lstat(path, &info) != 0 {
            if errno == ENOENT { return false }
            throw UnixSocketError("cannot use '\(path)' for a socket: \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            throw UnixSocketError("'\(path)' exists and is not a socket: remove it or choose another path")
        }
        switch UnixSocketPath.connect(path, nonBlocking: true) {
        case .success(let fd):
            Glibc.close(fd)
            throw UnixSocketError("'\(path)' is in use: another process is serving on it (is another pipelined running?)")
        case .failure(let error) where error.errno == ECONNREFUSED:
            return true
        case .failure(let error) where error.errno == ENOENT:
            return false
        case .failure(let error) where error.errno == EAGAIN:
            throw UnixSocketError("'\(path)' is in use: another process is serving on it (its backlog is full)")
        case .failure(let error):
            throw UnixSocketError("cannot check whether '\(path)' is in use: \(error.reason)")
        }
    }

    /// Unlinks the socket file if it is still the one this sink created.
    func remove() {
        var info = stat()
        guard lstat(path, &info) == 0, UInt64(info.st_dev) == device, UInt64(info.st_ino) == inode else { return }
        unlink(path)
    }
}
