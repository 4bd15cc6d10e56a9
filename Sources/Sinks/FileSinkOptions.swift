import PipelineCore

/// Options of the `file` sink.
public struct FileSinkOptions: StageOptions, Equatable {
    /// The file to write, or `-` for standard output.
    public var path: String
    /// Rotate before a record would take the file past this many bytes.
    public var rotateBytes: Int?
    /// Rotate a non-empty file this long after it was opened.
    public var rotateAgeNs: Int64?
    /// How many rotated files to keep (oldest removed first); nil keeps all.
    public var keepFiles: Int?
    /// Append to an existing file (true) or truncate it at start (false).
    public var append: Bool

    public init(path: String, rotateBytes: Int? = nil, rotateAgeNs: Int64? = nil, keepFiles: Int? = nil, append: Bool = true) {
        self.path = path
        self.rotateBytes = rotateBytes
        self.rotateAgeNs = rotateAgeNs
        self.keepFiles = keepFiles
        self.append = append
    }

    public static let specs: [OptionSpec] = [
        OptionSpec("path", "string", required: true, "file to write NDJSON to; '-' is standard output"),
        OptionSpec("rotate_bytes", "size", "rotate before the file would pass this size (at least 4KiB)"),
        OptionSpec("rotate_age", "duration", "rotate a non-empty file this long after it was opened (at least 1s)"),
        OptionSpec("keep_files", "int", "rotated files to keep, oldest removed first (default: all)"),
        OptionSpec("append", "bool", default: "true", "append to an existing file; false truncates it at start"),
    ]

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        config.require("path")
        let path = config.string("path")
        if let path, path.isEmpty { config.error("path", "must not be empty") }
        let rotateBytes = config.size("rotate_bytes", in: 4096...Int.max)
        let rotateAge = config.duration("rotate_age", minimumNs: 1_000_000_000)
        let keepFiles = config.int("keep_files", in: 1...100_000)
        let append = config.bool("append") ?? true
        if path == "-" {
            for key in ["rotate_bytes", "rotate_age", "keep_files"] where config.has(key) {
                config.error(key, "cannot be used with path '-' (standard output does not rotate)")
            }
        }
        guard config.diagnostics.count == errors, let path else { return nil }
        self.init(path: path, rotateBytes: rotateBytes, rotateAgeNs: rotateAge, keepFiles: keepFiles, append: append)
    }
}
