#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A system call that failed: what was being done, on which path, and the
/// `errno` it left. The one error type for "a call failed, here is why" in
/// every module: file I/O (``FileIO``), sockets, the eBPF loader's errno
/// paths, the archive's.
///
/// Its text is `PATH: CALL: REASON` (`/var/log/x: cannot open: Permission
/// denied`), or `CALL: REASON` without a path; ``message`` is the text
/// without the path, for messages that name the path already.
public struct SystemError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What failed, as the message says it: the call (`connect`) or the step
    /// in words (`cannot open the file`).
    public var call: String
    /// The file or socket the call was about, when there is one.
    public var path: String?
    /// The `errno` of the failure (positive; a negative libbpf code is turned around).
    public var errno: Int32

    /// A failure of `call` with `errno` (taken positive), about `path`.
    public init(_ call: String, _ errno: Int32, path: String? = nil) {
        self.call = call
        self.errno = errno < 0 ? -errno : errno
        self.path = path
    }

    /// The system's text for ``errno`` (`Connection refused`).
    public var reason: String { String(cString: strerror(errno)) }

    /// `CALL: REASON`, without the path.
    public var message: String { "\(call): \(reason)" }

    /// `PATH: CALL: REASON`, or `CALL: REASON` without a path.
    public var description: String { path.map { "\($0): \(message)" } ?? message }
}
