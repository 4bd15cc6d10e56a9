/// The typed event model of docs/event-record.md.

/// A decoded syscall event: the context header and its typed arguments.
///
/// A value type with no per-event heap allocation beyond what its strings need
/// (the arguments are stored inline, see ``Arguments``).
public struct SyscallEvent: Sendable, Equatable {
    /// Wall-clock time, nanoseconds since the Unix epoch (UTC).
    public var timeNs: Int64
    /// The kernel's monotonic clock when the event was built (`bpf_ktime_get_ns`).
    public var ktimeNs: UInt64
    /// The wire event id (the x86-64 syscall number).
    public var eventID: UInt32
    public var retval: Int64
    /// pid and ppid as the task's own pid namespace sees them: equal to
    /// ``hostPid`` and ``hostPpid`` in the init pid namespace; in a container
    /// the namespace-local ids, `ppid` 0 for a parent outside the namespace.
    public var pid: UInt32
    public var ppid: UInt32
    public var hostPid: UInt32
    public var hostPpid: UInt32
    public var uid: UInt32
    /// pid and mount namespace ids (0 in the init pid namespace).
    public var pidNamespace: UInt32
    public var mountNamespace: UInt32
    public var comm: Comm
    public var args: Arguments

    public init(
        timeNs: Int64, ktimeNs: UInt64, eventID: UInt32, retval: Int64,
        pid: UInt32 = 0, ppid: UInt32 = 0, hostPid: UInt32, hostPpid: UInt32, uid: UInt32,
        pidNamespace: UInt32 = 0, mountNamespace: UInt32 = 0, comm: Comm, args: Arguments
    ) {
        self.timeNs = timeNs
        self.ktimeNs = ktimeNs
        self.eventID = eventID
        self.retval = retval
        self.pid = pid
        self.ppid = ppid
        self.hostPid = hostPid
        self.hostPpid = hostPpid
        self.uid = uid
        self.pidNamespace = pidNamespace
        self.mountNamespace = mountNamespace
        self.comm = comm
        self.args = args
    }

    /// The event's kind, nil for an id pipelined does not know (records with
    /// such ids are rejected by the decoders, so this is non-nil in practice).
    @inlinable public var kind: EventKind? { EventCatalog.kind(id: eventID) }

    /// `container` when both namespace ids are set, else `host` (docs/event-record.md).
    @inlinable public var isContainer: Bool { pidNamespace != 0 && mountNamespace != 0 }

    /// True when the syscall succeeded (`retval >= 0`).
    @inlinable public var succeeded: Bool { retval >= 0 }
}

/// A task's `comm`, up to 16 bytes as the kernel keeps it, stored inline.
public struct Comm: Sendable, Equatable, CustomStringConvertible {
    /// The raw bytes, NUL-padded.
    public var bytes: (UInt64, UInt64)

    /// An empty comm.
    public init() { bytes = (0, 0) }

    /// Copies at most 16 bytes, stopping at the first NUL.
    public init(_ string: String) {
        self.init()
        var utf8 = Array(string.utf8.prefix(16))
        if let nul = utf8.firstIndex(of: 0) { utf8.removeSubrange(nul...) }
        withUnsafeMutableBytes(of: &bytes) { raw in
            for (index, byte) in utf8.enumerated() { raw[index] = byte }
        }
    }

    /// Copies 16 raw bytes (the wire's `comm` field); bytes after a NUL are cleared.
    @inlinable
    public init(raw: UnsafeRawBufferPointer) {
        bytes = (0, 0)
        let count = Swift.min(raw.count, 16)
        withUnsafeMutableBytes(of: &bytes) { out in
            for index in 0..<count {
                let byte = raw[index]
                if byte == 0 { break }
                out[index] = byte
            }
        }
    }

    /// The number of bytes before the first NUL.
    public var count: Int {
        withUnsafeBytes(of: bytes) { raw in raw.firstIndex(of: 0) ?? 16 }
    }

    /// Calls `body` with the comm's bytes (without the NUL padding).
    @inlinable
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(of: bytes) { raw in
            let length = raw.firstIndex(of: 0) ?? 16
            return try body(UnsafeRawBufferPointer(rebasing: raw[0..<length]))
        }
    }

    /// The comm as text; invalid UTF-8 is repaired.
    public var description: String {
        withBytes { String(decoding: $0, as: UTF8.self) }
    }

    public static func == (lhs: Comm, rhs: Comm) -> Bool {
        lhs.bytes.0 == rhs.bytes.0 && lhs.bytes.1 == rhs.bytes.1
    }
}

/// One typed argument value.
public enum Argument: Sendable, Equatable {
    /// An argument the kernel could not read; printed as `null`.
    case null
    case int(Int32)
    case string(String)
    /// A string array; `truncated` when the kernel cut it after 20 elements
    /// (the record then shows a final `"..."` element).
    case strings([String], truncated: Bool)
    case sockaddr(SocketAddress)
    /// A `u32` flags value, printed with the vocabulary of its kind.
    case flags(FlagKind, UInt32)
}

/// A socket address as carried by `connect`, `accept` and `bind`.
public enum SocketAddress: Sendable, Equatable {
    /// AF_INET: the address in host order (127.0.0.1 is 0x7f000001).
    case inet(address: UInt32, port: UInt16)
    /// AF_INET6: the 16 address bytes in network order.
    case inet6(address: IPv6Bytes, port: UInt16)
    /// AF_UNIX: a path, or an abstract name written with a leading `@`.
    case unix(path: String)
    /// Any other family, by number (0 is AF_UNSPEC, also a NULL address).
    case other(family: UInt16)
}

/// 16 bytes of an IPv6 address, stored inline.
public struct IPv6Bytes: Sendable, Equatable {
    public var high: UInt64
    public var low: UInt64
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Builds from 16 bytes in network order.
    public init(_ bytes: [UInt8]) {
        precondition(bytes.count == 16)
        var high: UInt64 = 0
        var low: UInt64 = 0
        for index in 0..<8 { high = high << 8 | UInt64(bytes[index]) }
        for index in 8..<16 { low = low << 8 | UInt64(bytes[index]) }
        self.init(high: high, low: low)
    }

    /// The eight 16-bit groups, most significant first.
    public var groups: [UInt16] {
        (0..<8).map { index in
            let word = index < 4 ? high : low
            return UInt16(truncatingIfNeeded: word >> (48 - 16 * UInt64(index % 4)))
        }
    }
}

/// Up to six arguments stored inline, so that an event costs no array allocation.
public struct Arguments: Sendable, Equatable, RandomAccessCollection {
    public static let capacity = 6
    @usableFromInline var a0: Argument = .null
    @usableFromInline var a1: Argument = .null
    @usableFromInline var a2: Argument = .null
    @usableFromInline var a3: Argument = .null
    @usableFromInline var a4: Argument = .null
    @usableFromInline var a5: Argument = .null
    @usableFromInline var _count: Int = 0

    /// How many arguments are set.
    @inlinable public var count: Int { _count }

    public init() {}

    public init(_ values: [Argument]) {
        precondition(values.count <= Arguments.capacity)
        for value in values { append(value) }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    /// Adds an argument; there is room for ``capacity``.
    @inlinable
    public mutating func append(_ value: Argument) {
        precondition(count < Arguments.capacity, "more than six arguments")
        _count += 1
        self[_count - 1] = value
    }

    @inlinable
    public subscript(position: Int) -> Argument {
        get {
            switch position {
            case 0: a0
            case 1: a1
            case 2: a2
            case 3: a3
            case 4: a4
            default: a5
            }
        }
        set {
            switch position {
            case 0: a0 = newValue
            case 1: a1 = newValue
            case 2: a2 = newValue
            case 3: a3 = newValue
            case 4: a4 = newValue
            default: a5 = newValue
            }
        }
    }

    public static func == (lhs: Arguments, rhs: Arguments) -> Bool {
        lhs.count == rhs.count && lhs.elementsEqual(rhs)
    }
}

/// Where events were lost (docs/event-record.md): the `where` of a `lost` record
/// and of a stage's lost counter. Open: the core declares its own sites here,
/// a stage declares the ones only it has beside it
/// (`extension LossSite { static let client = LossSite("client") }`).
/// A site is a word of `a`-`z` and `_`, at most ``maxLength`` bytes.
public struct LossSite: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// The most bytes a site's word may have.
    public static let maxLength = 32

    /// The site named `rawValue`; nil unless it is a word of `a`-`z` and `_`.
    public init?(rawValue: String) {
        let utf8 = rawValue.utf8
        guard !utf8.isEmpty, utf8.count <= Self.maxLength,
              utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || $0 == UInt8(ascii: "_") }) else { return nil }
        self.rawValue = rawValue
    }

    /// A site declared in code; `name` must be a valid site word.
    public init(_ name: StaticString) {
        guard let site = LossSite(rawValue: name.description) else { preconditionFailure("'\(name)' is not a loss site word") }
        self = site
    }

    public var description: String { rawValue }

    /// The kernel's perf or ring buffer was full.
    public static let kernel = LossSite("kernel")
    /// A sink's queue was full and set to drop.
    public static let queue = LossSite("queue")
    /// A sink could not deliver (it failed, or a broker stayed unreachable past its buffer).
    public static let sink = LossSite("sink")
}

/// A count of lost events, carried in the stream where the loss happened.
public struct LostRecord: Sendable, Equatable {
    /// Wall-clock time of the report, nanoseconds since the Unix epoch.
    public var timeNs: Int64
    public var count: UInt64
    public var site: LossSite
    /// The CPU whose kernel buffer overflowed; nil where no CPU applies.
    public var cpu: Int32?

    public init(timeNs: Int64, count: UInt64, site: LossSite, cpu: Int32? = nil) {
        self.timeNs = timeNs
        self.count = count
        self.site = site
        self.cpu = cpu
    }
}

/// One record of the stream: an event, or a count of lost events.
public enum PipelineRecord: Sendable, Equatable {
    case event(SyscallEvent)
    case lost(LostRecord)

    /// The record's wall-clock time.
    public var timeNs: Int64 {
        switch self {
        case .event(let event): event.timeNs
        case .lost(let lost): lost.timeNs
        }
    }
}

/// The unit that moves between stages.
public struct EventBatch: Sendable, Equatable {
    public var records: [PipelineRecord]

    public init(_ records: [PipelineRecord] = []) { self.records = records }

    public var count: Int { records.count }
    public var isEmpty: Bool { records.isEmpty }

    /// What losing this batch loses: its events plus the counts of the
    /// `lost` records it carries (losses already counted upstream that would
    /// otherwise vanish with it). Every place that drops a batch counts this,
    /// so that delivered + counted equals generated.
    public var lossWeight: UInt64 {
        var weight: UInt64 = 0
        for record in records {
            switch record {
            case .event: weight += 1
            case .lost(let lost): weight += lost.count
            }
        }
        return weight
    }

    /// Events only (not lost records) in this batch.
    public var eventCount: Int {
        records.reduce(0) { count, record in
            if case .event = record { return count + 1 }
            return count
        }
    }
}
