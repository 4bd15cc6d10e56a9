import Foundation
import PipelineCore
import Testing
@testable import TestSupport

/// A retry that comes after the stream's duplicate window may be stored
/// twice. The sink looks in the stream for what waited more than half the
/// window before sending it again, and counts the resends it could not look
/// for; the stream never holds more extra copies than it counted.
@Suite("fleet: resends past the duplicate window", .serialized)
struct FleetDuplicateWindowTests {
    /// The body of an HTTP/1.0 GET on 127.0.0.1:`port` (the node's metrics).
    static func get(port: Int, path: String) -> String? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard connected else { return nil }
        let request = "GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            response += buffer[0..<count]
        }
        let text = String(decoding: response, as: UTF8.self)
        return text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) }
    }

    /// The value of the first sample `name{...stage="fleet"...}` in an exposition.
    static func sample(_ name: String, in exposition: String) -> UInt64? {
        for line in exposition.split(separator: "\n") where line.hasPrefix(name + "{") && line.contains("stage=\"fleet\"") {
            return line.split(separator: " ").last.flatMap { UInt64($0) ?? Double($0).map { UInt64($0) } }
        }
        return nil
    }

    /// What one node run put in the stream, and what it said.
    struct Run {
        var stored: UInt64
        /// Its `found_in_stream` and `resent_past_duplicate_window` at the end of the stream.
        var found: UInt64
        var counted: UInt64
        var status: Int32
        var stderr: String
        /// The feed's event numbers in the stream (its records carry node web-1, which replay keeps).
        var numbers: [Int]
        var lost: UInt64
    }

    /// Runs a node that replays `total` events at 5,000/s to `url` (a
    /// stream with a 1 s duplicate window, `ack_timeout: 500ms`), calls
    /// `disturb` once 5,000 are stored, and reads back what the stream
    /// holds through `inspect`.
    static func run(_ scratch: FleetScratch, total: Int, url: String, inspect: String, disturb: () -> Void) throws -> Run {
        // A FIFO: the node runs (and serves its metrics) until the test closes it.
        let feed = try Feed(in: URL(fileURLWithPath: scratch.directory))
        let pipeline = try scratch.nodePipeline(
            "node-a", events: feed.path, urls: [url], rate: 5000,
            sink: "duplicate_window: 1s\nack_timeout: 500ms")
        let node = try CLI.start(["run", pipeline])
        defer { node.stopIfRunning() }
        #expect(feed.connect(), "the node never opened its input")
        let sent = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            feed.send(total)
            sent.signal()
        }
        let inspector = try StreamInspector(urls: [inspect])
        let before = inspector.waitForMessages("PIPELINED", atLeast: 5000, timeout: 60)
        #expect(before >= 5000 && before < UInt64(total), "the disturbance should fall mid-stream (\(before) stored)")
        disturb()
        sent.wait()
        #expect(inspector.waitForMessages("PIPELINED", atLeast: UInt64(total), timeout: 120) >= UInt64(total))
        let stored = inspector.settledCount("PIPELINED")

        let port = try #require(node.stderr.text.range(of: "metrics endpoint listening on http://127.0.0.1:").map {
            Int(node.stderr.text[$0.upperBound...].prefix { $0.isNumber })
        } ?? nil, "\(node.stderr.text)")
        let exposition = try #require(get(port: port, path: "/metrics"))
        let found = try #require(sample("pipelined_stage_found_in_stream_total", in: exposition), "\(exposition)")
        let counted = try #require(sample("pipelined_stage_resent_past_duplicate_window_total", in: exposition), "\(exposition)")

        feed.close()
        let result = node.finish(timeout: 100)
        #expect(result.status == 0, "\(FleetRecords.excerpt(result.stderr))")
        let records = try FleetRecords.decode(inspector.payloads("PIPELINED", expected: Int(stored)).joined(separator: "\n"))
        return Run(stored: stored, found: found, counted: counted, status: result.status, stderr: result.stderr,
                   numbers: FleetRecords.numbers(records)["web-1"] ?? [], lost: FleetRecords.lost(records))
    }

    @Test("duplicate_window 1s, the server SIGSTOPped 4 s mid-stream: what waited past half the window waits for a look in the stream instead of being sent again, every event is in the stream, and the copies beyond the events sent are at most the resends counted past the window (metric and log agree)",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func resendsPastTheWindowAreCounted() throws {
        let scratch = try FleetScratch("dupwindow")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer {
            server.signal(SIGCONT)
            server.stop()
        }
        let total = 30_000
        let run = try Self.run(scratch, total: total, url: server.url, inspect: server.url) {
            server.signal(SIGSTOP)
            sleep(4)
            server.signal(SIGCONT)
        }
        #expect(run.stderr.contains("publish not acknowledged"), "the sink timed out its publishes")
        #expect(run.lost == 0, "buffer_bytes held everything")
        #expect(Set(run.numbers).count == total, "every event reached the stream")
        let extra = run.stored - UInt64(total)
        #expect(extra <= run.counted, "\(extra) copies beyond the \(total) events, \(run.counted) counted")
        // The stopped server could not answer the look: the publishes waited rather than going out blind.
        #expect(run.stderr.contains("publish(es) wait, not sent again (a copy may be stored already, past the duplicate window)"),
                "\(FleetRecords.excerpt(run.stderr))")
        // The log says the same number as the metric, once the sink closed (nothing was left unanswered).
        if run.counted > 0 {
            #expect(run.stderr.contains("\(run.counted) publish(es) were sent again and answered only after the stream's duplicate window (1s): up to \(run.counted) of them may be stored twice in stream 'PIPELINED'"),
                    "\(FleetRecords.excerpt(run.stderr))")
        } else {
            #expect(!run.stderr.contains("may be stored twice in stream"), "\(FleetRecords.excerpt(run.stderr))")
        }
    }

    @Test("duplicate_window 1s, the node's acks lost for 3 s (a relay drops the server's answers; the publishes are still stored), then the connection cut: what waited past half the window is looked for in the stream and released, not sent again, and the stream holds every event exactly once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func lostAcksPastTheWindowAreFoundNotStoredTwice() throws {
        let scratch = try FleetScratch("lostacks")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let relay = try OneWayProxy(to: server.port)
        defer { relay.stop() }
        let total = 30_000
        var storedUnanswered: UInt64 = 0
        let run = try Self.run(scratch, total: total, url: relay.url, inspect: server.url) {
            let inspector = try? StreamInspector(urls: [server.url])
            let before = inspector?.messageCount("PIPELINED") ?? 0
            relay.setAnswering(false)
            sleep(3)
            // Stored meanwhile, their acks dropped on the way back.
            storedUnanswered = (inspector?.messageCount("PIPELINED") ?? 0) - before
            relay.setAnswering(true)
            relay.cutAll()
        }
        #expect(storedUnanswered > 0, "publishes were stored while their acks were lost")
        #expect(run.found > 0, "the look found what the stream had stored unanswered")
        #expect(run.counted == 0, "no resend went out unlooked past the window (\(run.counted) counted)")
        #expect(run.stderr.contains("stored already (released, not sent again)"), "\(FleetRecords.excerpt(run.stderr))")
        #expect(run.lost == 0, "buffer_bytes held everything")
        #expect(Set(run.numbers).count == total, "every event reached the stream")
        #expect(run.stored == UInt64(total), "\(run.stored) messages in the stream for \(total) events: \(Int(run.stored) - total) stored twice")
    }

    @Test("a look in the stream reads only its node's subjects: web-1's connect and bind events lose their acks for 3 s while web-2 publishes beside it; the look filters on 'pipelined.web-1.network.*', reads no more than web-1 stored from its start, and the stream holds each node's events exactly once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func aLookReadsOnlyItsNodesSubjects() throws {
        let scratch = try FleetScratch("looknarrow")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let relay = try OneWayProxy(to: server.port)
        defer { relay.stop() }
        let total = 20_000
        let directory = URL(fileURLWithPath: scratch.directory)
        // web-1: connect and bind in turn, so what its look seeks has two subjects.
        let feedA = try Feed(in: directory, name: "web-1.fifo") { n in
            n % 2 == 0 ? connectLine(n) : connectLine(n).replacingOccurrences(of: #""event":"connect","event_id":42"#, with: #""event":"bind","event_id":49"#)
        }
        let feedB = try Feed(in: directory, name: "web-2.fifo") { connectLine($0, node: "web-2") }
        let nodeA = try CLI.start(["run", try scratch.nodePipeline(
            "node-a", events: feedA.path, urls: [relay.url], rate: 5000,
            sink: "duplicate_window: 1s\nack_timeout: 500ms")])
        defer { nodeA.stopIfRunning() }
        // Either node may make the stream: both ask for the same window.
        let nodeB = try CLI.start(["run", try scratch.nodePipeline("node-b", events: feedB.path, urls: [server.url], rate: 5000,
                                                                   sink: "duplicate_window: 1s")])
        defer { nodeB.stopIfRunning() }
        #expect(feedA.connect() && feedB.connect(), "a node never opened its input")
        let sent = DispatchGroup()
        for feed in [feedA, feedB] {
            sent.enter()
            Thread.detachNewThread {
                feed.send(total)
                sent.leave()
            }
        }
        let inspector = try StreamInspector(urls: [server.url])
        let before = inspector.waitForMessages("PIPELINED", atLeast: 8000, timeout: 60)
        #expect(before < UInt64(2 * total), "the lost acks should fall mid-stream (\(before) stored)")
        relay.setAnswering(false)
        sleep(3)
        relay.setAnswering(true)
        relay.cutAll()
        sent.wait()
        #expect(inspector.waitForMessages("PIPELINED", atLeast: UInt64(2 * total), timeout: 120) >= UInt64(2 * total))
        let stored = inspector.settledCount("PIPELINED")
        feedA.close()
        feedB.close()
        let resultA = nodeA.finish(timeout: 100)
        let resultB = nodeB.finish(timeout: 100)
        #expect(resultA.status == 0 && resultB.status == 0, "\(FleetRecords.excerpt(resultA.stderr))\n\(FleetRecords.excerpt(resultB.stderr))")

        let records = try FleetRecords.decode(inspector.payloads("PIPELINED", expected: Int(stored)).joined(separator: "\n"))
        #expect(stored == UInt64(2 * total), "\(stored) messages in the stream for \(2 * total) events")
        let numbers = FleetRecords.numbers(records)
        #expect(numbers["web-1"] == Array(0..<total), "web-1's events once each, in order")
        #expect(numbers["web-2"] == Array(0..<total), "web-2's events once each, in order")
        // Stream sequence n is record n - 1 (a fresh stream, nothing removed).
        let isWeb1 = records.map { record -> Bool in
            if case .event(let event) = record { return event.node.name == "web-1" }
            return false
        }
        let looks = resultA.stderr.split(separator: "\n").compactMap { line -> (read: Int, filter: String, range: ClosedRange<Int>)? in
            guard let match = line.firstMatch(of: /\((\d+) message\(s\) on '([^']+)' read from sequence (\d+) through (\d+)\)/) else { return nil }
            return (Int(match.1)!, String(match.2), Int(match.3)!...Int(match.4)!)
        }
        #expect(!looks.isEmpty, "web-1 looked in the stream: \(FleetRecords.excerpt(resultA.stderr))")
        #expect(resultA.stderr.contains("stored already (released, not sent again)"), "\(FleetRecords.excerpt(resultA.stderr))")
        for look in looks {
            #expect(look.filter == "pipelined.web-1.network.*")
            let inRange = isWeb1[(look.range.lowerBound - 1)..<look.range.upperBound]
            let web1 = inRange.filter { $0 }.count
            // web-2 stored some in the range, or the test would not tell.
            #expect(web1 < inRange.count, "web-2 published between sequences \(look.range)")
            // Without the filter the look reads web-2's messages too.
            #expect(look.read == web1, "read \(look.read) in sequences \(look.range): web-1's are \(web1) of \(inRange.count)")
        }
    }

    @Test("a node user allowed to publish and not to make consumers: its acks lost for 3 s, then the connection cut: the refused look is logged, what waited goes out again without it (counted past the window), and every event reaches the stream, the copies within the count",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func aRefusedLookSendsAgainCounted() throws {
        let scratch = try FleetScratch("lookrefused")
        defer { scratch.remove() }
        let server = try NATSServer(directory: scratch.directory, config: """
            authorization {
              users = [
                {user: node, password: nodepass, permissions: {
                  publish: {allow: ["pipelined.>", "$JS.API.STREAM.INFO.PIPELINED", "$JS.API.STREAM.CREATE.PIPELINED"]},
                  subscribe: {allow: ["_INBOX.>"]}}}
                {user: admin, password: adminpass}
              ]
            }
            """)
        defer { server.stop() }
        let relay = try OneWayProxy(to: server.port)
        defer { relay.stop() }
        let total = 20_000
        let run = try Self.run(scratch, total: total, url: "nats://node:nodepass@127.0.0.1:\(relay.port)",
                               inspect: "nats://admin:adminpass@127.0.0.1:\(server.port)") {
            relay.setAnswering(false)
            sleep(3)
            relay.setAnswering(true)
            relay.cutAll()
        }
        #expect(run.stderr.contains("this user may not make consumers (the server refused it)"), "\(FleetRecords.excerpt(run.stderr))")
        #expect(run.found == 0, "no look was answered")
        #expect(!run.stderr.contains("nodepass"), "the url's password stays out of the log")
        #expect(run.lost == 0, "buffer_bytes held everything")
        #expect(Set(run.numbers).count == total, "every event reached the stream")
        let extra = run.stored - UInt64(total)
        #expect(run.counted > 0, "resends went out past the window without a look")
        #expect(extra <= run.counted, "\(extra) copies beyond the \(total) events, \(run.counted) counted")
    }
}
