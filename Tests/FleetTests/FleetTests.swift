import Foundation
import PipelineCore
import Testing
@testable import TestSupport

/// Nodes and aggregators as users run them: `pipelined run` processes, a
/// real `nats-server -js` (or three) on loopback ports with its own store,
/// killed and restarted as a crash would. Every count is exact.
@Suite("fleet: nodes → NATS JetStream → aggregator", .serialized)
struct FleetTests {
    /// Events each node replays (the issue's number).
    static let perNode = 100_000
    static let nodes = ["node-a", "node-b", "node-c"]

    /// Why `numbers` is not exactly `0..<count` in order, or nil when it is.
    static func inOrderProblem(_ numbers: [Int]?, count: Int) -> String? {
        guard let numbers else { return "no events" }
        if numbers.count != count { return "\(numbers.count) events, not \(count)" }
        if let index = numbers.indices.first(where: { numbers[$0] != $0 }) {
            return "event \(index) is number \(numbers[index])"
        }
        return nil
    }

    /// Why `numbers` do not hold each of `0..<count` exactly once, or nil.
    static func exactlyOnceProblem(_ numbers: [Int]?, count: Int) -> String? {
        guard let numbers else { return "no events" }
        var seen = [Int](repeating: 0, count: count)
        for number in numbers where number >= 0 && number < count { seen[number] += 1 }
        let missing = seen.indices.filter { seen[$0] == 0 }
        let twice = seen.indices.filter { seen[$0] > 1 }
        if missing.isEmpty, twice.isEmpty, numbers.count == count { return nil }
        return "\(numbers.count) events; missing \(missing.count) (first \(missing.prefix(5))), duplicated \(twice.count) (first \(twice.prefix(5)))"
    }

    /// Starts a node per name, each replaying `events` into a `nats` sink.
    static func startNodes(_ scratch: FleetScratch, events: String, urls: [String], rate: Int? = nil, sink: String = "") throws -> [CLI.Running] {
        try nodes.map { try CLI.start(["run", try scratch.nodePipeline($0, events: events, urls: urls, rate: rate, sink: sink)]) }
    }

    /// Waits for every node to end; each must exit 0. Returns their stderr.
    @discardableResult
    static func finish(_ running: [CLI.Running]) -> [String] {
        zip(nodes, running).map { name, node in
            let result = node.finish(timeout: 240)
            #expect(result.status == 0, "\(name): \(FleetRecords.excerpt(result.stderr))")
            return result.stderr
        }
    }

    /// The stream holds every node's `perNode` events exactly once, and no `lost` record.
    static func expectEveryEventOnceInTheStream(_ inspector: StreamInspector) throws {
        let total = perNode * nodes.count
        #expect(inspector.settledCount("PIPELINED") == UInt64(total))
        let records = try FleetRecords.decode(inspector.payloads("PIPELINED", expected: total).joined(separator: "\n"))
        #expect(FleetRecords.lost(records) == 0)
        let numbers = FleetRecords.numbers(records)
        for name in nodes {
            let problem = exactlyOnceProblem(numbers[name], count: perNode)
            #expect(problem == nil, "\(name): \(problem ?? "")")
        }
    }

    // MARK: 1. Three nodes, one aggregator

    @Test("three nodes × 100,000 events into one archive: each exactly once, each node's in order",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func threeNodesIntoOneArchive() throws {
        let scratch = try FleetScratch("three")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let archive = scratch.directory + "/archive"
        let aggregator = try CLI.start(["run", try scratch.aggregatorPipeline(urls: [server.url], archive: archive)])
        defer { aggregator.stopIfRunning() }
        let events = try scratch.events("events", count: Self.perNode)
        Self.finish(try Self.startNodes(scratch, events: events, urls: [server.url]))
        let inspector = try StreamInspector(urls: [server.url])
        let total = UInt64(Self.perNode * Self.nodes.count)
        #expect(inspector.messageCount("PIPELINED") == total)
        #expect(inspector.waitUntilAcknowledged("PIPELINED", "agg", count: total), "the aggregator did not acknowledge every message")
        let result = aggregator.terminate()
        #expect(result.status == 0, "aggregator: \(FleetRecords.excerpt(result.stderr))")

        let records = try FleetRecords.archive(archive)
        #expect(records.count == Int(total))
        let numbers = FleetRecords.numbers(records)
        #expect(numbers.keys.sorted() == Self.nodes)
        for name in Self.nodes {
            let problem = Self.inOrderProblem(numbers[name], count: Self.perNode)
            #expect(problem == nil, "\(name): \(problem ?? "")")
        }
    }

    // MARK: 2. The server crashes

    @Test("kill -9 the server mid-stream, restart it on its store 3 s later: the nodes resend, the stream holds every event once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func serverCrashAndRestart() throws {
        let scratch = try FleetScratch("crash")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let events = try scratch.events("events", count: Self.perNode)
        // Paced, so that the crash falls in the middle of every node's stream.
        let nodes = try Self.startNodes(scratch, events: events, urls: [server.url], rate: 20_000)
        defer { nodes.forEach { $0.stopIfRunning() } }
        let inspector = try StreamInspector(urls: [server.url])
        let before = inspector.waitForMessages("PIPELINED", atLeast: 60_000, timeout: 120)
        #expect(before >= 60_000 && before < UInt64(Self.perNode * Self.nodes.count), "the crash should fall mid-stream (\(before) stored)")
        server.kill9()
        sleep(3)
        try server.start()
        for (name, stderr) in zip(Self.nodes, Self.finish(nodes)) {
            #expect(stderr.contains("reconnected"), "\(name) should say it reconnected")
        }
        try Self.expectEveryEventOnceInTheStream(try StreamInspector(urls: [server.url]))
    }

    // MARK: 3. The aggregator crashes

    @Test("kill -9 the aggregator mid-stream and restart it: every event at least once, duplicates within the unacknowledged window; the restart reads what the killed run left unacknowledged again from the stream at once, not after ack_wait",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func aggregatorCrashAndRestart() throws {
        let scratch = try FleetScratch("aggregator")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let events = try scratch.events("events", count: Self.perNode)
        Self.finish(try Self.startNodes(scratch, events: events, urls: [server.url]))
        let total = Self.perNode * Self.nodes.count
        let inspector = try StreamInspector(urls: [server.url])
        #expect(inspector.messageCount("PIPELINED") == UInt64(total))

        let window = 4096
        let archive = scratch.directory + "/archive"
        // An ack_wait longer than the test may take: the server would deliver
        // the killed run's unacknowledged messages again only after it, and
        // with the window full it sends nothing else meanwhile.
        let pipeline = try scratch.aggregatorPipeline(urls: [server.url], archive: archive, source: "max_ack_pending: \(window)\nack_wait: 10m")
        let first = try CLI.start(["run", pipeline])
        defer { first.stopIfRunning() }
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, (inspector.consumer("PIPELINED", "agg")?.ackFloorStream ?? 0) < UInt64(total / 3) { usleep(20_000) }
        first.signal(SIGKILL)
        _ = first.finish()
        let acknowledged = inspector.consumer("PIPELINED", "agg")?.ackFloorStream ?? 0
        #expect(acknowledged > 0 && acknowledged < UInt64(total), "the kill should fall mid-stream (\(acknowledged) acknowledged)")

        let second = try CLI.start(["run", pipeline])
        defer { second.stopIfRunning() }
        #expect(inspector.waitUntilAcknowledged("PIPELINED", "agg", count: UInt64(total)))
        let result = second.terminate()
        #expect(result.status == 0, "restarted aggregator: \(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("delivered again"), "the restarted aggregator reports the redelivered messages")
        #expect(result.stderr.contains("delivered before again from the stream"), "the restarted aggregator says it read them again")
        #expect((inspector.consumer("PIPELINED", "agg")?.redelivered ?? -1) == 0, "the server delivered none again (ack_wait did not run out)")

        let records = try FleetRecords.archive(archive)
        let numbers = FleetRecords.numbers(records)
        var duplicates = 0
        for name in Self.nodes {
            let got = Set(numbers[name] ?? [])
            #expect(got.count == Self.perNode, "\(name): \(Self.perNode - got.count) event(s) missing")
            duplicates += (numbers[name]?.count ?? 0) - got.count
        }
        #expect(records.count == total + duplicates)
        #expect(duplicates <= window, "\(duplicates) duplicates, more than the \(window) unacknowledged")
    }

    // MARK: 4. A cluster member dies

    @Test("a three-server cluster, replicas 3: one server killed mid-stream, nothing lost or duplicated in the stream",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func clusterMemberKilled() throws {
        let scratch = try FleetScratch("cluster")
        defer { scratch.remove() }
        let cluster = try NATSCluster(directory: scratch.directory)
        defer { cluster.stop() }
        let events = try scratch.events("events", count: Self.perNode)
        let nodes = try Self.startNodes(scratch, events: events, urls: cluster.urls, rate: 20_000, sink: "replicas: 3")
        defer { nodes.forEach { $0.stopIfRunning() } }
        let inspector = try StreamInspector(urls: Array(cluster.urls.dropFirst()))
        let before = inspector.waitForMessages("PIPELINED", atLeast: 60_000, timeout: 120)
        #expect(before >= 60_000 && before < UInt64(Self.perNode * Self.nodes.count), "the kill should fall mid-stream (\(before) stored)")
        // The nodes connect to the first url: the server they talk to dies.
        cluster.servers[0].kill9()
        Self.finish(nodes)
        try Self.expectEveryEventOnceInTheStream(inspector)
    }

    // MARK: 5. Unreachable past the buffer

    @Test("server unreachable for longer than buffer_bytes lasts: what was not delivered is counted in the stream",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func unreachablePastTheBufferIsCounted() throws {
        let scratch = try FleetScratch("buffer")
        defer { scratch.remove() }
        let port = NATSTests.freePort()
        let sent = 20_000
        let events = try scratch.events("events", count: sent)
        let node = try CLI.start(["run", try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:\(port)"], sink: "buffer_bytes: 256KiB")])
        defer { node.stopIfRunning() }
        #expect(node.waitFor(timeout: 60) { _, stderr in stderr.contains("dropping new ones") }, "the node should say it drops")
        let server = try NATSServer(directory: scratch.directory, port: port)
        defer { server.stop() }
        let result = node.finish(timeout: 120)
        #expect(result.status == 0, "\(FleetRecords.excerpt(result.stderr))")

        let inspector = try StreamInspector(urls: [server.url])
        let stored = Int(inspector.settledCount("PIPELINED"))
        let records = try FleetRecords.decode(inspector.payloads("PIPELINED", expected: stored).joined(separator: "\n"))
        let delivered = FleetRecords.numbers(records)["node-a"] ?? []
        let lost = FleetRecords.lost(records)
        #expect(delivered.count > 0 && delivered.count < sent)
        #expect(UInt64(delivered.count) + lost == UInt64(sent), "delivered \(delivered.count) + counted \(lost) ≠ sent \(sent)")
        #expect(Set(delivered).count == delivered.count)
        for case .lost(let record) in records {
            #expect(record.site == .sink)
            #expect(record.stage == "fleet")
            #expect(record.node.name == "node-a")
        }
    }

    // MARK: 6. A real kernel node

    @Test("a syscall_monitor node → nats → aggregator: the exact connect() calls of a child process arrive, with node set",
          .enabled(if: NATSTests.enabled && KernelTests.enabled), .timeLimit(.minutes(3)))
    func kernelNodeThroughNATS() throws {
        let scratch = try FleetScratch("kernel")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let archive = scratch.directory + "/archive"
        let aggregator = try CLI.start(["run", try scratch.aggregatorPipeline(urls: [server.url], archive: archive)])
        defer { aggregator.stopIfRunning() }
        let nodeFile = scratch.directory + "/kernel-node.yaml"
        try """
            settings:
              node: kernel-node
            sources:
              kernel:
                type: syscall_monitor
                events: [connect]
            sinks:
              fleet:
                type: nats
                inputs: [kernel]
                url: \(server.url)

            """.write(toFile: nodeFile, atomically: true, encoding: .utf8)
        let node = try CLI.start(["run", nodeFile])
        defer { node.stopIfRunning() }
        #expect(node.waitFor(timeout: 60) { _, stderr in stderr.contains("pipeline started") }, "\(node.stderr.text)")

        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let run = try Driver.run(["connect", directory.path])
        #expect(run.status == 0)
        let expected = try run.expected()
        #expect(expected.map(\.retval) == [-111, 0, 0, 0, 0, 0])

        var events: [SyscallEvent] = []
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            events = try FleetRecords.archive(archive).events(of: run.pid)
            if events.count >= expected.count { break }
            usleep(250_000)
        }
        #expect(events.map(\.expectedForm) == expected)
        #expect(events.allSatisfy { $0.node.name == "kernel-node" })
        #expect(node.terminate().status == 0)
        #expect(aggregator.terminate().status == 0)
    }

    // MARK: 7. Bad input

    @Test("an unreachable url at start: a clear error, then retries; the pipeline keeps running and delivers once the server is there",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func unreachableAtStartRetries() throws {
        let scratch = try FleetScratch("unreachable")
        defer { scratch.remove() }
        let port = NATSTests.freePort()
        let feed = try Feed(in: URL(fileURLWithPath: scratch.directory))
        let node = try CLI.start(["run", try scratch.nodePipeline("node-a", events: feed.path, urls: ["nats://127.0.0.1:\(port)"])])
        defer { node.stopIfRunning() }
        #expect(feed.connect())
        #expect(node.waitFor(timeout: 30) { _, stderr in stderr.contains("cannot reach nats://127.0.0.1:\(port)") })
        feed.send(100)
        sleep(1)
        #expect(node.process.isRunning, "the pipeline keeps running while the server is unreachable")
        let server = try NATSServer(directory: scratch.directory, port: port)
        defer { server.stop() }
        let inspector = try StreamInspector(urls: [server.url])
        #expect(inspector.waitForMessages("PIPELINED", atLeast: 100, timeout: 60) == 100)
        feed.close()
        let result = node.finish(timeout: 60)
        #expect(result.status == 0, "\(FleetRecords.excerpt(result.stderr))")
        #expect(inspector.messageCount("PIPELINED") == 100)
    }

    @Test("a stream that exists with other subjects: a located pipeline error, exit 78",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(2)))
    func streamWithOtherSubjects() throws {
        let scratch = try FleetScratch("subjects")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let inspector = try StreamInspector(urls: [server.url])
        try inspector.addStream("PIPELINED", subjects: ["other.>"])
        let events = try scratch.events("events", count: 10)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: [server.url], sink: "stream: PIPELINED")
        let result = try CLI.run(["run", pipeline], timeout: 60)
        #expect(result.status == 78)
        let line = try #require(result.stderr.split(separator: "\n").first { $0.contains("error:") })
        let at = try FleetScratch.valueLocation(of: "stream", in: pipeline)
        #expect(line.hasPrefix("\(pipeline):\(at): error: sink 'fleet': stream 'PIPELINED' exists with subjects [other.>]"), "\(line)")
        #expect(inspector.messageCount("PIPELINED") == 0)
    }

    @Test("a credentials file that is not there: exit 78 with FILE:LINE:COL, from validate and run alike")
    func badCredentialsPath() throws {
        let scratch = try FleetScratch("creds")
        defer { scratch.remove() }
        let events = try scratch.events("events", count: 1)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:4222"], sink: "credentials: /nonexistent/fleet.creds")
        let at = try FleetScratch.valueLocation(of: "credentials", in: pipeline)
        for command in ["validate", "run"] {
            let result = try CLI.run([command, pipeline], timeout: 60)
            #expect(result.status == 78, "\(command)")
            #expect(result.stderr.contains("\(pipeline):\(at): error: sink 'fleet': 'credentials' cannot read '/nonexistent/fleet.creds': No such file or directory"), "\(command): \(result.stderr)")
        }
    }
}
