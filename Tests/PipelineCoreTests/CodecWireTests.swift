import PipelineCore
import Testing

@Suite("wire decoder")
struct CodecWireTests {
    private func decoded(_ record: WireRecord, wallOffsetNs: Int64 = 0) throws -> SyscallEvent {
        try decodeGuarded(record.finished, wallOffsetNs: wallOffsetNs).get()
    }

    private func rejection(_ bytes: [UInt8]) -> WireError? {
        if case .failure(let error) = decodeGuarded(bytes) { return error }
        return nil
    }

    @Test func headerFieldsAndTime() throws {
        var record = WireRecord(
            eventID: 42, ts: 8_123_456_789, retval: -111, pidNamespace: 4_026_531_836, mountNamespace: 4_026_531_841,
            hostPpid: 77, hostPid: 4242, ppid: 3, pid: 9, uid: 1001, comm: Array("python3".utf8))
        record.int(3)
        record.inet((127, 0, 0, 1), port: 1)
        let event = try decoded(record, wallOffsetNs: 1_795_538_045_000_000_000)
        #expect(event.ktimeNs == 8_123_456_789)
        #expect(event.timeNs == 1_795_538_053_123_456_789)
        #expect(event.eventID == 42)
        #expect(event.retval == -111)
        #expect(event.pidNamespace == 4_026_531_836)
        #expect(event.mountNamespace == 4_026_531_841)
        #expect(event.hostPpid == 77)
        #expect(event.hostPid == 4242)
        #expect(event.ppid == 3)
        #expect(event.pid == 9)
        #expect(event.uid == 1001)
        #expect(event.comm == Comm("python3"))
        #expect(event.isContainer)
        #expect(event.args == Arguments([.int(3), .sockaddr(.inet(address: 0x7F00_0001, port: 1))]))
    }

    @Test func fullSixteenByteCommWithoutNul() throws {
        var record = WireRecord(eventID: 3, comm: Array("abcdefghijklmnop".utf8))
        record.int(7)
        let event = try decoded(record)
        #expect(event.comm.description == "abcdefghijklmnop")
        #expect(event.args == Arguments([.int(7)]))
    }

    /// The word-at-a-time comm decoding agrees with `Comm(raw:)` byte for byte.
    @Test func commMatchesByteWiseCopy() throws {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var comm = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Often a NUL somewhere, with bytes after it that must be cleared.
            if Bool.random(using: &generator) { comm[Int.random(in: 0..<16, using: &generator)] = 0 }
            if Int.random(in: 0..<4, using: &generator) == 0 { comm[Int.random(in: 0..<16, using: &generator)] = 1 }
            var record = WireRecord(eventID: 3, comm: comm)
            record.int(1)
            let event = try decoded(record)
            #expect(event.comm == comm.withUnsafeBytes { Comm(raw: $0) }, "\(comm)")
        }
    }

    @Test func everyFlagTag() throws {
        var open = WireRecord(eventID: 2)
        open.string("/etc/passwd")
        open.flags(13, 0o2000101)
        #expect(try decoded(open).args == Arguments([.string("/etc/passwd"), .flags(.open, 0o2000101)]))

        var socket = WireRecord(eventID: 41)
        socket.flags(15, 10)
        socket.flags(16, 0o2000001)
        socket.int(6)
        #expect(try decoded(socket).args == Arguments([.flags(.socketDomain, 10), .flags(.socketType, 0o2000001), .int(6)]))

        var unlinkat = WireRecord(eventID: 263)
        unlinkat.int(-100)
        unlinkat.string("dir")
        unlinkat.flags(19, 0x200)
        #expect(try decoded(unlinkat).args == Arguments([.int(-100), .string("dir"), .flags(.unlinkat, 0x200)]))

        var ptrace = WireRecord(eventID: 101)
        ptrace.flags(23, 16)
        ptrace.int(1234)
        #expect(try decoded(ptrace).args == Arguments([.flags(.ptraceRequest, 16), .int(1234)]))

        var mount = WireRecord(eventID: 165)
        mount.string("/dev/sda1")
        mount.string("/mnt")
        mount.string("ext4")
        mount.flags(24, 3)
        mount.string("")
        #expect(try decoded(mount).args == Arguments([
            .string("/dev/sda1"), .string("/mnt"), .string("ext4"), .flags(.mount, 3), .string(""),
        ]))

        var umount = WireRecord(eventID: 166)
        umount.string("/mnt")
        umount.flags(25, 2)
        #expect(try decoded(umount).args == Arguments([.string("/mnt"), .flags(.umount, 2)]))

        var execveat = WireRecord(eventID: 322)
        execveat.int(3)
        execveat.string("")
        execveat.stringArray(["sh", "-c", "true"])
        execveat.flags(14, 0x1000)
        #expect(try decoded(execveat).args == Arguments([
            .int(3), .string(""), .strings(["sh", "-c", "true"], truncated: false), .flags(.exec, 0x1000),
        ]))
    }

    @Test func stringShapes() throws {
        // Size 0 and a negative size (the kernel could not read the string) are null.
        for size: Int32 in [0, -14] {
            var record = WireRecord(eventID: 87)
            record.rawString(size: size, payload: [])
            #expect(try decoded(record).args == Arguments([.null]))
        }
        // No NUL: the text is every byte of the size.
        var unterminated = WireRecord(eventID: 87)
        unterminated.rawString(size: 4, payload: Array("/tmp".utf8))
        #expect(try decoded(unterminated).args == Arguments([.string("/tmp")]))
        // Bytes after the NUL are not part of the text.
        var early = WireRecord(eventID: 87)
        early.rawString(size: 8, payload: Array("/a".utf8) + [0, 0x41, 0x42, 0, 0, 0])
        #expect(try decoded(early).args == Arguments([.string("/a")]))
        // Invalid UTF-8 is repaired, never trusted.
        var invalid = WireRecord(eventID: 87)
        invalid.rawString(size: 4, payload: [0x2F, 0xFF, 0x61, 0])
        #expect(try decoded(invalid).args == Arguments([.string("/\u{FFFD}a")]))
    }

    @Test func stringArrays() throws {
        var empty = WireRecord(eventID: 59)
        empty.string("/bin/true")
        empty.stringArray([])
        #expect(try decoded(empty).args == Arguments([.string("/bin/true"), .strings([], truncated: false)]))

        let twenty = (0..<20).map { "a\($0)" }
        var full = WireRecord(eventID: 59)
        full.string("/bin/echo")
        full.stringArray(twenty)
        #expect(try decoded(full).args == Arguments([.string("/bin/echo"), .strings(twenty, truncated: false)]))

        let many = (0..<30).map { "x\($0)" }
        var truncated = WireRecord(eventID: 59)
        truncated.string("/bin/echo")
        truncated.stringArray(many)
        #expect(try decoded(truncated).args == Arguments([
            .string("/bin/echo"), .strings(Array(many.prefix(20)), truncated: true),
        ]))

        // A null element (size 0) reads as an empty string, the array goes on.
        var holes = WireRecord(eventID: 59)
        holes.string("/bin/x")
        holes.raw([11, 10, 0, 0, 0, 0, 10, 2, 0, 0, 0, 0x62, 0, 11], countsAsArgument: true)
        #expect(try decoded(holes).args == Arguments([.string("/bin/x"), .strings(["", "b"], truncated: false)]))

        // 21 elements without the marker, or 22, are not what the kernel writes.
        for count in [21, 22] {
            var bogus = WireRecord(eventID: 59)
            bogus.string("/bin/x")
            var payload: [UInt8] = [11]
            for _ in 0..<count { payload += [10, 2, 0, 0, 0, 0x7A, 0] }
            payload.append(11)
            bogus.raw(payload, countsAsArgument: true)
            #expect(rejection(bogus.finished) == .badSize(index: 1))
        }
        // An element with another tag inside the array.
        var wrongTag = WireRecord(eventID: 59)
        wrongTag.string("/bin/x")
        wrongTag.raw([11, 1, 0, 0, 0, 0, 11], countsAsArgument: true)
        #expect(rejection(wrongTag.finished) == .typeMismatch(index: 1, expected: .string, found: .int))
    }

    @Test func socketAddressFamilies() throws {
        func address(_ build: (inout WireRecord) -> Void) throws -> Argument {
            var record = WireRecord(eventID: 49)
            record.int(5)
            build(&record)
            return try decoded(record).args[1]
        }
        #expect(try address { $0.inet((10, 1, 2, 3), port: 8080) } == .sockaddr(.inet(address: 0x0A01_0203, port: 8080)))
        let v6: [UInt8] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
        #expect(try address { $0.inet6(v6, port: 443, flowInfo: 7, scope: 2) }
            == .sockaddr(.inet6(address: IPv6Bytes(v6), port: 443)))
        #expect(try address { $0.unix(pathBytes: Array("/run/x.sock".utf8)) } == .sockaddr(.unix(path: "/run/x.sock")))
        #expect(try address { $0.unix(pathBytes: [0] + Array("dbus-abc".utf8)) } == .sockaddr(.unix(path: "@dbus-abc")))
        #expect(try address { $0.unix(pathBytes: [0] + Array("abs".utf8) + [0, 0x78]) } == .sockaddr(.unix(path: "@abs")))
        #expect(try address { $0.unix(pathBytes: []) } == .sockaddr(.unix(path: "")))
        // A full 108-byte path with no NUL.
        let long = [UInt8](repeating: 0x61, count: 108)
        #expect(try address { $0.unix(pathBytes: long) } == .sockaddr(.unix(path: String(repeating: "a", count: 108))))
        #expect(try address { $0.otherFamily(16) } == .sockaddr(.other(family: 16)))
        #expect(try address { $0.otherFamily(0) } == .sockaddr(.other(family: 0)))
    }

    @Test func trailingPaddingIsIgnored() throws {
        var record = WireRecord(eventID: 50)
        record.int(3)
        record.int(128)
        record.raw([0, 0, 0, 0, 0, 0])
        #expect(try decoded(record).args == Arguments([.int(3), .int(128)]))
    }

    @Test func malformedShapesAreRejected() {
        var valid = WireRecord(eventID: 42)
        valid.int(3)
        valid.inet((127, 0, 0, 1), port: 80)
        let bytes = valid.finished

        #expect(rejection([]) == .shortHeader)
        #expect(rejection(Array(bytes.prefix(67))) == .shortHeader)
        // The header alone: argument 0 is missing.
        #expect(rejection(Array(bytes.prefix(68))) == .shortArgument(index: 0))
        // Cut inside the int and inside the sockaddr.
        #expect(rejection(Array(bytes.prefix(71))) == .shortArgument(index: 0))
        #expect(rejection(Array(bytes.prefix(bytes.count - 1))) == .shortArgument(index: 1))

        var unknownEvent = WireRecord(eventID: 1)
        unknownEvent.int(3)
        #expect(rejection(unknownEvent.finished) == .unknownEvent(1))
        #expect(rejection(WireRecord(eventID: 70_000).finished) == .unknownEvent(70_000))

        var tooMany = WireRecord(eventID: 42, argnum: 7)
        tooMany.int(3)
        #expect(rejection(tooMany.finished) == .tooManyArguments(7))

        // argnum says two, only one is present.
        var fewer = WireRecord(eventID: 42, argnum: 2)
        fewer.int(3)
        #expect(rejection(fewer.finished) == .shortArgument(index: 1))

        var wrongCount = WireRecord(eventID: 42, argnum: 1)
        wrongCount.int(3)
        #expect(rejection(wrongCount.finished) == .argumentCount(expected: 2, found: 1))

        var unknownTag = WireRecord(eventID: 3)
        unknownTag.raw([99, 0, 0, 0, 0], countsAsArgument: true)
        #expect(rejection(unknownTag.finished) == .unknownTag(99))

        // FILE_TYPE_T never appears on the wire; a path is a STR_T.
        var fileTag = WireRecord(eventID: 87)
        fileTag.raw([17, 2, 0, 0, 0, 0x61, 0], countsAsArgument: true)
        #expect(rejection(fileTag.finished) == .typeMismatch(index: 0, expected: .string, found: .fileType))

        var sizePastEnd = WireRecord(eventID: 87)
        sizePastEnd.rawString(size: 100, payload: Array("/tmp".utf8))
        #expect(rejection(sizePastEnd.finished) == .badSize(index: 0))
        var hugeSize = WireRecord(eventID: 87)
        hugeSize.rawString(size: Int32.max, payload: [0x61])
        #expect(rejection(hugeSize.finished) == .badSize(index: 0))

        var shortFamily = WireRecord(eventID: 42)
        shortFamily.int(3)
        shortFamily.raw([12, 2], countsAsArgument: true)
        #expect(rejection(shortFamily.finished) == .shortArgument(index: 1))

        var unterminatedArray = WireRecord(eventID: 59)
        unterminatedArray.string("/bin/x")
        unterminatedArray.raw([11, 10, 2, 0, 0, 0, 0x61, 0], countsAsArgument: true)
        #expect(rejection(unterminatedArray.finished) == .shortArgument(index: 1))
    }

    /// Every strict prefix of every record shape is rejected, each decoded from
    /// a buffer that ends at a guard page.
    @Test func everyPrefixIsRejected() {
        var records: [WireRecord] = []
        var connect6 = WireRecord(eventID: 42)
        connect6.int(4)
        connect6.inet6([UInt8](repeating: 0, count: 15) + [1], port: 22)
        records.append(connect6)
        var accept = WireRecord(eventID: 43)
        accept.int(4)
        accept.unix(pathBytes: Array("/tmp/s".utf8))
        records.append(accept)
        var execve = WireRecord(eventID: 59)
        execve.string("/usr/bin/env")
        execve.stringArray((0..<25).map { "arg\($0)" })
        records.append(execve)
        var mount = WireRecord(eventID: 165)
        for text in ["none", "/proc", "proc"] { mount.string(text) }
        mount.flags(24, 0xC0ED_0001)
        mount.string("hidepid=2")
        records.append(mount)

        for record in records {
            let bytes = record.finished
            #expect((try? decodeGuarded(bytes).get()) != nil)
            for length in 0..<bytes.count {
                guard case .failure = decodeGuarded(Array(bytes.prefix(length))) else {
                    Issue.record("a \(length)-byte prefix of a \(bytes.count)-byte record decoded")
                    continue
                }
            }
        }
    }

    /// Corrupted records either decode or throw; none crashes or reads past its end.
    @Test func corruptedRecordsNeverCrash() {
        var execve = WireRecord(eventID: 59)
        execve.string("/bin/sh")
        execve.stringArray(["sh", "-c", "echo hi"])
        let original = execve.finished
        var generator = SystemRandomNumberGenerator()
        var rejected = 0
        for _ in 0..<3000 {
            var bytes = original
            for _ in 0..<Int.random(in: 1...4, using: &generator) {
                let index = Int.random(in: 68..<bytes.count, using: &generator)
                bytes[index] = UInt8.random(in: 0...255, using: &generator)
            }
            if case .failure = decodeGuarded(bytes) { rejected += 1 }
        }
        #expect(rejected > 0)
    }
}
