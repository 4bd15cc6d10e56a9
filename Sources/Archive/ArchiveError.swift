import PipelineCore

/// What is wrong with an archive, naming the file: a segment in the way, a
/// directory another writer holds, a frame liblz4 refused, or a system call
/// that failed on it (then ``system`` carries that ``SystemError``).
public struct ArchiveError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The file or directory the error is about.
    public var path: String
    /// What is wrong with it.
    public var message: String
    /// The failed call behind this error, when one failed.
    public var system: SystemError?

    /// An error about `path`, with a message that says what went wrong.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    /// A failed system call on an archive file; reads as the call's own error.
    public init(_ system: SystemError) {
        path = system.path ?? ""
        message = system.message
        self.system = system
    }

    /// `PATH: MESSAGE`.
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}
