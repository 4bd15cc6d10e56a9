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
              let file = FileHandle(forReadingAtPath: directory + "/" + name) else { return nil }
        defer { try? file.close() }
        guard let data = try? file.read(upToCount: 64), data.count == 64 else { return nil }
        return data.withUnsafeBytes { $0.load(fromByteOffset: 24, as: UInt64.self) }
    }

    /// Connect records numbered `numbers` (see ``FleetScratch/events(_:count:)``) into `path`.
    static func write(_ numbers: Range<Int>, to path: String) throws {
        try numbers.map { connectLine($0, node: nil) + "\n" }.joined().write(toFile: path, atomically: true, encoding: .utf8)
    }

    /// Runs `pipeline` with no server on `port` until its file in `state`
    /// counts `events` taken, then kills it with SIGKILL.
    static func killHolding(_ pipeline: String, events: UInt64, port: Int, state: String) throws {
        let run = try CLI.start(["run", pipeline])
        defer { run.stopIfRunning() }
        #expect(run.waitFor(timeout: 30) { _, stderr in stderr.contains("cannot reach nats://127.0.0.1:\(port)") }, "\(run.stderr.text)")
        let deadline = Date().addingTimeInterval(30)
        while taken(in: state) != events, Date() < deadline { usleep(50_000) }
        #expect(taken(in: state) == events, "the ledger counts \(String(describing: taken(in: state))) events taken")
        run.signal(SIGKILL)
        _ = run.finish(timeout: 30)
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
        try Self.killHolding(pipeline, events: 1000, port: port, state: state)

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

    @Test("buffer: disk, a node killed with kill -9 while its server is away: its next start sends what it held from state_directory, then its own events; the stream holds each once, in order, and no lost record",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(4)))
    func whatAKilledNodeHeldOnDiskIsSentByItsNextStart() throws {
        let scratch = try FleetScratch("spool")
        defer { scratch.remove() }
        let port = NATSTests.freePort()
        let state = scratch.directory + "/state"
        let events = try scratch.events("events", count: 1000)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:\(port)"], sink: "state_directory: \(state)\nbuffer: disk")

        try Self.killHolding(pipeline, events: 1000, port: port, state: state)

        // The next run replays 500 new events after what the killed one held.
        let server = try NATSServer(directory: scratch.directory, port: port)
        defer { server.stop() }
        try Self.write(1000..<1500, to: events)
        let second = try CLI.run(["run", pipeline], timeout: 120)
        #expect(second.status == 0, "second run: \(FleetRecords.excerpt(second.stderr))")
        #expect(second.stderr.contains("held 1000 event(s) the stream had not acknowledged: sending them again"), "\(FleetRecords.excerpt(second.stderr))")
        #expect(!second.stderr.contains("counted as lost"), "\(FleetRecords.excerpt(second.stderr))")
        let inspector = try StreamInspector(urls: [server.url])
        let payloads = try inspector.payloads("PIPELINED", expected: 1500)
        let records = try FleetRecords.decode(payloads.joined(separator: "\n"))
        #expect(FleetRecords.lost(records) == 0)
        let numbers = FleetRecords.numbers(records)["node-a"] ?? []
        #expect(numbers == Array(0..<1500), "the stream holds \(numbers.count) events of node-a, first \(numbers.prefix(3)), last \(numbers.suffix(3))")
        #expect(inspector.settledCount("PIPELINED") == 1500)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []
        #expect(left.isEmpty, "files left in state_directory: \(left)")
    }

    /// Runs a node (`buffer: disk`, 60,000 events at 10,000/s) until 10,000
    /// are stored, SIGSTOPs the server, kills the node 0.7 s later with
    /// publishes in flight, lets the server go on, waits `pause` seconds
    /// and starts the node again with 1,000 new events. Checks that the
    /// stream then holds every event the killed run took in and the new
    /// ones, exactly once and in order; returns the second run.
    static func killMidStreamAndRestart(_ name: String, sink extra: String = "", pause: UInt32 = 0) throws -> CLI.Result {
        let scratch = try FleetScratch(name)
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let state = scratch.directory + "/state"
        let events = try scratch.events("events", count: 60_000)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: [server.url], rate: 10_000,
                                                sink: "state_directory: \(state)\nbuffer: disk\nack_timeout: 30s" + extra)
        let inspector = try StreamInspector(urls: [server.url])

        let first = try CLI.start(["run", pipeline])
        defer { first.stopIfRunning() }
        #expect(inspector.waitForMessages("PIPELINED", atLeast: 10_000, timeout: 60) >= 10_000, "\(first.stderr.text)")
        // Publishes go out but no ack comes back; the server keeps what reached its socket.
        server.signal(SIGSTOP)
        usleep(700_000)
        first.signal(SIGKILL)
        _ = first.finish(timeout: 30)
        server.signal(SIGCONT)
        let taken = try #require(Self.taken(in: state), "the killed run's file in \(state)")
        #expect(taken > 10_000 && taken < 60_000, "the killed run took in \(taken) events")
        let stored = inspector.settledCount("PIPELINED")
        #expect(stored < taken, "the stream holds \(stored) of the \(taken) events the killed run took in: nothing was held")
        sleep(pause)

        try Self.write(100_000..<101_000, to: events)
        let second = try CLI.run(["run", pipeline], timeout: 180)
        #expect(second.status == 0, "second run: \(FleetRecords.excerpt(second.stderr))")
        #expect(second.stderr.contains("sending them again from state_directory"), "\(FleetRecords.excerpt(second.stderr))")
        print("\(name): the killed run took in \(taken), the stream held \(stored) after it, \(second.stderr.split(separator: "\n").filter { $0.contains("already held") || $0.contains("looked for") || $0.contains("sending them again") })")
        let expected = Int(taken) + 1000
        let payloads = try inspector.payloads("PIPELINED", expected: expected)
        let records = try FleetRecords.decode(payloads.joined(separator: "\n"))
        #expect(FleetRecords.lost(records) == 0)
        let numbers = FleetRecords.numbers(records)["node-a"] ?? []
        #expect(numbers == Array(0..<Int(taken)) + Array(100_000..<101_000),
                "the stream holds \(numbers.count) events of node-a (\(Set(numbers).count) distinct), \(expected) expected")
        #expect(inspector.settledCount("PIPELINED") == UInt64(expected))
        return second
    }

    @Test("buffer: disk, a node killed with kill -9 mid-stream while its server is stopped with publishes in flight: the next start looks in the stream for what it sends again, releases what the server stored (it was in the socket), and the stream holds every event the killed run took in, and the new ones, exactly once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func aNodeKilledMidStreamLosesNothingAndDuplicatesNothing() throws {
        let second = try Self.killMidStreamAndRestart("spool-live")
        // What reached the stopped server's socket was stored after SIGCONT: found by the look, not sent again.
        #expect(second.stderr.contains("stored already (released, not sent again)"), "\(FleetRecords.excerpt(second.stderr))")
        #expect(!second.stderr.contains(": 0 stored already"), "the look found what the server stored: \(FleetRecords.excerpt(second.stderr))")
    }

    @Test("buffer: disk, duplicate_window 1s, the same kill and a restart 3 s later (past the window): the look in the stream keeps what the server stored from being stored twice",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(5)))
    func aRestartPastTheWindowStoresNothingTwice() throws {
        let second = try Self.killMidStreamAndRestart("spool-late", sink: "\nduplicate_window: 1s", pause: 3)
        #expect(!second.stderr.contains(": 0 stored already"), "the look found what the server stored: \(FleetRecords.excerpt(second.stderr))")
    }

    @Test("buffer: disk without state_directory: exit 78 located at buffer, from validate and run alike; a state_directory that cannot be made: exit 1 located at state_directory, nothing started")
    func badBufferAndStateDirectory() throws {
        let scratch = try FleetScratch("state-bad")
        defer { scratch.remove() }
        let events = try scratch.events("events", count: 1)
        let alone = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:4222"], sink: "buffer: disk")
        let at = try FleetScratch.valueLocation(of: "buffer", in: alone)
        for command in ["validate", "run"] {
            let result = try CLI.run([command, alone], timeout: 60)
            #expect(result.status == 78, "\(command): \(result.stderr)")
            #expect(result.stderr.contains("\(alone):\(at): error: sink 'fleet': 'buffer' must be 'memory' without state_directory ('disk' keeps the events in a file there)"), "\(command): \(result.stderr)")
        }

        // A regular file where a directory of the path should be.
        let blocker = scratch.directory + "/not-a-directory"
        try "x".write(toFile: blocker, atomically: true, encoding: .utf8)
        let port = NATSTests.freePort()
        let pipeline = try scratch.nodePipeline("node-b", events: events, urls: ["nats://127.0.0.1:\(port)"], sink: "state_directory: \(blocker)/state\nbuffer: disk")
        let stateAt = try FleetScratch.valueLocation(of: "state_directory", in: pipeline)
        #expect(try CLI.run(["validate", pipeline], timeout: 60).status == 0)
        let result = try CLI.run(["run", pipeline], timeout: 60)
        #expect(result.status == 1, "\(result.stderr)")
        let line = try #require(result.stderr.split(separator: "\n").first { $0.contains("error:") }, "\(result.stderr)")
        #expect(line.hasPrefix("\(pipeline):\(stateAt): error: sink 'fleet': state_directory: "), "\(line)")
        #expect(line.contains("\(blocker)"), "\(line)")
        #expect(!result.stderr.contains("cannot reach"), "the sink connected before its state_directory was made: \(result.stderr)")
    }

    @Test("buffer: disk, a reload on SIGHUP that replaces the sink: the new instance leaves the running one's file alone (nothing counted or sent from it), the old one closes and removes it, and the stream holds every event once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(4)))
    func aReloadLeavesTheRunningInstancesFileAlone() throws {
        let scratch = try FleetScratch("spool-reload")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let state = scratch.directory + "/state"
        let events = try scratch.events("events", count: 20_000)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: [server.url], rate: 5_000, sink: "state_directory: \(state)\nbuffer: disk")
        let inspector = try StreamInspector(urls: [server.url])

        let node = try CLI.start(["run", pipeline])
        defer { node.stopIfRunning() }
        #expect(inspector.waitForMessages("PIPELINED", atLeast: 2_000, timeout: 60) >= 2_000, "\(node.stderr.text)")
        // Another ack_timeout: the sink is replaced, the source stays.
        _ = try scratch.nodePipeline("node-a", events: events, urls: [server.url], rate: 5_000, sink: "state_directory: \(state)\nbuffer: disk\nack_timeout: 6s")
        node.signal(SIGHUP)
        #expect(node.waitFor(timeout: 60) { _, stderr in stderr.contains("reloaded:") }, "\(node.stderr.text)")
        #expect(node.stderr.text.contains("replaced [fleet]"), "\(FleetRecords.excerpt(node.stderr.text))")
        let result = node.finish(timeout: 120)
        #expect(result.status == 0, "\(FleetRecords.excerpt(result.stderr))")
        #expect(!result.stderr.contains("ended without closing"), "\(FleetRecords.excerpt(result.stderr))")

        let payloads = try inspector.payloads("PIPELINED", expected: 20_000)
        let records = try FleetRecords.decode(payloads.joined(separator: "\n"))
        let numbers = FleetRecords.numbers(records)["node-a"] ?? []
        #expect(numbers.sorted() == Array(0..<20_000), "the stream holds \(numbers.count) events of node-a (\(Set(numbers).count) distinct)")
        #expect(FleetRecords.lost(records) == 0)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []
        #expect(left.isEmpty, "files left in state_directory: \(left)")
    }

    @Test("buffer: disk on a file system without room for buffer_bytes: the start fails, exit 1, located at state_directory, saying so (the blocks are reserved at start, so a full disk can never kill the process with SIGBUS)",
          .enabled(if: NATSTests.enabled && getuid() == 0), .timeLimit(.minutes(2)))
    func aDiskBufferWithoutRoomFailsTheStart() throws {
        let scratch = try FleetScratch("spool-room")
        defer { scratch.remove() }
        let disk = try FullDisk(scratch)
        defer { disk.unmount() }
        let events = try scratch.events("events", count: 10)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:\(NATSTests.freePort())"],
                                                sink: "state_directory: \(disk.directory)/state\nbuffer: disk\nbuffer_bytes: 1MiB")
        let at = try FleetScratch.valueLocation(of: "state_directory", in: pipeline)
        let result = try CLI.run(["run", pipeline], timeout: 60)
        #expect(result.status == 1, "\(result.stderr)")
        let line = try #require(result.stderr.split(separator: "\n").first { $0.contains("error:") }, "\(result.stderr)")
        #expect(line.hasPrefix("\(pipeline):\(at): error: sink 'fleet': state_directory: \(disk.directory)/state/sink-fleet."), "\(line)")
        #expect(line.hasSuffix(": cannot reserve buffer_bytes (1MiB) and a header page: No space left on device"), "\(line)")
        let left = (try? FileManager.default.contentsOfDirectory(atPath: disk.directory + "/state")) ?? []
        #expect(left.isEmpty, "files left in state_directory: \(left)")
    }

    @Test("buffer: disk, a start after a kill that fails on its stream (exit 78) leaves the killed run's file: the start after it, the pipeline fixed, sends the 1,000 events the killed run held",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(4)))
    func aFailedStartKeepsTheKilledRunsFile() throws {
        let scratch = try FleetScratch("spool-failed")
        defer { scratch.remove() }
        let port = NATSTests.freePort()
        let state = scratch.directory + "/state"
        let events = try scratch.events("events", count: 1000)
        let wrong = "state_directory: \(state)\nbuffer: disk\nstream: OTHER"
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:\(port)"], sink: wrong)
        try Self.killHolding(pipeline, events: 1000, port: port, state: state)

        let server = try NATSServer(directory: scratch.directory, port: port)
        defer { server.stop() }
        let inspector = try StreamInspector(urls: [server.url])
        try inspector.addStream("OTHER", subjects: ["other.>"])
        try "".write(toFile: events, atomically: true, encoding: .utf8)
        let failed = try CLI.run(["run", pipeline], timeout: 60)
        #expect(failed.status == 78, "\(FleetRecords.excerpt(failed.stderr))")
        #expect(Self.taken(in: state) == 1000, "the killed run's file: \(String(describing: Self.taken(in: state))) events taken")

        _ = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:\(port)"], sink: "state_directory: \(state)\nbuffer: disk")
        let fixed = try CLI.run(["run", pipeline], timeout: 120)
        #expect(fixed.status == 0, "\(FleetRecords.excerpt(fixed.stderr))")
        #expect(fixed.stderr.contains("held 1000 event(s) the stream had not acknowledged: sending them again"), "\(FleetRecords.excerpt(fixed.stderr))")
        let payloads = try inspector.payloads("PIPELINED", expected: 1000)
        let numbers = FleetRecords.numbers(try FleetRecords.decode(payloads.joined(separator: "\n")))["node-a"] ?? []
        #expect(numbers == Array(0..<1000), "the stream holds \(numbers.count) events of node-a")
    }
}
