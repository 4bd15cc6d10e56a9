import PipelineCore

/// Options of the `replay` source.
public struct ReplaySourceOptions: StageOptions, Equatable {
    /// An NDJSON file (`-` for standard input), an `lz4_segments` segment
    /// (`.jsonl.lz4`, or a `.jsonl.lz4.open` up to its last complete block), or
    /// an archive directory, whose segments are read oldest first.
    public var path: String
    /// Events per second; nil replays as fast as the pipeline takes them.
    public var rate: Double?

    public init(path: String, rate: Double? = nil) {
        self.path = path
        self.rate = rate
    }

    public static let specs: [OptionSpec] = [
        OptionSpec("path", "string", required: true, "an NDJSON event file ('-' for stdin), an lz4_segments segment, or an archive directory (oldest segment first)"),
        OptionSpec("rate", "number", "events per second (default: as fast as possible)"),
    ]

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        config.require("path")
        let path = config.string("path")
        let rate = config.double("rate", in: 0.001...1e9)
        guard config.diagnostics.count == errors, let path else { return nil }
        self.init(path: path, rate: rate)
    }
}
