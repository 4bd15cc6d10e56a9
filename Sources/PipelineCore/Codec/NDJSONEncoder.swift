/// Encodes records as NDJSON lines, exactly as SPEC section 3 fixes them.
///
/// PLACEHOLDER API — the codec work replaces this body; the signature stays.
public struct NDJSONEncoder: Sendable {
    public init() {}

    /// Appends one line, ending in `\n`, to `buffer`.
    public func encode(_ record: PipelineRecord, into buffer: inout [UInt8]) {
        buffer.append(contentsOf: Array("{\"time\":\(record.timeNs)}\n".utf8))
    }

    /// Appends a line for every record of the batch.
    public func encode(_ batch: EventBatch, into buffer: inout [UInt8]) {
        for record in batch.records { encode(record, into: &buffer) }
    }
}
