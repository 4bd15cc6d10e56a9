#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Named points in the archive's sealing where a test can kill the process,
/// to prove that recovery copes with a crash at exactly that step (as etcd's
/// and TiKV's failpoints do). `PIPELINED_FAILPOINT=NAME` in the environment
/// arms one: the process raises SIGKILL on itself when it reaches it. The
/// variable is read once, the first time any point is passed; unset, a point
/// costs one comparison with nil. A test hook, not an option: see
/// docs/fault-injection.md.
public enum Failpoint: String, Sendable, CaseIterable {
    /// The frame is ended (end mark and checksum written), not yet fsynced.
    case sealBeforeFsync = "seal.before-fsync"
    /// Fsynced, not yet renamed from `.open` to the sealed name.
    case sealBeforeRename = "seal.before-rename"
    /// Renamed to the sealed name; the manifest does not list it yet.
    case sealAfterRename = "seal.after-rename"

    /// The point the environment armed, if any.
    private static let armed: Failpoint? = {
        guard let value = getenv("PIPELINED_FAILPOINT") else { return nil }
        return Failpoint(rawValue: String(cString: value))
    }()

    /// Kills the process (SIGKILL, no cleanup) if this point is armed.
    @inline(__always)
    public func pass() {
        if let armed = Failpoint.armed, armed == self {
            raise(SIGKILL)
        }
    }
}
