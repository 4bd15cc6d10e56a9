import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import PipelineCore

/// `pipelined`: kernel syscall events as pipelines you define, filter, tail and archive.
///
/// Exit status (docs/command-line.md): 0 success, 1 runtime failure, 2 usage error,
/// 65 damaged archive, 77 missing privilege, 78 invalid pipeline file.
@main
struct PipelinedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipelined",
        abstract: "Turn kernel syscall events into pipelines you define, filter, tail and archive.",
        version: PipelineCoreInfo.version,
        subcommands: [
            RunCommand.self,
            ValidateCommand.self,
            PluginsCommand.self,
            ArchiveCommand.self,
            TailCommand.self,
            TopCommand.self,
        ]
    )

    /// Parses and runs the command, mapping argument errors to exit status 2
    /// (ArgumentParser's own default is 64).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            if exitCode(for: error) == .validationFailure {
                let message = fullMessage(for: error)
                FileHandleStderr.write(message.hasSuffix("\n") ? message : message + "\n")
                Glibc.exit(ExitStatus.usage)
            }
            exit(withError: error)
        }
    }
}

/// The exit statuses of docs/command-line.md.
enum ExitStatus {
    static let success: Int32 = 0
    static let failure: Int32 = 1
    static let usage: Int32 = 2
    static let damagedArchive: Int32 = 65
    static let noPrivilege: Int32 = 77
    static let invalidPipeline: Int32 = 78
}

/// Unbuffered writes to standard error, for messages that must appear in
/// order with a child's or the logger's output.
enum FileHandleStderr {
    static func write(_ text: String) { writeAll(text, to: STDERR_FILENO) }
}

/// Writes all of `text` to `fd`, retrying after signals; gives up on an error.
func writeAll(_ text: String, to fd: Int32) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written <= 0 { if errno == EINTR { continue } else { return } }
            offset += written
        }
    }
}
