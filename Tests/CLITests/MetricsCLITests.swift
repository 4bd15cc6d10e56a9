import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The metrics endpoint of `pipelined run` (SPEC section 8, issue 12).
@Suite("metrics endpoint")
final class MetricsCLITests: Sendable {
    let directory: URL

    init() throws {
        directory = try CLI.temporaryDirectory("metrics")
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    private func write(_ name: String, _ text: String) throws -> String {
        let url = directory.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    /// A replay of a FIFO that the test holds open, so the run lasts as long as the test wants.
    private func replayPipeline(settings: String = "") throws -> (file: String, feed: Feed) {
        let feed = try Feed(in: directory)
        let file = try write("replay.yaml", """
            \(settings)
            sources:
              input: {type: replay, path: "\(feed.path)"}
            sinks:
              out: {type: file, inputs: [input], path: "\(directory.path)/out.jsonl"}
            """)
        return (file, feed)
    }

    /// The TCP sockets in LISTEN state that process `pid` holds.
    private func listeningSockets(of pid: Int32) -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        let inodes = Set(fds.compactMap { fd -> String? in
            guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(fd)"), link.hasPrefix("socket:[") else { return nil }
            return String(link.dropFirst(8).dropLast())
        })
        var count = 0
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                if fields.count > 9, fields[3] == "0A", inodes.contains(String(fields[9])) { count += 1 }
            }
        }
        return count
    }

    @Test func healthyReadyAndMetricsAreServed_andCountersMove() throws {
        let (file, feed) = try replayPipeline()
        let running = try RunningPipeline(file)
        #expect(try HTTP.get(port: running.port, path: "/-/healthy").status == 200)
        #expect(try HTTP.get(port: running.port, path: "/-/ready").status == 200)
        #expect(try HTTP.get(port: running.port, path: "/nothing").status == 404)
        #expect(feed.connect())
        feed.send(1000)
        #expect(try eventually { try running.scrape().value("pipelined_stage_events_in_total", ["stage": "out"]) == 1000 })
        let metrics = try running.scrape()
        #expect(metrics.value("pipelined_stage_events_out_total", ["stage": "input", "type": "replay"]) == 1000)
        #expect(metrics.types["pipelined_stage_events_in_total"] == "counter")
        #expect(metrics.types["pipelined_stage_queue_depth_events"] == "gauge")
        #expect(metrics.value("pipelined_stage_queue_capacity_events", ["stage": "out", "type": "file"]) == 8192)
        #expect((metrics.value("pipelined_stage_written_bytes_total", ["stage": "out"]) ?? 0) > 0)
        #expect(metrics.value("pipelined_build_info") == 1)
        #expect((metrics.value("pipelined_process_resident_memory_bytes") ?? 0) > 1_000_000)
        #expect((metrics.value("pipelined_process_cpu_seconds_total") ?? 0) > 0)
        #expect(metrics.value("pipelined_reloads_total", ["result": "success"]) == 0)
        // Every counter follows Prometheus' naming.
        for (name, type) in metrics.types where type == "counter" {
            #expect(name.hasPrefix("pipelined_") && name.hasSuffix("_total"), "\(name)")
        }
        feed.close()
        let result = running.run.finish()
        #expect(result.status == 0, "\(result.stderr)")
    }

    @Test func listenFalseServesNothing() throws {
        let (file, feed) = try replayPipeline(settings: "settings: {metrics: {listen: false}}")
        let run = try CLI.start(["run", file], freeMetricsPort: false)
        #expect(run.waitFor { _, stderr in stderr.contains("pipeline started") })
        #expect(feed.connect())
        feed.send(10)
        #expect(listeningSockets(of: run.pid) == 0)
        feed.close()
        let result = run.finish()
        #expect(result.status == 0)
        #expect(!result.stderr.contains("metrics endpoint listening"))
    }

    @Test func aBusyPortIsAnErrorNamingTheSetting() throws {
        // Hold a port: bound and listening.
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, length) == 0 && listen(holder, 1) == 0 && getsockname(holder, $0, &length) == 0 }
        }
        try #require(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let (file, _) = try replayPipeline(settings: "settings: {metrics: {listen: \"127.0.0.1:\(port)\"}}")
        let result = try CLI.start(["run", file], freeMetricsPort: false).finish(timeout: 60)
        #expect(result.status == 1)
        #expect(result.stderr.contains("settings.metrics.listen 127.0.0.1:\(port): cannot listen"), "\(result.stderr)")
        #expect(result.stderr.lowercased().contains("in use"), "\(result.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("out.jsonl").path), "a sink opened before the endpoint failed")
    }

    @Test func aBadListenValueIsALocatedError() throws {
        let file = try write("bad.yaml", """
            settings:
              metrics: {listen: "localhost"}
            sources:
              input: {type: replay, path: /dev/null}
            sinks:
              out: {type: file, inputs: [input], path: /dev/null}
            """)
        let result = try CLI.run(["validate", file])
        #expect(result.status == 78)
        #expect(result.stderr.contains("\(file):2:21: error: settings.metrics: 'listen' must be HOST:PORT"), "\(result.stderr)")
    }
}
