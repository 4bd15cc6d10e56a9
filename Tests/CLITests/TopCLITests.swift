import Foundation
import Testing

#if canImport(Glibc)
import Glibc
@testable import TestSupport
#endif

/// `pipelined top` against a running pipeline, read off the screen of a real
/// terminal (tmux) as a person would see it.
@Suite("pipelined top")
final class TopCLITests: Sendable {
    let directory: URL
    /// The tmux server of this test alone (`-L`): nothing else is touched.
    let socketName = "pl-top-\(UUID().uuidString.prefix(8))"

    init() throws {
        directory = try CLI.temporaryDirectory("top")
    }

    deinit {
        _ = try? Self.tmux(["-L", socketName, "kill-server"])
        try? FileManager.default.removeItem(at: directory)
    }

    /// Runs a tmux command and returns what it printed, with every
    /// descriptor but 0-2 closed: the first command forks the
    /// tmux server, which would otherwise keep the descriptors it inherited
    /// (Foundation's own among them) open for as long as it runs.
    @discardableResult
    static func tmux(_ arguments: [String]) throws -> String {
        let output = "/tmp/\(UUID().uuidString).tmux-out"
        defer { unlink(output) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        // bash closes 3 and up, then becomes tmux (Swift's Glibc has
        // no posix_spawn_file_actions_addclosefrom_np).
        let script = #"for fd in /proc/$$/fd/*; do fd=${fd##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec tmux "$@""#
        let argv = (["bash", "-c", script, "tmux"] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, "/bin/bash", &actions, nil, argv, environ)
        guard spawned == 0 else { throw POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EIO) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        return (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
    }

    /// A replay of a FIFO fed for as long as the test runs, through a filter into two sinks.
    private func startPipeline() throws -> (RunningPipeline, Feed) {
        let feed = try Feed(in: directory)
        let file = directory.appendingPathComponent("p.yaml")
        try """
            sources:
              input: {type: replay, path: "\(feed.path)"}
            filters:
              failed: {type: retval, inputs: [input], success: false}
            sinks:
              everything: {type: file, inputs: [input], path: "\(directory.path)/all.jsonl"}
              failures: {type: file, inputs: [failed], path: "\(directory.path)/failed.jsonl"}
            """.write(to: file, atomically: true, encoding: .utf8)
        let pipeline = try RunningPipeline(file.path)
        #expect(feed.connect())
        feed.stream(chunk: 200)
        return (pipeline, feed)
    }

    /// Needs tmux (scripts/install-packages.sh installs it).
    @Test func theScreenShowsEveryStageWithNonZeroRates_andQQuits() throws {
        let (pipeline, feed) = try startPipeline()
        defer {
            feed.close()
            _ = pipeline.finish()
        }
        let command = "\(CLI.binary.path) top --url http://127.0.0.1:\(pipeline.port)"
        try Self.tmux(["-L", socketName, "new-session", "-d", "-s", "top", "-x", "150", "-y", "30", command])
        let stages = ["input", "failed", "everything", "failures"]
        var screen = ""
        // Liveness bound: a refresh a second, the rates after the second.
        let shown = try eventually(timeout: 60) {
            screen = try Self.tmux(["-L", socketName, "capture-pane", "-p", "-t", "top"])
            let rows = screen.split(separator: "\n")
            return stages.allSatisfy { stage in
                rows.contains { row in
                    let cells = row.split(separator: " ")
                    // STAGE TYPE IN/S OUT/S ...: a row with a rate above zero.
                    return cells.first.map(String.init) == stage && cells.count > 3 && (Int(cells[2]) ?? Int(cells[2].dropLast()).map { $0 * 1000 } ?? 0) > 0
                }
            }
        }
        #expect(shown, "the screen:\n\(screen)")
        #expect(screen.contains("pipelined top"))
        #expect(screen.contains("STAGE") && screen.contains("LOST/S") && screen.contains("QUEUE"))
        try Self.tmux(["-L", socketName, "send-keys", "-t", "top", "q"])
        #expect(try eventually(timeout: 20) { !(try Self.tmux(["-L", socketName, "list-sessions"])).contains("top:") }, "q did not quit")
    }

    @Test func offATerminalItPrintsOneSnapshot() throws {
        let (pipeline, feed) = try startPipeline()
        defer {
            feed.close()
            _ = pipeline.finish()
        }
        let result = try CLI.run(["top", "--url", "http://127.0.0.1:\(pipeline.port)"], timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        let rows = result.stdout.split(separator: "\n")
        #expect(rows.first?.hasPrefix("STAGE") == true)
        #expect(Set(rows.dropFirst().compactMap { $0.split(separator: " ").first.map(String.init) }) == ["input", "failed", "everything", "failures"])
        #expect(!result.stdout.contains("\u{1B}"), "escape codes in a plain snapshot")
    }

    @Test func anEndpointThatIsNotThereIsAnError() throws {
        let result = try CLI.run(["top", "--once", "--url", "http://127.0.0.1:1"], timeout: 30)
        #expect(result.status == 1)
        #expect(result.stderr.contains("pipelined top: http://127.0.0.1:1: cannot connect"), "\(result.stderr)")
    }
}
