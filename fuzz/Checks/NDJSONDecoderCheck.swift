import PipelineCore

/// One NDJSON line through ``NDJSONDecoder``, as `replay`, `archive cat` and the
/// `nats` source read each line of their input (without its `\n`).
///
/// Properties: a rejected line's error offset lies within the line (or just
/// past its end); an accepted line's record survives the encoder: its line
/// decodes back to the same record and re-encodes to the same line (a comm
/// that was not whole UTF-8 comes back repaired, as the decoder documents:
/// then only the rest of the record must come back the same).
enum NDJSONDecoderCheck {
    static let decoder = NDJSONDecoder()
    static let encoder = NDJSONEncoder()

    static func check(_ input: UnsafeRawBufferPointer) throws(PropertyViolation) {
        let record: PipelineRecord
        do {
            record = try decoder.decode(input)
        } catch {
            try require(error.offset >= 0 && error.offset <= input.count, "error offset \(error.offset) outside the \(input.count)-byte line: \(error)")
            try require(!error.message.isEmpty, "an error without a message at \(error.offset)")
            return
        }
        try roundTrip(record)
    }

    /// `record` → line → record → line: the records agree (up to a repaired
    /// comm) and the two lines are the same.
    static func roundTrip(_ record: PipelineRecord) throws(PropertyViolation) {
        var line: [UInt8] = []
        encoder.encode(record, into: &line)
        try require(line.last == UInt8(ascii: "\n"), "the encoder's line does not end in a newline")
        try require(line.dropLast().allSatisfy { $0 != UInt8(ascii: "\n") }, "the encoder's line holds a newline: \(text(line))")
        let body = Array(line.dropLast())
        let again: PipelineRecord
        do {
            again = try decoder.decode(body)
        } catch {
            throw PropertyViolation("the encoder's line does not decode (\(error)): \(text(line))")
        }
        guard commIsUTF8(record) else {
            // Documented: the comm comes back repaired (and cut to 16 bytes
            // again, which can cut a replacement character), the rest the same.
            try require(withoutComm(again) == withoutComm(record), "the record changed through its line \(text(line)): \(record) became \(again)")
            return
        }
        try require(again == record, "the record changed through its line \(text(line)): \(record) became \(again)")
        var second: [UInt8] = []
        encoder.encode(again, into: &second)
        try require(second == line, "the line changed when encoded again: \(text(line)) became \(text(second))")
    }

    static func withoutComm(_ record: PipelineRecord) -> PipelineRecord {
        guard case .event(var event) = record else { return record }
        event.comm = Comm()
        return .event(event)
    }

    static func commIsUTF8(_ record: PipelineRecord) -> Bool {
        guard case .event(let event) = record else { return true }
        return event.comm.withBytes { String(validating: $0, as: UTF8.self) != nil }
    }

    static func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }
}
