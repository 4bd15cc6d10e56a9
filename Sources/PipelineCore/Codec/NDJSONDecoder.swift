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
///
/// The pieces: ``JSONScanner`` reads JSON tokens with every read
/// bounds-checked, ``RecordParser`` turns one object into a record, and
/// ``IPText`` parses the address text.
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
