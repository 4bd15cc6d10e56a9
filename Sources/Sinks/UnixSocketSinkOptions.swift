#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import PipelineCore

/// Options of the `unix_socket` sink (docs/pipeline-file.md and docs/socket.md).
public struct UnixSocketSinkOptions: StageOptions, Equatable {
    /// What happens to a client whose buffer is full.
    public enum WhenFull: String, Sendable, CaseIterable {
        /// Its events are dropped and counted; once it has caught up it
        /// receives a `lost` record (`"where":"client"`) with the count.
        case drop
        /// It is disconnected (and counted in the stage's `clients_dropped`).
        case disconnect
    }

    /// Where the socket file is created. At most ``maxPathBytes`` bytes.
    public var path: String
    /// The socket file's permission bits (`0600`); never more open, not even
    /// while it is being created.
    public var mode: UInt32
    /// The peer uids (SO_PEERCRED) that may connect; anyone else is closed at once.
    public var allowUIDs: [UInt32]
    /// Events that may wait for a client (handed to it, not yet taken by
    /// its socket) before ``whenFull`` applies to its next batch.
    public var clientBuffer: Int
    public var whenFull: WhenFull
    /// How long ``UnixSocketSink/close()`` lets a client go without taking
    /// any of what is buffered for it before closing it anyway.
    public var closeTimeoutNs: Int64

    /// The longest path a `sockaddr_un` holds (108 bytes with the NUL).
    public static let maxPathBytes = 107
    /// The default `client_buffer`: 64Ki events, a few MiB of NDJSON.
    public static let defaultClientBuffer = 65_536

    /// The owner (this process's effective uid) and root.
    public static var defaultAllowUIDs: [UInt32] {
        let owner = UInt32(geteuid())
        return owner == 0 ? [0] : [owner, 0]
    }

    public init(
        path: String, mode: UInt32 = 0o600, allowUIDs: [UInt32] = UnixSocketSinkOptions.defaultAllowUIDs,
        clientBuffer: Int = UnixSocketSinkOptions.defaultClientBuffer, whenFull: WhenFull = .drop,
        closeTimeoutNs: Int64 = 2_000_000_000
    ) {
        self.path = path
        self.mode = mode
        self.allowUIDs = allowUIDs
        self.clientBuffer = clientBuffer
        self.whenFull = whenFull
        self.closeTimeoutNs = closeTimeoutNs
    }

    public static let specs: [OptionSpec] = [
        OptionSpec("path", "string", required: true, "where the socket file is created (at most 107 bytes); a stale socket there is replaced, a live one is an error"),
        OptionSpec("mode", "octal string", default: "\"0600\"", "the socket file's permission bits, set before anyone can connect"),
        OptionSpec("allow_uids", "[uid or user name]", default: "[owner, root]", "peer uids (SO_PEERCRED) allowed to connect; others are closed at once and logged (mode must also let them reach the file)"),
        OptionSpec("client_buffer", "int", default: "65536", "events waiting for a client beyond what its socket took before when_full applies to its next batch (1-16777216)"),
        OptionSpec("when_full", "drop|disconnect", default: "drop", "a full client: drop its events and count them (a 'lost' record with where=client), or disconnect it"),
        OptionSpec("close_timeout", "duration", default: "2s", "at shutdown, how long a client may take none of what is buffered for it before it is closed"),
    ]

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        config.require("path")
        let path = config.string("path")
        if let path {
            if path.isEmpty {
                config.error("path", "must not be empty")
            } else if path.utf8.count > Self.maxPathBytes {
                config.error("path", "is \(path.utf8.count) bytes long; a unix socket path holds at most \(Self.maxPathBytes)")
            } else if path.hasSuffix("/") {
                config.error("path", "must name a file, not a directory ('\(path)')")
            } else if path.utf8.contains(0) {
                config.error("path", "must not contain a NUL byte")
            }
        }
        var mode: UInt32 = 0o600
        if let text = config.string("mode") {
            if let parsed = Self.parseMode(text) {
                mode = parsed
            } else {
                config.error("mode", "must be octal permission bits such as \"0600\" or \"0660\" (at most 0777), not '\(text)'")
            }
        }
        var allowUIDs = Self.defaultAllowUIDs
        if let items = config.scalarList("allow_uids") {
            allowUIDs = []
            for item in items {
                if let uid = Self.resolveUID(item.text) {
                    if !allowUIDs.contains(uid) { allowUIDs.append(uid) }
                } else {
                    config.error(at: item.location, "'allow_uids' items must be uids (0-4294967294) or user names, not '\(item.text)'")
                }
            }
            if items.isEmpty { config.error("allow_uids", "must list at least one uid") }
        }
        let clientBuffer = config.int("client_buffer", in: 1...16_777_216) ?? Self.defaultClientBuffer
        let whenFull = config.choice("when_full", WhenFull.allCases.map(\.rawValue)).flatMap(WhenFull.init(rawValue:)) ?? .drop
        let closeTimeout = config.duration("close_timeout", minimumNs: 0) ?? 2_000_000_000
        guard config.diagnostics.count == errors, let path else { return nil }
        self.init(path: path, mode: mode, allowUIDs: allowUIDs, clientBuffer: clientBuffer, whenFull: whenFull, closeTimeoutNs: closeTimeout)
    }

    /// `"0600"`, `"600"`, `"0o600"` → 0o600; nil for anything that is not
    /// 1-4 octal digits at most 0777 (no setuid, setgid or sticky bits).
    public static func parseMode(_ text: String) -> UInt32? {
        var digits = Substring(text)
        if digits.hasPrefix("0o") || digits.hasPrefix("0O") { digits = digits.dropFirst(2) }
        guard (1...4).contains(digits.count), digits.allSatisfy({ ("0"..."7").contains($0) }),
              let value = UInt32(digits, radix: 8), value <= 0o777
        else { return nil }
        return value
    }

    /// A uid written as a number or a user name known to this machine.
    static func resolveUID(_ text: String) -> UInt32? {
        if let number = UInt32(text) { return number == UInt32.max ? nil : number }
        guard !text.isEmpty, text.first?.isNumber == false else { return nil }
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getpwnam_r(text, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.pw_uid
    }
}
