#if canImport(Glibc)
import Glibc
#endif
import PipelineCore
import Testing

/// 2026-11-24T16:34:13.123456789Z, the time of docs/event-record.md's example.
private let specTimeNs: Int64 = 1_795_538_053_123_456_789
private let timePrefix = #"{"time":"2026-11-24T16:34:13.123456789Z","node":"web-1","ktime_ns":8123456789,"#
/// The node of SPEC section 3's example.
private let web1 = NodeID("web-1")
private let processFields =
    #""pid":4242,"ppid":1,"host_pid":4242,"host_ppid":1,"uid":0,"pid_ns":0,"mnt_ns":0,"origin":"host","comm":"python3""#

private func event(_ id: UInt32, retval: Int64, _ args: [Argument]) -> SyscallEvent {
    SyscallEvent(
        timeNs: specTimeNs, node: web1, ktimeNs: 8_123_456_789, eventID: id, retval: retval, pid: 4242, ppid: 1,
        hostPid: 4242, hostPpid: 1, uid: 0, comm: Comm("python3"), args: Arguments(args))
}

private func line(_ record: PipelineRecord) -> String {
    var bytes: [UInt8] = []
    NDJSONEncoder().encode(record, into: &bytes)
    return String(decoding: bytes, as: UTF8.self)
}

private let loopback6 = IPv6Bytes(high: 0, low: 1)
private let twentyArgs = (0..<20).map { "a\($0)" }

/// One event of every kind of docs/event-record.md, with the line it must encode to.
private let goldens: [(SyscallEvent, String)] = [
    (event(2, retval: 3, [.string("/etc/hosts"), .flags(.open, 0o2000000)]),
     #""event":"open","event_id":2,"scope":"file","retval":3,"result":"ok","#
        + processFields + #","args":{"path":"/etc/hosts","flags":"O_RDONLY|O_CLOEXEC"}}"#),
    (event(257, retval: -13, [.int(-100), .string("out.txt"), .flags(.open, 0o2001101)]),
     #""event":"openat","event_id":257,"scope":"file","retval":-13,"result":"EACCES","#
        + processFields + #","args":{"dirfd":-100,"path":"out.txt","flags":"O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC"}}"#),
    (event(3, retval: -9, [.int(3)]),
     #""event":"close","event_id":3,"scope":"file","retval":-9,"result":"EBADF","# + processFields + #","args":{"fd":3}}"#),
    (event(87, retval: -2, [.string("/tmp/x")]),
     #""event":"unlink","event_id":87,"scope":"file","retval":-2,"result":"ENOENT","#
        + processFields + #","args":{"path":"/tmp/x"}}"#),
    (event(263, retval: 0, [.int(-100), .string("d"), .flags(.unlinkat, 0x200)]),
     #""event":"unlinkat","event_id":263,"scope":"file","retval":0,"result":"ok","#
        + processFields + #","args":{"dirfd":-100,"path":"d","flags":"AT_REMOVEDIR"}}"#),
    (event(84, retval: -14, [.null]),
     #""event":"rmdir","event_id":84,"scope":"file","retval":-14,"result":"EFAULT","#
        + processFields + #","args":{"path":null}}"#),
    (event(92, retval: -1, [.string("/srv"), .int(1000), .int(-1)]),
     #""event":"chown","event_id":92,"scope":"file","retval":-1,"result":"EPERM","#
        + processFields + #","args":{"path":"/srv","uid":1000,"gid":-1}}"#),
    (event(260, retval: 0, [.int(5), .string(""), .int(0), .int(0), .int(4096)]),
     #""event":"fchownat","event_id":260,"scope":"file","retval":0,"result":"ok","#
        + processFields + #","args":{"dirfd":5,"path":"","uid":0,"gid":0,"flags":4096}}"#),
    (event(59, retval: 0, [.string("/bin/sh"), .strings(["sh", "-c", "echo \"hi\""], truncated: false)]),
     #""event":"execve","event_id":59,"scope":"process","retval":0,"result":"ok","#
        + processFields + #","args":{"path":"/bin/sh","argv":["sh","-c","echo \"hi\""]}}"#),
    (event(322, retval: -2, [.int(3), .string(""), .strings(twentyArgs, truncated: true), .flags(.exec, 0x1000)]),
     #""event":"execveat","event_id":322,"scope":"process","retval":-2,"result":"ENOENT","# + processFields
        + #","args":{"dirfd":3,"path":"","argv":["# + twentyArgs.map { "\"\($0)\"" }.joined(separator: ",")
        + #","..."],"flags":"AT_EMPTY_PATH"}}"#),
    (event(105, retval: -1, [.int(0)]),
     #""event":"setuid","event_id":105,"scope":"capabilities","retval":-1,"result":"EPERM","#
        + processFields + #","args":{"uid":0}}"#),
    (event(106, retval: 0, [.int(1000)]),
     #""event":"setgid","event_id":106,"scope":"capabilities","retval":0,"result":"ok","#
        + processFields + #","args":{"gid":1000}}"#),
    (event(101, retval: -1, [.flags(.ptraceRequest, 16), .int(1)]),
     #""event":"ptrace","event_id":101,"scope":"capabilities","retval":-1,"result":"EPERM","#
        + processFields + #","args":{"request":"PTRACE_ATTACH","pid":1}}"#),
    (event(165, retval: 0, [.string("tmpfs"), .string("/mnt"), .string("tmpfs"), .flags(.mount, 6), .null]),
     #""event":"mount","event_id":165,"scope":"capabilities","retval":0,"result":"ok","# + processFields
        + #","args":{"source":"tmpfs","target":"/mnt","fstype":"tmpfs","flags":"MS_NOSUID|MS_NODEV","data":null}}"#),
    (event(166, retval: -16, [.string("/mnt"), .flags(.umount, 2)]),
     #""event":"umount","event_id":166,"scope":"capabilities","retval":-16,"result":"EBUSY","#
        + processFields + #","args":{"target":"/mnt","flags":"MNT_DETACH"}}"#),
    (event(41, retval: 4, [.flags(.socketDomain, 10), .flags(.socketType, 0o2004001), .int(0)]),
     #""event":"socket","event_id":41,"scope":"network","retval":4,"result":"ok","# + processFields
        + #","args":{"domain":"AF_INET6","type":"SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC","protocol":0}}"#),
    (event(42, retval: -111, [.int(3), .sockaddr(.inet(address: 0x7F00_0001, port: 1))]),
     #""event":"connect","event_id":42,"scope":"network","retval":-111,"result":"ECONNREFUSED","# + processFields
        + #","args":{"fd":3,"addr":{"family":"AF_INET","ip":"127.0.0.1","port":1}}}"#),
    (event(43, retval: 5, [.int(3), .sockaddr(.inet6(address: loopback6, port: 52000))]),
     #""event":"accept","event_id":43,"scope":"network","retval":5,"result":"ok","# + processFields
        + #","args":{"fd":3,"addr":{"family":"AF_INET6","ip":"::1","port":52000}}}"#),
    (event(49, retval: -98, [.int(4), .sockaddr(.unix(path: "@dbus"))]),
     #""event":"bind","event_id":49,"scope":"network","retval":-98,"result":"EADDRINUSE","# + processFields
        + #","args":{"fd":4,"addr":{"family":"AF_UNIX","path":"@dbus"}}}"#),
    (event(50, retval: 0, [.int(4), .int(128)]),
     #""event":"listen","event_id":50,"scope":"network","retval":0,"result":"ok","#
        + processFields + #","args":{"fd":4,"backlog":128}}"#),
]

@Suite("NDJSON codec")
struct CodecNDJSONTests {
    @Test func goldenLineForEveryEventKind() throws {
        #expect(Set(goldens.map(\.0.eventID)) == Set(EventCatalog.all.map(\.id)))
        for (event, expectedTail) in goldens {
            #expect(line(.event(event)) == timePrefix + expectedTail + "\n")
        }
    }

    @Test func specExampleIsReproducedExactly() {
        let spec = #"{"time":"2026-11-24T16:34:13.123456789Z","node":"web-1","ktime_ns":8123456789,"event":"connect","event_id":42,"#
            + #""scope":"network","retval":-111,"result":"ECONNREFUSED","pid":4242,"ppid":1,"host_pid":4242,"#
            + #""host_ppid":1,"uid":0,"pid_ns":0,"mnt_ns":0,"origin":"host","comm":"python3","#
            + #""args":{"fd":3,"addr":{"family":"AF_INET","ip":"127.0.0.1","port":1}}}"#
        let connect = goldens.first { $0.0.eventID == 42 }!.0
        #expect(line(.event(connect)) == spec + "\n")
    }

    @Test func otherFamiliesAndContainerOrigin() {
        var netlink = event(49, retval: 0, [.int(4), .sockaddr(.other(family: 16))])
        netlink.pidNamespace = 4_026_532_000
        netlink.mountNamespace = 4_026_532_001
        let text = line(.event(netlink))
        #expect(text.contains(#""pid_ns":4026532000,"mnt_ns":4026532001,"origin":"container","#))
        #expect(text.hasSuffix(#""args":{"fd":4,"addr":{"family":"AF_NETLINK"}}}"# + "\n"))
        let unnamed = line(.event(event(49, retval: 0, [.int(4), .sockaddr(.other(family: 99))])))
        #expect(unnamed.hasSuffix(#""addr":{"family":99}}}"# + "\n"))
        let unspec = line(.event(event(42, retval: 0, [.int(4), .sockaddr(.other(family: 0))])))
        #expect(unspec.hasSuffix(#""addr":{"family":"AF_UNSPEC"}}}"# + "\n"))
    }

    @Test func lostRecords() {
        let kernel = LostRecord(timeNs: specTimeNs, count: 17, site: .kernel, cpu: 1, node: web1)
        #expect(line(.lost(kernel))
            == #"{"time":"2026-11-24T16:34:13.123456789Z","node":"web-1","event":"lost","count":17,"where":"kernel","cpu":1}"# + "\n")
        #expect(line(.lost(LostRecord(timeNs: specTimeNs, count: 2, site: .queue, node: web1)))
            == #"{"time":"2026-11-24T16:34:13.123456789Z","node":"web-1","event":"lost","count":2,"where":"queue","cpu":null}"# + "\n")
        let client = LostRecord(timeNs: 0, count: UInt64.max, site: LossSite("client"), node: web1)
        // No CPU applies to a client's (or a queue's) loss: the key is still there.
        #expect(line(.lost(client))
            == #"{"time":"1970-01-01T00:00:00.000000000Z","node":"web-1","event":"lost","count":18446744073709551615,"where":"client","cpu":null}"#
            + "\n")
        // A sink that could not deliver names itself, after `cpu`.
        let sink = LostRecord(timeNs: specTimeNs, count: 5, site: .sink, node: web1, stage: "fleet")
        #expect(line(.lost(sink))
            == #"{"time":"2026-11-24T16:34:13.123456789Z","node":"web-1","event":"lost","count":5,"where":"sink","cpu":null,"stage":"fleet"}"# + "\n")
    }

    @Test func nodeNamesAreEscapedAndKeptByTheDecoder() throws {
        var odd = event(3, retval: 0, [.int(1)])
        odd.node = NodeID("rack \"7\"\\db\n")
        let text = line(.event(odd))
        #expect(text.hasPrefix(#"{"time":"2026-11-24T16:34:13.123456789Z","node":"rack \"7\"\\db\n","ktime_ns":"#))
        let decoded = try NDJSONDecoder(defaultNode: NodeID("elsewhere")).decode(text.dropLast())
        #expect(decoded == .event(odd))
        // A record without a node (written before the fleet work) gets the decoder's default.
        let old = text.replacingOccurrences(of: #""node":"rack \"7\"\\db\n","#, with: "")
        guard case .event(let defaulted) = try NDJSONDecoder(defaultNode: NodeID("elsewhere")).decode(old.dropLast()) else {
            Issue.record("not an event")
            return
        }
        #expect(defaulted.node.name == "elsewhere")
        let lost = LostRecord(timeNs: specTimeNs, count: 5, site: .sink, node: NodeID("db-2"), stage: "fleet")
        #expect(try NDJSONDecoder().decode(line(.lost(lost)).dropLast()) == .lost(lost))
    }

    @Test func timeFormatting() {
        func time(_ ns: Int64) -> Substring {
            let text = line(.lost(LostRecord(timeNs: ns, count: 0, site: .queue)))
            return text.dropFirst(9).prefix(30)
        }
        #expect(time(0) == "1970-01-01T00:00:00.000000000Z")
        #expect(time(951_868_799_000_000_001) == "2000-02-29T23:59:59.000000001Z")
        #expect(time(-1) == "1969-12-31T23:59:59.999999999Z")
        #expect(time(Int64.max) == "2262-04-11T23:47:16.854775807Z")
        #expect(time(1_709_251_199_999_999_999) == "2024-02-29T23:59:59.999999999Z")
    }

    @Test func stringEscapes() {
        let path = "a\"b\\c\nd\re\tf\u{08}g\u{0C}h\u{01}i\u{1F}j\u{7F}k/é✓😀"
        let text = line(.event(event(87, retval: 0, [.string(path)])))
        #expect(text.hasSuffix(#""args":{"path":"a\"b\\c\nd\re\tf\bg\fh\u0001i\u001fj"# + "\u{7F}k/é✓😀\"}}\n"))

        var comm = event(3, retval: 0, [.int(1)])
        comm.comm = ([0x71, 0x22, 0x5C, 0x0A, 0xFF, 0xE2, 0x82] as [UInt8]).withUnsafeBytes { Comm(raw: $0) }
        #expect(line(.event(comm)).contains(#""comm":"q\"\\\n"# + "\u{FFFD}\u{FFFD}\","))
    }

    /// The comm repair matches Swift's own UTF-8 repair for arbitrary bytes.
    @Test func commRepairMatchesStandardLibrary() throws {
        var generator = SystemRandomNumberGenerator()
        let interesting: [UInt8] = [0x41, 0xC2, 0xA9, 0xE0, 0xA0, 0x80, 0xED, 0x9F, 0xBF, 0xF0, 0x90, 0xF4, 0x8F, 0xFF, 0xC0, 0xBF]
        for _ in 0..<2000 {
            let length = Int.random(in: 1...16, using: &generator)
            let bytes = (0..<length).map { _ in interesting.randomElement(using: &generator)! }
            var record = event(3, retval: 0, [.int(1)])
            record.comm = bytes.withUnsafeBytes { Comm(raw: $0) }
            // Compared as bytes: a comm starting with a combining mark merges
            // with the quote before it into one Character.
            let text = Array(line(.event(record)).utf8)
            let expected = Array(String(decoding: bytes, as: UTF8.self).utf8)
            let open = Array(#""comm":""#.utf8)
            let close = Array(#"","args""#.utf8)
            guard let start = firstIndex(of: open, in: text), let end = firstIndex(of: close, in: text) else {
                Issue.record("no comm in \(String(decoding: text, as: UTF8.self))")
                continue
            }
            #expect(Array(text[(start + open.count)..<end]) == expected, "bytes \(bytes)")
        }
    }

    /// Comms of every length, plain (copied eight bytes at a time) or with
    /// one byte to escape or repair at every position, print exactly as
    /// the JSON escape of Swift's own repaired text.
    @Test func commsOfEveryLengthAndEverySpecialBytePosition() {
        func expected(_ bytes: [UInt8]) -> String {
            var text = ""
            for scalar in String(decoding: bytes, as: UTF8.self).unicodeScalars {
                switch scalar {
                case "\"": text += "\\\""
                case "\\": text += "\\\\"
                case "\n": text += "\\n"
                case "\r": text += "\\r"
                case "\t": text += "\\t"
                case "\u{08}": text += "\\b"
                case "\u{0C}": text += "\\f"
                case _ where scalar.value < 0x20:
                    let hex = String(scalar.value, radix: 16)
                    text += "\\u00" + (hex.count < 2 ? "0" : "") + hex
                default: text.unicodeScalars.append(scalar)
                }
            }
            return text
        }
        let plain = Array("abcdefghijklmnop".utf8)
        // 0x7F and the 0x20 and 0x7E edges need no escape; the rest do.
        let specials: [UInt8] = [0x22, 0x5C, 0x0A, 0x01, 0x1F, 0x20, 0x7E, 0x7F, 0x80, 0xC3, 0xFF]
        for length in 0...16 {
            var cases = [Array(plain.prefix(length))]
            for position in 0..<length {
                for special in specials {
                    var bytes = Array(plain.prefix(length))
                    bytes[position] = special
                    cases.append(bytes)
                }
            }
            for bytes in cases {
                var record = event(3, retval: 0, [.int(1)])
                record.comm = bytes.withUnsafeBytes { Comm(raw: $0) }
                let text = line(.event(record))
                #expect(text.contains(#","comm":""# + expected(bytes) + #"","args":{"fd":1}}"#), "comm bytes \(bytes): \(text)")
            }
        }
    }

    /// Numbers at every power of ten and one below it (the digit count is
    /// estimated from the bit length), at both ends of each field's range.
    @Test func numbersAtEveryPowerOfTen() {
        var values: [UInt64] = [0, 1, 9, UInt64(UInt32.max), UInt64.max]
        var power: UInt64 = 1
        for _ in 0..<19 {
            power *= 10
            values += [power - 1, power, power + 1]
        }
        for value in values {
            var record = event(3, retval: 0, [.int(1)])
            record.ktimeNs = value
            record.pid = UInt32(truncatingIfNeeded: value)
            record.retval = Int64(bitPattern: value)
            let text = line(.event(record))
            #expect(text.contains(#","ktime_ns":\#(value),"#), "ktime \(value): \(text)")
            #expect(text.contains(#","retval":\#(Int64(bitPattern: value)),"#), "retval \(value): \(text)")
            #expect(text.contains(#","pid":\#(UInt32(truncatingIfNeeded: value)),"#), "pid \(value): \(text)")
        }
        var lowest = event(3, retval: Int64.min, [.int(Int32.min)])
        lowest.uid = UInt32.max
        let text = line(.event(lowest))
        #expect(text.contains(#""retval":-9223372036854775808,"result":"E9223372036854775808""#), "\(text)")
        #expect(text.contains(#""uid":4294967295,"#) && text.contains(#""args":{"fd":-2147483648}}"#), "\(text)")
    }

    /// Records of several nodes in one batch (one line cache) each carry their own.
    @Test func severalNodesInOneBatch() {
        let names = ["a", "node-two", "rack \"9\"", String(repeating: "n", count: 70)]
        var records: [PipelineRecord] = []
        for (index, name) in names.enumerated() {
            var record = event(3, retval: 0, [.int(Int32(index))])
            record.node = NodeID(name)
            records.append(.event(record))
            records.append(.lost(LostRecord(timeNs: specTimeNs, count: 1, site: .queue, node: NodeID(name))))
        }
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        #expect(lines.count == records.count)
        for (index, text) in lines.enumerated() {
            let name = names[index / 2].replacingOccurrences(of: "\"", with: "\\\"")
            #expect(text.contains(#","node":"\#(name)","#), "\(text)")
        }
    }

    /// Every octet value in every position of an IPv4 address prints as
    /// inet_ntop prints it (the octets come from a padded table).
    @Test func ipv4TextOfEveryOctetInEveryPosition() {
        var records: [PipelineRecord] = []
        var expected: [String] = []
        for position in 0..<4 {
            for octet in 0..<256 {
                // The other octets vary too, so that a padding byte left
                // behind by a short octet would show.
                var bytes: [UInt8] = [255, 0, 100, 9]
                bytes[position] = UInt8(octet)
                var storage = in_addr()
                withUnsafeMutableBytes(of: &storage) { raw in for index in 0..<4 { raw[index] = bytes[index] } }
                var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                #expect(inet_ntop(AF_INET, &storage, &text, socklen_t(text.count)) != nil)
                expected.append(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
                let address = bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                records.append(.event(event(42, retval: 0, [.int(3), .sockaddr(.inet(address: address, port: UInt16(octet)))])))
            }
        }
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
        #expect(lines.count == records.count)
        for (index, text) in lines.enumerated() where index < expected.count {
            #expect(text.hasSuffix(#""ip":"\#(expected[index])","port":\#(index % 256)}}}"#), "\(text)")
        }
    }

    /// A batch keeps the process part of the last lines of a few tasks: a
    /// record that differs from an earlier one of the same host pid in any
    /// one field (or whose host pid shares its cache slot) must be written
    /// anew. Each line of the batch equals the record encoded alone.
    @Test func processPartsOfOneTaskDifferingInOneField() {
        var base = event(3, retval: 0, [.int(1)])
        base.hostPid = 4000
        var variants: [SyscallEvent] = [base]
        for field in 0..<9 {
            var changed = base
            switch field {
            case 0: changed.pid = 7
            case 1: changed.ppid = 8
            case 2: changed.hostPpid = 9
            case 3: changed.uid = 1000
            case 4: changed.pidNamespace = 4_026_531_836
            case 5: changed.mountNamespace = 4_026_531_840
            case 6: changed.pidNamespace = 4_026_531_836; changed.mountNamespace = 4_026_531_840
            case 7: changed.comm = Comm("python3.1")
            default: changed.hostPid = 4004  // the same cache slot, another task
            }
            variants.append(changed)
        }
        // Each variant after the base, then the base again, and twice in a row.
        var records: [PipelineRecord] = []
        for variant in variants {
            records += [.event(base), .event(variant), .event(variant), .event(base)]
        }
        var batch: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &batch)
        var single: [UInt8] = []
        for record in records { NDJSONEncoder().encode(record, into: &single) }
        #expect(batch == single)
        let lines = String(decoding: batch, as: UTF8.self).split(separator: "\n")
        #expect(lines[5].contains(#""pid":7,"ppid":1,"host_pid":4000,"#), "\(lines[5])")
        #expect(lines[29].contains(#""origin":"container","comm":"python3""#), "\(lines[29])")
        #expect(lines[33].contains(#""comm":"python3.1""#), "\(lines[33])")
        #expect(lines[37].contains(#""host_pid":4004,"#) && lines[39].contains(#""host_pid":4000,"#))
    }

    @Test func ipv6TextMatchesInetNtop() {
        var samples: [[UInt8]] = [
            [UInt8](repeating: 0, count: 16),
            [UInt8](repeating: 0, count: 15) + [1],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 168, 1, 2],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1],
            [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            [0xFE, 0x80, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 0xAB, 0xCD],
            [0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0],
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        ]
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            // Mostly zero groups, so that runs of zeros of every length show up.
            samples.append((0..<8).flatMap { _ -> [UInt8] in
                Int.random(in: 0..<3, using: &generator) == 0 ? [UInt8.random(in: 0...255), UInt8.random(in: 0...255)] : [0, 0]
            })
        }
        for bytes in samples {
            var storage = in6_addr()
            withUnsafeMutableBytes(of: &storage) { raw in for index in 0..<16 { raw[index] = bytes[index] } }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            #expect(inet_ntop(AF_INET6, &storage, &text, socklen_t(text.count)) != nil)
            let expected = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let encoded = line(.event(event(42, retval: 0, [.int(3), .sockaddr(.inet6(address: IPv6Bytes(bytes), port: 9))])))
            #expect(encoded.contains(#""ip":"\#(expected)","port":9"#), "\(bytes)")
            let decoded = try? NDJSONDecoder().decode(encoded.dropLast())
            #expect(decoded == .event(event(42, retval: 0, [.int(3), .sockaddr(.inet6(address: IPv6Bytes(bytes), port: 9))])))
        }
    }

    @Test func flagTexts() {
        #expect(FlagKind.open.symbolic(0) == "O_RDONLY")
        #expect(FlagKind.open.symbolic(0o2000101) == "O_WRONLY|O_CREAT|O_CLOEXEC")
        #expect(FlagKind.open.symbolic(0o4010002) == "O_RDWR|O_SYNC")
        #expect(FlagKind.open.symbolic(0o20200002) == "O_RDWR|O_TMPFILE")
        #expect(FlagKind.open.symbolic(0o10000000) == "O_RDONLY|O_PATH")
        #expect(FlagKind.open.symbolic(3) == "0x3")
        #expect(FlagKind.open.symbolic(0x8000_0001) == "O_WRONLY|0x80000000")
        #expect(FlagKind.socketDomain.symbolic(2) == "AF_INET")
        #expect(FlagKind.socketDomain.symbolic(0) == "AF_UNSPEC")
        #expect(FlagKind.socketDomain.symbolic(200) == "0xc8")
        #expect(FlagKind.socketType.symbolic(0o2000001) == "SOCK_STREAM|SOCK_CLOEXEC")
        #expect(FlagKind.socketType.symbolic(0o4002) == "SOCK_DGRAM|SOCK_NONBLOCK")
        #expect(FlagKind.socketType.symbolic(0) == "0")
        #expect(FlagKind.socketType.symbolic(7) == "0x7")
        #expect(FlagKind.ptraceRequest.symbolic(16) == "PTRACE_ATTACH")
        #expect(FlagKind.ptraceRequest.symbolic(0) == "PTRACE_TRACEME")
        #expect(FlagKind.ptraceRequest.symbolic(0x4206) == "PTRACE_SEIZE")
        #expect(FlagKind.ptraceRequest.symbolic(99) == "0x63")
        #expect(FlagKind.mount.symbolic(3) == "MS_RDONLY|MS_NOSUID")
        #expect(FlagKind.mount.symbolic(0xC0ED_0001) == "MS_MGC_VAL|MS_RDONLY")
        #expect(FlagKind.mount.symbolic(0x1000 | 0x4000) == "MS_BIND|MS_REC")
        #expect(FlagKind.mount.symbolic(0) == "0")
        #expect(FlagKind.umount.symbolic(2) == "MNT_DETACH")
        #expect(FlagKind.umount.symbolic(0x1F) == "MNT_FORCE|MNT_DETACH|MNT_EXPIRE|UMOUNT_NOFOLLOW|0x10")
        #expect(FlagKind.unlinkat.symbolic(0x200) == "AT_REMOVEDIR")
        #expect(FlagKind.unlinkat.symbolic(0) == "0")
        #expect(FlagKind.exec.symbolic(0x1100) == "AT_SYMLINK_NOFOLLOW|AT_EMPTY_PATH")

        #expect(FlagKind.open.value(parsing: "O_WRONLY | O_CREAT|O_NDELAY") == 0o4101)
        #expect(FlagKind.open.value(parsing: "O_BOGUS") == nil)
        #expect(FlagKind.open.value(parsing: "") == nil)
        #expect(FlagKind.open.value(parsing: "O_RDONLY||O_CREAT") == nil)
        #expect(FlagKind.socketDomain.value(parsing: "AF_LOCAL") == 1)
        #expect(FlagKind.mount.value(parsing: "0x10|4") == 0x14)
    }

    /// Every value of every kind prints to text that parses back to it.
    @Test func flagTextsRoundTrip() {
        var generator = SystemRandomNumberGenerator()
        for kind in FlagKind.allCases {
            var values: [UInt32] = [0, 1, 2, 3, 0xFFFF_FFFF, 0x8000_0000]
            values += (0..<32).map { UInt32(1) << UInt32($0) }
            values += (0..<500).map { _ in
                UInt32.random(in: 0...UInt32.max, using: &generator) & (Bool.random(using: &generator) ? 0xFFFF_FFFF : 0x3FFF)
            }
            for value in values {
                let text = kind.symbolic(value)
                #expect(kind.value(parsing: text) == value, "\(kind) \(value) -> \(text)")
            }
        }
    }

    @Test func errnoNames() {
        #expect(Errno.name(of: 111) == "ECONNREFUSED")
        #expect(Errno.name(of: 1) == "EPERM")
        #expect(Errno.name(of: 133) == "EHWPOISON")
        #expect(Errno.name(of: 41) == "E41")
        #expect(Errno.name(of: 512) == "ERESTARTSYS")
        #expect(Errno.name(of: 520) == "E520")
        #expect(Errno.name(of: 531) == "ENOGRACE")
        #expect(Errno.name(of: 4000) == "E4000")
        #expect(Errno.number(named: "ECONNREFUSED") == 111)
        #expect(Errno.number(named: "EWOULDBLOCK") == 11)
        #expect(Errno.number(named: "E4000") == 4000)
        #expect(Errno.number(named: "ENOPE") == nil)
        #expect(Errno.number(named: "E") == nil)
        #expect(Errno.allNames.count == 131 + 19)
        for name in Errno.allNames {
            #expect(Errno.name(of: Errno.number(named: name)!) == name)
        }
        let big = line(.event(event(3, retval: -5000, [.int(1)])))
        #expect(big.contains(#""retval":-5000,"result":"E5000""#))
        let huge = line(.event(event(3, retval: Int64.min, [.int(1)])))
        #expect(huge.contains(#""retval":-9223372036854775808,"result":"E9223372036854775808""#))
    }

    /// The errno table against the kernel's own headers on this machine.
    @Test func errnoTableMatchesKernelHeaders() throws {
        var defined: [Int32: String] = [:]
        var readAny = false
        for path in ["/usr/include/asm-generic/errno-base.h", "/usr/include/asm-generic/errno.h", "/usr/include/linux/errno.h"] {
            guard let text = readTextFile(atPath: path) else { continue }
            readAny = true
            for rawLine in text.split(separator: "\n") {
                let words = rawLine.split(whereSeparator: { $0 == " " || $0 == "\t" })
                guard words.count >= 3, words[0] == "#define", let number = Int32(words[2]) else { continue }
                // The first name of a number is the one records print (aliases come later).
                if defined[number] == nil { defined[number] = String(words[1]) }
            }
        }
        guard readAny else {
            print("skipping: kernel errno headers are not installed")
            return
        }
        #expect(defined.count > 100)
        for (number, name) in defined where (1...133).contains(number) || (512...531).contains(number) {
            #expect(Errno.name(of: number) == name)
        }
        // The kernel-internal 512–531 are not in the user-space headers.
        for name in Errno.allNames {
            let number = Errno.number(named: name)!
            if number <= 133 { #expect(defined[number] == name) }
        }
    }

    @Test func roundTripOfEveryGoldenAndRandomEvents() throws {
        let decoder = NDJSONDecoder()
        var records: [PipelineRecord] = goldens.map { .event($0.0) }
        records.append(.lost(LostRecord(timeNs: specTimeNs, count: 3, site: .queue)))
        records.append(.lost(LostRecord(timeNs: -5, count: 0, site: .kernel, cpu: 7)))
        var generator = SystemRandomNumberGenerator()
        let texts = ["", "/", "a b", "\"quoted\"", "tab\there", "ünï✓😀", "\u{01}\u{1F}", "back\\slash"]
        for _ in 0..<400 {
            let kind = EventCatalog.all.randomElement(using: &generator)!
            var args: [Argument] = []
            for type in kind.argTypes {
                if Int.random(in: 0..<10, using: &generator) == 0 {
                    args.append(.null)
                    continue
                }
                switch type {
                case .int: args.append(.int(Int32.random(in: Int32.min...Int32.max, using: &generator)))
                case .string, .fileType: args.append(.string(texts.randomElement(using: &generator)!))
                case .stringArray:
                    let count = Int.random(in: 0...20, using: &generator)
                    let list = (0..<count).map { _ in texts.randomElement(using: &generator)! }
                    args.append(.strings(list, truncated: count == 20 && Bool.random(using: &generator)))
                case .sockaddr:
                    switch Int.random(in: 0..<4, using: &generator) {
                    case 0: args.append(.sockaddr(.inet(address: .random(in: 0...UInt32.max), port: .random(in: 0...UInt16.max))))
                    case 1:
                        args.append(.sockaddr(.inet6(
                            address: IPv6Bytes(high: .random(in: 0...UInt64.max) & 0xFFFF_0000_FFFF_0000, low: .random(in: 0...3)),
                            port: .random(in: 0...UInt16.max))))
                    case 2: args.append(.sockaddr(.unix(path: "@" + texts.randomElement(using: &generator)!)))
                    default:
                        // 1, 2 and 10 always decode to their own shapes, never to `.other`.
                        let family = [0, 3, 16, 17, 38, 45, 46, 200, 65535].randomElement(using: &generator)!
                        args.append(.sockaddr(.other(family: UInt16(family))))
                    }
                default:
                    args.append(.flags(type.flagKind!, .random(in: 0...UInt32.max, using: &generator)))
                }
            }
            records.append(.event(SyscallEvent(
                timeNs: .random(in: -1_000_000_000_000_000_000...4_000_000_000_000_000_000, using: &generator),
                ktimeNs: .random(in: 0...UInt64.max, using: &generator), eventID: kind.id,
                retval: .random(in: -600...600, using: &generator), pid: .random(in: 0...UInt32.max),
                ppid: .random(in: 0...UInt32.max), hostPid: .random(in: 0...UInt32.max), hostPpid: .random(in: 0...UInt32.max),
                uid: .random(in: 0...UInt32.max), pidNamespace: .random(in: 0...1), mountNamespace: .random(in: 0...1),
                comm: Comm(texts.randomElement(using: &generator)!), args: Arguments(args))))
        }
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        let lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        #expect(lines.count == records.count + 1)
        for (record, text) in zip(records, lines) {
            let decoded = try decoder.decode(Array(text))
            #expect(decoded == record, "\(String(decoding: text, as: UTF8.self))")
        }
    }

    @Test func batchEncodingEqualsOneByOne() {
        var batch: [UInt8] = Array("prefix\n".utf8)
        var single: [UInt8] = Array("prefix\n".utf8)
        let records = goldens.map { PipelineRecord.event($0.0) }
        NDJSONEncoder().encode(EventBatch(records), into: &batch)
        for record in records { NDJSONEncoder().encode(record, into: &single) }
        #expect(batch == single)
        #expect(batch.count > 7 + records.count * 300)
    }

    /// A batch reuses the date text of the previous second; crossing seconds,
    /// days and going back in time must still print every time exactly.
    @Test func batchTimesAcrossSecondsMatchSingleRecords() {
        let times: [Int64] = [
            specTimeNs, specTimeNs + 1, specTimeNs + 876_543_210, specTimeNs + 876_543_211, specTimeNs - 1_000_000_000,
            86_399_999_999_999, 86_400_000_000_000, 0, -1, specTimeNs,
        ]
        var records: [PipelineRecord] = []
        for (index, time) in times.enumerated() {
            if index % 3 == 2 {
                records.append(.lost(LostRecord(timeNs: time, count: 1, site: .queue)))
            } else {
                var record = event(3, retval: 0, [.int(Int32(index))])
                record.timeNs = time
                records.append(.event(record))
            }
        }
        var batch: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &batch)
        let lines = String(decoding: batch, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines.map { $0 + "\n" } == records.map(line))
        #expect(lines[5].hasPrefix(#"{"time":"1970-01-01T23:59:59.999999999Z""#))
        #expect(lines[6].hasPrefix(#"{"time":"1970-01-02T00:00:00.000000000Z""#))
        #expect(lines[8].hasPrefix(#"{"time":"1969-12-31T23:59:59.999999999Z""#))
    }

    /// Batches bigger than the encoder's chunk, with lines of very different
    /// sizes (records that do not fit are moved to the next chunk), come out
    /// exactly as record-by-record encoding.
    @Test func largeBatchesSpanChunks() throws {
        var generator = SystemRandomNumberGenerator()
        var records: [PipelineRecord] = []
        for index in 0..<3000 {
            switch index % 5 {
            case 0:
                let path = String(repeating: "\u{01}/é", count: Int.random(in: 0...1500, using: &generator))
                records.append(.event(event(87, retval: -2, [.string(path)])))
            case 1:
                let argv = (0..<20).map { _ in String(repeating: "\"", count: Int.random(in: 0...300, using: &generator)) }
                records.append(.event(event(59, retval: 0, [.string("/bin/x"), .strings(argv, truncated: true)])))
            case 2:
                records.append(.lost(LostRecord(timeNs: Int64(index), count: UInt64(index), site: .kernel, cpu: 1)))
            default:
                records.append(.event(event(42, retval: -111, [.int(3), .sockaddr(.unix(path: "@" + String(repeating: "\\", count: 107)))])))
            }
        }
        var batch: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &batch)
        var single: [UInt8] = []
        for record in records { NDJSONEncoder().encode(record, into: &single) }
        #expect(batch.count > 4 * 256 * 1024)
        #expect(batch == single)
        let decoder = NDJSONDecoder()
        let lines = batch.split(separator: UInt8(ascii: "\n"))
        #expect(lines.count == records.count)
        for (record, text) in zip(records, lines) {
            #expect(try decoder.decode(Array(text)) == record)
        }
    }

    /// Encoding into a caller's fixed buffer, refilled until the batch is
    /// done, gives the same bytes as encoding into an array; a record whose
    /// bound does not fit the buffer at all is refused, not cut.
    @Test func encodingIntoAFixedBufferEqualsTheArrayEncoding() {
        var records: [PipelineRecord] = []
        for index in 0..<500 {
            let path = String(repeating: "d/", count: index % 40)
            records.append(index % 7 == 3
                ? .lost(LostRecord(timeNs: Int64(index), count: 2, site: .queue))
                : .event(event(87, retval: -2, [.string(path)])))
        }
        var expected: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &expected)

        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8192, alignment: 16)
        defer { buffer.deallocate() }
        var produced: [UInt8] = []
        var index = 0
        var refills = 0
        while index < records.count {
            let (count, bytes) = NDJSONEncoder().encode(records, from: index, into: buffer)
            #expect(count > 0 && bytes <= buffer.count)
            if count == 0 { break }
            produced += buffer[0..<bytes]
            index += count
            refills += 1
        }
        #expect(produced == expected)
        #expect(refills > 10)

        let tiny = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 16)
        defer { tiny.deallocate() }
        #expect(NDJSONEncoder().encode(records, from: 0, into: tiny) == (0, 0))
        #expect(NDJSONEncoder().encode(records, from: records.count, into: buffer) == (0, 0))
    }

    /// The encoder's in-place flag text is the same as ``FlagKind/symbolic(_:)``.
    @Test func encodedFlagsEqualSymbolicText() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let value = UInt32.random(in: 0...UInt32.max, using: &generator) >> UInt32.random(in: 0...31, using: &generator)
            let mount = line(.event(event(165, retval: 0, [.null, .null, .null, .flags(.mount, value), .null])))
            #expect(mount.contains(#""flags":"\#(FlagKind.mount.symbolic(value))","data""#))
            let socket = line(.event(event(41, retval: 0, [.flags(.socketDomain, value), .flags(.socketType, value), .int(0)])))
            #expect(socket.contains(
                #""domain":"\#(FlagKind.socketDomain.symbolic(value))","type":"\#(FlagKind.socketType.symbolic(value))""#))
        }
    }

    @Test func decoderAcceptsAnyKeyOrderAndUnknownKeys() throws {
        let text = #"{"args":{"addr":{"port":1,"ip":"127.0.0.1","family":"AF_INET"},"fd":3},"comm":"python3","#
            + #""extra":{"nested":[1,2.5e3,true,false,null,"x"]},"origin":"host","mnt_ns":0,"pid_ns":0,"uid":0,"#
            + #""host_ppid":1,"host_pid":4242,"ppid":1,"pid":4242,"result":"whatever","retval":-111,"scope":"network","#
            + #""event_id":42,"event":"connect","ktime_ns":8123456789,"node":"web-1","time":"2026-11-24T17:34:13.123456789+01:00"}"#
        let expected = goldens.first { $0.0.eventID == 42 }!.0
        #expect(try NDJSONDecoder().decode(text) == .event(expected))
        // Fewer fractional digits, `umount2`, and an event named by id only.
        let short = #"{"time":"2026-11-24T16:34:13.5Z","event":"umount2","args":{"target":"/m","flags":"MNT_FORCE"}}"#
        guard case .event(let umount) = try NDJSONDecoder().decode(short) else {
            Issue.record("not an event")
            return
        }
        #expect(umount.timeNs == 1_795_538_053_500_000_000)
        #expect(umount.eventID == 166)
        #expect(umount.args == Arguments([.string("/m"), .flags(.umount, 1)]))
        let byID = try NDJSONDecoder().decode(#"{"time":"1970-01-01T00:00:00Z","event_id":3,"args":{"fd":9}}"#)
        #expect(byID == .event(SyscallEvent(timeNs: 0, ktimeNs: 0, eventID: 3, retval: 0, hostPid: 0, hostPpid: 0, uid: 0,
                                            comm: Comm(), args: Arguments([.int(9)]))))
    }

    @Test func decoderErrorsSayWhere() {
        func failure(_ text: String) -> NDJSONError? {
            do {
                _ = try NDJSONDecoder().decode(text)
                return nil
            } catch {
                return error
            }
        }
        let unknown = #"{"time":"2026-11-24T16:34:13Z","event":"teleport","args":{}}"#
        #expect(failure(unknown) == NDJSONError(message: "unknown event 'teleport'", offset: 39))
        #expect(failure("")?.offset == 0)
        #expect(failure("{")?.message != nil)
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"close","args":{"fd":3}} x"#)?.offset == 64)
        #expect(failure(#"{"time":"yesterday","event":"close"}"#)?.offset == 8)
        #expect(failure(#"{"event":"close"}"#)?.message == "missing 'time'")
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"close","event_id":42}"#)?.offset == 58)
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"close","args":{"fd":3.5}}"#)?.offset == 60)
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"close","args":{"fd":99999999999}}"#) != nil)
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"close","args":{"nope":1}}"#)?.offset == 55)
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"open","args":{"flags":"O_WHATEVER"}}"#)?.offset == 62)
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"bind","args":{"addr":{"family":"AF_INET","ip":"1.2.3"}}}"#)
            != nil)
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"lost"}"#)?.message == "lost record without 'count'")
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"close","comm":"\ud800"}"#)?.message == "unpaired surrogate")
        #expect(failure(#"{"time":"2026-11-24T16:34:13Z","event":"close","comm":"a"#)?.message == "unterminated string")
    }

    /// Every strict prefix of every golden line is rejected, read from a
    /// buffer that ends at a guard page; corrupted lines decode or throw, and
    /// never crash or read past their end.
    @Test func truncatedAndCorruptedLinesAreRejectedSafely() {
        let decoder = NDJSONDecoder()
        var lines = goldens.map { Array(line(.event($0.0)).utf8.dropLast()) }
        lines.append(Array(line(.lost(LostRecord(timeNs: 5, count: 9, site: LossSite("client"), cpu: 3))).utf8.dropLast()))
        for bytes in lines {
            #expect(withGuardedBytes(bytes) { (try? decoder.decode($0)) != nil })
            for length in 0..<bytes.count {
                let decoded = withGuardedBytes(Array(bytes.prefix(length))) { (try? decoder.decode($0)) != nil }
                if decoded { Issue.record("a \(length)-byte prefix decoded: \(String(decoding: bytes.prefix(length), as: UTF8.self))") }
            }
        }
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array(#"{}[]":,\-0123456789aeflnrstuE. "#.utf8) + [0x00, 0x1F, 0xC3, 0xFF]
        var rejected = 0
        for _ in 0..<3000 {
            var bytes = lines.randomElement(using: &generator)!
            for _ in 0..<Int.random(in: 1...3, using: &generator) {
                let index = Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: bytes[index] = alphabet.randomElement(using: &generator)!
                case 1: bytes.remove(at: index)
                default: bytes.insert(alphabet.randomElement(using: &generator)!, at: index)
                }
            }
            if withGuardedBytes(bytes, { (try? decoder.decode($0)) == nil }) { rejected += 1 }
        }
        #expect(rejected > 1000)
    }

    @Test func escapedStringsDecode() throws {
        let text = #"{"time":"2026-11-24T16:34:13Z","event":"unlink","args":{"path":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}}"#
        guard case .event(let unlink) = try NDJSONDecoder().decode(text) else {
            Issue.record("not an event")
            return
        }
        #expect(unlink.args == Arguments([.string("\"\\/\u{08}\u{0C}\n\r\té😀")]))
    }

    private func firstIndex(of needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        return (0...(haystack.count - needle.count)).first { haystack[$0..<($0 + needle.count)].elementsEqual(needle) }
    }
}
