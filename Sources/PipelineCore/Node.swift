#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The machine a record comes from: its `node` key (SPEC section 3), so
/// that streams merged from a fleet say where each event happened.
///
/// A record carries a small number, not a string: names are interned once
/// per process in one table, so that stamping a record costs a store, and
/// the encoder copies the name's JSON bytes, prepared when it was interned.
/// Two `NodeID`s are equal exactly when their names are.
public struct NodeID: Hashable, Sendable, CustomStringConvertible {
    /// The index of the name in the process's table.
    public let rawValue: UInt32

    /// The node called `name`, interned on first use (any text; the encoder escapes it).
    public init(_ name: String) {
        rawValue = NodeTable.shared.intern(name)
    }

    /// The name as records carry it.
    public var name: String { NodeTable.shared.name(rawValue) }

    public var description: String { name }

    /// This machine, by its host name (`gethostname`): the node of every
    /// record that a pipeline without `settings.node` makes.
    public static let host = NodeID(NodeTable.hostName)
}

/// The process's node names, append-only. Readers on the hot path take a
/// ``Snapshot`` (one lock per batch, not per record).
final class NodeTable: Sendable {
    static let shared = NodeTable()

    /// The names' JSON string bytes (quoted and escaped), by id; replaced,
    /// never changed, when a name is added.
    ///
    /// The bytes are also laid end to end in memory of the snapshot's own
    /// (``bytes``, with each name's place in ``spans``), which the encoder
    /// reads through plain pointers: an array of arrays costs a retain and
    /// a release of the inner array on every record.
    final class Snapshot: @unchecked Sendable {
        let names: [String]
        let json: [[UInt8]]
        /// Every name's JSON bytes, in id order; lives as long as the snapshot.
        let bytes: UnsafeMutablePointer<UInt8>
        /// Each id's place in ``bytes`` (`count` of them).
        let spans: UnsafeMutablePointer<Span>
        var count: Int { json.count }

        init(names: [String], json: [[UInt8]]) {
            self.names = names
            self.json = json
            let total = json.reduce(0) { $0 + $1.count }
            bytes = .allocate(capacity: max(total, 1))
            spans = .allocate(capacity: max(json.count, 1))
            var offset = 0
            for (id, name) in json.enumerated() {
                name.withUnsafeBufferPointer { (bytes + offset).initialize(from: $0.baseAddress!, count: $0.count) }
                (spans + id).initialize(to: Span(start: Int32(offset), count: Int32(name.count)))
                offset += name.count
            }
        }

        deinit {
            bytes.deallocate()
            spans.deallocate()
        }
    }

    private let lock = ConditionLock()
    // Guarded by `lock`.
    private nonisolated(unsafe) var ids: [String: UInt32] = [:]
    private nonisolated(unsafe) var current = Snapshot(names: [], json: [])

    func intern(_ name: String) -> UInt32 {
        lock.withLock {
            if let id = ids[name] { return id }
            let id = UInt32(current.names.count)
            ids[name] = id
            current = Snapshot(names: current.names + [name], json: current.json + [Self.quoted(name)])
            return id
        }
    }

    func name(_ id: UInt32) -> String {
        lock.withLock { Int(id) < current.names.count ? current.names[Int(id)] : "" }
    }

    /// Every name interned so far.
    var snapshot: Snapshot { lock.withLock { current } }

    /// `"name"` as JSON (RFC 8259 escapes; invalid UTF-8 cannot occur in a String).
    static func quoted(_ name: String) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(ascii: "\"")]
        for byte in name.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): bytes += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: bytes += Array("\\n".utf8)
            case 0x0D: bytes += Array("\\r".utf8)
            case 0x09: bytes += Array("\\t".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes += Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
        return bytes
    }

    /// This machine's host name, or `localhost` if it has none.
    static let hostName: String = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return name.isEmpty ? "localhost" : name
    }()
}
