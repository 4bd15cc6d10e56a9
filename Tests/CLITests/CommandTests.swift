import Foundation
import Testing
@testable import TestSupport


/// Writes `count` connect records to `url`, one per line.
func writeConnectLines(_ count: Int, to url: URL) throws {
    var text = ""
    text.reserveCapacity(count * 420)
    for n in 0..<count { text += connectLine(n) + "\n" }
    try text.write(to: url, atomically: false, encoding: .utf8)
}

/// Nil when the texts are equal, else where they first differ, briefly.
/// (`#expect(a == b)` on megabytes of text would make the test library
/// compute a diff for minutes.)
func firstDifference(_ actual: String, _ expected: String) -> String? {
    guard actual != expected else { return nil }
    let a = actual.split(separator: "\n", omittingEmptySubsequences: false)
    let e = expected.split(separator: "\n", omittingEmptySubsequences: false)
    for index in 0..<max(a.count, e.count) {
        let left = index < a.count ? String(a[index].prefix(300)) : "<end of text>"
        let right = index < e.count ? String(e[index].prefix(300)) : "<end of text>"
        if left != right { return "line \(index + 1) of \(a.count): got \(left), expected \(right)" }
    }
    return "the texts differ past 300 characters of a line"
}

/// The numbers a `stage totals` log line reports for `stage`.
func stageTotals(_ stderr: String, stage: String) -> [String: UInt64] {
    for line in stderr.split(separator: "\n") where line.contains("stage totals") && line.contains("stage=\(stage) ") {
        var totals: [String: UInt64] = [:]
        for word in line.split(separator: " ") {
            let parts = word.split(separator: "=", maxSplits: 1)
            if parts.count == 2, let value = UInt64(parts[1]) { totals[String(parts[0])] = value }
        }
        return totals
    }
    return [:]
}

@Suite("pipelined command")
struct CommandTests {
    @Test func usageErrorsExitTwo() throws {
        let unknown = try CLI.run(["frobnicate"])
        #expect(unknown.status == 2)
        #expect(unknown.stderr.contains("frobnicate"))
        let noFiles = try CLI.run(["validate"])
        #expect(noFiles.status == 2)
        let badLevel = try CLI.run(["run", "--log-level", "loud", "x.yaml"])
        #expect(badLevel.status == 2)
        #expect(badLevel.stderr.contains("--log-level"))
    }

    @Test func pluginsListsEveryStageType() throws {
        let result = try CLI.run(["plugins"])
        #expect(result.status == 0)
        for type in ["syscall_monitor", "replay", "event_id", "retval", "scope", "file", "lz4_segments", "unix_socket"] {
            #expect(result.stdout.contains("\n  \(type)  "), "plugins does not list \(type)")
        }
        for option in ["skip_retvals", "visibility", "errno", "not_equals", "rotate_bytes", "segment_bytes", "allow_uids", "queue_full"] {
            #expect(result.stdout.contains(" \(option) "), "plugins does not list option \(option)")
        }
    }

    @Test func everyExamplePipelineValidates() throws {
        let directory = CLI.packageRoot.appendingPathComponent("pipelines")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.contains("default.yaml"))
        #expect(files.contains("connect.yaml"))
        let scratch = try CLI.temporaryDirectory("examples")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let replayFile = scratch.appendingPathComponent("events.jsonl")
        try writeConnectLines(3, to: replayFile)
        for file in files {
            let result = try CLI.run(
                ["validate", directory.appendingPathComponent(file).path],
                environment: ["REPLAY_FILE": replayFile.path, "ARCHIVE_DIR": scratch.path, "SOCKET_PATH": scratch.appendingPathComponent("s.sock").path]
            )
            #expect(result.status == 0, "\(file): \(result.stderr)")
            #expect(result.stderr.isEmpty, "\(file): \(result.stderr)")
        }
    }

    /// A user who copies a shipped file and runs it sets no variables first:
    /// every file must validate as shipped, with nothing in the environment.
    @Test func everyShippedPipelineValidatesWithAnEmptyEnvironment() throws {
        let directory = CLI.packageRoot.appendingPathComponent("pipelines")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".yaml") }.sorted()
        #expect(files.count >= 7)
        for file in files {
            let result = try CLI.start(["validate", directory.appendingPathComponent(file).path], prefix: ["/usr/bin/env", "-i"])
                .finish(timeout: 120)
            #expect(result.status == 0, "\(file): \(result.stderr)")
            #expect(result.stderr.isEmpty, "\(file): \(result.stderr)")
            #expect(result.stdout.contains("\(file): ok"), "\(file): \(result.stdout)")
        }
    }

    /// The bad-pipeline corpus: one file per stage type, each naming at its
    /// top (`# expect: LINE:COLUMN: error: ...`) exactly the errors that
    /// `validate` must print for it, in order, with exit status 78.
    @Test func badPipelineCorpusGivesEveryExpectedError() throws {
        let directory = CLI.packageRoot.appendingPathComponent("Tests/CLITests/Corpus")
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".yaml") }.sorted()
        let types = Set(files.map { String($0.prefix { $0 != "-" }) })
        #expect(types == ["syscall_monitor", "replay", "event_id", "retval", "scope", "file", "lz4_segments", "unix_socket"])
        for file in files {
            let path = directory.appendingPathComponent(file).path
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let expected = text.split(separator: "\n").filter { $0.hasPrefix("# expect: ") }
                .map { "\(path):\($0.dropFirst("# expect: ".count))\n" }.joined()
            #expect(!expected.isEmpty, "\(file) names no expected error")
            let result = try CLI.run(["validate", path])
            #expect(result.status == 78, "\(file)")
            #expect(result.stderr == expected, "\(file):\n\(result.stderr)")
        }
    }

    @Test func embeddedDefaultPipelineIsTheShippedFile() throws {
        let shipped = try String(contentsOf: CLI.packageRoot.appendingPathComponent("pipelines/default.yaml"), encoding: .utf8)
        let source = try String(contentsOf: CLI.packageRoot.appendingPathComponent("Sources/pipelined/DefaultPipeline.swift"), encoding: .utf8)
        let parts = source.components(separatedBy: "\"\"\"\n")
        try #require(parts.count == 3, "DefaultPipeline.swift should hold one multi-line literal")
        #expect(parts[1] + "\n" == shipped || parts[1] == shipped, "pipelines/default.yaml and DefaultPipeline.yaml differ")
    }

    @Test func invalidFilesExit78WithEveryProblem() throws {
        let scratch = try CLI.temporaryDirectory("invalid")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let bad = scratch.appendingPathComponent("p.yaml")
        try """
            sources:
              kernel:
                type: replay
                path: /dev/null
                rate: fast
            sinks:
              log:
                type: file
                inputs: [kernel, kernal]
                pth: /tmp/x
            """.write(to: bad, atomically: true, encoding: .utf8)
        let good = scratch.appendingPathComponent("ok.yaml")
        try """
            sources:
              r: {type: replay, path: /dev/null}
            sinks:
              out: {type: file, inputs: [r], path: "-"}
            """.write(to: good, atomically: true, encoding: .utf8)
        let path = bad.path
        let expected = """
            \(path):5:11: error: source 'kernel': 'rate' must be a number, not 'fast'
            \(path):7:3: error: sink 'log': missing required option 'path'
            \(path):9:22: error: sink 'log': input 'kernal' does not exist (did you mean 'kernel'?)
            \(path):10:5: error: sink 'log': unknown key 'pth' (did you mean 'path'?)

            """
        let validate = try CLI.run(["validate", good.path, bad.path])
        #expect(validate.status == 78)
        #expect(validate.stderr == expected)
        #expect(validate.stdout.contains("ok.yaml: ok (1 sources, 0 filters, 1 sinks)"))

        // `run` checks exactly the same and starts nothing.
        let run = try CLI.run(["run", bad.path])
        #expect(run.status == 78)
        #expect(run.stderr == expected)

        let missing = try CLI.run(["run", scratch.appendingPathComponent("absent.yaml").path])
        #expect(missing.status == 78)
        #expect(missing.stderr.hasPrefix("\(scratch.path)/absent.yaml:1:1: error: cannot open the file: No such file or directory"))
    }

    @Test func replayThroughFiltersIntoAFile() throws {
        let scratch = try CLI.temporaryDirectory("replay")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let input = scratch.appendingPathComponent("in.jsonl")
        try writeConnectLines(3000, to: input)
        let all = scratch.appendingPathComponent("all.jsonl")
        let failed = scratch.appendingPathComponent("failed.jsonl")
        let pipeline = scratch.appendingPathComponent("p.yaml")
        try """
            name: replay-test
            sources:
              recorded: {type: replay, path: "${IN}"}
            filters:
              refused: {type: retval, inputs: [recorded], errno: [ECONNREFUSED]}
            sinks:
              all: {type: file, inputs: [recorded], path: "\(all.path)"}
              failed: {type: file, inputs: [refused], path: "\(failed.path)"}
            """.write(to: pipeline, atomically: true, encoding: .utf8)
        let result = try CLI.run(["run", pipeline.path], environment: ["IN": input.path])
        #expect(result.status == 0, "\(result.stderr)")
        let expectedAll = (0..<3000).map { connectLine($0) + "\n" }.joined()
        let expectedFailed = (0..<3000).filter { $0 % 3 == 0 }.map { connectLine($0) + "\n" }.joined()
        #expect(firstDifference(try String(contentsOf: all, encoding: .utf8), expectedAll) == nil)
        #expect(firstDifference(try String(contentsOf: failed, encoding: .utf8), expectedFailed) == nil)
        #expect(stageTotals(result.stderr, stage: "failed")["in"] == 1000)
        #expect(stageTotals(result.stderr, stage: "failed")["out"] == 1000)
        #expect(stageTotals(result.stderr, stage: "all")["out"] == 3000)
        #expect(stageTotals(result.stderr, stage: "recorded")["out"] == 3000)
    }

    @Test func sigtermWhileEventsFlowLosesNothingAlreadyRead() throws {
        let scratch = try CLI.temporaryDirectory("sigterm")
        defer { try? FileManager.default.removeItem(at: scratch) }
        // A FIFO fed without pause until the run is gone: SIGTERM always
        // lands mid-stream.
        let feed = try Feed(in: scratch)
        let output = scratch.appendingPathComponent("out.jsonl")
        let pipeline = scratch.appendingPathComponent("p.yaml")
        try """
            sources:
              recorded: {type: replay, path: "\(feed.path)"}
            sinks:
              out: {type: file, inputs: [recorded], path: "\(output.path)"}
            """.write(to: pipeline, atomically: true, encoding: .utf8)
        let running = try CLI.start(["run", pipeline.path])
        #expect(feed.connect(), "the run never opened its input")
        feed.stream()
        // Wait until events reach the file, then stop mid-stream.
        let flowing = running.waitFor { _, _ in
            ((try? FileManager.default.attributesOfItem(atPath: output.path)[.size] as? Int) ?? 0) > 100_000
        }
        #expect(flowing)
        running.signal(SIGTERM)
        let result = running.finish()
        let sent = feed.close()
        #expect(result.status == 0, "\(result.stderr)")
        let read = stageTotals(result.stderr, stage: "recorded")["out"]
        let written = stageTotals(result.stderr, stage: "out")["in"]
        let text = try String(contentsOf: output, encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(text.hasSuffix("\n"))
        // Everything the source read reached the file, whole lines in order:
        // the input's prefix.
        #expect(read != nil && read == written)
        #expect(UInt64(lines.count - 1) == read)
        #expect(lines.count - 1 <= sent)
        let expected = (0..<(lines.count - 1)).map { connectLine($0) + "\n" }.joined()
        #expect(firstDifference(text, expected) == nil)
    }

    @Test func missingPrivilegeExits77BeforeAnySinkOpens() throws {
        // Run as `nobody` from a copy of the binary that `nobody` can reach.
        let scratch = try CLI.temporaryDirectory("privilege")
        defer { try? FileManager.default.removeItem(at: scratch) }
        try FileManager.default.setAttributes([.posixPermissions: 0o777], ofItemAtPath: scratch.path)
        let copy = scratch.appendingPathComponent("pipelined")
        try FileManager.default.copyItem(at: CLI.binary, to: copy)
        let output = scratch.appendingPathComponent("events.jsonl")
        let pipeline = scratch.appendingPathComponent("p.yaml")
        try """
            sources:
              kernel: {type: syscall_monitor, events: [connect]}
            sinks:
              out: {type: file, inputs: [kernel], path: "\(output.path)"}
            """.write(to: pipeline, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: pipeline.path)
        guard getuid() == 0 else {
            print("skipping: switching to another uid needs root")
            return
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", copy.path, "run", "--metrics-listen", "127.0.0.1:0", pipeline.path]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 77, "\(stderr)")
        #expect(stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON") && stderr.contains("root"), "\(stderr)")
        #expect(!FileManager.default.fileExists(atPath: output.path), "the file sink opened before the privilege check")
    }
}
