import CNATS
import Foundation
import NATSClient
import PipelineCore
import Testing
@testable import TestSupport

/// How the `nats` source acknowledges: one cumulative acknowledgement per
/// batch (JetStream's AckAll), never past a message a sink has not written.
@Suite("fleet: the aggregator's acknowledgements", .serialized)
struct FleetAcknowledgementTests {
    static let events = 20_000

    /// A stream `PIPELINED` on a fresh server holding `events` events of node `node-a`.
    static func filledServer(_ scratch: FleetScratch) throws -> (NATSServer, StreamInspector) {
        let server = try NATSServer(directory: scratch.directory)
        let events = try scratch.events("events", count: Self.events)
        let node = try CLI.run(["run", try scratch.nodePipeline("node-a", events: events, urls: [server.url])], timeout: 240)
        #expect(node.status == 0, "node: \(FleetRecords.excerpt(node.stderr))")
        let inspector = try StreamInspector(urls: [server.url])
        #expect(inspector.messageCount("PIPELINED") == UInt64(Self.events))
        return (server, inspector)
    }

    /// An aggregator: the `nats` source (durable `agg`) into a file sink at `path`.
    static func aggregator(_ scratch: FleetScratch, url: String, file path: String) throws -> String {
        let pipeline = scratch.directory + "/aggregator-file.yaml"
        try """
            name: aggregator
            settings:
              node: aggregator
            sources:
              fleet: {type: nats, url: \(url), durable: agg, batch: 256}
            sinks:
              out: {type: file, inputs: [fleet], path: \(path)}

            """.write(toFile: pipeline, atomically: true, encoding: .utf8)
        return pipeline
    }

    /// The event numbers (connectLine's n) of a file sink's output, in order; its lost records apart.
    static func numbers(inFile path: String) throws -> [Int] {
        let records = try FleetRecords.decode(String(contentsOfFile: path, encoding: .utf8))
        return FleetRecords.numbers(records)["node-a"] ?? []
    }

    @Test("a sink that loses batches (its disk full) gets them again: the source gives them back and acknowledges nothing past them until they are written; once the disk has room every event is in the file and all is acknowledged",
          .enabled(if: NATSTests.enabled && getuid() == 0), .timeLimit(.minutes(5)))
    func lostBatchesComeAgainAndHoldTheAcknowledgements() throws {
        let scratch = try FleetScratch("ack-full")
        defer { scratch.remove() }
        let (server, inspector) = try Self.filledServer(scratch)
        defer { server.stop() }

        // A 32 MiB disk with room for a few hundred lines (about 420 bytes each)
        // until the filler goes; then for every event, twice.
        let disk = scratch.directory + "/disk"
        try FileManager.default.createDirectory(atPath: disk, withIntermediateDirectories: true)
        #expect(mount("tmpfs", disk, "tmpfs", 0, "size=32m") == 0, "cannot mount a tmpfs: \(String(cString: strerror(errno)))")
        defer { umount2(disk, Int32(MNT_DETACH)) }
        try Data(count: 32 * 1024 * 1024 - 160 * 1024).write(to: URL(fileURLWithPath: disk + "/filler"))
        let output = disk + "/events.jsonl"

        let aggregator = try CLI.start(["run", try Self.aggregator(scratch, url: server.url, file: output)])
        defer { aggregator.stopIfRunning() }
        // The disk fills, and the file sink drops (and counts) from then on.
        #expect(aggregator.waitFor { _, stderr in stderr.contains("dropping events") }, "the file sink never found its disk full")
        // Rounds of give-back and redelivery (1, 2, 4 s apart) while the disk stays full.
        for _ in 0..<6 {
            sleep(1)
            let state = inspector.consumer("PIPELINED", "agg")
            let written = try Self.numbers(inFile: output)
            // The file holds a prefix of the stream (the rest never fit), and the
            // acknowledged floor never passes what it holds.
            #expect(written == Array(0..<written.count), "the file holds \(written.count) events, not a prefix")
            #expect((state?.ackFloorStream ?? .max) <= UInt64(written.count),
                    "acknowledged up to \(state?.ackFloorStream ?? 0) with only \(written.count) events written")
            #expect((state?.ackFloorStream ?? .max) < UInt64(Self.events))
        }
        #expect((inspector.consumer("PIPELINED", "agg")?.redelivered ?? 0) > 0, "nothing was given back")

        // Room again: the given-back messages are written, and the rest behind them.
        try FileManager.default.removeItem(atPath: disk + "/filler")
        #expect(inspector.waitUntilAcknowledged("PIPELINED", "agg", count: UInt64(Self.events)),
                "not every message was acknowledged once the disk had room: \(String(describing: inspector.consumer("PIPELINED", "agg")))")
        let result = aggregator.terminate()
        #expect(result.status == 0, "aggregator: \(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("delivered again"), "the aggregator reports the redelivered messages")

        let numbers = try Self.numbers(inFile: output)
        let missing = Set(0..<Self.events).subtracting(numbers).sorted()
        #expect(missing.count == 0, "\(missing.count) event(s) never written (first \(missing.prefix(5)))")
        let records = try FleetRecords.decode(String(contentsOfFile: output, encoding: .utf8))
        #expect(FleetRecords.lost(records) > 0, "the file sink's lost record says what it dropped meanwhile")
    }

    @Test("a consumer made with explicit acknowledgements (an older pipelined's) is read as it is, one acknowledgement per message, and said so; every event once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func anExplicitConsumerIsReadAsItIs() throws {
        let scratch = try FleetScratch("ack-explicit")
        defer { scratch.remove() }
        let (server, inspector) = try Self.filledServer(scratch)
        defer { server.stop() }
        try inspector.addConsumer("PIPELINED", durable: "agg", policy: js_AckExplicit)

        let output = scratch.directory + "/events.jsonl"
        let aggregator = try CLI.start(["run", try Self.aggregator(scratch, url: server.url, file: output)])
        defer { aggregator.stopIfRunning() }
        #expect(inspector.waitUntilAcknowledged("PIPELINED", "agg", count: UInt64(Self.events)))
        let result = aggregator.terminate()
        #expect(result.status == 0, "aggregator: \(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("consumer 'agg' acknowledges each message"), "the aggregator says how it reads the consumer")
        #expect(inspector.consumerPolicy("PIPELINED", "agg") == js_AckExplicit, "the consumer is left as it was")
        #expect(FleetTests.exactlyOnceProblem(try Self.numbers(inFile: output), count: Self.events) == nil)
    }

    @Test("a consumer the source makes acknowledges cumulatively; a restart after every event was written gets nothing again",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func aNewConsumerAcknowledgesAllAndARestartGetsNothingAgain() throws {
        let scratch = try FleetScratch("ack-all")
        defer { scratch.remove() }
        let (server, inspector) = try Self.filledServer(scratch)
        defer { server.stop() }
        let output = scratch.directory + "/events.jsonl"
        let pipeline = try Self.aggregator(scratch, url: server.url, file: output)
        for round in 1...2 {
            let aggregator = try CLI.start(["run", pipeline])
            defer { aggregator.stopIfRunning() }
            #expect(inspector.waitUntilAcknowledged("PIPELINED", "agg", count: UInt64(Self.events)))
            if round == 2 { sleep(2) }  // time to be given anything that was still pending
            let result = aggregator.terminate()
            #expect(result.status == 0, "aggregator, round \(round): \(FleetRecords.excerpt(result.stderr))")
            #expect(!result.stderr.contains("delivered again"), "round \(round): nothing should come twice")
        }
        #expect(inspector.consumerPolicy("PIPELINED", "agg") == js_AckAll)
        #expect(FleetTests.exactlyOnceProblem(try Self.numbers(inFile: output), count: Self.events) == nil)
    }
}

extension StreamInspector {
    /// Creates a durable consumer on `stream` with the given acknowledgement policy.
    func addConsumer(_ stream: String, durable: String, policy: jsAckPolicy) throws {
        var config = jsConsumerConfig()
        jsConsumerConfig_Init(&config)
        let name = strdup(durable)
        defer { free(name) }
        config.Durable = UnsafePointer(name)
        config.AckPolicy = policy
        config.DeliverPolicy = js_DeliverAll
        var info: UnsafeMutablePointer<jsConsumerInfo>?
        var code = jsErrCode(rawValue: 0)
        try natsCheck(js_AddConsumer(&info, jetStream, stream, &config, nil, &code), code: code, "cannot create consumer \(durable)")
        jsConsumerInfo_Destroy(info)
    }

    /// The consumer's acknowledgement policy, or nil when it is not there.
    func consumerPolicy(_ stream: String, _ durable: String) -> jsAckPolicy? {
        var info: UnsafeMutablePointer<jsConsumerInfo>?
        var code = jsErrCode(rawValue: 0)
        guard js_GetConsumerInfo(&info, jetStream, stream, durable, nil, &code) == NATS_OK, let info else { return nil }
        defer { jsConsumerInfo_Destroy(info) }
        return info.pointee.Config.pointee.AckPolicy
    }
}
