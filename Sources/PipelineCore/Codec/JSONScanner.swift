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

    /// Consumes an object's `{`; true when a member follows (false for `{}`).
    /// With ``memberKey()`` and ``nextMember()``, reads an object:
    /// `var more = try beginObject(); while more { key, value; more = try nextMember() }`.
    mutating func beginObject() throws(NDJSONError) -> Bool {
        try expect(UInt8(ascii: "{"))
        return !take(UInt8(ascii: "}"))
    }

    /// A member's key and its `:`; the scanner is then at the value, whose offset comes back too.
    mutating func memberKey() throws(NDJSONError) -> (key: String, valueOffset: Int) {
        let key = try string()
        try expect(UInt8(ascii: ":"))
        skipSpace()
        return (key, position)
    }

    /// After a member's value: true when another member follows, false at the object's `}`.
    mutating func nextMember() throws(NDJSONError) -> Bool {
        if take(UInt8(ascii: ",")) { return true }
        try expect(UInt8(ascii: "}"))
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

    /// A number that fits 16 bits; `what` names it when it does not.
    mutating func uint16(_ what: String) throws(NDJSONError) -> UInt16 {
        skipSpace()
        let start = position
        guard let value = UInt16(exactly: try uint32()) else { throw fail("\(what) out of range", at: start) }
        return value
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
