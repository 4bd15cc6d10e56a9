import Foundation
import PipelineCore
import Testing
@testable import TestSupport

/// A retry that comes after the stream's duplicate window may be stored
/// twice: the sink counts such resends, and the stream never holds more
/// extra copies than it counted.
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

    @Test("duplicate_window 1s, the server SIGSTOPped 4 s mid-stream: resends answered past the window are counted (metric and log agree), every event is in the stream, and the copies beyond the events sent are at most that count",
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
        // A FIFO: the node runs (and serves its metrics) until the test closes it.
        let feed = try Feed(in: URL(fileURLWithPath: scratch.directory))
        let pipeline = try scratch.nodePipeline(
            "node-a", events: feed.path, urls: [server.url], rate: 5000,
            sink: "duplicate_window: 1s\nack_timeout: 500ms")
        let node = try CLI.start(["run", pipeline])
        defer { node.stopIfRunning() }
        #expect(feed.connect(), "the node never opened its input")
        let sent = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            feed.send(total)
            sent.signal()
        }
        let inspector = try StreamInspector(urls: [server.url])
        let before = inspector.waitForMessages("PIPELINED", atLeast: 5000, timeout: 60)
        #expect(before >= 5000 && before < UInt64(total), "the stop should fall mid-stream (\(before) stored)")
        server.signal(SIGSTOP)
        sleep(4)
        server.signal(SIGCONT)
        sent.wait()
        #expect(inspector.waitForMessages("PIPELINED", atLeast: UInt64(total), timeout: 120) >= UInt64(total))
        let stored = inspector.settledCount("PIPELINED")

        let port = try #require(node.stderr.text.range(of: "metrics endpoint listening on http://127.0.0.1:").map {
            Int(node.stderr.text[$0.upperBound...].prefix { $0.isNumber })
        } ?? nil, "\(node.stderr.text)")
        let exposition = try #require(Self.get(port: port, path: "/metrics"))
        let counted = try #require(Self.sample("pipelined_stage_resent_past_duplicate_window_total", in: exposition), "\(exposition)")

        feed.close()
        let result = node.finish(timeout: 100)
        #expect(result.status == 0, "\(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("publish not acknowledged"), "the sink timed out its publishes")

        let records = try FleetRecords.decode(inspector.payloads("PIPELINED", expected: Int(stored)).joined(separator: "\n"))
        #expect(FleetRecords.lost(records) == 0, "buffer_bytes held everything")
        // The feed's records carry node web-1, which replay keeps.
        let numbers = FleetRecords.numbers(records)["web-1"] ?? []
        #expect(Set(numbers).count == total, "every event reached the stream")
        let extra = stored - UInt64(total)
        #expect(counted > 0, "the stop outlasted the window while publishes waited for their acks")
        #expect(extra <= counted, "\(extra) copies beyond the \(total) events, \(counted) counted")
        // The log says the same number, once the sink closed (nothing was left unanswered).
        #expect(result.stderr.contains("\(counted) publish(es) were sent again and answered only after the stream's duplicate window (1s): up to \(counted) of them may be stored twice in stream 'PIPELINED'"),
                "\(FleetRecords.excerpt(result.stderr))")
    }
}
