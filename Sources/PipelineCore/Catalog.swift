/// The events pipelined knows, with their scope and typed arguments.
///
/// The table mirrors `bpf/wire.h`; a test checks every id, scope and argument
/// type here against the C header the kernel program is built from.

/// The visibility scope of an event (docs/event-record.md), also the index of the
/// kernel program's visibility map.
public enum Scope: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case file = 0
    case process = 1
    case network = 2
    case capabilities = 3

    public var description: String { name }

    /// The scope's name as written in pipeline files and event records.
    public var name: String {
        switch self {
        case .file: "file"
        case .process: "process"
        case .network: "network"
        case .capabilities: "capabilities"
        }
    }

    /// Parses a scope name.
    public init?(name: String) {
        guard let scope = Scope.allCases.first(where: { $0.name == name }) else { return nil }
        self = scope
    }
}

/// An argument's type tag as declared per event and written on the wire.
public enum ArgType: UInt8, Sendable, CaseIterable {
    case int = 1
    case string = 10
    case stringArray = 11
    case sockaddr = 12
    case openFlags = 13
    case execFlags = 14
    case socketDomain = 15
    case socketType = 16
    case fileType = 17
    case unlinkatFlags = 19
    case ptraceRequest = 23
    case mountFlags = 24
    case umountFlags = 25

    /// The flag vocabulary of a `u32` flags tag, or nil for other tags.
    public var flagKind: FlagKind? {
        switch self {
        case .openFlags: .open
        case .execFlags: .exec
        case .socketDomain: .socketDomain
        case .socketType: .socketType
        case .unlinkatFlags: .unlinkat
        case .ptraceRequest: .ptraceRequest
        case .mountFlags: .mount
        case .umountFlags: .umount
        default: nil
        }
    }
}

/// Which symbolic vocabulary a `u32` flags argument is printed with.
public enum FlagKind: UInt8, Sendable, CaseIterable {
    case open, exec, socketDomain, socketType, unlinkat, ptraceRequest, mount, umount

    /// The wire tag that carries this kind.
    public var argType: ArgType {
        switch self {
        case .open: .openFlags
        case .exec: .execFlags
        case .socketDomain: .socketDomain
        case .socketType: .socketType
        case .unlinkat: .unlinkatFlags
        case .ptraceRequest: .ptraceRequest
        case .mount: .mountFlags
        case .umount: .umountFlags
        }
    }
}

/// One event type of docs/event-record.md: its id, name, scope and arguments.
public struct EventKind: Sendable, Hashable {
    /// The x86-64 syscall number, also the wire `event_id`.
    public let id: UInt32
    /// The name in records and pipeline files (`connect`).
    public let name: String
    public let scope: Scope
    /// Argument names in order, as the keys of the record's `args` object.
    public let argNames: [String]
    /// Declared argument types in order (a path is `.fileType`).
    public let argTypes: [ArgType]

    /// The declared types packed as the reference's `ARG_TYPEn` mask.
    public var typeMask: UInt64 {
        var mask: UInt64 = 0
        for (index, type) in argTypes.enumerated() {
            mask |= UInt64(type.rawValue) << (8 * UInt64(index))
        }
        return mask
    }

    /// The name of the kernel's syscall (`umount` is `umount2`), used to attach.
    public var syscallName: String { id == 166 ? "umount2" : name }
}

/// The table of supported events.
public enum EventCatalog {
    /// Every supported event, ordered by id.
    public static let all: [EventKind] = [
        EventKind(id: 2, name: "open", scope: .file, argNames: ["path", "flags"], argTypes: [.fileType, .openFlags]),
        EventKind(id: 3, name: "close", scope: .file, argNames: ["fd"], argTypes: [.int]),
        EventKind(id: 41, name: "socket", scope: .network, argNames: ["domain", "type", "protocol"], argTypes: [.socketDomain, .socketType, .int]),
        EventKind(id: 42, name: "connect", scope: .network, argNames: ["fd", "addr"], argTypes: [.int, .sockaddr]),
        EventKind(id: 43, name: "accept", scope: .network, argNames: ["fd", "addr"], argTypes: [.int, .sockaddr]),
        EventKind(id: 49, name: "bind", scope: .network, argNames: ["fd", "addr"], argTypes: [.int, .sockaddr]),
        EventKind(id: 50, name: "listen", scope: .network, argNames: ["fd", "backlog"], argTypes: [.int, .int]),
        EventKind(id: 59, name: "execve", scope: .process, argNames: ["path", "argv"], argTypes: [.fileType, .stringArray]),
        EventKind(id: 84, name: "rmdir", scope: .file, argNames: ["path"], argTypes: [.fileType]),
        EventKind(id: 87, name: "unlink", scope: .file, argNames: ["path"], argTypes: [.fileType]),
        EventKind(id: 92, name: "chown", scope: .file, argNames: ["path", "uid", "gid"], argTypes: [.fileType, .int, .int]),
        EventKind(id: 101, name: "ptrace", scope: .capabilities, argNames: ["request", "pid"], argTypes: [.ptraceRequest, .int]),
        EventKind(id: 105, name: "setuid", scope: .capabilities, argNames: ["uid"], argTypes: [.int]),
        EventKind(id: 106, name: "setgid", scope: .capabilities, argNames: ["gid"], argTypes: [.int]),
        EventKind(id: 165, name: "mount", scope: .capabilities, argNames: ["source", "target", "fstype", "flags", "data"], argTypes: [.string, .string, .string, .mountFlags, .string]),
        EventKind(id: 166, name: "umount", scope: .capabilities, argNames: ["target", "flags"], argTypes: [.string, .umountFlags]),
        EventKind(id: 257, name: "openat", scope: .file, argNames: ["dirfd", "path", "flags"], argTypes: [.int, .fileType, .openFlags]),
        EventKind(id: 260, name: "fchownat", scope: .file, argNames: ["dirfd", "path", "uid", "gid", "flags"], argTypes: [.int, .fileType, .int, .int, .int]),
        EventKind(id: 263, name: "unlinkat", scope: .file, argNames: ["dirfd", "path", "flags"], argTypes: [.int, .fileType, .unlinkatFlags]),
        EventKind(id: 322, name: "execveat", scope: .process, argNames: ["dirfd", "path", "argv", "flags"], argTypes: [.int, .fileType, .stringArray, .execFlags]),
    ]

    /// Dense lookup by id: the hot path calls ``kind(id:)`` for every record.
    private static let byID: [EventKind?] = {
        var table = [EventKind?](repeating: nil, count: 512)
        for kind in all { table[Int(kind.id)] = kind }
        return table
    }()

    private static let byName: [String: EventKind] = {
        var names: [String: EventKind] = [:]
        for kind in all { names[kind.name] = kind }
        names["umount2"] = names["umount"]
        return names
    }()

    /// The event with this wire id, or nil when it is not one of ours.
    @inlinable
    public static func kind(id: UInt32) -> EventKind? {
        id < 512 ? _lookup(id) : nil
    }

    @usableFromInline
    static func _lookup(_ id: UInt32) -> EventKind? { byID[Int(id)] }

    /// The event with this name (`umount2` is accepted for `umount`).
    public static func kind(named name: String) -> EventKind? { byName[name] }

    /// Resolves a name or a decimal id, as pipeline files write them.
    public static func resolve(_ token: String) -> EventKind? {
        if let id = UInt32(token) { return kind(id: id) }
        return kind(named: token)
    }
}
