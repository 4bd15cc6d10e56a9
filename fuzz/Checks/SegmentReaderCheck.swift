import EventArchive
import PipelineCore

/// A segment file's bytes through ``SegmentReader``: `archive cat`/`verify`,
/// replay of an archive and salvage at startup all read segments this way,
/// sealed, `.open` or damaged.
///
/// Properties, read twice (blocks, then lines), the reader's I/O never failing:
/// - no block delivers more than the frame header's block size, none is
///   delivered empty, and their sum is `contentBytes`;
/// - `goodBytes` never passes the file's end, and `complete` means the whole
///   file was the frame; a frame that declares its content size and reads
///   complete delivered exactly that many bytes;
/// - lines: every span ends in a newline and holds whole lines, the line count
///   is the number of newlines delivered, delivered plus `partialTailBytes`
///   is `contentBytes`, and no delivered byte is a control byte NDJSON cannot
///   hold; the line read ends as the block read does, or earlier with damage
///   (the text check), never later.
enum SegmentReaderCheck {
    static func check(_ input: UnsafeRawBufferPointer) throws(PropertyViolation) {
        let path = try ScratchFile.write(input, named: "fuzz-1.jsonl.lz4")
        let declared = FrameHeader(input)

        var delivered = 0
        var blocks: [Int] = []
        let blockRead: SegmentReadResult
        do {
            blockRead = try SegmentReader(path: path).read { block in
                blocks.append(block.count)
                delivered += block.count
                return true
            }
        } catch {
            throw PropertyViolation("reading a regular file threw: \(error)")
        }
        if let maximum = declared?.blockMaximum {
            try require(blocks.allSatisfy { $0 <= maximum }, "a block larger than the frame's \(maximum)-byte blocks: \(blocks.max() ?? 0)")
        }
        try require(blocks.allSatisfy { $0 > 0 }, "an empty block delivered")
        try require(delivered == blockRead.contentBytes, "delivered \(delivered) bytes, the result says \(blockRead.contentBytes)")
        try require(blocks.count <= blockRead.blocks, "\(blocks.count) blocks delivered, the result counts \(blockRead.blocks)")
        try require(blockRead.goodBytes >= 0 && blockRead.goodBytes <= input.count, "goodBytes \(blockRead.goodBytes) of a \(input.count)-byte file")
        if blockRead.ending == .complete {
            try require(blockRead.goodBytes == input.count, "complete, but only \(blockRead.goodBytes) of \(input.count) bytes are the frame")
            if let size = declared?.contentSize {
                try require(UInt64(delivered) == size, "complete with \(delivered) bytes, the header declares \(size)")
            }
        }
        try require(blockRead.ending != .stopped, "stopped, but the body never asked to stop")

        var spanBytes = 0
        var newlines = 0
        var problem: String?
        let lineRead: SegmentSummary
        do {
            lineRead = try SegmentReader(path: path).readLines { span in
                spanBytes += span.count
                for byte in span where byte == UInt8(ascii: "\n") { newlines += 1 }
                if problem == nil {
                    if span.last != UInt8(ascii: "\n") { problem = "a span that does not end in a newline" }
                    if let byte = span.first(where: { $0 < 0x20 && $0 != 0x0A && $0 != 0x09 && $0 != 0x0D }) {
                        problem = "a delivered span holds control byte \(byte), which NDJSON text cannot"
                    }
                }
                return true
            }
        } catch {
            throw PropertyViolation("reading a regular file's lines threw: \(error)")
        }
        if let problem { throw PropertyViolation(problem) }
        try require(lineRead.records == newlines, "\(newlines) lines delivered, the summary counts \(lineRead.records)")
        try require(spanBytes + lineRead.partialTailBytes == lineRead.read.contentBytes,
                    "\(spanBytes) bytes in lines and \(lineRead.partialTailBytes) in the tail, but \(lineRead.read.contentBytes) decompressed")
        try require(lineRead.read.contentBytes <= blockRead.contentBytes, "the line read decompressed more than the block read")
        if lineRead.read.damage == nil {
            try require(lineRead.read == blockRead, "the line read ended \(lineRead.read), the block read \(blockRead)")
        }
        if lineRead.records == 0 {
            try require(lineRead.firstTimeNs == nil && lineRead.lastTimeNs == nil, "times without a record")
        }
    }

    /// What an LZ4 frame header declares, read here independently of the reader.
    struct FrameHeader {
        var blockMaximum: Int?
        var contentSize: UInt64?

        init?(_ bytes: UnsafeRawBufferPointer) {
            guard bytes.count >= 7, Array(bytes[0..<4]) == SegmentReader.magic else { return nil }
            let flags = bytes[4]
            let blockID = Int(bytes[5] >> 4) & 7
            blockMaximum = (4...7).contains(blockID) ? 1 << (8 + 2 * blockID) : nil
            if flags & 0x08 != 0, bytes.count >= 14 {
                var size: UInt64 = 0
                for index in (6..<14).reversed() { size = size << 8 | UInt64(bytes[index]) }
                contentSize = size
            }
        }
    }
}
