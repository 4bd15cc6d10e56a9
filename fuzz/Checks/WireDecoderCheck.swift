import PipelineCore

/// One kernel record (docs/wire-format.md) through ``WireDecoder``, as the
/// `syscall_monitor` source hands each perf or ring buffer sample to it.
///
/// Properties, for every record the decoder accepts:
/// - the event is a catalog event and carries exactly the arguments it declares;
/// - decoding the same bytes with padding after them gives the same event
///   (the decoder ignores what follows the last argument);
/// - NDJSON round trip: the event's line decodes back to the same record (its
///   comm repaired when it was not UTF-8, as NDJSONDecoder documents), and that
///   record's line is the same line.
/// A rejected record must be rejected again with the same error.
enum WireDecoderCheck {
    static let decoder = WireDecoder(wallOffsetNs: 1_700_000_000_000_000_000)

    static func check(_ input: UnsafeRawBufferPointer) throws(PropertyViolation) {
        let event: SyscallEvent
        do {
            event = try decoder.decode(input)
        } catch {
            let padded = withPadding(input) { raw in Result { () throws(WireError) in try decoder.decode(raw) } }
            // Padding can complete a record cut inside an argument, never fix any other error.
            switch (error, padded) {
            case (.shortArgument, _), (.shortHeader, _), (.badSize, _): break
            case (_, .success(let event)): throw PropertyViolation("rejected (\(error)) but accepted with padding: \(event)")
            case (_, .failure(let again)): try require(again == error, "rejected as '\(error)', with padding as '\(again)'")
            }
            return
        }
        guard let kind = EventCatalog.kind(id: event.eventID) else {
            throw PropertyViolation("decoded an event id the catalog does not have: \(event.eventID)")
        }
        try require(event.args.count == kind.argTypes.count, "\(kind.name) decoded with \(event.args.count) arguments, declares \(kind.argTypes.count)")
        let padded = withPadding(input) { raw in Result { () throws(WireError) in try decoder.decode(raw) } }
        switch padded {
        case .success(let again): try require(again == event, "padding changed the event: \(event) became \(again)")
        case .failure(let error): throw PropertyViolation("accepted, but rejected with padding: \(error)")
        }
        try NDJSONDecoderCheck.roundTrip(.event(event))
    }

    /// The input followed by 8 bytes of 0xA5 (perf pads samples; these are not zeros, to be seen).
    static func withPadding<R>(_ input: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> R) -> R {
        var bytes = Array(input)
        bytes += [UInt8](repeating: 0xA5, count: 8)
        return bytes.withUnsafeBytes(body)
    }
}
