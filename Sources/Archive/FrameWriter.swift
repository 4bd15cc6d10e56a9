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
///
/// A write the file refuses (a full disk, an I/O error) never leaves part of
/// a block in it: the file is cut back to the end of the last whole block,
/// and the compressed bytes that did not fit are kept in memory (the
/// backlog, ``hasBacklog``) with everything compressed after them, in order,
/// until ``writeBacklog()`` gets them into the file. So the file is at every
/// moment a frame cut after a whole block, which salvage keeps entirely.
/// Not thread-safe: one owner at a time.
public final class LZ4FrameWriter {
    public let path: String
    public let fd: Int32
    public let blockSize: LZ4BlockSize
    /// Compressed bytes written to the file so far, header included (the
    /// backlog not included).
    public private(set) var bytesWritten = 0
    /// Uncompressed bytes accepted since the last block was compressed.
    public private(set) var pendingBytes = 0
    /// Uncompressed bytes accepted in all.
    public private(set) var contentBytes = 0
    /// Uncompressed bytes whose blocks are in the file (what a crash keeps).
    public private(set) var storedContentBytes = 0
    /// True once ``finish()`` has compressed the end of the frame (its bytes
    /// may still be in the backlog).
    public private(set) var finished = false
    /// Compressed bytes the file refused, oldest first, and the content
    /// offset that is stored once they are written.
    private var backlog: [UInt8] = []
    private var backlogContentEnd = 0
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
        try emit(Int(header), storing: 0)
    }

    /// True while compressed bytes wait for the file to take them.
    public var hasBacklog: Bool { !backlog.isEmpty }

    deinit { LZ4F_freeCompressionContext(cctx) }

    /// Adds content; whole blocks are compressed and written as they fill.
    /// All of `bytes` is always taken: when the file refuses a block, it and
    /// every later one go to the backlog and the ``SystemError`` is thrown
    /// once the input is consumed (with a backlog from before, nothing is
    /// tried and nothing thrown: the caller checks ``hasBacklog``).
    public func append(_ bytes: UnsafeRawBufferPointer) throws {
        precondition(!finished, "append after finish")
        var offset = 0
        var refused: SystemError?
        while offset < bytes.count {
            let count = min(bytes.count - offset, blockSize.rawValue)
            let written = output.withUnsafeMutableBytes { out in
                LZ4F_compressUpdate(cctx, out.baseAddress!, out.count, bytes.baseAddress! + offset, count, nil)
            }
            try check(written, "LZ4 compression failed")
            offset += count
            contentBytes += count
            pendingBytes = (pendingBytes + count) % blockSize.rawValue
            do throws(SystemError) {
                try emit(Int(written), storing: contentBytes - pendingBytes)
            } catch {
                refused = refused ?? error
            }
        }
        if let refused { throw refused }
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
        pendingBytes = 0
        try emit(Int(written), storing: contentBytes)
    }

    /// Writes the last block, the end mark and the content checksum. After
    /// a refusal the end waits in the backlog; calling again after that does
    /// nothing (``writeBacklog()`` writes it).
    public func finish() throws {
        guard !finished else { return }
        let written = output.withUnsafeMutableBytes { LZ4F_compressEnd(cctx, $0.baseAddress!, $0.count, nil) }
        try check(written, "cannot end the LZ4 frame")
        pendingBytes = 0
        finished = true
        try emit(Int(written), storing: contentBytes)
    }

    /// Writes the backlog to the file: all of it, or (cutting the file back) none.
    public func writeBacklog() throws(SystemError) {
        guard !backlog.isEmpty else { return }
        let result = backlog.withUnsafeBytes { raw in Result { () throws(SystemError) in try writeWhole(raw) } }
        try result.get()
        backlog.removeAll()
        storedContentBytes = backlogContentEnd
    }

    /// Writes `count` bytes of `output` (whole blocks, or the header or the
    /// end), or keeps them in the backlog when the file refuses them or a
    /// backlog already waits. `contentEnd` is what is stored once they are in.
    private func emit(_ count: Int, storing contentEnd: Int) throws(SystemError) {
        guard backlog.isEmpty else {
            output.withUnsafeBytes { backlog += $0[0..<count] }
            backlogContentEnd = contentEnd
            return
        }
        guard count > 0 else {
            storedContentBytes = contentEnd
            return
        }
        let result = output.withUnsafeBytes { raw in
            Result { () throws(SystemError) in try writeWhole(UnsafeRawBufferPointer(rebasing: raw[0..<count])) }
        }
        do throws(SystemError) {
            try result.get()
            storedContentBytes = contentEnd
        } catch {
            output.withUnsafeBytes { backlog += $0[0..<count] }
            backlogContentEnd = contentEnd
            throw error
        }
    }

    /// Writes `bytes` at ``bytesWritten``; on a failure cuts the file back
    /// there, so that no part of them stays.
    private func writeWhole(_ bytes: UnsafeRawBufferPointer) throws(SystemError) {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(bytesWritten + done))
            if n < 0, errno == EINTR { continue }
            if n <= 0 {
                let code = n < 0 ? errno : ENOSPC
                if done > 0 { _ = ftruncate(fd, off_t(bytesWritten)) }
                throw SystemError("cannot write", code, path: path)
            }
            done += n
        }
        bytesWritten += bytes.count
    }

    private func check(_ code: Int, _ what: String) throws {
        if LZ4F_isError(code) != 0 {
            throw ArchiveError(path: path, message: "\(what): \(SegmentReader.errorName(code))")
        }
    }
}
