/// Decodes the kernel program's records (SPEC section 4) into ``SyscallEvent``s.
///
/// PLACEHOLDER API — the codec work replaces this body; the signature stays.
public struct WireDecoder: Sendable {
    /// Added to the header's monotonic `ts` to give wall-clock time.
    public var wallOffsetNs: Int64

    public init(wallOffsetNs: Int64) {
        self.wallOffsetNs = wallOffsetNs
    }

    /// Decodes one record. Never reads outside `record`; a record that is short,
    /// carries an unknown tag or event id, or an impossible size throws.
    public func decode(_ record: UnsafeRawBufferPointer) throws(WireError) -> SyscallEvent {
        throw WireError.shortHeader
    }
}

/// Why a kernel record was rejected as malformed.
public enum WireError: Error, Sendable, Equatable {
    case shortHeader
    case unknownEvent(UInt32)
    case tooManyArguments(UInt32)
    case shortArgument(index: Int)
    case unknownTag(UInt8)
    case badSize(index: Int)
}
