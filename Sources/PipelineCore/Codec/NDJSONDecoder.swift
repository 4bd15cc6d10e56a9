/// Reads NDJSON event lines (what ``NDJSONEncoder`` writes) back into records,
/// for the `replay` source and `archive cat`.
///
/// Keys may come in any order and unknown keys are ignored. An event needs
/// `time` and `event` (or `event_id`); missing numbers read as 0 and missing
/// `args` as none. `scope`, `result` and `origin` are derived from the other
/// fields and not read back. Argument values are read by their JSON shape and
/// the event's declared types: flags from their symbols (or a number), a
/// sockaddr from its object, `null` as an unreadable argument. A string array
/// of 21 elements ending in `"..."` is one the kernel truncated.
///
/// For every record ``WireDecoder`` can produce, `decode(encode(r)) == r`,
/// except that a comm that was not valid UTF-8 comes back repaired. Records
/// built by hand can fall outside that: an unknown event id, a string array
/// marked truncated with other than 20 elements, `.other(family:)` with the
/// number of AF_UNIX, AF_INET or AF_INET6, or an argument whose case differs
/// from the event's declared type (it comes back as the declared type).
public struct NDJSONDecoder: Sendable {
    public init() {}

    /// Decodes one line (without its `\n`; trailing spaces and `\r` are allowed).
    public func decode(_ line: UnsafeRawBufferPointer) throws(NDJSONError) -> PipelineRecord {
        guard let base = line.baseAddress, line.count > 0 else {
            throw NDJSONError(message: "empty line", offset: 0)
        }
        var parser = RecordParser(JSONScanner(base: base.assumingMemoryBound(to: UInt8.self), count: line.count))
        return try parser.record()
    }

    /// Decodes one line given as text (without its `\n`).
    public func decode(_ line: some StringProtocol) throws(NDJSONError) -> PipelineRecord {
        var text = String(line)
        let result = text.withUTF8 { bytes in
            Result { () throws(NDJSONError) -> PipelineRecord in try decode(UnsafeRawBufferPointer(bytes)) }
        }
        return try result.get()
    }

    /// Decodes one line given as bytes (without its `\n`).
    public func decode(_ line: [UInt8]) throws(NDJSONError) -> PipelineRecord {
        let result = line.withUnsafeBytes { bytes in
            Result { () throws(NDJSONError) -> PipelineRecord in try decode(bytes) }
        }
        return try result.get()
    }
}

/// A line that is not a pipelined event record.
public struct NDJSONError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// Byte offset in the line where decoding failed.
    public var offset: Int

    public init(message: String, offset: Int) {
        self.message = message
        self.offset = offset
    }

    public var description: String { "\(message) (at byte \(offset))" }
}

// MARK: - JSON scanning

/// A forward reader over one line's bytes; every read is bounds-checked.
struct JSONScanner {
    let base: UnsafePointer<UInt8>
    let count: Int
    var position = 0

    init(base: UnsafePointer<UInt8>, count: Int) {
        self.base = base
        self.count = count
    }

    func fail(_ message: String, at offset: Int? = nil) -> NDJSONError {
        NDJSONError(message: message, offset: offset ?? position)
    }

    var atEnd: Bool { position >= count }

    func peek() -> UInt8? { position < count ? base[position] : nil }

    mutating func skipSpace() {
        while position < count {
            switch base[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    /// Skips space, then consumes `byte` or fails.
    mutating func expect(_ byte: UInt8) throws(NDJSONError) {
        skipSpace()
        guard position < count, base[position] == byte else {
            throw fail("expected '\(Character(Unicode.Scalar(byte)))'")
        }
        position += 1
    }

    /// Skips space, then consumes `byte` when it is next.
    mutating func take(_ byte: UInt8) -> Bool {
        skipSpace()
        if position < count, base[position] == byte {
            position += 1
            return true
        }
        return false
    }

    /// Consumes `null` when it is next.
    mutating func takeNull() -> Bool {
        skipSpace()
        if count - position >= 4, base[position] == 0x6E, base[position + 1] == 0x75,
            base[position + 2] == 0x6C, base[position + 3] == 0x6C
        {
            position += 4
            return true
        }
        return false
    }

    /// A JSON string; invalid UTF-8 inside it is repaired to U+FFFD.
    mutating func string() throws(NDJSONError) -> String {
        try expect(0x22)
        let start = position
        // Fast path: no escapes, the bytes are the text.
        while position < count {
            let byte = base[position]
            if byte == 0x22 {
                let text = String(decoding: UnsafeBufferPointer(start: base + start, count: position - start), as: UTF8.self)
                position += 1
                return text
            }
            if byte == 0x5C { break }
            if byte < 0x20 { throw fail("control character in string") }
            position += 1
        }
        var bytes = Array(UnsafeBufferPointer(start: base + start, count: position - start))
        while position < count {
            let byte = base[position]
            position += 1
            switch byte {
            case 0x22:
                return String(decoding: bytes, as: UTF8.self)
            case 0x5C:
                guard position < count else { throw fail("unterminated escape") }
                let escape = base[position]
                position += 1
                switch escape {
                case 0x22, 0x5C, 0x2F: bytes.append(escape)
                case UInt8(ascii: "n"): bytes.append(0x0A)
                case UInt8(ascii: "r"): bytes.append(0x0D)
                case UInt8(ascii: "t"): bytes.append(0x09)
                case UInt8(ascii: "b"): bytes.append(0x08)
                case UInt8(ascii: "f"): bytes.append(0x0C)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        // A high surrogate must be followed by an escaped low one.
                        guard count - position >= 6, base[position] == 0x5C, base[position + 1] == UInt8(ascii: "u")
                        else { throw fail("unpaired surrogate") }
                        position += 2
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw fail("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar < 0xE000 {
                        throw fail("unpaired surrogate")
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                    bytes.append(contentsOf: UTF8.encode(unicode)!)
                default:
                    throw fail("invalid escape", at: position - 2)
                }
            default:
                if byte < 0x20 { throw fail("control character in string", at: position - 1) }
                bytes.append(byte)
            }
        }
        throw fail("unterminated string")
    }

    private mutating func hex4() throws(NDJSONError) -> UInt32 {
        guard count - position >= 4 else { throw fail("short \\u escape") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = base[position]
            let digit: UInt32
            switch byte {
            case 0x30...0x39: digit = UInt32(byte - 0x30)
            case 0x41...0x46: digit = UInt32(byte - 0x41 + 10)
            case 0x61...0x66: digit = UInt32(byte - 0x61 + 10)
            default: throw fail("bad hex digit in \\u escape")
            }
            value = value << 4 | digit
            position += 1
        }
        return value
    }

    /// The magnitude and sign of a JSON integer (no fraction, no exponent).
    private mutating func integer() throws(NDJSONError) -> (negative: Bool, magnitude: UInt64, start: Int) {
        skipSpace()
        let start = position
        var negative = false
        if position < count, base[position] == UInt8(ascii: "-") {
            negative = true
            position += 1
        }
        let digitsStart = position
        var magnitude: UInt64 = 0
        while position < count, base[position] >= 0x30, base[position] <= 0x39 {
            let (times10, overflow1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, overflow2) = times10.addingReportingOverflow(UInt64(base[position] - 0x30))
            guard !overflow1, !overflow2 else { throw fail("number out of range", at: start) }
            magnitude = sum
            position += 1
        }
        guard position > digitsStart else { throw fail("expected a number", at: start) }
        if position < count, base[position] == UInt8(ascii: ".") || base[position] | 0x20 == UInt8(ascii: "e") {
            throw fail("expected an integer", at: start)
        }
        return (negative, magnitude, start)
    }

    mutating func int64() throws(NDJSONError) -> Int64 {
        let (negative, magnitude, start) = try integer()
        if negative {
            guard magnitude <= UInt64(Int64.max) + 1 else { throw fail("number out of range", at: start) }
            return magnitude == UInt64(Int64.max) + 1 ? Int64.min : -Int64(magnitude)
        }
        guard magnitude <= UInt64(Int64.max) else { throw fail("number out of range", at: start) }
        return Int64(magnitude)
    }

    mutating func uint64() throws(NDJSONError) -> UInt64 {
        let (negative, magnitude, start) = try integer()
        guard !negative || magnitude == 0 else { throw fail("expected a non-negative number", at: start) }
        return magnitude
    }

    mutating func uint32() throws(NDJSONError) -> UInt32 {
        skipSpace()
        let start = position
        let value = try uint64()
        guard value <= UInt64(UInt32.max) else { throw fail("number out of range", at: start) }
        return UInt32(value)
    }

    mutating func int32() throws(NDJSONError) -> Int32 {
        skipSpace()
        let start = position
        let value = try int64()
        guard let narrow = Int32(exactly: value) else { throw fail("number out of range", at: start) }
        return narrow
    }

    /// Skips any JSON value (for unknown keys).
    mutating func skipValue(depth: Int = 0) throws(NDJSONError) {
        guard depth < 64 else { throw fail("nested too deeply") }
        skipSpace()
        guard let byte = peek() else { throw fail("expected a value") }
        switch byte {
        case 0x22:
            _ = try string()
        case UInt8(ascii: "{"):
            position += 1
            if take(UInt8(ascii: "}")) { return }
            repeat {
                _ = try string()
                try expect(UInt8(ascii: ":"))
                try skipValue(depth: depth + 1)
            } while take(UInt8(ascii: ","))
            try expect(UInt8(ascii: "}"))
        case UInt8(ascii: "["):
            position += 1
            if take(UInt8(ascii: "]")) { return }
            repeat { try skipValue(depth: depth + 1) } while take(UInt8(ascii: ","))
            try expect(UInt8(ascii: "]"))
        case UInt8(ascii: "-"), 0x30...0x39:
            position += 1
            while let next = peek(), next == UInt8(ascii: "-") || next == UInt8(ascii: "+") || next == UInt8(ascii: ".")
                || next | 0x20 == UInt8(ascii: "e") || (next >= 0x30 && next <= 0x39)
            {
                position += 1
            }
        default:
            for word in ["true", "false", "null"] where count - position >= word.utf8.count {
                if word.utf8.elementsEqual(UnsafeBufferPointer(start: base + position, count: word.utf8.count)) {
                    position += word.utf8.count
                    return
                }
            }
            throw fail("expected a value")
        }
    }
}

// MARK: - Records

/// Reads one record object with a ``JSONScanner``.
struct RecordParser {
    var scanner: JSONScanner

    init(_ scanner: JSONScanner) { self.scanner = scanner }

    mutating func record() throws(NDJSONError) -> PipelineRecord {
        var timeNs: Int64?
        var ktimeNs: UInt64 = 0
        var eventName: String?
        var eventNameOffset = 0
        var eventID: UInt32?
        var eventIDOffset = 0
        var retval: Int64 = 0
        var pid: UInt32 = 0, ppid: UInt32 = 0, hostPid: UInt32 = 0, hostPpid: UInt32 = 0, uid: UInt32 = 0
        var pidNamespace: UInt32 = 0, mountNamespace: UInt32 = 0
        var comm = Comm()
        var argsOffset: Int?
        var count: UInt64?
        var site: LossSite?
        var cpu: Int32?

        try scanner.expect(UInt8(ascii: "{"))
        if !scanner.take(UInt8(ascii: "}")) {
            repeat {
                let key = try scanner.string()
                try scanner.expect(UInt8(ascii: ":"))
                scanner.skipSpace()
                let valueOffset = scanner.position
                switch key {
                case "time": timeNs = try time()
                case "ktime_ns": ktimeNs = try scanner.uint64()
                case "event":
                    eventName = try scanner.string()
                    eventNameOffset = valueOffset
                case "event_id":
                    eventID = try scanner.uint32()
                    eventIDOffset = valueOffset
                case "retval": retval = try scanner.int64()
                case "pid": pid = try scanner.uint32()
                case "ppid": ppid = try scanner.uint32()
                case "host_pid": hostPid = try scanner.uint32()
                case "host_ppid": hostPpid = try scanner.uint32()
                case "uid": uid = try scanner.uint32()
                case "pid_ns": pidNamespace = try scanner.uint32()
                case "mnt_ns": mountNamespace = try scanner.uint32()
                case "comm": comm = Comm(try scanner.string())
                case "args":
                    // Read once the event is known; the key may come before `event`.
                    argsOffset = valueOffset
                    try scanner.skipValue()
                case "count": count = try scanner.uint64()
                case "where":
                    let name = try scanner.string()
                    guard let parsed = LossSite(rawValue: name) else {
                        throw scanner.fail("unknown loss site '\(name)'", at: valueOffset)
                    }
                    site = parsed
                case "cpu":
                    if !scanner.takeNull() { cpu = try scanner.int32() }
                default:
                    try scanner.skipValue()
                }
            } while scanner.take(UInt8(ascii: ","))
            try scanner.expect(UInt8(ascii: "}"))
        }
        scanner.skipSpace()
        guard scanner.atEnd else { throw scanner.fail("unexpected bytes after the record") }
        guard let timeNs else { throw scanner.fail("missing 'time'", at: 0) }

        if eventName == "lost" {
            guard let count else { throw scanner.fail("lost record without 'count'", at: 0) }
            return .lost(LostRecord(timeNs: timeNs, count: count, site: site ?? .kernel, cpu: cpu))
        }
        let kind: EventKind
        if let eventName {
            guard let named = EventCatalog.kind(named: eventName) else {
                throw scanner.fail("unknown event '\(eventName)'", at: eventNameOffset)
            }
            if let eventID, eventID != named.id {
                throw scanner.fail("event_id \(eventID) is not '\(eventName)'", at: eventIDOffset)
            }
            kind = named
        } else if let eventID {
            guard let byID = EventCatalog.kind(id: eventID) else {
                throw scanner.fail("unknown event id \(eventID)", at: eventIDOffset)
            }
            kind = byID
        } else {
            throw scanner.fail("missing 'event'", at: 0)
        }
        var args = Arguments()
        if let argsOffset {
            scanner.position = argsOffset
            args = try arguments(of: kind)
        }
        return .event(SyscallEvent(
            timeNs: timeNs, ktimeNs: ktimeNs, eventID: kind.id, retval: retval, pid: pid, ppid: ppid,
            hostPid: hostPid, hostPpid: hostPpid, uid: uid, pidNamespace: pidNamespace,
            mountNamespace: mountNamespace, comm: comm, args: args
        ))
    }

    /// RFC 3339: `yyyy-MM-ddTHH:mm:ss`, an optional fraction (up to 9 digits),
    /// then `Z` or `±HH:mm`.
    mutating func time() throws(NDJSONError) -> Int64 {
        scanner.skipSpace()
        let start = scanner.position
        let text = try scanner.string()
        guard let value = RecordParser.parseTime(Array(text.utf8)) else {
            throw scanner.fail("invalid time '\(text)'", at: start)
        }
        return value
    }

    static func parseTime(_ bytes: [UInt8]) -> Int64? {
        var index = 0
        func digits(_ width: Int) -> Int? {
            guard bytes.count - index >= width else { return nil }
            var value = 0
            for _ in 0..<width {
                let byte = bytes[index]
                guard byte >= 0x30 && byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
                index += 1
            }
            return value
        }
        func literal(_ byte: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] | 0x20 == byte | 0x20 else { return false }
            index += 1
            return true
        }
        guard let year = digits(4), literal(UInt8(ascii: "-")), let month = digits(2), literal(UInt8(ascii: "-")),
            let day = digits(2), literal(UInt8(ascii: "T")), let hour = digits(2), literal(UInt8(ascii: ":")),
            let minute = digits(2), literal(UInt8(ascii: ":")), let second = digits(2)
        else { return nil }
        guard (1...12).contains(month), day >= 1, day <= 31, hour < 24, minute < 60, second < 61 else { return nil }
        var nanos = 0
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            var width = 0
            while index < bytes.count, bytes[index] >= 0x30, bytes[index] <= 0x39 {
                guard width < 9 else { return nil }
                nanos = nanos * 10 + Int(bytes[index] - 0x30)
                width += 1
                index += 1
            }
            guard width > 0 else { return nil }
            for _ in width..<9 { nanos *= 10 }
        }
        var offsetSeconds = 0
        if literal(UInt8(ascii: "Z")) {
            // UTC
        } else if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            index += 1
            guard let offsetHours = digits(2), literal(UInt8(ascii: ":")), let offsetMinutes = digits(2) else {
                return nil
            }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        } else {
            return nil
        }
        guard index == bytes.count else { return nil }
        let days = UTCDateTime.epochDays(year: year, month: month, day: day)
        let seconds = days * 86_400 + Int64(hour * 3600 + minute * 60 + second - offsetSeconds)
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (total, overflow2) = scaled.addingReportingOverflow(Int64(nanos))
        guard !overflow, !overflow2 else { return nil }
        return total
    }

    // MARK: Arguments

    /// The `args` object: each key names a position of the event's arguments.
    mutating func arguments(of kind: EventKind) throws(NDJSONError) -> Arguments {
        var values: [Argument] = Array(repeating: .null, count: Arguments.capacity)
        var used = 0
        try scanner.expect(UInt8(ascii: "{"))
        if !scanner.take(UInt8(ascii: "}")) {
            repeat {
                scanner.skipSpace()
                let keyOffset = scanner.position
                let key = try scanner.string()
                guard let index = RecordParser.argumentIndex(key, of: kind) else {
                    throw scanner.fail("'\(kind.name)' has no argument '\(key)'", at: keyOffset)
                }
                try scanner.expect(UInt8(ascii: ":"))
                let type: ArgType? = index < kind.argTypes.count ? kind.argTypes[index] : nil
                values[index] = try argument(type)
                used = max(used, index + 1)
            } while scanner.take(UInt8(ascii: ","))
            try scanner.expect(UInt8(ascii: "}"))
        }
        var args = Arguments()
        for index in 0..<used { args.append(values[index]) }
        return args
    }

    static func argumentIndex(_ key: String, of kind: EventKind) -> Int? {
        if let index = kind.argNames.firstIndex(of: key) { return index }
        // `argN`, as the encoder names arguments beyond the declared ones.
        if key.hasPrefix("arg"), let index = Int(key.dropFirst(3)), index >= 0, index < Arguments.capacity {
            return index
        }
        return nil
    }

    /// One argument value, read by its JSON shape; `type` says how to read a
    /// number or string (flags or plain).
    mutating func argument(_ type: ArgType?) throws(NDJSONError) -> Argument {
        scanner.skipSpace()
        let start = scanner.position
        if scanner.takeNull() { return .null }
        let flagKind = type?.flagKind
        switch scanner.peek() {
        case 0x22:
            let text = try scanner.string()
            if let flagKind {
                guard let value = flagKind.value(parsing: text) else {
                    throw scanner.fail("invalid flags '\(text)'", at: start)
                }
                return .flags(flagKind, value)
            }
            return .string(text)
        case UInt8(ascii: "["):
            return try stringArray()
        case UInt8(ascii: "{"):
            return .sockaddr(try sockaddr())
        default:
            if let flagKind { return .flags(flagKind, try scanner.uint32()) }
            return .int(try scanner.int32())
        }
    }

    mutating func stringArray() throws(NDJSONError) -> Argument {
        try scanner.expect(UInt8(ascii: "["))
        var elements: [String] = []
        if !scanner.take(UInt8(ascii: "]")) {
            repeat { elements.append(try scanner.string()) } while scanner.take(UInt8(ascii: ","))
            try scanner.expect(UInt8(ascii: "]"))
        }
        if elements.count == WireDecoder.maxStringArrayElements + 1, elements.last == "..." {
            elements.removeLast()
            return .strings(elements, truncated: true)
        }
        return .strings(elements, truncated: false)
    }

    mutating func sockaddr() throws(NDJSONError) -> SocketAddress {
        let start = scanner.position
        try scanner.expect(UInt8(ascii: "{"))
        var family: UInt16?
        var ip: String?
        var ipOffset = 0
        var port: UInt16 = 0
        var path: String?
        if !scanner.take(UInt8(ascii: "}")) {
            repeat {
                let key = try scanner.string()
                try scanner.expect(UInt8(ascii: ":"))
                scanner.skipSpace()
                let valueOffset = scanner.position
                switch key {
                case "family":
                    if scanner.peek() == 0x22 {
                        let name = try scanner.string()
                        guard let number = FlagVocabulary.family(named: name) else {
                            throw scanner.fail("unknown address family '\(name)'", at: valueOffset)
                        }
                        family = number
                    } else {
                        let number = try scanner.uint32()
                        guard let narrow = UInt16(exactly: number) else {
                            throw scanner.fail("address family out of range", at: valueOffset)
                        }
                        family = narrow
                    }
                case "ip":
                    ip = try scanner.string()
                    ipOffset = valueOffset
                case "port":
                    let number = try scanner.uint32()
                    guard let narrow = UInt16(exactly: number) else {
                        throw scanner.fail("port out of range", at: valueOffset)
                    }
                    port = narrow
                case "path":
                    path = try scanner.string()
                default:
                    try scanner.skipValue()
                }
            } while scanner.take(UInt8(ascii: ","))
            try scanner.expect(UInt8(ascii: "}"))
        }
        guard let family else { throw scanner.fail("address without 'family'", at: start) }
        switch family {
        case 2:
            guard let ip, let address = IPText.parseIPv4(Array(ip.utf8)) else {
                throw scanner.fail("AF_INET address needs an IPv4 'ip'", at: ip == nil ? start : ipOffset)
            }
            return .inet(address: address, port: port)
        case 10:
            guard let ip, let address = IPText.parseIPv6(Array(ip.utf8)) else {
                throw scanner.fail("AF_INET6 address needs an IPv6 'ip'", at: ip == nil ? start : ipOffset)
            }
            return .inet6(address: address, port: port)
        case 1:
            return .unix(path: path ?? "")
        default:
            return .other(family: family)
        }
    }
}

/// Parsing of the address text the encoder writes.
enum IPText {
    /// Dotted decimal, four parts of 0...255; the host-order value.
    static func parseIPv4(_ bytes: some Collection<UInt8>) -> UInt32? {
        var value: UInt32 = 0
        var part: UInt32 = 0
        var digits = 0
        var parts = 0
        for byte in bytes {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, parts < 3 else { return nil }
                value = value << 8 | part
                parts += 1
                part = 0
                digits = 0
            } else if byte >= 0x30 && byte <= 0x39 {
                guard digits < 3 else { return nil }
                part = part * 10 + UInt32(byte - 0x30)
                guard part <= 255 else { return nil }
                digits += 1
            } else {
                return nil
            }
        }
        guard digits > 0, parts == 3 else { return nil }
        return value << 8 | part
    }

    /// RFC 4291 text: hex groups, at most one `::`, optionally a dotted IPv4 tail.
    static func parseIPv6(_ bytes: [UInt8]) -> IPv6Bytes? {
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var sawGap = false
        var index = 0
        let count = bytes.count
        guard count >= 2 else { return nil }
        if bytes[0] == UInt8(ascii: ":") {
            guard bytes[1] == UInt8(ascii: ":") else { return nil }
            sawGap = true
            index = 2
        }
        while index < count {
            // A group: hex digits, or a dotted IPv4 address as the last 32 bits.
            let groupStart = index
            var value: UInt32 = 0
            var digits = 0
            while index < count, let nibble = hexValue(bytes[index]) {
                value = value << 4 | UInt32(nibble)
                digits += 1
                index += 1
            }
            if index < count, bytes[index] == UInt8(ascii: ".") {
                guard let v4 = parseIPv4(bytes[groupStart...]) else { return nil }
                let groups = [UInt16(v4 >> 16), UInt16(v4 & 0xFFFF)]
                if sawGap { tail += groups } else { head += groups }
                index = count
                break
            }
            guard digits > 0, digits <= 4 else { return nil }
            if sawGap { tail.append(UInt16(value)) } else { head.append(UInt16(value)) }
            if index == count { break }
            guard bytes[index] == UInt8(ascii: ":") else { return nil }
            index += 1
            if index < count, bytes[index] == UInt8(ascii: ":") {
                guard !sawGap else { return nil }
                sawGap = true
                index += 1
                if index == count { break }
            } else if index == count {
                return nil
            }
        }
        let total = head.count + tail.count
        if sawGap {
            guard total <= 7 else { return nil }
        } else {
            guard total == 8 else { return nil }
        }
        let groups = head + [UInt16](repeating: 0, count: 8 - total) + tail
        var high: UInt64 = 0
        var low: UInt64 = 0
        for index in 0..<4 { high = high << 16 | UInt64(groups[index]) }
        for index in 4..<8 { low = low << 16 | UInt64(groups[index]) }
        return IPv6Bytes(high: high, low: low)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: byte - 0x30
        case 0x41...0x46: byte - 0x41 + 10
        case 0x61...0x66: byte - 0x61 + 10
        default: nil
        }
    }
}
