#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CLZ4
import PipelineCore

/// The LZ4 block sizes a segment may use (`block_size`).
public enum LZ4BlockSize: Int, Sendable, CaseIterable {
    case kib64 = 65_536
    case kib256 = 262_144
    case mib1 = 1_048_576
    case mib4 = 4_194_304

    /// As a pipeline file writes it: `64KiB`, `256KiB`, `1MiB`, `4MiB`.
    public var text: String { Units.formatSize(rawValue) }

    var id: LZ4F_blockSizeID_t {
        switch self {
        case .kib64: LZ4F_max64KB
        case .kib256: LZ4F_max256KB
        case .mib1: LZ4F_max1MB
        case .mib4: LZ4F_max4MB
        }
    }
}

/// Writes one LZ4 frame to a file descriptor with liblz4's frame API:
/// independent blocks, a checksum after every block and a checksum of the
/// whole content at the end, so that `lz4 -dc` reads the file and
/// ``SegmentReader`` can keep every complete block of a file cut short.
///
/// The header is written at once; ``append(_:)`` writes a block to the file
/// each time a block's worth of input has gathered; ``flush()`` writes what is
/// gathered as a (smaller) block now; ``finish()`` writes the last block, the
/// end mark and the content checksum. The writer does not fsync or close the
/// descriptor: sealing (fsync, rename) is the caller's.
/// Not thread-safe: one owner at a time.
public final class LZ4FrameWriter {
    public let path: String
    public let fd: Int32
    public let blockSize: LZ4BlockSize
    /// Compressed bytes written to the file so far, header included.
    public private(set) var bytesWritten = 0
    /// Uncompressed bytes accepted since the last block was written.
    public private(set) var pendingBytes = 0
    /// Uncompressed bytes accepted in all.
    public private(set) var contentBytes = 0
    private var finished = false
    private let cctx: OpaquePointer
    private var preferences = LZ4F_preferences_t()
    private var output: [UInt8]

    /// Starts a frame on `fd` (positioned where the frame begins) and writes its header.
    public init(fd: Int32, path: String, blockSize: LZ4BlockSize) throws {
        self.fd = fd
        self.path = path
        self.blockSize = blockSize
        var context: OpaquePointer?
        let created = LZ4F_createCompressionContext(&context, UInt32(LZ4F_VERSION))
        guard LZ4F_isError(created) == 0, let context else {
            throw ArchiveError(path: path, message: "cannot create an LZ4 compression context")
        }
        cctx = context
        preferences.frameInfo.blockSizeID = blockSize.id
        preferences.frameInfo.blockMode = LZ4F_blockIndependent
        preferences.frameInfo.blockChecksumFlag = LZ4F_blockChecksumEnabled
        preferences.frameInfo.contentChecksumFlag = LZ4F_contentChecksumEnabled
        // Input is fed at most one block at a time, so one bound fits every call.
        let bound = LZ4F_compressBound(blockSize.rawValue, &preferences)
        output = [UInt8](repeating: 0, count: max(Int(bound), 64) + 64)
        let header = output.withUnsafeMutableBytes { LZ4F_compressBegin(cctx, $0.baseAddress!, $0.count, &preferences) }
        try check(header, "cannot start an LZ4 frame")
        try emit(Int(header))
    }

    deinit { LZ4F_freeCompressionContext(cctx) }

    /// Adds content; whole blocks are compressed and written as they fill.
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "append after finish")
        var offset = 0
        while offset < bytes.count {
            let count = min(bytes.count - offset, blockSize.rawValue)
            let written = output.withUnsafeMutableBytes { out in
                LZ4F_compressUpdate(cctx, out.baseAddress!, out.count, bytes.baseAddress! + offset, count, nil)
            }
            try check(written, "LZ4 compression failed")
            try emit(Int(written))
            offset += count
            contentBytes += count
            pendingBytes = (pendingBytes + count) % blockSize.rawValue
        }
    }

    /// Adds content from an array.
    public func append(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try append($0) }
    }

    /// Writes the gathered content now as a block of its own, so that a reader
    /// of the unfinished file sees it. Does nothing when nothing is gathered.
    public func flush() throws {
        guard !finished, pendingBytes > 0 else { return }
        let written = output.withUnsafeMutableBytes { LZ4F_flush(cctx, $0.baseAddress!, $0.count, nil) }
        try check(written, "LZ4 flush failed")
        try emit(Int(written))
        pendingBytes = 0
    }

    /// Writes the last block, the end mark and the content checksum.
    public func finish() throws {
        guard !finished else { return }
        let written = output.withUnsafeMutableBytes { LZ4F_compressEnd(cctx, $0.baseAddress!, $0.count, nil) }
        try check(written, "cannot end the LZ4 frame")
        try emit(Int(written))
        pendingBytes = 0
        finished = true
    }

    private func emit(_ count: Int) throws {
        guard count > 0 else { return }
        try output.withUnsafeBytes { raw in
            try FileIO.writeAll(fd, UnsafeRawBufferPointer(rebasing: raw[0..<count]), path: path)
        }
        bytesWritten += count
    }

    private func check(_ code: Int, _ what: String) throws {
        if LZ4F_isError(code) != 0 {
            throw ArchiveError(path: path, message: "\(what): \(SegmentReader.errorName(code))")
        }
    }
}
