import CNATS
import Foundation
import PipelineCore
import Testing
@testable import TestSupport

extension StreamInspector {
    /// One durable consumer as the server lists it.
    struct ListedConsumer {
        var name: String
        var filter: String
        /// Deliveries acknowledged, counted in consumer sequence (every
        /// delivery, redeliveries too, up to the ack floor).
        var ackFloorConsumer: UInt64
        var ackPending: Int64
        var pending: UInt64
    }

    /// Every consumer of `stream`, by name.
    func consumers(_ stream: String) -> [String: ListedConsumer] {
        var list: UnsafeMutablePointer<jsConsumerInfoList>?
        var code = jsErrCode(rawValue: 0)
        guard js_Consumers(&list, jetStream, stream, nil, &code) == NATS_OK, let list else { return [:] }
        defer { jsConsumerInfoList_Destroy(list) }
        var result: [String: ListedConsumer] = [:]
        for index in 0..<Int(list.pointee.Count) {
            guard let info = list.pointee.List[index] else { continue }
            let name = String(cString: info.pointee.Name)
            let filter = info.pointee.Config.pointee.FilterSubject.map { String(cString: $0) } ?? ""
            result[name] = ListedConsumer(name: name, filter: filter, ackFloorConsumer: info.pointee.AckFloor.Consumer,
                                          ackPending: info.pointee.NumAckPending, pending: info.pointee.NumPending)
        }
        return result
    }

    /// Waits until every consumer of `stream` has nothing pending and
    /// nothing unacknowledged, and `delivered` says enough was delivered.
    func waitUntilDrained(_ stream: String, timeout: Double = 180, _ delivered: ([String: ListedConsumer]) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let listed = consumers(stream)
            if !listed.isEmpty, listed.values.allSatisfy({ $0.pending == 0 && $0.ackPending == 0 }), delivered(listed) { return true }
            usleep(200_000)
        }
        return false
    }
}

/// The `nats` source with several `subjects`: one durable consumer per
/// subject on nats-server 2.9, fetched in turn, each message acknowledged
/// on its own consumer.
@Suite("fleet: a source reading several subjects", .serialized)
struct FleetSubjectsTests {
    static let perNode = 20_000
    /// Two of the three nodes FleetTests.startNodes runs.
    static let read = ["node-a", "node-c"]
    static let subjects = "[pipelined.node-a.>, pipelined.node-c.>]"

    /// Three nodes publish `count` events each and stop; returns the inspector.
    static func publish(_ scratch: FleetScratch, server: NATSServer, count: Int) throws -> StreamInspector {
        let events = try scratch.events("events", count: count)
        FleetTests.finish(try FleetTests.startNodes(scratch, events: events, urls: [server.url]))
        let inspector = try StreamInspector(urls: [server.url])
        #expect(inspector.messageCount("PIPELINED") == UInt64(count * FleetTests.nodes.count))
        return inspector
    }

    @Test("subjects of two nodes out of three: the aggregator gets exactly those two nodes' events, each once, each node's in order, the two interleaved; one consumer per subject, the same ones after a restart with the list reversed",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func twoSubjectsOfThreeNodes() throws {
        let scratch = try FleetScratch("subjects-two")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let inspector = try Self.publish(scratch, server: server, count: Self.perNode)

        let archive = scratch.directory + "/archive"
        let pipeline = try scratch.aggregatorPipeline(urls: [server.url], archive: archive, source: "subjects: \(Self.subjects)")
        let aggregator = try CLI.start(["run", pipeline])
        defer { aggregator.stopIfRunning() }
        let drained = inspector.waitUntilDrained("PIPELINED") { listed in
            listed.count == 2 && listed.values.allSatisfy { $0.ackFloorConsumer >= UInt64(Self.perNode) }
        }
        #expect(drained, "the aggregator did not acknowledge every message of both subjects: \(inspector.consumers("PIPELINED"))")
        let result = aggregator.terminate()
        #expect(result.status == 0, "aggregator: \(FleetRecords.excerpt(result.stderr))")

        let consumers = inspector.consumers("PIPELINED")
        #expect(Set(consumers.values.map(\.filter)) == ["pipelined.node-a.>", "pipelined.node-c.>"])
        #expect(consumers.keys.allSatisfy { $0.hasPrefix("agg_pipelined_node-") }, "\(consumers.keys.sorted())")

        let records = try FleetRecords.archive(archive)
        let numbers = FleetRecords.numbers(records)
        #expect(numbers.keys.sorted() == Self.read, "only the listed nodes' events")
        for name in Self.read {
            let problem = FleetTests.inOrderProblem(numbers[name], count: Self.perNode)
            #expect(problem == nil, "\(name): \(problem ?? "")")
        }
        // Both subjects had their whole backlog waiting: fetched in turn, the
        // two are interleaved; one drained before the other would not be.
        let nodes = records.compactMap { record -> String? in
            if case .event(let event) = record { return event.node.name }
            return nil
        }
        let firstC = try #require(nodes.firstIndex(of: "node-c")), lastA = try #require(nodes.lastIndex(of: "node-a"))
        let firstA = try #require(nodes.firstIndex(of: "node-a")), lastC = try #require(nodes.lastIndex(of: "node-c"))
        #expect(firstC < lastA && firstA < lastC, "node-a's events at \(firstA)...\(lastA), node-c's at \(firstC)...\(lastC)")

        // The same list reversed, restarted: the same two consumers, nothing new to deliver.
        let reversed = try scratch.aggregatorPipeline(urls: [server.url], archive: archive, source: "subjects: [pipelined.node-c.>, pipelined.node-a.>]")
        let again = try CLI.start(["run", reversed])
        defer { again.stopIfRunning() }
        #expect(again.waitFor(timeout: 60) { _, stderr in stderr.contains("pipeline started") }, "\(again.stderr.text)")
        let after = inspector.consumers("PIPELINED")
        #expect(Set(after.keys) == Set(consumers.keys), "\(after.keys.sorted()) after the restart, \(consumers.keys.sorted()) before")
        #expect(after.values.allSatisfy { $0.pending == 0 }, "the restarted aggregator resumes where it acknowledged")
        let stopped = again.terminate()
        #expect(stopped.status == 0, "restarted aggregator: \(FleetRecords.excerpt(stopped.stderr))")
        #expect(!stopped.stderr.contains("created consumer"), "no consumer was made again")
    }

    @Test("one subject keeps the consumer named durable (where an existing aggregator resumes)",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func oneSubjectKeepsTheDurableName() throws {
        let scratch = try FleetScratch("subjects-one")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let inspector = try Self.publish(scratch, server: server, count: 100)
        let archive = scratch.directory + "/archive"
        let aggregator = try CLI.start(["run", try scratch.aggregatorPipeline(urls: [server.url], archive: archive, source: "subjects: [pipelined.node-b.>]")])
        defer { aggregator.stopIfRunning() }
        #expect(inspector.waitUntilDrained("PIPELINED") { $0["agg"].map { $0.ackFloorConsumer >= 100 } ?? false })
        #expect(aggregator.terminate().status == 0)
        let consumers = inspector.consumers("PIPELINED")
        #expect(consumers.keys.sorted() == ["agg"])
        #expect(consumers["agg"]?.filter == "pipelined.node-b.>")
        #expect(FleetRecords.numbers(try FleetRecords.archive(archive)).keys.sorted() == ["node-b"])
    }

    @Test("kill -9 the aggregator reading two subjects mid-stream and restart it: every event of both at least once, duplicates within both consumers' unacknowledged windows",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func aggregatorCrashWithTwoSubjects() throws {
        let scratch = try FleetScratch("subjects-crash")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let perNode = 60_000
        let inspector = try Self.publish(scratch, server: server, count: perNode)

        let window = 1024
        let archive = scratch.directory + "/archive"
        let pipeline = try scratch.aggregatorPipeline(urls: [server.url], archive: archive, source: "subjects: \(Self.subjects)\nmax_ack_pending: \(window)")
        let first = try CLI.start(["run", pipeline])
        defer { first.stopIfRunning() }
        let acknowledged = { inspector.consumers("PIPELINED").values.reduce(UInt64(0)) { $0 + $1.ackFloorConsumer } }
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline, acknowledged() < UInt64(perNode / 2) { usleep(10_000) }
        first.signal(SIGKILL)
        _ = first.finish()
        let before = acknowledged()
        #expect(before > 0 && before < UInt64(2 * perNode), "the kill should fall mid-stream (\(before) acknowledged)")

        let second = try CLI.start(["run", pipeline])
        defer { second.stopIfRunning() }
        let drained = inspector.waitUntilDrained("PIPELINED") { listed in
            listed.count == 2 && listed.values.allSatisfy { $0.ackFloorConsumer >= UInt64(perNode) }
        }
        #expect(drained, "\(inspector.consumers("PIPELINED"))")
        let result = second.terminate()
        #expect(result.status == 0, "restarted aggregator: \(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("delivered again"), "the restarted aggregator reports the redelivered messages")

        let records = try FleetRecords.archive(archive)
        let numbers = FleetRecords.numbers(records)
        #expect(numbers.keys.sorted() == Self.read)
        var duplicates = 0
        for name in Self.read {
            let got = Set(numbers[name] ?? [])
            #expect(got.count == perNode, "\(name): \(perNode - got.count) event(s) missing")
            duplicates += (numbers[name]?.count ?? 0) - got.count
        }
        #expect(records.count == 2 * perNode + duplicates)
        #expect(duplicates <= 2 * window, "\(duplicates) duplicates, more than the 2 × \(window) unacknowledged")
    }

    @Test("overlapping subjects (one inside another, or twice): a located pipeline error naming both, exit 78, from validate and run alike")
    func overlappingSubjectsAreAPipelineError() throws {
        let scratch = try FleetScratch("subjects-overlap")
        defer { scratch.remove() }
        let cases = [
            ("[pipelined.>, pipelined.node-a.>]", "pipelined.node-a.>", "'subjects' item 'pipelined.node-a.>' overlaps 'pipelined.>'"),
            ("[pipelined.node-a.>, pipelined.*.network.>]", "pipelined.*.network.>", "'subjects' item 'pipelined.*.network.>' overlaps 'pipelined.node-a.>'"),
            ("[pipelined.node-a.>, pipelined.node-a.>]", "pipelined.node-a.>]", "'subjects' item 'pipelined.node-a.>' is listed twice"),
        ]
        for (list, second, message) in cases {
            // Nothing listens there: run must stop at the file, before any connection.
            let pipeline = try scratch.aggregatorPipeline(urls: ["nats://127.0.0.1:\(NATSTests.freePort())"], archive: scratch.directory + "/archive", source: "subjects: \(list)")
            let text = try String(contentsOfFile: pipeline, encoding: .utf8)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            let row = try #require(lines.firstIndex { $0.contains("subjects: ") })
            let column = try #require(lines[row].range(of: second, options: .backwards)).lowerBound
            let at = "\(row + 1):\(lines[row].distance(from: lines[row].startIndex, to: column) + 1)"
            for command in ["validate", "run"] {
                let result = try CLI.run([command, pipeline], timeout: 60)
                #expect(result.status == 78, "\(command) \(list): \(result.stderr)")
                #expect(result.stderr.contains("\(pipeline):\(at): error: source 'fleet': \(message): an event on a subject both match would be delivered twice"), "\(command) \(list): \(result.stderr)")
            }
        }
    }

    @Test("a subject outside the stream's subjects: the server refuses the consumer, a located pipeline error naming the stream's subjects, exit 78",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(2)))
    func subjectOutsideTheStream() throws {
        let scratch = try FleetScratch("subjects-outside")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let inspector = try Self.publish(scratch, server: server, count: 10)
        let pipeline = try scratch.aggregatorPipeline(urls: [server.url], archive: scratch.directory + "/archive", source: "subjects: [pipelined.node-a.>, other.>]")
        let result = try CLI.run(["run", pipeline], timeout: 60)
        #expect(result.status == 78, "\(result.stderr)")
        let lines = try String(contentsOfFile: pipeline, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        let row = try #require(lines.firstIndex { $0.contains("subjects: ") })
        let column = try #require(lines[row].range(of: "other.>")).lowerBound
        let at = "\(row + 1):\(lines[row].distance(from: lines[row].startIndex, to: column) + 1)"
        let line = try #require(result.stderr.split(separator: "\n").first { $0.contains("error:") })
        #expect(line.hasPrefix("\(pipeline):\(at): error: source 'fleet': 'subjects' item 'other.>' is not within the subjects of stream 'PIPELINED' [pipelined.>]"), "\(line)")
        #expect(line.contains("not a valid subset"), "the server's own words: \(line)")
        #expect(!inspector.consumers("PIPELINED").values.contains { $0.filter == "other.>" })
    }

    @Test("a stream that appears with other subjects while the aggregator waits for it: the source fails the pipeline with the same located words",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(2)))
    func subjectOutsideAStreamMadeLater() throws {
        let scratch = try FleetScratch("subjects-later")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let pipeline = try scratch.aggregatorPipeline(urls: [server.url], archive: scratch.directory + "/archive", source: "subjects: [pipelined.node-a.>, other.>]")
        let aggregator = try CLI.start(["run", pipeline])
        defer { aggregator.stopIfRunning() }
        #expect(aggregator.waitFor(timeout: 60) { _, stderr in stderr.contains("does not exist yet; waiting") }, "\(aggregator.stderr.text)")
        try StreamInspector(urls: [server.url]).addStream("PIPELINED", subjects: ["pipelined.>"])
        let result = aggregator.finish(timeout: 60)
        #expect(result.status != 0, "the pipeline fails")
        #expect(result.stderr.contains("\(pipeline):"), "located: \(result.stderr)")
        #expect(result.stderr.contains("error: source 'fleet': 'subjects' item 'other.>' is not within the subjects of stream 'PIPELINED' [pipelined.>]"), "\(FleetRecords.excerpt(result.stderr))")
    }
}
