/// Reads NDJSON event lines (what ``NDJSONEncoder`` writes) back into records,
/// for the `replay` source and `archive cat`.
///
/// PLACEHOLDER API — the codec work replaces this body; the signature stays.
public struct NDJSONDecoder: Sendable {
    public init() {}

    /// Decodes one line (without its `\n`).
    public func decode(_ line: UnsafeRawBufferPointer) throws(NDJSONError) -> PipelineRecord {
        throw NDJSONError(message: "not implemented", offset: 0)
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
