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

        var more = try scanner.beginObject()
        while more {
            let (key, valueOffset) = try scanner.memberKey()
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
                    throw scanner.fail("invalid loss site '\(name)' (a word of a-z and _)", at: valueOffset)
                }
                site = parsed
            case "cpu":
                if !scanner.takeNull() { cpu = try scanner.int32() }
            default:
                try scanner.skipValue()
            }
            more = try scanner.nextMember()
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
        var more = try scanner.beginObject()
        var family: UInt16?
        var ip: String?
        var ipOffset = 0
        var port: UInt16 = 0
        var path: String?
        while more {
            let (key, valueOffset) = try scanner.memberKey()
            switch key {
            case "family":
                if scanner.peek() == 0x22 {
                    let name = try scanner.string()
                    guard let number = FlagVocabulary.family(named: name) else {
                        throw scanner.fail("unknown address family '\(name)'", at: valueOffset)
                    }
                    family = number
                } else {
                    family = try scanner.uint16("address family")
                }
            case "ip":
                ip = try scanner.string()
                ipOffset = valueOffset
            case "port":
                port = try scanner.uint16("port")
            case "path":
                path = try scanner.string()
            default:
                try scanner.skipValue()
            }
            more = try scanner.nextMember()
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
