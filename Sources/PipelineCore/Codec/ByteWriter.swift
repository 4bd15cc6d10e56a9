/// A cursor that writes into memory the caller has already sized.
///
/// The encoder computes an upper bound for a line, grows its output by that
/// much once, and then writes through this cursor with no capacity checks; the
/// bound is what keeps every write in range.
struct ByteWriter {
    var cursor: UnsafeMutablePointer<UInt8>

    init(_ start: UnsafeMutablePointer<UInt8>) { cursor = start }

    @inline(__always)
    mutating func byte(_ value: UInt8) {
        cursor.pointee = value
        cursor += 1
    }

    @inline(__always)
    mutating func literal(_ text: StaticString) {
        bytes(text.utf8Start, text.utf8CodeUnitCount)
    }

    /// Copies `count` bytes. Lines are made of many short pieces (keys,
    /// names, numbers), so short copies are done with overlapping word moves
    /// instead of a call to `memmove`; neither side is touched out of range.
    @inline(__always)
    mutating func bytes(_ start: UnsafePointer<UInt8>, _ count: Int) {
        let source = UnsafeRawPointer(start)
        let target = UnsafeMutableRawPointer(cursor)
        if count >= 8 && count <= 16 {
            let head = source.loadUnaligned(as: UInt64.self)
            let tail = source.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self)
            target.storeBytes(of: head, as: UInt64.self)
            target.storeBytes(of: tail, toByteOffset: count - 8, as: UInt64.self)
        } else if count > 16 && count <= 32 {
            let head = source.loadUnaligned(as: SIMD16<UInt8>.self)
            let tail = source.loadUnaligned(fromByteOffset: count - 16, as: SIMD16<UInt8>.self)
            target.storeBytes(of: head, as: SIMD16<UInt8>.self)
            target.storeBytes(of: tail, toByteOffset: count - 16, as: SIMD16<UInt8>.self)
        } else if count > 32 && count <= 64 {
            // The constant run of an event line (`,"event":...,"retval":`) is 40-65 bytes.
            let a = source.loadUnaligned(as: SIMD16<UInt8>.self)
            let b = source.loadUnaligned(fromByteOffset: 16, as: SIMD16<UInt8>.self)
            let c = source.loadUnaligned(fromByteOffset: count - 32, as: SIMD16<UInt8>.self)
            let d = source.loadUnaligned(fromByteOffset: count - 16, as: SIMD16<UInt8>.self)
            target.storeBytes(of: a, as: SIMD16<UInt8>.self)
            target.storeBytes(of: b, toByteOffset: 16, as: SIMD16<UInt8>.self)
            target.storeBytes(of: c, toByteOffset: count - 32, as: SIMD16<UInt8>.self)
            target.storeBytes(of: d, toByteOffset: count - 16, as: SIMD16<UInt8>.self)
        } else if count >= 4 && count < 8 {
            let head = source.loadUnaligned(as: UInt32.self)
            let tail = source.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)
            target.storeBytes(of: head, as: UInt32.self)
            target.storeBytes(of: tail, toByteOffset: count - 4, as: UInt32.self)
        } else if count < 4 {
            for index in 0..<count { cursor[index] = start[index] }
        } else {
            cursor.update(from: start, count: count)
        }
        cursor += count
    }

    /// Copies `count` bytes of a run that is usually longer than 64 (a
    /// line's process part): 32 at a time, the rest as ``bytes(_:_:)`` does;
    /// nothing is written past `count`.
    @inline(__always)
    mutating func long(_ start: UnsafeRawPointer, _ count: Int) {
        var offset = 0
        let target = UnsafeMutableRawPointer(cursor)
        while count - offset >= 32 {
            target.storeBytes(of: start.loadUnaligned(fromByteOffset: offset, as: SIMD32<UInt8>.self), toByteOffset: offset, as: SIMD32<UInt8>.self)
            offset += 32
        }
        cursor += offset
        bytes(start.assumingMemoryBound(to: UInt8.self) + offset, count - offset)
    }

    /// Copies a buffer's bytes, short ones by word moves as above.
    @inline(__always)
    mutating func bytes(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        bytes(base.assumingMemoryBound(to: UInt8.self), buffer.count)
    }

    /// "00" to "99": two digits of a number below 100 are one 2-byte load.
    static var digitPairs: StaticString {
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899"
    }

    /// Two decimal digits, for 0...99.
    @inline(__always)
    mutating func twoDigits(_ value: Int) {
        let pair = UnsafeRawPointer(ByteWriter.digitPairs.utf8Start).loadUnaligned(fromByteOffset: 2 * value, as: UInt16.self)
        UnsafeMutableRawPointer(cursor).storeBytes(of: pair, as: UInt16.self)
        cursor += 2
    }

    /// 10^n for n in 0...19. A switch of constants, which the compiler
    /// makes a table in read-only data: no lazy global to check per call.
    @inline(__always)
    static func powerOfTen(_ exponent: Int) -> UInt64 {
        switch exponent {
        case 0: 1
        case 1: 10
        case 2: 100
        case 3: 1_000
        case 4: 10_000
        case 5: 100_000
        case 6: 1_000_000
        case 7: 10_000_000
        case 8: 100_000_000
        case 9: 1_000_000_000
        case 10: 10_000_000_000
        case 11: 100_000_000_000
        case 12: 1_000_000_000_000
        case 13: 10_000_000_000_000
        case 14: 100_000_000_000_000
        case 15: 1_000_000_000_000_000
        case 16: 10_000_000_000_000_000
        case 17: 100_000_000_000_000_000
        case 18: 1_000_000_000_000_000_000
        default: 10_000_000_000_000_000_000
        }
    }

    /// The number of decimal digits of `value`: log10 estimated from the
    /// bit length (1233 / 4096 is just above log10 2), then one comparison
    /// with the power of ten it may have reached.
    @inline(__always)
    static func digitCount(_ value: UInt64) -> Int {
        let bits = 64 - (value | 1).leadingZeroBitCount
        let estimate = (bits &* 1233) >> 12
        return Swift.max(1, estimate &+ (value >= powerOfTen(estimate) ? 1 : 0))
    }

    /// An unsigned decimal number (at most 20 bytes).
    mutating func decimal(_ value: UInt64) {
        if value < 10 {
            cursor.pointee = UInt8(truncatingIfNeeded: 48 + value)
            cursor += 1
            return
        }
        let digits = ByteWriter.digitCount(value)
        let pairs = UnsafeRawPointer(ByteWriter.digitPairs.utf8Start)
        var rest = value
        var position = UnsafeMutableRawPointer(cursor + digits)
        while rest >= 100 {
            let pair = Int(rest % 100)
            rest /= 100
            position -= 2
            position.storeBytes(of: pairs.loadUnaligned(fromByteOffset: 2 * pair, as: UInt16.self), as: UInt16.self)
        }
        if rest >= 10 {
            position -= 2
            position.storeBytes(of: pairs.loadUnaligned(fromByteOffset: 2 * Int(rest), as: UInt16.self), as: UInt16.self)
        } else {
            position -= 1
            position.storeBytes(of: UInt8(truncatingIfNeeded: 48 + rest), as: UInt8.self)
        }
        cursor += digits
    }

    /// A signed decimal number (at most 20 bytes).
    mutating func decimal(_ value: Int64) {
        if value < 0 {
            byte(UInt8(ascii: "-"))
            decimal(value.magnitude)
        } else {
            decimal(UInt64(value))
        }
    }

    /// `0x` and lowercase hex digits without leading zeros (at most 10 bytes).
    mutating func hex(_ value: UInt32) {
        literal("0x")
        var shift = 28
        while shift > 0 && (value >> UInt32(shift)) & 0xF == 0 { shift -= 4 }
        while shift >= 0 {
            byte(ByteWriter.hexDigit(UInt8(truncatingIfNeeded: value >> UInt32(shift)) & 0xF))
            shift -= 4
        }
    }

    @inline(__always)
    static func hexDigit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? 48 + nibble : 87 + nibble }

    /// A dotted IPv4 address from its host-order value (at most 15 bytes).
    mutating func ipv4(_ address: UInt32) {
        decimal(UInt64(address >> 24))
        byte(UInt8(ascii: "."))
        decimal(UInt64((address >> 16) & 0xFF))
        byte(UInt8(ascii: "."))
        decimal(UInt64((address >> 8) & 0xFF))
        byte(UInt8(ascii: "."))
        decimal(UInt64(address & 0xFF))
    }

    /// ``ipv4(_:)`` from a table of the 256 octets' text, each padded to
    /// four bytes: one four-byte store per octet (the padding is written
    /// over by what follows, within the address's 15 bytes plus 3 of room
    /// the caller's bound has).
    @inline(__always)
    mutating func ipv4(_ address: UInt32, octets: UnsafePointer<UInt8>) {
        let table = UnsafeRawPointer(octets)
        @inline(__always) func octet(_ value: UInt32) {
            let octet = Int(value & 0xFF)
            UnsafeMutableRawPointer(cursor).storeBytes(of: table.loadUnaligned(fromByteOffset: 4 * octet, as: UInt32.self), as: UInt32.self)
            cursor += 1 + (octet >= 10 ? 1 : 0) + (octet >= 100 ? 1 : 0)
        }
        octet(address >> 24)
        byte(UInt8(ascii: "."))
        octet(address >> 16)
        byte(UInt8(ascii: "."))
        octet(address >> 8)
        byte(UInt8(ascii: "."))
        octet(address)
    }

    /// An IPv6 address as glibc's `inet_ntop` writes it: the longest run of two
    /// or more zero groups (the first of equals) as `::`, lowercase hex, and
    /// the last 32 bits dotted for IPv4-mapped (`::ffff:a.b.c.d`) and
    /// IPv4-compatible (`::a.b.c.d`) addresses. At most 45 bytes.
    mutating func ipv6(_ address: IPv6Bytes) {
        var groups: (UInt16, UInt16, UInt16, UInt16, UInt16, UInt16, UInt16, UInt16) = (0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &groups) { raw in
            let words = raw.bindMemory(to: UInt16.self)
            for index in 0..<4 {
                words[index] = UInt16(truncatingIfNeeded: address.high >> UInt64(48 - 16 * index))
                words[index + 4] = UInt16(truncatingIfNeeded: address.low >> UInt64(48 - 16 * index))
            }
        }
        withUnsafeBytes(of: groups) { raw in
            let words = raw.bindMemory(to: UInt16.self)
            var bestStart = -1
            var bestLength = 0
            var runStart = -1
            for index in 0..<8 {
                if words[index] == 0 {
                    if runStart < 0 { runStart = index }
                    let length = index - runStart + 1
                    if length > bestLength {
                        bestLength = length
                        bestStart = runStart
                    }
                } else {
                    runStart = -1
                }
            }
            if bestLength < 2 { bestStart = -1 }
            var index = 0
            while index < 8 {
                if index == bestStart {
                    byte(UInt8(ascii: ":"))
                    index += bestLength
                    if index == 8 { byte(UInt8(ascii: ":")) }
                    continue
                }
                if index != 0 { byte(UInt8(ascii: ":")) }
                if index == 6 && bestStart == 0
                    && (bestLength == 6 || (bestLength == 5 && words[5] == 0xFFFF))
                {
                    ipv4(UInt32(words[6]) << 16 | UInt32(words[7]))
                    return
                }
                let word = words[index]
                var shift = 12
                while shift > 0 && (word >> UInt16(shift)) & 0xF == 0 { shift -= 4 }
                while shift >= 0 {
                    byte(ByteWriter.hexDigit(UInt8(truncatingIfNeeded: word >> UInt16(shift)) & 0xF))
                    shift -= 4
                }
                index += 1
            }
        }
    }

    /// The body of a JSON string (no quotes) from bytes known to be valid
    /// UTF-8: `"` and `\` escaped, control characters as `\n`, `\t`, ... or
    /// `\u00XX`. Writes at most 6 bytes per input byte.
    mutating func escaped(validUTF8 text: UnsafeBufferPointer<UInt8>) {
        guard let base = text.baseAddress else { return }
        var runStart = 0
        for index in 0..<text.count {
            let value = base[index]
            if value >= 0x20 && value != 0x22 && value != 0x5C { continue }
            bytes(base + runStart, index - runStart)
            escape(value)
            runStart = index + 1
        }
        bytes(base + runStart, text.count - runStart)
    }

    mutating func escape(_ value: UInt8) {
        byte(UInt8(ascii: "\\"))
        switch value {
        case 0x22: byte(0x22)
        case 0x5C: byte(0x5C)
        case 0x0A: byte(UInt8(ascii: "n"))
        case 0x0D: byte(UInt8(ascii: "r"))
        case 0x09: byte(UInt8(ascii: "t"))
        case 0x08: byte(UInt8(ascii: "b"))
        case 0x0C: byte(UInt8(ascii: "f"))
        default:
            literal("u00")
            byte(ByteWriter.hexDigit(value >> 4))
            byte(ByteWriter.hexDigit(value & 0xF))
        }
    }

    /// A task's comm as a JSON string body (no quotes): the bytes before its
    /// first NUL. A comm of printable ASCII without `"` or `\` (nearly every
    /// one) is checked eight bytes at a time and copied with two stores;
    /// any other goes through ``escaped(repairing:)``. Writes at most 96 bytes
    /// (16 that each escape to six), and may store 16 bytes past the
    /// comm's own for the fast copy, inside that room.
    @inline(__always)
    mutating func comm(_ comm: Comm) {
        let low = UInt64(littleEndian: comm.bytes.0)
        let high = UInt64(littleEndian: comm.bytes.1)
        let length = ByteWriter.firstFlagged(ByteWriter.zeroBytes(low), ByteWriter.zeroBytes(high))
        // The first byte that is NUL, a control character, non-ASCII, `"` or
        // `\`: the comm is plain exactly when that is its NUL (or its end).
        let stop = ByteWriter.firstFlagged(ByteWriter.specialBytes(low), ByteWriter.specialBytes(high))
        if stop == length {
            let target = UnsafeMutableRawPointer(cursor)
            target.storeBytes(of: comm.bytes.0, as: UInt64.self)
            target.storeBytes(of: comm.bytes.1, toByteOffset: 8, as: UInt64.self)
            cursor += length
        } else {
            withUnsafeBytes(of: comm.bytes) { escaped(repairing: UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
        }
    }

    private static let ones: UInt64 = 0x0101_0101_0101_0101
    private static let highBits: UInt64 = 0x8080_8080_8080_8080

    /// The high bit of each zero byte of `word` set (exact up to the first
    /// zero byte; bytes above it may be flagged too, which is all the callers need).
    @inline(__always)
    static func zeroBytes(_ word: UInt64) -> UInt64 {
        (word &- ones) & ~word & highBits
    }

    /// The high bit set for bytes below 0x20 (NUL included), at or above
    /// 0x80, `"` or `\`; exact up to the first such byte, as ``zeroBytes(_:)``.
    @inline(__always)
    static func specialBytes(_ word: UInt64) -> UInt64 {
        let control = (word &- ones &* 0x20) & ~word & highBits
        return control | (word & highBits) | zeroBytes(word ^ (ones &* 0x22)) | zeroBytes(word ^ (ones &* 0x5C))
    }

    /// The index of the first flagged byte of the 16 bytes `low`, `high`
    /// (16 when none is).
    @inline(__always)
    static func firstFlagged(_ low: UInt64, _ high: UInt64) -> Int {
        if low != 0 { return low.trailingZeroBitCount >> 3 }
        if high != 0 { return 8 + high.trailingZeroBitCount >> 3 }
        return 16
    }

    /// The body of a JSON string from raw bytes that may not be UTF-8 (a
    /// task's comm): each maximal invalid subsequence becomes U+FFFD, as
    /// Swift's `String(decoding:as:)` repairs. At most 6 bytes per input byte.
    mutating func escaped(repairing text: UnsafeRawBufferPointer) {
        var index = 0
        let count = text.count
        while index < count {
            let lead = text[index]
            if lead < 0x80 {
                if lead >= 0x20 && lead != 0x22 && lead != 0x5C { byte(lead) } else { escape(lead) }
                index += 1
                continue
            }
            let length = ByteWriter.validSequenceLength(text, at: index)
            if length > 0 {
                for offset in 0..<length { byte(text[index + offset]) }
                index += length
            } else {
                // U+FFFD, then skip the maximal subpart that was valid so far.
                byte(0xEF)
                byte(0xBF)
                byte(0xBD)
                index += ByteWriter.invalidPrefixLength(text, at: index)
            }
        }
    }

    /// The length of the well-formed UTF-8 sequence at `index`, 0 if it is not one.
    static func validSequenceLength(_ text: UnsafeRawBufferPointer, at index: Int) -> Int {
        let lead = text[index]
        let available = text.count - index
        func continuation(_ offset: Int, _ low: UInt8 = 0x80, _ high: UInt8 = 0xBF) -> Bool {
            offset < available && text[index + offset] >= low && text[index + offset] <= high
        }
        switch lead {
        case 0xC2...0xDF: return continuation(1) ? 2 : 0
        case 0xE0: return continuation(1, 0xA0) && continuation(2) ? 3 : 0
        case 0xE1...0xEC, 0xEE...0xEF: return continuation(1) && continuation(2) ? 3 : 0
        case 0xED: return continuation(1, 0x80, 0x9F) && continuation(2) ? 3 : 0
        case 0xF0: return continuation(1, 0x90) && continuation(2) && continuation(3) ? 4 : 0
        case 0xF1...0xF3: return continuation(1) && continuation(2) && continuation(3) ? 4 : 0
        case 0xF4: return continuation(1, 0x80, 0x8F) && continuation(2) && continuation(3) ? 4 : 0
        default: return 0
        }
    }

    /// How many bytes of an ill-formed sequence at `index` one U+FFFD stands for:
    /// the lead byte plus the continuation bytes that were still acceptable.
    static func invalidPrefixLength(_ text: UnsafeRawBufferPointer, at index: Int) -> Int {
        let lead = text[index]
        let available = text.count - index
        var ranges: [(UInt8, UInt8)]
        switch lead {
        case 0xC2...0xDF: ranges = [(0x80, 0xBF)]
        case 0xE0: ranges = [(0xA0, 0xBF), (0x80, 0xBF)]
        case 0xE1...0xEC, 0xEE...0xEF: ranges = [(0x80, 0xBF), (0x80, 0xBF)]
        case 0xED: ranges = [(0x80, 0x9F), (0x80, 0xBF)]
        case 0xF0: ranges = [(0x90, 0xBF), (0x80, 0xBF), (0x80, 0xBF)]
        case 0xF1...0xF3: ranges = [(0x80, 0xBF), (0x80, 0xBF), (0x80, 0xBF)]
        case 0xF4: ranges = [(0x80, 0x8F), (0x80, 0xBF), (0x80, 0xBF)]
        default: return 1
        }
        var length = 1
        for (low, high) in ranges {
            guard length < available else { break }
            let next = text[index + length]
            guard next >= low && next <= high else { break }
            length += 1
        }
        return length
    }
}
