import EventSinks
import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("pipelined tail")
final class TailCLITests: Sendable {
    let directory: String

    init() throws {
        // Short: a unix socket path holds at most 107 bytes.
        directory = "/tmp/pl-tail-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// A socket file left behind by a server that is gone: bound, then closed.
    private func makeStaleSocket(_ path: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        try #require(bound == 0)
    }

    private func context() -> StageContext {
        StageContext(id: "live", logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), metrics: StageMetrics())
    }

    private func events(_ count: Int) -> [PipelineRecord] {
        (0..<count).map { .event(StageHarness.event("connect", retval: -111, timeNs: 1_795_000_000_000_000_000 + Int64($0))) }
    }

    private func encoded(_ records: [PipelineRecord]) -> String {
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    private func waitFor(_ condition: () -> Bool) -> Bool {
        let deadline = Clock.monotonicNs() + 60_000_000_000
        while !condition() {
            if Clock.monotonicNs() >= deadline { return false }
            Clock.sleep(ns: 2_000_000)
        }
        return true
    }

    private func serve(_ path: String, allowUIDs: [UInt32] = UnixSocketSinkOptions.defaultAllowUIDs) throws -> UnixSocketSink {
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, allowUIDs: allowUIDs))
        try sink.open(context())
        return sink
    }

    @Test func printsEveryLineUntilTheSinkCloses_thenExitsZero() throws {
        let path = directory + "/t.sock"
        let sink = try serve(path)
        let tail = try CLI.start(["tail", path])
        #expect(waitFor { sink.clients.connected.load(ordering: .relaxed) == 1 })
        let input = events(5000)
        for start in stride(from: 0, to: input.count, by: 250) {
            try sink.write(EventBatch(Array(input[start..<start + 250])))
        }
        try sink.close()
        let result = tail.finish()
        #expect(result.status == 0)
        #expect(firstDifference(result.stdout, encoded(input)) == nil)
        #expect(result.stderr.isEmpty)
    }

    @Test func sigintEndsTailWithStatusZero() throws {
        let path = directory + "/i.sock"
        let sink = try serve(path)
        let tail = try CLI.start(["tail", path])
        #expect(waitFor { sink.clients.connected.load(ordering: .relaxed) == 1 })
        let input = events(300)
        try sink.write(EventBatch(input))
        let expected = encoded(input)
        // Each line is printed as it arrives, before the stream ends.
        #expect(tail.waitFor { stdout, _ in stdout.utf8.count >= expected.utf8.count })
        tail.signal(SIGINT)
        let result = tail.finish()
        #expect(result.status == 0)
        #expect(firstDifference(result.stdout, expected) == nil)
        try sink.close()
    }

    @Test func aMissingSocketIsAClearFailure() throws {
        let result = try CLI.run(["tail", directory + "/absent.sock"])
        #expect(result.status == 1)
        #expect(result.stderr == "pipelined tail: no socket at '\(directory)/absent.sock': is the pipeline running, and is this its unix_socket sink's path?\n")
        #expect(result.stdout.isEmpty)
    }

    @Test func aFileThatIsNotASocketIsAClearFailure() throws {
        let path = directory + "/plain.txt"
        try Data("x\n".utf8).write(to: URL(fileURLWithPath: path))
        let result = try CLI.run(["tail", path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("'\(path)' is not a socket"))
    }

    @Test func aStaleSocketIsAClearFailure() throws {
        let path = directory + "/stale.sock"
        // Serve, then let the server vanish without removing its file.
        try makeStaleSocket(path)
        let result = try CLI.run(["tail", path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("nothing is serving on '\(path)'"))
    }

    @Test func aRefusedClientIsAClearFailure() throws {
        let path = directory + "/r.sock"
        // Nobody running this test has uid 4242424.
        let sink = try serve(path, allowUIDs: [4_242_424])
        let result = try CLI.run(["tail", path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("closed the connection before sending anything"))
        #expect(result.stderr.contains("allow_uids"))
        #expect(sink.clients.refused.load(ordering: .relaxed) == 1)
        try sink.close()
    }

    @Test func permissionDeniedIsAClearFailure() throws {
        guard geteuid() == 0 else {
            print("skipped: running tail as uid 65534 needs root")
            return
        }
        let path = directory + "/p.sock"
        // Mode 0600, owned by root: uid 65534 may not connect.
        let sink = try serve(path, allowUIDs: [0, 65534])
        let result = try CLI.start(["tail", path], prefix: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]).finish()
        #expect(result.status == 1)
        #expect(result.stderr.contains("permission denied connecting to '\(path)'"))
        #expect(sink.clients.accepted.load(ordering: .relaxed) == 0)
        try sink.close()
    }

    @Test func noArgumentIsAUsageError() throws {
        let result = try CLI.run(["tail"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("socket"))
    }

    // MARK: With `pipelined run`

    private func socketPipeline(_ path: String, replay input: String) throws -> String {
        let pipeline = directory + "/p.yaml"
        try """
            name: socket-test
            sources:
              recorded: {type: replay, path: "\(input)"}
            sinks:
              live: {type: unix_socket, inputs: [recorded], path: "\(path)"}
            """.write(toFile: pipeline, atomically: true, encoding: .utf8)
        return pipeline
    }

    private func socketExists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFSOCK
    }

    @Test func tailFollowsARunningPipelineUntilItEnds() throws {
        // The run replays a FIFO the test feeds, so tail joins mid-stream and
        // the stream ends when the test says.
        let feed = try Feed(in: URL(fileURLWithPath: directory))
        let path = directory + "/run.sock"
        let run = try CLI.start(["run", try socketPipeline(path, replay: feed.path)])
        #expect(feed.connect(), "the run never opened its input")
        feed.send(1000)
        #expect(waitFor { socketExists(path) })
        let tail = try CLI.start(["tail", path])
        // Feed until what tail prints shows it has joined, then a last part;
        // gently (about 5000 records a second), far below what a client
        // buffer holds, so tail never has events dropped.
        let joined = waitFor {
            feed.send(100)
            usleep(20_000)
            return !tail.stdout.text.isEmpty
        }
        #expect(joined)
        feed.send(1000)
        let count = feed.close()
        let ran = run.finish()
        #expect(ran.status == 0, "\(ran.stderr)")
        let result = tail.finish()
        #expect(result.status == 0, "\(result.stderr)")
        // Whole lines from where tail joined to the end, in order.
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(result.stdout.hasSuffix("\n"))
        let received = lines.count - 1
        #expect(received > 1000 && received <= count)
        let first = count - received
        #expect(firstDifference(result.stdout, (first..<count).map { connectLine($0) + "\n" }.joined()) == nil)
        // The sink removed its socket file at exit.
        #expect(!socketExists(path))
    }

    /// The file gets exactly the configured mode whatever the umask: a umask
    /// that removes bits is undone, one that adds none adds nothing.
    @Test(arguments: [("0666", "077"), ("0600", "000"), ("0660", "027")])
    func theSocketModeIgnoresTheUmask(mode: String, umask: String) throws {
        // A FIFO nobody writes: the run serves until it is told to stop.
        let input = try Feed(in: URL(fileURLWithPath: directory), name: "u\(mode).fifo").path
        let path = directory + "/u\(mode).sock"
        let pipeline = directory + "/u\(mode).yaml"
        try """
            sources:
              recorded: {type: replay, path: "\(input)"}
            sinks:
              live: {type: unix_socket, inputs: [recorded], path: "\(path)", mode: "\(mode)"}
            """.write(toFile: pipeline, atomically: true, encoding: .utf8)
        let run = try CLI.start(["run", pipeline], prefix: ["/bin/sh", "-c", "umask \(umask); exec \"$0\" \"$@\""])
        #expect(waitFor { socketExists(path) })
        var info = stat()
        #expect(lstat(path, &info) == 0)
        #expect(String(info.st_mode & 0o777, radix: 8) == String(mode.dropFirst()))
        run.signal(SIGINT)
        let result = run.finish()
        #expect(result.status == 0, "\(result.stderr)")
        #expect(!socketExists(path))
    }

    @Test func runRefusesAPathALiveSinkServes() throws {
        let input = directory + "/in.jsonl"
        try writeConnectLines(10, to: URL(fileURLWithPath: input))
        let path = directory + "/busy.sock"
        let live = try serve(path)
        let result = try CLI.run(["run", try socketPipeline(path, replay: input)])
        #expect(result.status == 1)
        #expect(result.stderr.contains("'\(path)' is in use"), "\(result.stderr)")
        // The live sink keeps its file.
        #expect(socketExists(path))
        try live.close()
    }

    @Test func runReplacesAStaleSocketFile() throws {
        let input = directory + "/in.jsonl"
        try writeConnectLines(10, to: URL(fileURLWithPath: input))
        let path = directory + "/old.sock"
        try makeStaleSocket(path)
        let result = try CLI.run(["run", try socketPipeline(path, replay: input)])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stderr.contains("stale"))
        #expect(!socketExists(path))
    }
}
