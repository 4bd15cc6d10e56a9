import EventArchive
import PipelineCore

/// Options of the `lz4_segments` sink.
public struct LZ4SegmentSinkOptions: StageOptions, Equatable {
    /// The archive directory (created if missing).
    public var directory: String
    /// Seal a segment once its file reaches this many (compressed) bytes.
    public var segmentBytes: Int
    /// Seal a non-empty segment this long after it was started.
    public var segmentAgeNs: Int64
    /// The LZ4 block size: the unit a crash can lose and a reader can skip.
    public var blockSize: LZ4BlockSize
    /// Remove the oldest sealed segments while the archive is larger than this.
    public var retentionBytes: Int?
    /// Remove sealed segments whose last record is older than this.
    public var retentionAgeNs: Int64?
    /// While records arrive, write a partial block at least this often, so
    /// that a crash loses no more than this much and `archive cat` of the
    /// `.open` segment is this fresh.
    public var flushIntervalNs: Int64

    /// Options with the documented defaults for anything not given.
    public init(
        directory: String, segmentBytes: Int = 64 << 20, segmentAgeNs: Int64 = 600_000_000_000,
        blockSize: LZ4BlockSize = .mib1, retentionBytes: Int? = nil, retentionAgeNs: Int64? = nil,
        flushIntervalNs: Int64 = 1_000_000_000
    ) {
        self.directory = directory
        self.segmentBytes = segmentBytes
        self.segmentAgeNs = segmentAgeNs
        self.blockSize = blockSize
        self.retentionBytes = retentionBytes
        self.retentionAgeNs = retentionAgeNs
        self.flushIntervalNs = flushIntervalNs
    }

    public static let specs: [OptionSpec] = [
        OptionSpec("directory", "string", required: true, "archive directory: segments NAME.jsonl.lz4 and manifest.jsonl (created if missing)"),
        OptionSpec("segment_bytes", "size", default: "64MiB", "seal a segment once its file reaches this size (at least 4KiB)"),
        OptionSpec("segment_age", "duration", default: "10m", "seal a non-empty segment this long after it was started (at least 1s)"),
        OptionSpec("block_size", "64KiB|256KiB|1MiB|4MiB", default: "1MiB", "LZ4 block size: a block is written when full"),
        OptionSpec("retention_bytes", "size", "remove the oldest sealed segments while the archive is larger (at least segment_bytes)"),
        OptionSpec("retention_age", "duration", "remove sealed segments whose last event is older than this (at least 1s)"),
        OptionSpec("flush_interval", "duration", default: "1s", "write a partial block at least this often while events arrive (at least 10ms)"),
    ]

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        config.require("directory")
        let directory = config.string("directory")
        if let directory, directory.isEmpty { config.error("directory", "must not be empty") }
        let segmentBytes = config.size("segment_bytes", in: 4096...Int.max) ?? (64 << 20)
        let segmentAge = config.duration("segment_age", minimumNs: 1_000_000_000) ?? 600_000_000_000
        var blockSize = LZ4BlockSize.mib1
        if let bytes = config.size("block_size") {
            if let size = LZ4BlockSize(rawValue: bytes) {
                blockSize = size
            } else {
                config.error("block_size", "must be one of 64KiB, 256KiB, 1MiB, 4MiB, not \(config.string("block_size") ?? String(bytes))")
            }
        }
        let retentionBytes = config.size("retention_bytes", in: 4096...Int.max)
        if let retentionBytes, retentionBytes < segmentBytes {
            config.error("retention_bytes", "must be at least segment_bytes (\(Units.formatSize(segmentBytes))), not \(Units.formatSize(retentionBytes))")
        }
        let retentionAge = config.duration("retention_age", minimumNs: 1_000_000_000)
        let flushInterval = config.duration("flush_interval", minimumNs: 10_000_000) ?? 1_000_000_000
        guard config.diagnostics.count == errors, let directory else { return nil }
        self.init(
            directory: directory, segmentBytes: segmentBytes, segmentAgeNs: segmentAge, blockSize: blockSize,
            retentionBytes: retentionBytes, retentionAgeNs: retentionAge, flushIntervalNs: flushInterval
        )
    }
}
