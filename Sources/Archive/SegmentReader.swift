#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLZ4
import PipelineCore

/// How reading a segment's LZ4 frame ended.
public struct SegmentReadResult: Sendable, Equatable {
    public enum Ending: Sendable, Equatable {
        /// The end mark was reached and the content checksum matched.
        case complete
        /// The file ends inside the frame: an `.open` segment, or one a crash
        /// cut short. Everything up to the last complete block was read.
        case truncated
        /// A bad header, an impossible block, a checksum mismatch or bytes after
        /// the frame: reading stopped there, with this reason.
        case damaged(String)
        /// The caller's body asked to stop.
        case stopped
    }

    public var ending: Ending
    /// Blocks read whole and verified.
    public var blocks: Int = 0
    /// The file offset just past the last block (or the frame end) that was
    /// read whole and verified: what a salvage can keep.
    public var goodBytes: Int = 0
    /// Decompressed bytes delivered.
    public var contentBytes: Int = 0

    /// A result with the given ending and counts.
    public init(ending: Ending, blocks: Int = 0, goodBytes: Int = 0, contentBytes: Int = 0) {
        self.ending = ending
        self.blocks = blocks
        self.goodBytes = goodBytes
        self.contentBytes = contentBytes
    }

    /// The damage reason, nil unless ``ending`` is ``Ending/damaged(_:)``.
    public var damage: String? {
        if case .damaged(let reason) = ending { return reason }
        return nil
    }
}

/// What a pass over a segment's records found.
public struct SegmentSummary: Sendable, Equatable {
    public var read: SegmentReadResult
    /// Whole NDJSON lines (records, `lost` records included).
    public var records: Int = 0
    /// The `time` of the first and last whole line, when they carry one.
    public var firstTimeNs: Int64?
    public var lastTimeNs: Int64?
    /// Bytes after the last newline: a line cut short, which is never delivered.
    public var partialTailBytes: Int = 0

    /// A summary of a read with no records counted yet.
    public init(read: SegmentReadResult) { self.read = read }
}

/// Reads one segment file: an LZ4 frame of NDJSON records, decompressed with
/// liblz4's frame API (`LZ4F_decompress`).
///
/// The reader walks the frame's layout itself (header length, then one 4-byte
/// size word per block) so that it hands liblz4 only whole blocks. That is what
/// lets it read a `.open` segment, or one a crash cut short, up to its last
/// complete block, and name the block where damage starts. Every block's
/// checksum and the content checksum are checked by liblz4 as it decodes.
/// Decompressed bytes are delivered one verified block at a time, never a
/// part of a block whose checksum has not been checked.
public final class SegmentReader {
    public let path: String
    private let fd: Int32
    private var input: [UInt8] = []
    private var start = 0
    private var end = 0
    /// File offset of `input[0]`.
    private var inputOffset = 0
    private var eof = false
    private var output: [UInt8] = []

    /// The LZ4 frame magic number, as its four bytes appear in a file.
    public static let magic: [UInt8] = [0x04, 0x22, 0x4D, 0x18]

    /// Opens the segment at `path` for reading; throws when it cannot be opened.
    public init(path: String) throws {
        self.path = path
        self.fd = try FileIO.open(path, O_RDONLY)
        input = [UInt8](repeating: 0, count: 1 << 20)
    }

    deinit { Glibc.close(fd) }

    /// True when the file at `path` starts with the LZ4 frame magic number.
    public static func isSegment(path: String) -> Bool {
        // Only a regular file: reading the head of a FIFO would take bytes
        // from its stream (and opening one could wait for a writer).
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG,
              let fd = try? FileIO.open(path, O_RDONLY) else { return false }
        defer { Glibc.close(fd) }
        var head = [UInt8](repeating: 0, count: 4)
        let count = head.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, 4) }
        return count == 4 && head == magic
    }

    // MARK: Frame

    /// Decompresses the frame, calling `body` with each block's content in
    /// order; `body` returns false to stop early. Damage and truncation are
    /// reported in the result, not thrown; only I/O failures throw.
    ///
    /// `validate`, when given, sees each block's content before `body` does and
    /// returns a reason when the content cannot be right: that block then ends
    /// the read as damage. (The frame format leaves one hole that this closes:
    /// a block checksum covers the stored bytes but not the size word, so a
    /// flipped "uncompressed" bit turns a compressed block into raw bytes that
    /// pass their checksum; only the content checksum at the very end notices.)
    public func read(
        validate: ((UnsafeRawBufferPointer) -> String?)? = nil,
        _ body: (UnsafeRawBufferPointer) throws -> Bool
    ) throws -> SegmentReadResult {
        var result = SegmentReadResult(ending: .truncated)
        var dctx: OpaquePointer?
        let created = LZ4F_createDecompressionContext(&dctx, UInt32(LZ4F_VERSION))
        guard LZ4F_isError(created) == 0, let dctx else {
            throw ArchiveError(path: path, message: "cannot create an LZ4 decompression context")
        }
        defer { LZ4F_freeDecompressionContext(dctx) }

        // Header: the magic number, then FLG and BD, whose bits say which
        // checksums follow the blocks and how large a block may be.
        let available = try ensure(5)
        guard available >= 4 || isPrefixOfMagic(available) else { return damaged(&result, "not an LZ4 frame") }
        guard available >= 4 else { return result }
        guard peekBytes(4) == Self.magic else { return damaged(&result, "not an LZ4 frame (bad magic number)") }
        guard available >= 5 else { return result }
        let headerSize = input.withUnsafeBytes { LZ4F_headerSize($0.baseAddress! + start, 5) }
        guard LZ4F_isError(headerSize) == 0 else {
            return damaged(&result, "bad frame header: \(Self.errorName(headerSize))")
        }
        guard try ensure(Int(headerSize)) >= Int(headerSize) else { return result }
        let flags = input[start + 4]
        let descriptor = input[start + 5]
        let hasBlockChecksum = flags & 0x10 != 0
        let hasContentChecksum = flags & 0x04 != 0
        let blockMaxID = Int(descriptor >> 4) & 7
        guard (4...7).contains(blockMaxID) else { return damaged(&result, "bad frame header: block size id \(blockMaxID)") }
        let blockMax = 1 << (8 + 2 * blockMaxID)
        if output.count < blockMax { output = [UInt8](repeating: 0, count: blockMax) }
        if input.count < blockMax + 64 { grow(to: blockMax + 64) }

        if let error = feed(dctx, count: Int(headerSize), deliver: nil) {
            return damaged(&result, "bad frame header: \(error)")
        }
        result.goodBytes = inputOffset + start

        while true {
            guard try ensure(4) >= 4 else { return result }
            let word = peekUInt32()
            if word == 0 {
                // The end mark, then the checksum of the whole content.
                let count = 4 + (hasContentChecksum ? 4 : 0)
                guard try ensure(count) >= count else { return result }
                var remaining = 0
                if let error = feed(dctx, count: count, deliver: nil, remainingHint: &remaining) {
                    return damaged(&result, "frame end: \(error)")
                }
                guard remaining == 0 else { return damaged(&result, "frame end: the decoder expected more input") }
                result.goodBytes = inputOffset + start
                let trailing = try ensure(1)
                if trailing > 0 {
                    return damaged(&result, "bytes after the end of the frame at offset \(result.goodBytes)")
                }
                result.ending = .complete
                return result
            }
            let size = Int(word & 0x7FFF_FFFF)
            let blockNumber = result.blocks + 1
            guard size <= blockMax else {
                return damaged(&result, "block \(blockNumber) at offset \(inputOffset + start): size \(size) exceeds the frame's \(blockMax)-byte blocks")
            }
            let count = 4 + size + (hasBlockChecksum ? 4 : 0)
            guard try ensure(count) >= count else { return result }
            var produced = 0
            let blockOffset = inputOffset + start
            if let error = feed(dctx, count: count, deliver: &produced) {
                return damaged(&result, "block \(blockNumber) at offset \(blockOffset): \(error)")
            }
            if let validate, let reason = output.withUnsafeBytes({ validate(UnsafeRawBufferPointer(rebasing: $0[0..<produced])) }) {
                return damaged(&result, "block \(blockNumber) at offset \(blockOffset): \(reason)")
            }
            result.blocks += 1
            result.goodBytes = inputOffset + start
            result.contentBytes += produced
            if produced > 0 {
                let keepGoing = try output.withUnsafeBytes { raw in try body(UnsafeRawBufferPointer(rebasing: raw[0..<produced])) }
                if !keepGoing {
                    result.ending = .stopped
                    return result
                }
            }
        }
    }

    private func damaged(_ result: inout SegmentReadResult, _ reason: String) -> SegmentReadResult {
        result.ending = .damaged(reason)
        return result
    }

    /// Hands `count` buffered bytes (whole blocks, or the header, or the end)
    /// to liblz4; the decoded bytes land at the start of `output`. Returns an
    /// error text, or nil when every byte was consumed without error.
    private func feed(_ dctx: OpaquePointer, count: Int, deliver produced: UnsafeMutablePointer<Int>?) -> String? {
        var remaining = 0
        return feed(dctx, count: count, deliver: produced, remainingHint: &remaining)
    }

    private func feed(_ dctx: OpaquePointer, count: Int, deliver produced: UnsafeMutablePointer<Int>?, remainingHint: inout Int) -> String? {
        var consumed = 0
        var outPosition = 0
        var failure: String?
        input.withUnsafeBytes { inRaw in
            output.withUnsafeMutableBytes { outRaw in
                while true {
                    var srcSize = count - consumed
                    var dstSize = outRaw.count - outPosition
                    let hint = LZ4F_decompress(dctx, outRaw.baseAddress! + outPosition, &dstSize, inRaw.baseAddress! + start + consumed, &srcSize, nil)
                    if LZ4F_isError(hint) != 0 {
                        failure = Self.errorName(hint)
                        return
                    }
                    remainingHint = Int(hint)
                    consumed += srcSize
                    outPosition += dstSize
                    if consumed == count, dstSize == 0 { return }
                    if srcSize == 0, dstSize == 0 {
                        failure = "the decoder made no progress"
                        return
                    }
                    if outPosition == outRaw.count, consumed < count {
                        // A block never decodes to more than the frame's block size.
                        failure = "a block decoded to more than the frame's block size"
                        return
                    }
                }
            }
        }
        if failure != nil { return failure }
        produced?.pointee = outPosition
        start += count
        return nil
    }

    /// Readable description of a liblz4 error code, for example
    /// `ERROR_blockChecksum_invalid` becomes `block checksum mismatch`.
    static func errorName(_ code: Int) -> String {
        let name = String(cString: LZ4F_getErrorName(code))
        switch name {
        case "ERROR_blockChecksum_invalid": return "block checksum mismatch"
        case "ERROR_contentChecksum_invalid": return "content checksum mismatch"
        case "ERROR_decompressionFailed": return "corrupt compressed data"
        default: return name.hasPrefix("ERROR_") ? String(name.dropFirst(6)).replacingUnderscores : name
        }
    }

    // MARK: Buffering

    /// Makes at least `count` bytes available from `start` unless the file
    /// ends first; returns how many are available (capped at `count` only by the file).
    private func ensure(_ count: Int) throws -> Int {
        while end - start < count, !eof {
            if start > 0 {
                input.withUnsafeMutableBytes { raw in
                    raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start)
                }
                inputOffset += start
                end -= start
                start = 0
            }
            if end == input.count { grow(to: max(count, input.count * 2)) }
            let read = try input.withUnsafeMutableBytes { raw in
                try FileIO.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[end...]), path: path)
            }
            if read == 0 { eof = true }
            end += read
        }
        return end - start
    }

    private func grow(to size: Int) {
        if input.count < size { input.append(contentsOf: repeatElement(0, count: size - input.count)) }
    }

    private func peekBytes(_ count: Int) -> [UInt8] { Array(input[start..<(start + count)]) }

    private func peekUInt32() -> UInt32 {
        UInt32(input[start]) | UInt32(input[start + 1]) << 8 | UInt32(input[start + 2]) << 16 | UInt32(input[start + 3]) << 24
    }

    private func isPrefixOfMagic(_ available: Int) -> Bool {
        (0..<available).allSatisfy { input[start + $0] == Self.magic[$0] }
    }
}

extension String {
    fileprivate var replacingUnderscores: String {
        String(map { $0 == "_" ? " " : $0 })
    }
}

// MARK: Records

extension SegmentReader {
    /// Reads the segment's records: `body` receives spans of whole NDJSON
    /// lines, each line ending in `\n`; a line cut short at the end of what
    /// could be read is never delivered (it is counted in
    /// ``SegmentSummary/partialTailBytes``). `body` returns false to stop.
    /// A block whose content cannot be NDJSON text ends the read as damage.
    public func readLines(_ body: (UnsafeRawBufferPointer) throws -> Bool) throws -> SegmentSummary {
        var carry: [UInt8] = []
        var records = 0
        var firstTime: Int64?
        var sawFirst = false
        var lastLine: [UInt8] = []
        let newline = UInt8(ascii: "\n")

        func deliver(_ span: UnsafeRawBufferPointer) throws -> Bool {
            guard !span.isEmpty else { return true }
            var lines = 0
            for byte in span where byte == newline { lines += 1 }
            records += lines
            if !sawFirst {
                sawFirst = true
                let firstEnd = span.firstIndex(of: newline)!
                firstTime = ArchiveTime.ofRecord(UnsafeRawBufferPointer(rebasing: span[0..<firstEnd]))
            }
            // The last line of the span: from after the previous newline.
            var lineStart = span.count - 1
            while lineStart > 0, span[lineStart - 1] != newline { lineStart -= 1 }
            lastLine = Array(span[lineStart..<(span.count - 1)])
            return try body(span)
        }

        let result = try read(validate: Self.ndjsonText) { chunk in
            guard let lastNewline = chunk.lastIndex(of: newline) else {
                carry.append(contentsOf: chunk)
                return true
            }
            var from = 0
            if !carry.isEmpty {
                let firstNewline = chunk.firstIndex(of: newline)!
                carry.append(contentsOf: chunk[0...firstNewline])
                let keepGoing = try carry.withUnsafeBytes { try deliver($0) }
                carry.removeAll(keepingCapacity: true)
                if !keepGoing { return false }
                from = firstNewline + 1
            }
            if from <= lastNewline {
                guard try deliver(UnsafeRawBufferPointer(rebasing: chunk[from...lastNewline])) else { return false }
            }
            carry.append(contentsOf: chunk[(lastNewline + 1)...])
            return true
        }
        var summary = SegmentSummary(read: result)
        summary.records = records
        summary.firstTimeNs = firstTime
        summary.lastTimeNs = lastLine.withUnsafeBytes { ArchiveTime.ofRecord($0) }
        summary.partialTailBytes = carry.count
        return summary
    }

    /// Checks that a block's content can be NDJSON text: JSON escapes every
    /// control character, so no byte below 0x20 other than tab, CR and LF
    /// appears. Raw LZ4 data (offsets, tokens) all but always has such bytes.
    static func ndjsonText(_ content: UnsafeRawBufferPointer) -> String? {
        for (index, byte) in content.enumerated() where byte < 0x20 && byte != 0x0A && byte != 0x09 && byte != 0x0D {
            return "not NDJSON text (control byte 0x\(String(byte, radix: 16)) at content offset \(index))"
        }
        return nil
    }

    /// Reads the whole segment and returns what it holds, without delivering anything.
    public static func summarize(path: String) throws -> SegmentSummary {
        try SegmentReader(path: path).readLines { _ in true }
    }

    /// Calls `body` with each whole line (without its `\n`), in order; `body`
    /// returns false to stop.
    public func forEachLine(_ body: (UnsafeRawBufferPointer) throws -> Bool) throws -> SegmentSummary {
        try readLines { span in
            var lineStart = 0
            for index in 0..<span.count where span[index] == UInt8(ascii: "\n") {
                guard try body(UnsafeRawBufferPointer(rebasing: span[lineStart..<index])) else { return false }
                lineStart = index + 1
            }
            return true
        }
    }
}
