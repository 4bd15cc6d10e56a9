/// Encodes records as NDJSON lines, exactly as SPEC section 3 fixes them.
///
/// An event line has the keys `time, ktime_ns, event, event_id, scope, retval,
/// result, pid, ppid, host_pid, host_ppid, uid, pid_ns, mnt_ns, origin, comm,
/// args` in that order; a lost record has `time, event ("lost"), count, where`
/// and `cpu` when it has one. `time` is RFC 3339 UTC with nine fractional
/// digits. Strings are escaped per RFC 8259; a comm that is not UTF-8 has each
/// bad sequence replaced by U+FFFD. Flags print symbolically (see
/// ``FlagKind/symbolic(_:)``), an unreadable argument as `null`.
///
/// The encoder appends to the caller's buffer: it grows it once per record by
/// an upper bound of the line's size and writes in place, so encoding costs no
/// allocation of its own. An event whose id is not in ``EventCatalog`` (only
/// possible for a hand-built record) prints `"event":"unknown"`, scope
/// `"unknown"` and arguments named `arg0`, `arg1`, ...
public struct NDJSONEncoder: Sendable {
    private let tables: EncoderTables

    /// An encoder; cheap to create (the name tables are built once per process).
    public init() { tables = EncoderTables.shared }

    /// Appends one line, ending in `\n`, to `buffer`.
    public func encode(_ record: PipelineRecord, into buffer: inout [UInt8]) {
        let bound: Int
        switch record {
        case .event(let event): bound = tables.bound(of: event)
        case .lost: bound = 160
        }
        let start = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: bound))
        let written = buffer.withUnsafeMutableBufferPointer { output in
            let base = output.baseAddress! + start
            var writer = ByteWriter(base)
            switch record {
            case .event(let event): tables.write(event, to: &writer)
            case .lost(let lost): tables.write(lost, to: &writer)
            }
            return writer.cursor - base
        }
        buffer.removeLast(bound - written)
    }

    /// Appends a line for every record of the batch.
    public func encode(_ batch: EventBatch, into buffer: inout [UInt8]) {
        encode(batch.records[...], into: &buffer)
    }

    /// Appends a line for every record of `records`, growing `buffer` once.
    public func encode(_ records: ArraySlice<PipelineRecord>, into buffer: inout [UInt8]) {
        var bound = 0
        for record in records {
            switch record {
            case .event(let event): bound += tables.bound(of: event)
            case .lost: bound += 160
            }
        }
        let start = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: bound))
        let written = buffer.withUnsafeMutableBufferPointer { output in
            let base = output.baseAddress! + start
            var writer = ByteWriter(base)
            for record in records {
                switch record {
                case .event(let event): tables.write(event, to: &writer)
                case .lost(let lost): tables.write(lost, to: &writer)
                }
            }
            return writer.cursor - base
        }
        buffer.removeLast(bound - written)
    }

    /// The record's line as a `String` (with its `\n`); for tests and tools,
    /// not the hot path.
    public func line(_ record: PipelineRecord) -> String {
        var bytes: [UInt8] = []
        encode(record, into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// A range of ``EncoderTables/pool``.
struct Span: Sendable {
    var start: Int32
    var count: Int32
    static let empty = Span(start: 0, count: 0)
}

/// The encoder's precomputed bytes: per event id the constant run from
/// `,"event":` to `"retval":`, argument keys, errno and address family names.
/// Kept in one flat array so the hot path touches one buffer and no Strings.
final class EncoderTables: Sendable {
    static let shared = EncoderTables()

    let pool: [UInt8]
    /// Indexed by event id (below 512).
    let eventSpans: [Span]
    /// Indexed by event id * 6 + argument index: `"name":`.
    let argKeySpans: [Span]
    /// Indexed by errno number (below 532); empty where it has no name.
    let errnoSpans: [Span]
    /// Indexed by address family.
    let familySpans: [Span]
    /// Upper bound of a line's bytes that do not depend on its strings or arguments.
    let fixedBound = 480

    private init() {
        var pool: [UInt8] = []
        func add(_ text: String) -> Span {
            let span = Span(start: Int32(pool.count), count: Int32(text.utf8.count))
            pool.append(contentsOf: text.utf8)
            return span
        }
        var events = [Span](repeating: .empty, count: 512)
        var keys = [Span](repeating: .empty, count: 512 * 6)
        for kind in EventCatalog.all {
            events[Int(kind.id)] = add(
                ",\"event\":\"\(kind.name)\",\"event_id\":\(kind.id),\"scope\":\"\(kind.scope.name)\",\"retval\":")
            for (index, name) in kind.argNames.enumerated() {
                keys[Int(kind.id) * 6 + index] = add("\"\(name)\":")
            }
        }
        errnoSpans = Errno.table.map { $0.isEmpty ? .empty : add($0) }
        familySpans = FlagVocabulary.familyNames.map { add($0) }
        eventSpans = events
        argKeySpans = keys
        self.pool = pool
    }

    // MARK: Sizing

    /// An upper bound of the bytes ``write(_:to:)`` produces for `event`.
    func bound(of event: SyscallEvent) -> Int {
        var total = fixedBound
        let args = event.args
        for index in 0..<args.count {
            total += 32 + bound(of: args[index])
        }
        return total
    }

    private func bound(of argument: Argument) -> Int {
        switch argument {
        case .null, .int: return 12
        case .string(let text): return 2 + 6 * text.utf8.count
        case .strings(let list, _):
            var total = 8
            for text in list { total += 3 + 6 * text.utf8.count }
            return total
        case .sockaddr(let address):
            if case .unix(let path) = address { return 40 + 6 * path.utf8.count }
            return 100
        case .flags(let kind, _): return 2 + kind.vocabulary.maxLength
        }
    }

    // MARK: Writing

    func write(_ lost: LostRecord, to writer: inout ByteWriter) {
        writer.literal("{\"time\":\"")
        writeTime(lost.timeNs, to: &writer)
        writer.literal("\",\"event\":\"lost\",\"count\":")
        writer.decimal(lost.count)
        writer.literal(",\"where\":\"")
        switch lost.site {
        case .kernel: writer.literal("kernel")
        case .queue: writer.literal("queue")
        case .client: writer.literal("client")
        }
        writer.byte(UInt8(ascii: "\""))
        if let cpu = lost.cpu {
            writer.literal(",\"cpu\":")
            writer.decimal(Int64(cpu))
        }
        writer.literal("}\n")
    }

    func write(_ event: SyscallEvent, to writer: inout ByteWriter) {
        pool.withUnsafeBufferPointer { pool in
            let poolBase = pool.baseAddress!
            writer.literal("{\"time\":\"")
            writeTime(event.timeNs, to: &writer)
            writer.literal("\",\"ktime_ns\":")
            writer.decimal(event.ktimeNs)
            let known = event.eventID < 512 && eventSpans[Int(event.eventID)].count > 0
            if known {
                let span = eventSpans[Int(event.eventID)]
                writer.bytes(poolBase + Int(span.start), Int(span.count))
            } else {
                writer.literal(",\"event\":\"unknown\",\"event_id\":")
                writer.decimal(UInt64(event.eventID))
                writer.literal(",\"scope\":\"unknown\",\"retval\":")
            }
            writer.decimal(event.retval)
            writer.literal(",\"result\":\"")
            if event.retval >= 0 {
                writer.literal("ok")
            } else if event.retval >= -531, errnoSpans[Int(-event.retval)].count > 0 {
                let span = errnoSpans[Int(-event.retval)]
                writer.bytes(poolBase + Int(span.start), Int(span.count))
            } else {
                writer.byte(UInt8(ascii: "E"))
                writer.decimal(event.retval.magnitude)
            }
            writer.literal("\",\"pid\":")
            writer.decimal(UInt64(event.pid))
            writer.literal(",\"ppid\":")
            writer.decimal(UInt64(event.ppid))
            writer.literal(",\"host_pid\":")
            writer.decimal(UInt64(event.hostPid))
            writer.literal(",\"host_ppid\":")
            writer.decimal(UInt64(event.hostPpid))
            writer.literal(",\"uid\":")
            writer.decimal(UInt64(event.uid))
            writer.literal(",\"pid_ns\":")
            writer.decimal(UInt64(event.pidNamespace))
            writer.literal(",\"mnt_ns\":")
            writer.decimal(UInt64(event.mountNamespace))
            writer.literal(event.isContainer ? ",\"origin\":\"container\",\"comm\":\"" : ",\"origin\":\"host\",\"comm\":\"")
            event.comm.withBytes { writer.escaped(repairing: $0) }
            writer.literal("\",\"args\":{")
            let args = event.args
            for index in 0..<args.count {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                let key = known ? argKeySpans[Int(event.eventID) * 6 + index] : .empty
                if key.count > 0 {
                    writer.bytes(poolBase + Int(key.start), Int(key.count))
                } else {
                    writer.literal("\"arg")
                    writer.decimal(UInt64(index))
                    writer.literal("\":")
                }
                write(args[index], to: &writer, pool: poolBase)
            }
            writer.literal("}}\n")
        }
    }

    private func write(_ argument: Argument, to writer: inout ByteWriter, pool: UnsafePointer<UInt8>) {
        switch argument {
        case .null:
            writer.literal("null")
        case .int(let value):
            writer.decimal(Int64(value))
        case .string(let text):
            writeString(text, to: &writer)
        case .strings(let list, let truncated):
            writer.byte(UInt8(ascii: "["))
            for (index, text) in list.enumerated() {
                if index > 0 { writer.byte(UInt8(ascii: ",")) }
                writeString(text, to: &writer)
            }
            if truncated { writer.literal(list.isEmpty ? "\"...\"" : ",\"...\"") }
            writer.byte(UInt8(ascii: "]"))
        case .sockaddr(let address):
            writer.literal("{\"family\":")
            switch address {
            case .inet(let ip, let port):
                writer.literal("\"AF_INET\",\"ip\":\"")
                writer.ipv4(ip)
                writer.literal("\",\"port\":")
                writer.decimal(UInt64(port))
            case .inet6(let ip, let port):
                writer.literal("\"AF_INET6\",\"ip\":\"")
                writer.ipv6(ip)
                writer.literal("\",\"port\":")
                writer.decimal(UInt64(port))
            case .unix(let path):
                writer.literal("\"AF_UNIX\",\"path\":")
                writeString(path, to: &writer)
            case .other(let family):
                if Int(family) < familySpans.count {
                    let span = familySpans[Int(family)]
                    writer.byte(UInt8(ascii: "\""))
                    writer.bytes(pool + Int(span.start), Int(span.count))
                    writer.byte(UInt8(ascii: "\""))
                } else {
                    writer.decimal(UInt64(family))
                }
            }
            writer.byte(UInt8(ascii: "}"))
        case .flags(let kind, let value):
            writer.byte(UInt8(ascii: "\""))
            writeFlags(kind.vocabulary, value, to: &writer)
            writer.byte(UInt8(ascii: "\""))
        }
    }

    /// The same tokens as ``FlagVocabulary/format(_:)``, written in place.
    private func writeFlags(_ vocabulary: FlagVocabulary, _ value: UInt32, to writer: inout ByteWriter) {
        var first = true
        func name(_ text: String) {
            if !first { writer.byte(UInt8(ascii: "|")) }
            first = false
            var text = text
            text.withUTF8 { writer.bytes(UnsafeRawBufferPointer($0)) }
        }
        let any = vocabulary.tokens(of: value, name) { unknown in
            if !first { writer.byte(UInt8(ascii: "|")) }
            first = false
            writer.hex(unknown)
        }
        if !any { writer.byte(UInt8(ascii: "0")) }
    }

    private func writeString(_ text: String, to writer: inout ByteWriter) {
        writer.byte(UInt8(ascii: "\""))
        if text.utf8.withContiguousStorageIfAvailable({ writer.escaped(validUTF8: $0) }) == nil {
            var copy = text
            copy.withUTF8 { writer.escaped(validUTF8: $0) }
        }
        writer.byte(UInt8(ascii: "\""))
    }

    /// `yyyy-MM-ddTHH:mm:ss.nnnnnnnnnZ` (30 bytes).
    private func writeTime(_ epochNs: Int64, to writer: inout ByteWriter) {
        let time = UTCDateTime(epochNs: epochNs)
        writer.twoDigits(time.year / 100)
        writer.twoDigits(time.year % 100)
        writer.byte(UInt8(ascii: "-"))
        writer.twoDigits(time.month)
        writer.byte(UInt8(ascii: "-"))
        writer.twoDigits(time.day)
        writer.byte(UInt8(ascii: "T"))
        writer.twoDigits(time.hour)
        writer.byte(UInt8(ascii: ":"))
        writer.twoDigits(time.minute)
        writer.byte(UInt8(ascii: ":"))
        writer.twoDigits(time.second)
        writer.byte(UInt8(ascii: "."))
        let nanos = time.nanosecond
        writer.twoDigits(nanos / 10_000_000)
        writer.twoDigits(nanos / 100_000 % 100)
        writer.twoDigits(nanos / 1_000 % 100)
        writer.twoDigits(nanos / 10 % 100)
        writer.byte(UInt8(truncatingIfNeeded: 48 + nanos % 10))
        writer.byte(UInt8(ascii: "Z"))
    }
}
