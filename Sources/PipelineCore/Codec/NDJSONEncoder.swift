/// Encodes records as NDJSON lines, exactly as docs/event-record.md fixes them.
///
/// An event line has the keys `time, node, ktime_ns, event, event_id, scope,
/// retval, result, pid, ppid, host_pid, host_ppid, uid, pid_ns, mnt_ns, origin,
/// comm, args` in that order; a lost record has `time, node, event ("lost"),
/// count, where, cpu`, with `cpu` null where no CPU applies, and `stage` last
/// when the record names the stage that lost the events (`where: sink`). `time` is RFC 3339 UTC with nine fractional
/// digits. Strings are escaped per RFC 8259; a comm that is not UTF-8 has each
/// bad sequence replaced by U+FFFD. Flags print symbolically (see
/// ``FlagKind/symbolic(_:)``), an unreadable argument as `null`.
///
/// The encoder appends to the caller's buffer: it grows it by a chunk, writes
/// lines in place while an upper bound of each line's size still fits, and
/// trims the rest, so encoding costs no allocation of its own. An event whose id is not in ``EventCatalog`` (only
/// possible for a hand-built record) prints `"event":"unknown"`, scope
/// `"unknown"` and arguments named `arg0`, `arg1`, ...
public struct NDJSONEncoder: Sendable {
    private let tables: EncoderTables

    /// An encoder; cheap to create (the name tables are built once per process).
    public init() { tables = EncoderTables.shared }

    /// Appends one line, ending in `\n`, to `buffer`.
    public func encode(_ record: PipelineRecord, into buffer: inout [UInt8]) {
        encode(CollectionOfOne(record), into: &buffer)
    }

    /// Appends a line for every record of the batch.
    public func encode(_ batch: EventBatch, into buffer: inout [UInt8]) {
        encode(batch.records, into: &buffer)
    }

    /// Appends a line for every record of `records`.
    public func encode(_ records: [PipelineRecord], into buffer: inout [UInt8]) {
        encode(records[...] as ArraySlice, into: &buffer)
    }

    /// Grows `buffer` by a chunk of room, writes records into it while each
    /// still fits (a record that does not is rolled back and starts the next
    /// chunk, sized to hold it), then trims what was not used.
    ///
    /// Records are borrowed by index from the collection, which keeps them
    /// alive: iterating, or reading through an unsafe pointer, makes the
    /// optimizer copy each record and retain its strings.
    private func encode<Records: RandomAccessCollection<PipelineRecord>>(
        _ records: Records, into buffer: inout [UInt8]
    ) {
        var index = records.startIndex
        var clock = LineCache()
        var stalled = false
        while index != records.endIndex {
            let start = buffer.count
            // Room for about the records left (600 bytes is a generous line),
            // at most a chunk, and at least the next record's bound.
            let left = records.distance(from: index, to: records.endIndex)
            var room = Swift.max(Swift.min(EncoderTables.chunkBytes, left * 600), tables.bound(records, index, cache: &clock))
            // The bound is exact by construction; should it ever be short, grow
            // instead of looping without progress.
            if stalled { room *= 4 }
            EncoderTables.grow(&buffer, by: room)
            let before = index
            let written = buffer.withUnsafeMutableBufferPointer { output in
                let base = output.baseAddress! + start
                var writer = ByteWriter(base)
                let limit = base + room
                while index != records.endIndex, tables.write(records, index, to: &writer, limit: limit, clock: &clock) {
                    records.formIndex(after: &index)
                }
                return writer.cursor - base
            }
            buffer.removeLast(room - written)
            stalled = index == before
        }
    }

    /// Writes lines for `records[start...]` into `output` from its start, as
    /// many as fit whole (by each record's upper bound), and says how many
    /// records that was and how many bytes they took. For a caller that
    /// owns a reusable buffer: nothing is allocated or zero-filled first.
    /// No record is written (0, 0) when the first one's bound exceeds
    /// `output`; encode that one into an array instead.
    public func encode(
        _ records: [PipelineRecord], from start: Int, into output: UnsafeMutableRawBufferPointer
    ) -> (records: Int, bytes: Int) {
        guard start < records.count, let base = output.baseAddress, output.count > 0 else { return (0, 0) }
        let origin = base.assumingMemoryBound(to: UInt8.self)
        var writer = ByteWriter(origin)
        let limit = origin + output.count
        var clock = LineCache()
        var index = start
        records.withUnsafeBufferPointer { records in
            while index < records.count, tables.write(records, index, to: &writer, limit: limit, clock: &clock) {
                index += 1
            }
        }
        return (index - start, writer.cursor - origin)
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
    /// Where in ``pool`` the 256 octets' text starts: "0", "1", ... "255",
    /// each padded to 4 bytes (see ``ByteWriter/ipv4(_:octets:)``).
    let octetsStart: Int
    /// Upper bound of an event line up to `"args":{` (466 bytes with a comm
    /// of 16 bytes that each escape to six).
    let fixedBound = 480
    /// Upper bound of a lost record's line.
    static let lostBound = 160
    /// The room an encode call adds to its buffer at a time.
    static let chunkBytes = 256 * 1024

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
        octetsStart = pool.count
        for octet in 0..<256 {
            let text = Array(String(octet).utf8)
            pool += text + [UInt8](repeating: UInt8(ascii: " "), count: 4 - text.count)
        }
        eventSpans = events
        argKeySpans = keys
        self.pool = pool
    }

    // MARK: Sizing

    /// 16 KiB of zeros, appended in pieces to grow an output buffer by a
    /// memcpy rather than element by element.
    private static let zeros = [UInt8](repeating: 0, count: 16_384)

    /// Appends `count` zero bytes to `buffer` (room the writer then fills).
    static func grow(_ buffer: inout [UInt8], by count: Int) {
        var remaining = count
        zeros.withUnsafeBufferPointer { zeros in
            while remaining > 0 {
                let piece = min(remaining, zeros.count)
                buffer.append(contentsOf: UnsafeBufferPointer(rebasing: zeros[0..<piece]))
                remaining -= piece
            }
        }
    }

    /// An upper bound of the bytes ``write(_:_:to:limit:clock:)`` produces for
    /// `records[index]` (read piece by piece, as there).
    func bound<Records: RandomAccessCollection<PipelineRecord>>(_ records: Records, _ index: Records.Index, cache: inout LineCache) -> Int {
        let argumentCount: Int
        switch records[index] {
        case .lost(let lost): return lostBound(lost, cache: &cache)
        case .event(let event): argumentCount = event.args.count
        }
        var total = fixedBound + cache.nodeLength(records[index].node.rawValue)
        for position in 0..<argumentCount {
            total += 32 + bound(of: records[index].argument(at: position))
        }
        return total
    }

    /// An upper bound of a lost record's line.
    private func lostBound(_ lost: LostRecord, cache: inout LineCache) -> Int {
        EncoderTables.lostBound + lost.site.rawValue.utf8.count + cache.nodeLength(lost.node.rawValue)
            + (lost.stage.map { 12 + 6 * $0.utf8.count } ?? 0)
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

    /// Writes `records[index]` if an upper bound of its line fits before
    /// `limit`; otherwise leaves `writer` where it was and returns false.
    ///
    /// The record is read where it lies, piece by piece, never bound as a
    /// whole across a call the optimizer cannot see into: that would make it
    /// copy the record (about 240 bytes) and retain and release every string
    /// in it. The head of an event line is written from its plain fields;
    /// each argument is copied out on its own (cheap) before it is written.
    func write<Records: RandomAccessCollection<PipelineRecord>>(
        _ records: Records, _ index: Records.Index, to writer: inout ByteWriter,
        limit: UnsafeMutablePointer<UInt8>, clock: inout LineCache
    ) -> Bool {
        let lineStart = writer.cursor
        guard let head = records[index].head else {
            guard case .lost(let lost) = records[index] else { return false }
            guard limit - writer.cursor >= lostBound(lost, cache: &clock) else { return false }
            write(lost, to: &writer, clock: &clock)
            return true
        }
        guard limit - writer.cursor >= fixedBound + clock.nodeLength(head.node) else { return false }
        writeHead(head, to: &writer, clock: &clock)
        let argumentCount = head.argumentCount
        let eventID = head.eventID
        let fits = pool.withUnsafeBufferPointer { pool in
            let poolBase = pool.baseAddress!
            let known = eventID < 512 && eventSpans[Int(eventID)].count > 0
            for position in 0..<argumentCount {
                let argument = records[index].argument(at: position)
                // The key, its separator and the closing `}}\n` are within the 32.
                guard limit - writer.cursor >= 32 + bound(of: argument) else { return false }
                if position > 0 { writer.byte(UInt8(ascii: ",")) }
                let key = known ? argKeySpans[Int(eventID) * 6 + position] : .empty
                if key.count > 0 {
                    writer.bytes(poolBase + Int(key.start), Int(key.count))
                } else {
                    writer.literal("\"arg")
                    writer.decimal(UInt64(position))
                    writer.literal("\":")
                }
                write(argument, to: &writer, pool: poolBase)
            }
            return true
        }
        guard fits else {
            writer.cursor = lineStart
            return false
        }
        writer.literal("}}\n")
        return true
    }

    private func write(_ lost: LostRecord, to writer: inout ByteWriter, clock: inout LineCache) {
        writer.literal("{\"time\":\"")
        writeTime(lost.timeNs, to: &writer, clock: &clock)
        writer.literal("\",\"node\":")
        clock.writeNode(lost.node.rawValue, to: &writer)
        writer.literal(",\"event\":\"lost\",\"count\":")
        writer.decimal(lost.count)
        writer.literal(",\"where\":\"")
        // A site is a short word of a-z and _: nothing to escape.
        for byte in lost.site.rawValue.utf8 { writer.byte(byte) }
        // Every key is always present: `cpu` is null where no CPU applies,
        // so that a consumer's `.cpu` never meets a missing key.
        writer.literal("\",\"cpu\":")
        if let cpu = lost.cpu {
            writer.decimal(Int64(cpu))
        } else {
            writer.literal("null")
        }
        if let stage = lost.stage {
            writer.literal(",\"stage\":")
            writeString(stage, to: &writer)
        }
        writer.literal("}\n")
    }

    /// An event line up to and including `"args":{`.
    private func writeHead(_ event: EventHead, to writer: inout ByteWriter, clock: inout LineCache) {
        pool.withUnsafeBufferPointer { pool in
            let poolBase = pool.baseAddress!
            writer.literal("{\"time\":\"")
            writeTime(event.timeNs, to: &writer, clock: &clock)
            writer.literal("\",\"node\":")
            clock.writeNode(event.node, to: &writer)
            writer.literal(",\"ktime_ns\":")
            writer.decimal(event.ktimeNs)
            if event.eventID < 512 && eventSpans[Int(event.eventID)].count > 0 {
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
            // The process's part of the line (its ids, origin and comm) is
            // the same for the next records of the same task: copied from
            // the cache when it is there, written and kept otherwise.
            let process = ProcessKey(event)
            if clock.copyProcess(process, to: &writer) { return }
            let segmentStart = writer.cursor
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
            writer.literal(event.pidNamespace != 0 && event.mountNamespace != 0 ? ",\"origin\":\"container\",\"comm\":\"" : ",\"origin\":\"host\",\"comm\":\"")
            writer.comm(event.comm)
            writer.literal("\",\"args\":{")
            clock.keepProcess(process, from: segmentStart, to: writer.cursor)
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
                writer.ipv4(ip, octets: pool + octetsStart)
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

    /// `yyyy-MM-ddTHH:mm:ss.nnnnnnnnnZ` (30 bytes). The text up to the
    /// seconds is kept in `clock` and reused while records stay in one second.
    private func writeTime(_ epochNs: Int64, to writer: inout ByteWriter, clock: inout LineCache) {
        var seconds = epochNs / 1_000_000_000
        var nanos = Int(epochNs % 1_000_000_000)
        if nanos < 0 {
            nanos += 1_000_000_000
            seconds -= 1
        }
        if seconds != clock.second {
            clock.second = seconds
            withUnsafeMutableBytes(of: &clock.text) { raw in
                var text = ByteWriter(raw.baseAddress!.assumingMemoryBound(to: UInt8.self))
                let time = UTCDateTime(epochNs: seconds * 1_000_000_000)
                text.twoDigits(time.year / 100)
                text.twoDigits(time.year % 100)
                text.byte(UInt8(ascii: "-"))
                text.twoDigits(time.month)
                text.byte(UInt8(ascii: "-"))
                text.twoDigits(time.day)
                text.byte(UInt8(ascii: "T"))
                text.twoDigits(time.hour)
                text.byte(UInt8(ascii: ":"))
                text.twoDigits(time.minute)
                text.byte(UInt8(ascii: ":"))
                text.twoDigits(time.second)
                text.byte(UInt8(ascii: "."))
            }
        }
        withUnsafeBytes(of: clock.text) { writer.bytes(UnsafeRawBufferPointer(rebasing: $0[0..<20])) }
        writer.twoDigits(nanos / 10_000_000)
        writer.twoDigits(nanos / 100_000 % 100)
        writer.twoDigits(nanos / 1_000 % 100)
        writer.twoDigits(nanos / 10 % 100)
        writer.byte(UInt8(truncatingIfNeeded: 48 + nanos % 10))
        writer.byte(UInt8(ascii: "Z"))
    }
}

/// What one encode call reuses from line to line: the date and time text of
/// the last second written (`yyyy-MM-ddTHH:mm:ss.`, 20 bytes), so a batch of
/// records in one second formats its date once, and the node names' JSON
/// bytes, taken from the node table once per call (again only if a record
/// names a node interned since). The names are read through the snapshot's
/// pointers, which the cache's reference keeps valid: nothing is retained
/// per record.
struct LineCache {
    var second = Int64.min
    var text: (UInt64, UInt64, UInt64) = (0, 0, 0)
    private var processes = ProcessSegments()
    private var nodes: NodeTable.Snapshot
    private var nodeBytes: UnsafePointer<UInt8>
    private var nodeSpans: UnsafePointer<Span>
    private var nodeCount: Int

    init() {
        nodes = NodeTable.shared.snapshot
        nodeBytes = UnsafePointer(nodes.bytes)
        nodeSpans = UnsafePointer(nodes.spans)
        nodeCount = nodes.count
    }

    /// Takes the table's current snapshot (a node was interned since).
    private mutating func refresh() {
        nodes = NodeTable.shared.snapshot
        nodeBytes = UnsafePointer(nodes.bytes)
        nodeSpans = UnsafePointer(nodes.spans)
        nodeCount = nodes.count
    }

    /// Copies the process part of a line written earlier for `key`; false when there is none.
    @inline(__always)
    mutating func copyProcess(_ key: ProcessKey, to writer: inout ByteWriter) -> Bool {
        processes.copy(key, to: &writer)
    }

    /// Keeps the process part just written for `key`.
    @inline(__always)
    mutating func keepProcess(_ key: ProcessKey, from start: UnsafeMutablePointer<UInt8>, to end: UnsafeMutablePointer<UInt8>) {
        processes.keep(key, from: start, to: end)
    }

    /// The length of node `id`'s JSON bytes (quoted and escaped).
    @inline(__always)
    mutating func nodeLength(_ id: UInt32) -> Int {
        if Int(id) >= nodeCount { refresh() }
        return Int(id) < nodeCount ? Int(nodeSpans[Int(id)].count) : 2
    }

    @inline(__always)
    mutating func writeNode(_ id: UInt32, to writer: inout ByteWriter) {
        if Int(id) >= nodeCount { refresh() }
        guard Int(id) < nodeCount else { return writer.literal("\"\"") }
        let span = nodeSpans[Int(id)]
        writer.bytes(nodeBytes + Int(span.start), Int(span.count))
    }
}

extension PipelineRecord {
    /// An event's plain fields; nil for a lost record. Read from the record
    /// where it lies (`self` is borrowed): matching on a record fetched
    /// from a collection would copy all of it first (about 240 bytes, and
    /// a retain and release of every string in its arguments).
    @inline(__always)
    var head: EventHead? {
        guard case .event(let event) = self else { return nil }
        return EventHead(event)
    }

    /// An event's argument at `position`, copied out alone (`.null` for a
    /// lost record); the record is read in place, as for ``head``.
    @inline(__always)
    func argument(at position: Int) -> Argument {
        guard case .event(let event) = self else { return .null }
        return event.args[position]
    }
}

/// What the process's part of an event line depends on: the ids of
/// `"pid"` to `"mnt_ns"` (origin follows from the namespaces) and the comm.
struct ProcessKey: Equatable {
    var pid, ppid, hostPid, hostPpid, uid, pidNamespace, mountNamespace: UInt32
    var comm: (UInt64, UInt64)

    @inline(__always)
    init(_ event: EventHead) {
        pid = event.pid
        ppid = event.ppid
        hostPid = event.hostPid
        hostPpid = event.hostPpid
        uid = event.uid
        pidNamespace = event.pidNamespace
        mountNamespace = event.mountNamespace
        comm = event.comm.bytes
    }

    /// No task has it: a hole in the cache.
    static let none = ProcessKey(empty: ())
    private init(empty: ()) {
        pid = .max; ppid = .max; hostPid = .max; hostPpid = .max; uid = .max; pidNamespace = .max; mountNamespace = .max
        comm = (.max, .max)
    }

    @inline(__always)
    static func == (lhs: ProcessKey, rhs: ProcessKey) -> Bool {
        lhs.hostPid == rhs.hostPid && lhs.pid == rhs.pid && lhs.ppid == rhs.ppid && lhs.hostPpid == rhs.hostPpid
            && lhs.uid == rhs.uid && lhs.pidNamespace == rhs.pidNamespace && lhs.mountNamespace == rhs.mountNamespace
            && lhs.comm.0 == rhs.comm.0 && lhs.comm.1 == rhs.comm.1
    }
}

/// The last process parts written, four of them, by host pid: the bytes
/// from `","pid":` to `"args":{` of a line, at most ``capacity`` of them
/// (a longer one, a comm full of escapes, is written each time).
struct ProcessSegments {
    static let capacity = 320
    static let slots = 4
    private var keys: (ProcessKey, ProcessKey, ProcessKey, ProcessKey) = (.none, .none, .none, .none)
    private var lengths: (Int, Int, Int, Int) = (0, 0, 0, 0)
    /// `slots` × `capacity` bytes.
    private var bytes: (Storage, Storage, Storage, Storage) = (Storage(), Storage(), Storage(), Storage())

    struct Storage {
        var a = SIMD64<UInt8>(), b = SIMD64<UInt8>(), c = SIMD64<UInt8>(), d = SIMD64<UInt8>(), e = SIMD64<UInt8>()
    }

    @inline(__always)
    private static func slot(_ key: ProcessKey) -> Int { Int(key.hostPid & 3) }

    /// Copies the part kept for `key`; false when there is none.
    @inline(__always)
    mutating func copy(_ key: ProcessKey, to writer: inout ByteWriter) -> Bool {
        let slot = Self.slot(key)
        let matches = withUnsafeBytes(of: &keys) { $0.load(fromByteOffset: slot * MemoryLayout<ProcessKey>.stride, as: ProcessKey.self) } == key
        guard matches else { return false }
        let length = withUnsafeBytes(of: &lengths) { $0.load(fromByteOffset: slot * MemoryLayout<Int>.stride, as: Int.self) }
        withUnsafeBytes(of: &bytes) { raw in
            writer.long(raw.baseAddress! + slot * MemoryLayout<Storage>.stride, length)
        }
        return true
    }

    /// Keeps the part just written (`start..<end`) for `key`.
    @inline(__always)
    mutating func keep(_ key: ProcessKey, from start: UnsafeMutablePointer<UInt8>, to end: UnsafeMutablePointer<UInt8>) {
        let length = end - start
        guard length <= Self.capacity else { return }
        let slot = Self.slot(key)
        withUnsafeMutableBytes(of: &keys) { $0.storeBytes(of: key, toByteOffset: slot * MemoryLayout<ProcessKey>.stride, as: ProcessKey.self) }
        withUnsafeMutableBytes(of: &lengths) { $0.storeBytes(of: length, toByteOffset: slot * MemoryLayout<Int>.stride, as: Int.self) }
        withUnsafeMutableBytes(of: &bytes) { raw in
            (raw.baseAddress! + slot * MemoryLayout<Storage>.stride).copyMemory(from: start, byteCount: length)
        }
    }
}

/// The plain fields of an event (no strings, nothing to retain), copied out
/// of a record before its line is written.
struct EventHead {
    var timeNs: Int64
    var node: UInt32
    var ktimeNs: UInt64
    var eventID: UInt32
    var retval: Int64
    var pid, ppid, hostPid, hostPpid, uid, pidNamespace, mountNamespace: UInt32
    var comm: Comm
    var argumentCount: Int

    @inline(__always)
    init(_ event: SyscallEvent) {
        timeNs = event.timeNs
        node = event.node.rawValue
        ktimeNs = event.ktimeNs
        eventID = event.eventID
        retval = event.retval
        pid = event.pid
        ppid = event.ppid
        hostPid = event.hostPid
        hostPpid = event.hostPpid
        uid = event.uid
        pidNamespace = event.pidNamespace
        mountNamespace = event.mountNamespace
        comm = event.comm
        argumentCount = event.args.count
    }
}
