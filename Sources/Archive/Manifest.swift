#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import PipelineCore

/// One line of `DIR/manifest.jsonl`: a sealed segment and what it holds.
///
/// `{"segment":"NAME.jsonl.lz4","first_time":"…","last_time":"…","events":N,"bytes":B}`
/// where the times are the `time` of the segment's first and last record
/// (RFC 3339, as in the records), `events` counts its records (`lost` records
/// included) and `bytes` is the size of the sealed file.
public struct ManifestEntry: Sendable, Equatable {
    /// The sealed file's name, `NAME.jsonl.lz4`.
    public var segment: String
    public var firstTimeNs: Int64
    public var lastTimeNs: Int64
    public var events: Int
    public var bytes: Int

    /// An entry for the sealed file `segment`; times are nanoseconds since the epoch.
    public init(segment: String, firstTimeNs: Int64, lastTimeNs: Int64, events: Int, bytes: Int) {
        self.segment = segment
        self.firstTimeNs = firstTimeNs
        self.lastTimeNs = lastTimeNs
        self.events = events
        self.bytes = bytes
    }

    /// The entry as one manifest line, ending in `\n`.
    public var line: String {
        "{\"segment\":\(jsonString(segment)),\"first_time\":\"\(ArchiveTime.format(firstTimeNs))\","
            + "\"last_time\":\"\(ArchiveTime.format(lastTimeNs))\",\"events\":\(events),\"bytes\":\(bytes)}\n"
    }

    /// Parses one manifest line (without its `\n`).
    public init(line: Substring) throws(ManifestError) {
        let fields = try FlatJSON.parse(Array(line.utf8))
        func string(_ key: String) throws(ManifestError) -> String {
            guard case .string(let value)? = fields[key] else { throw ManifestError("'\(key)' is missing or not a string") }
            return value
        }
        func integer(_ key: String) throws(ManifestError) -> Int {
            guard case .integer(let value)? = fields[key], value >= 0 else { throw ManifestError("'\(key)' is missing or not a non-negative integer") }
            return value
        }
        func time(_ key: String) throws(ManifestError) -> Int64 {
            let text = try string(key)
            guard let ns = ArchiveTime.parse(Array(text.utf8)) else { throw ManifestError("'\(key)' is not an RFC 3339 UTC time: '\(text)'") }
            return ns
        }
        let segment = try string("segment")
        guard let name = SegmentName(fileName: segment), !name.isOpen else {
            throw ManifestError("'segment' is not a sealed segment name: '\(segment)'")
        }
        self.init(
            segment: segment, firstTimeNs: try time("first_time"), lastTimeNs: try time("last_time"),
            events: try integer("events"), bytes: try integer("bytes")
        )
    }
}

/// A manifest line that cannot be read.
public struct ManifestError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// A problem described by `message`.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// `DIR/manifest.jsonl`: reading it, appending to it, and rewriting it atomically.
public struct ArchiveManifest: Sendable {
    /// A manifest as read: the entries in file order, and the lines that could
    /// not be read (1-based line number and reason). A last line without its
    /// `\n` (an append a crash cut short) counts as unreadable.
    public struct Contents: Sendable, Equatable {
        public var entries: [ManifestEntry] = []
        public var problems: [(line: Int, message: String)] = []
        /// False when the file does not exist.
        public var exists = false

        /// An empty, nonexistent manifest.
        public init() {}

        public static func == (lhs: Contents, rhs: Contents) -> Bool {
            lhs.entries == rhs.entries && lhs.exists == rhs.exists
                && lhs.problems.map(\.line) == rhs.problems.map(\.line) && lhs.problems.map(\.message) == rhs.problems.map(\.message)
        }
    }

    public let path: String

    /// The manifest of an archive directory.
    public init(directory: ArchiveDirectory) { path = directory.manifestPath }
    /// A manifest at an explicit path.
    public init(path: String) { self.path = path }

    /// Reads the manifest; a missing file reads as empty with `exists == false`.
    public func read() throws -> Contents {
        var contents = Contents()
        guard FileIO.fileSize(path) != nil else { return contents }
        contents.exists = true
        let bytes = try FileIO.readAll(path)
        var lineNumber = 0
        var lineStart = 0
        while lineStart < bytes.count {
            lineNumber += 1
            let newline = bytes[lineStart...].firstIndex(of: UInt8(ascii: "\n"))
            let lineEnd = newline ?? bytes.count
            let text = String(decoding: bytes[lineStart..<lineEnd], as: UTF8.self)
            lineStart = lineEnd + 1
            if text.isEmpty { continue }
            guard newline != nil else {
                contents.problems.append((lineNumber, "incomplete last line (no newline)"))
                break
            }
            do {
                contents.entries.append(try ManifestEntry(line: Substring(text)))
            } catch {
                contents.problems.append((lineNumber, error.message))
            }
        }
        return contents
    }

    /// Appends one entry and fsyncs the manifest. On a failure (a full disk)
    /// the file is cut back to its size before, so that a retry never leaves
    /// half a line, nor the same line twice.
    public func append(_ entry: ManifestEntry) throws {
        let fd = try FileIO.open(path, O_WRONLY | O_APPEND | O_CREAT)
        defer { Glibc.close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw SystemError("cannot stat", errno, path: path) }
        let line = Array(entry.line.utf8)
        do throws(SystemError) {
            try FileIO.writeAll(fd, line, path: path)
            try FileIO.fsync(fd, path: path)
        } catch {
            _ = ftruncate(fd, info.st_size)
            throw error
        }
    }

    /// Replaces the manifest with exactly `entries` (temporary file, fsync,
    /// rename, fsync of the directory), so that it is never seen half-written.
    public func write(_ entries: [ManifestEntry]) throws {
        var bytes: [UInt8] = []
        for entry in entries { bytes += Array(entry.line.utf8) }
        try FileIO.replaceAtomically(path, with: bytes)
    }
}

/// A JSON string literal for `text`.
func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

/// The one JSON shape the manifest needs: a flat object of strings and integers.
enum FlatJSON {
    enum Value: Equatable {
        case string(String)
        case integer(Int)
    }

    static func parse(_ bytes: [UInt8]) throws(ManifestError) -> [String: Value] {
        var index = 0
        func fail(_ message: String) -> ManifestError { ManifestError("\(message) at byte \(index + 1)") }
        func skipSpace() {
            while index < bytes.count, [0x20, 0x09, 0x0D].contains(bytes[index]) { index += 1 }
        }
        func expect(_ byte: UInt8) throws(ManifestError) {
            skipSpace()
            guard index < bytes.count, bytes[index] == byte else { throw fail("expected '\(Character(Unicode.Scalar(byte)))'") }
            index += 1
        }
        func string() throws(ManifestError) -> String {
            try expect(UInt8(ascii: "\""))
            var raw: [UInt8] = []
            while index < bytes.count {
                let byte = bytes[index]
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    return String(decoding: raw, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard index < bytes.count else { throw fail("unterminated escape") }
                    let escape = bytes[index]
                    index += 1
                    let simple: [UInt8: UInt8] = [0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x62: 0x08, 0x66: 0x0C, 0x6E: 0x0A, 0x72: 0x0D, 0x74: 0x09]
                    if let value = simple[escape] {
                        raw.append(value)
                    } else if escape == UInt8(ascii: "u"), index + 4 <= bytes.count,
                              let code = UInt32(String(decoding: bytes[index..<(index + 4)], as: UTF8.self), radix: 16),
                              let scalar = Unicode.Scalar(code) {
                        raw += Array(String(Character(scalar)).utf8)
                        index += 4
                    } else {
                        throw fail("bad escape")
                    }
                default:
                    raw.append(byte)
                }
            }
            throw fail("unterminated string")
        }
        var fields: [String: Value] = [:]
        try expect(UInt8(ascii: "{"))
        skipSpace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
        } else {
            while true {
                let key = try string()
                try expect(UInt8(ascii: ":"))
                skipSpace()
                guard index < bytes.count else { throw fail("missing value") }
                if bytes[index] == UInt8(ascii: "\"") {
                    fields[key] = .string(try string())
                } else {
                    let begin = index
                    if bytes[index] == UInt8(ascii: "-") { index += 1 }
                    while index < bytes.count, bytes[index] >= 48, bytes[index] <= 57 { index += 1 }
                    guard let number = Int(String(decoding: bytes[begin..<index], as: UTF8.self)) else {
                        throw fail("expected a string or an integer")
                    }
                    fields[key] = .integer(number)
                }
                skipSpace()
                guard index < bytes.count else { throw fail("unterminated object") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                try expect(UInt8(ascii: "}"))
                break
            }
        }
        skipSpace()
        guard index == bytes.count else { throw fail("unexpected text after the object") }
        return fields
    }
}
