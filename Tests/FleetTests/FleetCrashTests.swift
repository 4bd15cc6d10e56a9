import Foundation
import Testing
@testable import TestSupport

/// A node killed while it holds events (the server away): with the sink's
/// `state_directory`, the next start counts what the killed run held.
@Suite("fleet: a node killed with events held", .serialized)
struct FleetCrashTests {
    /// The `taken` count of the one ledger file in `directory`, if there is one.
    static func taken(in directory: String) -> UInt64? {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory),
              let name = names.first(where: { $0.hasSuffix(".held") }),
              let data = FileManager.default.contents(atPath: directory + "/" + name), data.count >= 64 else { return nil }
        return data.withUnsafeBytes { $0.load(fromByteOffset: 24, as: UInt64.self) }
    }

    @Test("a node killed with kill -9 while its server is away: the next start puts what it held in the stream as one lost record (where sink, stage fleet), so delivered + counted = sent; a clean stop leaves nothing to count",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(4)))
    func whatAKilledNodeHeldIsCountedByItsNextStart() throws {
        let scratch = try FleetScratch("crash")
        defer { scratch.remove() }
        let port = NATSTests.freePort()
        let state = scratch.directory + "/state"
        let events = try scratch.events("events", count: 1000)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:\(port)"], sink: "state_directory: \(state)")

        // No server yet: the node holds every event, and its file counts them.
        let first = try CLI.start(["run", pipeline])
        defer { first.stopIfRunning() }
        #expect(first.waitFor(timeout: 30) { _, stderr in stderr.contains("cannot reach nats://127.0.0.1:\(port)") }, "\(first.stderr.text)")
        let deadline = Date().addingTimeInterval(30)
        while Self.taken(in: state) != 1000, Date() < deadline { usleep(50_000) }
        #expect(Self.taken(in: state) == 1000, "the ledger counts \(String(describing: Self.taken(in: state))) events taken")
        first.signal(SIGKILL)
        _ = first.finish(timeout: 30)

        // The server is there now; the next run has nothing new to send.
        let server = try NATSServer(directory: scratch.directory, port: port)
        defer { server.stop() }
        try "".write(toFile: events, atomically: true, encoding: .utf8)
        let second = try CLI.run(["run", pipeline], timeout: 120)
        #expect(second.status == 0, "second run: \(FleetRecords.excerpt(second.stderr))")
        #expect(second.stderr.contains("ended without closing while it held 1000 event(s)"), "\(FleetRecords.excerpt(second.stderr))")
        let inspector = try StreamInspector(urls: [server.url])
        let payloads = try inspector.payloads("PIPELINED", expected: 1)
        #expect(payloads.count == 1, "the stream holds \(payloads.count) message(s), not one lost record")
        let records = try FleetRecords.decode(payloads.joined(separator: "\n"))
        #expect(FleetRecords.lost(records) == 1000, "the stream counts \(FleetRecords.lost(records)) lost")
        #expect(payloads.first?.contains(#""where":"sink""#) == true && payloads.first?.contains(#""stage":"fleet""#) == true,
                "\(payloads.first ?? "")")

        // That run stopped cleanly: the one after it has nothing to count, and no file is left behind.
        let third = try CLI.run(["run", pipeline], timeout: 120)
        #expect(third.status == 0, "third run: \(FleetRecords.excerpt(third.stderr))")
        #expect(!third.stderr.contains("ended without closing"), "\(FleetRecords.excerpt(third.stderr))")
        #expect(inspector.settledCount("PIPELINED") == 1)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []
        #expect(left.isEmpty, "files left in state_directory: \(left)")
    }
}
