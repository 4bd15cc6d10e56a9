/// Decodes the kernel program's records (docs/wire-format.md, `bpf/wire.h`) into
/// ``SyscallEvent``s.
///
/// A record is the packed 68-byte `pl_sys_context_t` header, then `argnum`
/// arguments, each a one-byte tag and its payload. Every argument must carry
/// the tag its event declares (a path, declared `FILE_TYPE_T`, arrives as
/// `STR_T`), and `argnum` must equal the number of declared arguments. Bytes
/// after the last argument are ignored (perf samples are padded to 8 bytes).
///
/// The decoder never reads outside the record it is given; the only
/// allocations are the Strings of string arguments.
public struct WireDecoder: Sendable {
    /// Added to the header's monotonic `ts` to give wall-clock time.
    public var wallOffsetNs: Int64
    /// The node every decoded event is stamped with (this machine).
    public var node: NodeID

    /// Per event id: the wire tag of each declared argument, one byte each
    /// from the low end, and the argument count in the top byte; 0 for an id
    /// that is not an event.
    /// (A pointer into one table made once per process and never freed, not
    /// an array: decoding then retains nothing, where an array field costs
    /// a retain and a release per record. Never written after it is made.)
    private nonisolated(unsafe) let layouts: UnsafePointer<UInt64>

    /// A decoder that maps kernel time to wall time by adding `wallOffsetNs`
    /// (see ``Clock/monotonicToWallOffsetNs()``), and stamps events with `node`.
    public init(wallOffsetNs: Int64, node: NodeID = .host) {
        self.wallOffsetNs = wallOffsetNs
        self.node = node
        layouts = WireDecoder.sharedLayouts
    }

    /// The size of the context header.
    public static let headerSize = 68
    /// The most elements the kernel copies of a string array before its `"..."` marker.
    public static let maxStringArrayElements = 20

    private nonisolated(unsafe) static let sharedLayouts: UnsafePointer<UInt64> = {
        let table = UnsafeMutablePointer<UInt64>.allocate(capacity: 512)
        table.initialize(repeating: 0, count: 512)
        for kind in EventCatalog.all {
            var layout = UInt64(kind.argTypes.count) << 56
            for (index, type) in kind.argTypes.enumerated() {
                let wire = type == .fileType ? ArgType.string : type
                layout |= UInt64(wire.rawValue) << (8 * UInt64(index))
            }
            table[Int(kind.id)] = layout
        }
        return UnsafePointer(table)
    }()

    /// Decodes one record. Never reads outside `record`; a record that is short,
    /// carries an unknown tag or event id, or an impossible size throws.
    public func decode(_ record: UnsafeRawBufferPointer) throws(WireError) -> SyscallEvent {
        let size = record.count
        guard size >= WireDecoder.headerSize, let base = record.baseAddress else { throw .shortHeader }
        let ts = base.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        let eventID = base.loadUnaligned(fromByteOffset: 36, as: UInt32.self).littleEndian
        let argnum = base.loadUnaligned(fromByteOffset: 40, as: UInt32.self).littleEndian
        guard eventID < 512 else { throw .unknownEvent(eventID) }
        let layout = layouts[Int(eventID)]
        guard layout != 0 else { throw .unknownEvent(eventID) }
        guard argnum <= UInt32(Arguments.capacity) else { throw .tooManyArguments(argnum) }
        let declared = Int(layout >> 56)
        guard Int(argnum) == declared else {
            throw .argumentCount(expected: declared, found: Int(argnum))
        }

        var args = Arguments()
        var offset = WireDecoder.headerSize
        for index in 0..<declared {
            guard offset < size else { throw .shortArgument(index: index) }
            let tag = base.load(fromByteOffset: offset, as: UInt8.self)
            offset += 1
            let expected = UInt8(truncatingIfNeeded: layout >> (8 * UInt64(index)))
            guard tag == expected else {
                guard let type = ArgType(rawValue: tag) else { throw .unknownTag(tag) }
                throw .typeMismatch(index: index, expected: ArgType(rawValue: expected) ?? .int, found: type)
            }
            let argument: Argument
            switch tag {
            case ArgType.int.rawValue:
                guard size - offset >= 4 else { throw .shortArgument(index: index) }
                argument = .int(base.loadUnaligned(fromByteOffset: offset, as: Int32.self).littleEndian)
                offset += 4
            case ArgType.string.rawValue:
                argument = try string(base, size, &offset, index: index).map(Argument.string) ?? .null
            case ArgType.stringArray.rawValue:
                argument = try stringArray(base, size, &offset, index: index)
            case ArgType.sockaddr.rawValue:
                argument = .sockaddr(try sockaddr(base, size, &offset, index: index))
            default:
                // The flag tags, all a u32; the layout table only holds known tags.
                guard size - offset >= 4, let kind = ArgType(rawValue: tag)?.flagKind else {
                    throw .shortArgument(index: index)
                }
                argument = .flags(kind, base.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian)
                offset += 4
            }
            args.appendTaking(argument)
        }

        return SyscallEvent(
            timeNs: Int64(truncatingIfNeeded: ts) &+ wallOffsetNs,
            node: node,
            ktimeNs: ts,
            eventID: eventID,
            retval: base.loadUnaligned(fromByteOffset: 44, as: Int64.self).littleEndian,
            pid: base.loadUnaligned(fromByteOffset: 28, as: UInt32.self).littleEndian,
            ppid: base.loadUnaligned(fromByteOffset: 24, as: UInt32.self).littleEndian,
            hostPid: base.loadUnaligned(fromByteOffset: 20, as: UInt32.self).littleEndian,
            hostPpid: base.loadUnaligned(fromByteOffset: 16, as: UInt32.self).littleEndian,
            uid: base.loadUnaligned(fromByteOffset: 32, as: UInt32.self).littleEndian,
            pidNamespace: base.loadUnaligned(fromByteOffset: 8, as: UInt32.self).littleEndian,
            mountNamespace: base.loadUnaligned(fromByteOffset: 12, as: UInt32.self).littleEndian,
            comm: WireDecoder.comm(base + 52),
            args: args
        )
    }

    /// The 16 `comm` bytes as two words, everything from the first NUL on
    /// cleared (what ``Comm/init(raw:)`` does, without a byte loop).
    @inline(__always)
    static func comm(_ start: UnsafeRawPointer) -> Comm {
        var low = start.loadUnaligned(as: UInt64.self)
        var high = start.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        if let nul = firstZeroByte(low) {
            low &= nul == 0 ? 0 : (UInt64(1) << UInt64(8 * nul)) &- 1
            high = 0
        } else if let nul = firstZeroByte(high) {
            high &= nul == 0 ? 0 : (UInt64(1) << UInt64(8 * nul)) &- 1
        }
        var comm = Comm()
        comm.bytes = (low, high)
        return comm
    }

    /// The index of the lowest zero byte of a little-endian word, if any.
    @inline(__always)
    static func firstZeroByte(_ word: UInt64) -> Int? {
        // Exact for the lowest zero byte: borrows only propagate upwards.
        let marks = (word &- 0x0101_0101_0101_0101) & ~word & 0x8080_8080_8080_8080
        return marks == 0 ? nil : marks.trailingZeroBitCount / 8
    }

    /// A `STR_T` payload after its tag: nil for a size of 0 or less (the
    /// kernel's "could not read"). The text ends at the first NUL or at `size`.
    @inline(__always)
    private func string(
        _ base: UnsafeRawPointer, _ size: Int, _ offset: inout Int, index: Int
    ) throws(WireError) -> String? {
        guard size - offset >= 4 else { throw .shortArgument(index: index) }
        let length = Int(base.loadUnaligned(fromByteOffset: offset, as: Int32.self).littleEndian)
        offset += 4
        guard length > 0 else { return nil }
        guard length <= size - offset else { throw .badSize(index: index) }
        let bytes = UnsafeRawBufferPointer(start: base + offset, count: length)
        offset += length
        let end = bytes.firstIndex(of: 0) ?? length
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[0..<end]), as: UTF8.self)
    }

    /// `STR_T` elements until the closing `STR_ARR_T` byte. A 21st element
    /// `"..."` is the kernel's truncation marker.
    private func stringArray(
        _ base: UnsafeRawPointer, _ size: Int, _ offset: inout Int, index: Int
    ) throws(WireError) -> Argument {
        var elements: [String] = []
        while true {
            guard offset < size else { throw .shortArgument(index: index) }
            let tag = base.load(fromByteOffset: offset, as: UInt8.self)
            offset += 1
            if tag == ArgType.stringArray.rawValue { break }
            guard tag == ArgType.string.rawValue else {
                guard let type = ArgType(rawValue: tag) else { throw .unknownTag(tag) }
                throw .typeMismatch(index: index, expected: .string, found: type)
            }
            guard elements.count <= WireDecoder.maxStringArrayElements else { throw .badSize(index: index) }
            elements.append(try string(base, size, &offset, index: index) ?? "")
        }
        if elements.count > WireDecoder.maxStringArrayElements {
            guard elements.last == "..." else { throw .badSize(index: index) }
            elements.removeLast()
            return .strings(elements, truncated: true)
        }
        return .strings(elements, truncated: false)
    }

    /// A raw sockaddr: its family, then as many bytes as the kernel copies for it.
    private func sockaddr(
        _ base: UnsafeRawPointer, _ size: Int, _ offset: inout Int, index: Int
    ) throws(WireError) -> SocketAddress {
        guard size - offset >= 2 else { throw .shortArgument(index: index) }
        let family = base.loadUnaligned(fromByteOffset: offset, as: UInt16.self).littleEndian
        switch family {
        case 2:  // AF_INET: struct sockaddr_in, 16 bytes
            guard size - offset >= 16 else { throw .shortArgument(index: index) }
            let port = base.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self).bigEndian
            let address = base.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self).bigEndian
            offset += 16
            return .inet(address: address, port: port)
        case 10:  // AF_INET6: struct sockaddr_in6, 28 bytes (address at 8)
            guard size - offset >= 28 else { throw .shortArgument(index: index) }
            let port = base.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self).bigEndian
            let high = base.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self).bigEndian
            let low = base.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self).bigEndian
            offset += 28
            return .inet6(address: IPv6Bytes(high: high, low: low), port: port)
        case 1:  // AF_UNIX: struct sockaddr_un, 110 bytes (path at 2)
            guard size - offset >= 110 else { throw .shortArgument(index: index) }
            let path = UnsafeRawBufferPointer(start: base + offset + 2, count: 108)
            offset += 110
            return .unix(path: WireDecoder.unixPath(path))
        default:
            offset += 2
            return .other(family: family)
        }
    }

    /// A `sun_path`: up to its NUL; an abstract name (first byte NUL) is `@`
    /// and the rest up to the next NUL; all zeros (an unnamed socket) is "".
    static func unixPath(_ path: UnsafeRawBufferPointer) -> String {
        if path.first == 0 {
            let rest = UnsafeRawBufferPointer(rebasing: path[1...])
            let end = rest.firstIndex(of: 0) ?? rest.count
            if end == 0 { return "" }
            return "@" + String(decoding: UnsafeRawBufferPointer(rebasing: rest[0..<end]), as: UTF8.self)
        }
        let end = path.firstIndex(of: 0) ?? path.count
        return String(decoding: UnsafeRawBufferPointer(rebasing: path[0..<end]), as: UTF8.self)
    }
}

/// Why a kernel record was rejected as malformed.
public enum WireError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Fewer than 68 bytes: no complete context header.
    case shortHeader
    /// An `event_id` that is not one of ``EventCatalog/all``.
    case unknownEvent(UInt32)
    /// An `argnum` above six.
    case tooManyArguments(UInt32)
    /// The record ends inside (or before) argument `index`.
    case shortArgument(index: Int)
    /// A tag byte that is no `pl_arg_type`.
    case unknownTag(UInt8)
    /// A string size past the end of the record, or a string array with more
    /// elements than the kernel writes.
    case badSize(index: Int)
    /// `argnum` differs from the number of arguments the event declares.
    case argumentCount(expected: Int, found: Int)
    /// A known tag where the event declares another type.
    case typeMismatch(index: Int, expected: ArgType, found: ArgType)

    public var description: String {
        switch self {
        case .shortHeader: "record shorter than the 68-byte header"
        case .unknownEvent(let id): "unknown event id \(id)"
        case .tooManyArguments(let count): "argnum \(count) is more than 6"
        case .shortArgument(let index): "record ends inside argument \(index)"
        case .unknownTag(let tag): "unknown argument tag \(tag)"
        case .badSize(let index): "impossible size in argument \(index)"
        case .argumentCount(let expected, let found): "argnum \(found), but the event has \(expected) arguments"
        case .typeMismatch(let index, let expected, let found):
            "argument \(index) has tag \(found.rawValue), expected \(expected.rawValue)"
        }
    }
}

extension Arguments {
    /// ``append(_:)`` that takes ownership of `value`: the decoder's hot path
    /// moves each argument in instead of copying it and destroying the original.
    @inline(__always)
    mutating func appendTaking(_ value: consuming Argument) {
        precondition(_count < Arguments.capacity, "more than six arguments")
        switch _count {
        case 0: a0 = value
        case 1: a1 = value
        case 2: a2 = value
        case 3: a3 = value
        case 4: a4 = value
        default: a5 = value
        }
        _count += 1
    }
}
