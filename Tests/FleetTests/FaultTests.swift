import Foundation
import PipelineCore
import Testing
@testable import TestSupport

/// A broker that stops answering (docs/fault-injection.md).
@Suite("fault: nats server stopped", .serialized)
struct NATSFaultTests {
    @Test("SIGSTOP the server for 3 s mid-stream: the sink times out, holds buffer_bytes, counts the rest in a lost record, and after SIGCONT the stream holds every event once or counted",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(2)))
    func serverStopsAnswering() throws {
        let scratch = try FleetScratch("sigstop")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer {
            server.signal(SIGCONT)
            server.stop()
        }
        let total = 30_000
        let events = try scratch.events("events", count: total)
        let pipeline = try scratch.nodePipeline(
            "node-a", events: events, urls: [server.url], rate: 5000,
            sink: "buffer_bytes: 1MiB\nack_timeout: 500ms")
        let node = try CLI.start(["run", pipeline])
        defer { node.stopIfRunning() }
        let inspector = try StreamInspector(urls: [server.url])
        let before = inspector.waitForMessages("PIPELINED", atLeast: 5000, timeout: 60)
        #expect(before >= 5000 && before < UInt64(total), "the stop should fall mid-stream (\(before) stored)")
        server.signal(SIGSTOP)
        sleep(3)
        server.signal(SIGCONT)
        let result = node.finish(timeout: 100)
        #expect(result.status == 0, "\(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("publish not acknowledged"), "the sink timed out its publishes")
        #expect(result.stderr.contains("buffer_bytes (1MiB) is full"), "the buffer filled while the server was stopped")

        let stored = try StreamInspector(urls: [server.url]).settledCount("PIPELINED")
        let records = try FleetRecords.decode(inspector.payloads("PIPELINED", expected: Int(stored)).joined(separator: "\n"))
        let lost = FleetRecords.lost(records)
        let numbers = FleetRecords.numbers(records)["node-a"] ?? []
        #expect(lost > 0, "events past buffer_bytes were dropped and counted")
        #expect(Set(numbers).count == numbers.count, "no event twice in the stream (message ids deduplicate the resends)")
        #expect(UInt64(numbers.count) + lost == UInt64(total), "\(numbers.count) events + \(lost) counted lost")
        #expect(records.allSatisfy { record in
            guard case .lost(let lost) = record else { return true }
            return lost.site == .sink && lost.stage == "fleet"
        })
        // Everything after the server came back (the buffer drained) is there: the last events are.
        let hasLast = numbers.contains(total - 1)
        #expect(hasLast, "the last event reached the stream")
    }
}
