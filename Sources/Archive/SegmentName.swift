import PipelineCore

/// The name of an archive segment (docs/archive.md):
/// `<sink id>-<first event time, UTC, yyyyMMdd'T'HHmmss'Z'>-<sequence, 6 digits>`,
/// with `.jsonl.lz4` once sealed and `.jsonl.lz4.open` while being written.
///
/// The sequence grows by one per segment in a directory, so sorting by it
/// (``Comparable``) is oldest first even when event times go backwards.
public struct SegmentName: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The extension of a sealed segment.
    public static let sealedSuffix = ".jsonl.lz4"
    /// The extension of a segment being written.
    public static let openSuffix = ".jsonl.lz4.open"

    public var sinkID: String
    /// `yyyyMMdd'T'HHmmss'Z'` of the segment's first record.
    public var stamp: String
    public var sequence: Int
    /// True for a `.open` segment (being written, or left by a crash).
    public var isOpen: Bool

    /// The name of a new segment whose first record has time `firstTimeNs`.
    public init(sinkID: String, firstTimeNs: Int64, sequence: Int, isOpen: Bool = true) {
        self.sinkID = sinkID
        self.stamp = UTCDateTime(epochNs: firstTimeNs).compact
        self.sequence = sequence
        self.isOpen = isOpen
    }

    /// Parses a file name (no directory); nil for anything that is not a segment.
    public init?(fileName: String) {
        let isOpen: Bool
        let base: Substring
        if fileName.hasSuffix(Self.openSuffix) {
            isOpen = true
            base = fileName.dropLast(Self.openSuffix.count)
        } else if fileName.hasSuffix(Self.sealedSuffix) {
            isOpen = false
            base = fileName.dropLast(Self.sealedSuffix.count)
        } else {
            return nil
        }
        // Parse from the end: the sink id may itself contain dashes.
        guard let lastDash = base.lastIndex(of: "-") else { return nil }
        let digits = base[base.index(after: lastDash)...]
        guard digits.count >= 6, digits.allSatisfy(\.isASCIIDigit), let sequence = Int(digits) else { return nil }
        let rest = base[..<lastDash]
        guard let stampDash = rest.lastIndex(of: "-") else { return nil }
        let stamp = rest[rest.index(after: stampDash)...]
        guard Self.isCompactStamp(stamp) else { return nil }
        let sinkID = rest[..<stampDash]
        guard !sinkID.isEmpty else { return nil }
        self.sinkID = String(sinkID)
        self.stamp = String(stamp)
        self.sequence = sequence
        self.isOpen = isOpen
    }

    /// `<sink id>-<stamp>-<sequence>`, without an extension.
    public var base: String {
        let digits = String(sequence)
        return "\(sinkID)-\(stamp)-" + String(repeating: "0", count: max(0, 6 - digits.count)) + digits
    }

    /// The file name once sealed.
    public var sealedFileName: String { base + Self.sealedSuffix }
    /// The file name while being written.
    public var openFileName: String { base + Self.openSuffix }
    /// The file name for this name's state.
    public var fileName: String { isOpen ? openFileName : sealedFileName }

    /// The same segment, sealed.
    public var sealed: SegmentName {
        var copy = self
        copy.isOpen = false
        return copy
    }

    public var description: String { fileName }

    /// Oldest first: by sequence, then by the rest of the name; a sealed
    /// segment sorts before an `.open` one of the same name.
    public static func < (lhs: SegmentName, rhs: SegmentName) -> Bool {
        if lhs.sequence != rhs.sequence { return lhs.sequence < rhs.sequence }
        if lhs.stamp != rhs.stamp { return lhs.stamp < rhs.stamp }
        if lhs.sinkID != rhs.sinkID { return lhs.sinkID < rhs.sinkID }
        return !lhs.isOpen && rhs.isOpen
    }

    private static func isCompactStamp(_ text: Substring) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 16, bytes[8] == UInt8(ascii: "T"), bytes[15] == UInt8(ascii: "Z") else { return false }
        return bytes[0..<8].allSatisfy { $0 >= 48 && $0 <= 57 } && bytes[9..<15].allSatisfy { $0 >= 48 && $0 <= 57 }
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

/// An archive directory as found on disk: its segments, oldest first.
public struct ArchiveDirectory: Sendable {
    /// The manifest's file name inside the directory.
    public static let manifestName = "manifest.jsonl"

    public let path: String

    /// The archive at `path`; nothing is read until asked.
    public init(_ path: String) { self.path = path }

    /// The manifest's path.
    public var manifestPath: String { path + "/" + Self.manifestName }

    /// The full path of a segment file.
    public func path(of segment: SegmentName) -> String { path + "/" + segment.fileName }

    /// Every sealed and `.open` segment, oldest first. Other files (the
    /// manifest, temporary files) are not segments and are left out.
    public func segments() throws -> [SegmentName] {
        try FileIO.listDirectory(path).compactMap(SegmentName.init(fileName:)).sorted()
    }

    /// Originals that a salvage found damaged and kept beside what it could
    /// seal (`NAME.jsonl.lz4.damaged`), with the segment name each stands for.
    public func damagedFiles() throws -> [(file: String, name: SegmentName)] {
        try FileIO.listDirectory(path).compactMap { file in
            guard file.hasSuffix(".damaged"), let name = SegmentName(fileName: String(file.dropLast(8))) else { return nil }
            return (file, name)
        }.sorted { $0.name < $1.name }
    }

    /// The files a crash can leave half-written beside the segments
    /// (`.salvage` and `.tmp` files); safe to delete when no sink is writing.
    public func temporaryFiles() throws -> [String] {
        try FileIO.listDirectory(path).filter { $0.hasSuffix(".salvage") || $0.hasSuffix(".tmp") }.sorted()
    }
}

/// Event times as the manifest writes them: RFC 3339 in UTC with nanoseconds,
/// exactly as the `time` field of an event record (docs/event-record.md).
public enum ArchiveTime {
    /// `2026-11-24T16:34:13.123456789Z`.
    public static func format(_ epochNs: Int64) -> String {
        let t = UTCDateTime(epochNs: epochNs)
        var out = ""
        out.reserveCapacity(30)
        func pad(_ value: Int, _ width: Int) {
            let text = String(value)
            if text.count < width { out += String(repeating: "0", count: width - text.count) }
            out += text
        }
        pad(t.year, 4); out += "-"; pad(t.month, 2); out += "-"; pad(t.day, 2); out += "T"
        pad(t.hour, 2); out += ":"; pad(t.minute, 2); out += ":"; pad(t.second, 2); out += "."
        pad(t.nanosecond, 9); out += "Z"
        return out
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (fraction of 1 to 9 digits); nil otherwise.
    public static func parse<Bytes: Collection<UInt8>>(_ text: Bytes) -> Int64? {
        let bytes = Array(text)
        guard bytes.count >= 20, bytes.last == UInt8(ascii: "Z") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for index in range {
                let byte = bytes[index]
                guard byte >= 48, byte <= 57 else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            return value
        }
        let separators: [(Int, UInt8)] = [(4, 45), (7, 45), (10, 84), (13, 58), (16, 58)]
        guard separators.allSatisfy({ bytes[$0.0] == $0.1 }),
              let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second < 61
        else { return nil }
        var nanos = 0
        if bytes.count > 20 {
            let digits = bytes.count - 21
            guard bytes[19] == UInt8(ascii: "."), (1...9).contains(digits), let fraction = number(20..<(20 + digits)) else { return nil }
            nanos = fraction
            for _ in digits..<9 { nanos *= 10 }
        } else if bytes[19] != UInt8(ascii: "Z") {
            return nil
        }
        let days = UTCDateTime.epochDays(year: year, month: month, day: day)
        // Years past 2262 (or before 1677) do not fit in Int64 nanoseconds.
        let seconds = days * 86_400 + Int64(hour * 3600 + minute * 60 + second)
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (total, carry) = scaled.addingReportingOverflow(Int64(nanos))
        guard !overflow, !carry else { return nil }
        return total
    }

    /// The time of an NDJSON record line: its `"time"` value, as an RFC 3339
    /// string or as integer nanoseconds; nil when the line has neither.
    public static func ofRecord(_ line: UnsafeRawBufferPointer) -> Int64? {
        let key = Array("\"time\":".utf8)
        guard line.count > key.count else { return nil }
        var start = -1
        var index = 0
        // The key comes first in pipelined's records; search anyway, cheaply.
        while index + key.count <= line.count {
            if line[index] == key[0], (0..<key.count).allSatisfy({ line[index + $0] == key[$0] }) {
                start = index + key.count
                break
            }
            index += 1
        }
        guard start >= 0, start < line.count else { return nil }
        if line[start] == UInt8(ascii: "\"") {
            var end = start + 1
            while end < line.count, line[end] != UInt8(ascii: "\"") { end += 1 }
            guard end < line.count else { return nil }
            return parse(UnsafeRawBufferPointer(rebasing: line[(start + 1)..<end]))
        }
        var end = start
        if end < line.count, line[end] == UInt8(ascii: "-") { end += 1 }
        while end < line.count, line[end] >= 48, line[end] <= 57 { end += 1 }
        return Int64(String(decoding: UnsafeRawBufferPointer(rebasing: line[start..<end]), as: UTF8.self))
    }
}

extension SegmentName {
    /// The time the name's stamp stands for (whole seconds), nil if it does not parse.
    public var stampNs: Int64? {
        let b = Array(stamp.utf8)
        guard b.count == 16 else { return nil }
        let text = "\(String(decoding: b[0..<4], as: UTF8.self))-\(String(decoding: b[4..<6], as: UTF8.self))-\(String(decoding: b[6..<8], as: UTF8.self))T"
            + "\(String(decoding: b[9..<11], as: UTF8.self)):\(String(decoding: b[11..<13], as: UTF8.self)):\(String(decoding: b[13..<15], as: UTF8.self))Z"
        return ArchiveTime.parse(Array(text.utf8))
    }
}
