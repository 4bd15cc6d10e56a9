import Foundation
import Testing

#if canImport(Glibc)
import Glibc
@testable import TestSupport
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
        #expect((metrics.value("pipelined_stage_bytes_total", ["stage": "out"]) ?? 0) > 0)
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

    /// Every series the README lists, from a pipeline with each stage type
    /// that has series of its own, scraped twice during a run: each exists,
    /// and each counter that the run exercises has moved.
    @Test(.enabled(if: KernelGate.enabled))
    func everySeriesExistsAndMovesDuringARun() throws {
        let socketPath = "/tmp/pl-m-\(UUID().uuidString.prefix(8)).sock"
        let replayed = try write("replayed.jsonl", connectLine(1) + "\nnot json\n" + connectLine(2) + "\n")
        let file = try write("all.yaml", """
            sources:
              kernel: {type: syscall_monitor, events: [connect]}
              replayed: {type: replay, path: "\(replayed)"}
            filters:
              failed: {type: retval, inputs: [kernel], success: false}
            sinks:
              log: {type: file, inputs: [kernel, replayed], path: "\(directory.path)/log.jsonl"}
              archive: {type: lz4_segments, inputs: [kernel], directory: "\(directory.path)/archive", segment_bytes: 4KiB}
              live: {type: unix_socket, inputs: [failed], path: "\(socketPath)", mode: "0666"}
            """)
        // Run time and runs are counted only while bpf_stats_enabled is 1.
        let statsPath = "/proc/sys/kernel/bpf_stats_enabled"
        let statsBefore = (try? String(contentsOfFile: statsPath, encoding: .utf8)) ?? "0\n"
        try "1\n".write(toFile: statsPath, atomically: false, encoding: .utf8)
        defer { try? statsBefore.write(toFile: statsPath, atomically: false, encoding: .utf8) }

        let pipeline = try RunningPipeline(file)
        defer { try? FileManager.default.removeItem(atPath: socketPath) }
        let client = try CLI.start(["tail", socketPath])
        // A uid not in allow_uids: refused.
        let refused = try CLI.start(["tail", socketPath], prefix: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        _ = refused.finish(timeout: 30)
        let before = try pipeline.scrape()
        let load = try Loadgen.start(count: 20_000, rate: 0, mode: "mixed")
        load.process.waitUntilExit()
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_segments_sealed_total", ["stage": "archive"]) ?? 0) > 0 })
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_events_in_total", ["stage": "live"]) ?? 0) >= 10_000 })
        let after = try pipeline.scrape()

        let moving: [(String, [String: String])] = [
            ("pipelined_stage_events_in_total", ["stage": "kernel"]), ("pipelined_stage_events_out_total", ["stage": "kernel"]),
            ("pipelined_stage_events_in_total", ["stage": "failed"]), ("pipelined_stage_events_out_total", ["stage": "failed"]),
            ("pipelined_stage_events_in_total", ["stage": "log"]), ("pipelined_stage_bytes_total", ["stage": "log"]),
            ("pipelined_stage_bytes_total", ["stage": "archive"]), ("pipelined_stage_raw_bytes_total", ["stage": "archive"]),
            ("pipelined_stage_segments_sealed_total", ["stage": "archive"]), ("pipelined_stage_bytes_total", ["stage": "live"]),
            ("pipelined_stage_bpf_run_seconds_total", ["stage": "kernel", "program": "tp_ret_connect"]),
            ("pipelined_stage_bpf_runs_total", ["stage": "kernel", "program": "tp_ret_connect"]),
            ("pipelined_process_cpu_seconds_total", [:]),
        ]
        for (name, labels) in moving {
            let (was, now) = (before.value(name, labels) ?? -1, after.value(name, labels) ?? -1)
            #expect(now > was && was >= 0, "\(name)\(labels): \(was) -> \(now)")
        }
        let present: [(String, [String: String], Double?)] = [
            ("pipelined_stage_malformed_records_total", ["stage": "replayed", "type": "replay"], 1),
            ("pipelined_stage_events_lost_total", ["stage": "kernel", "where": "kernel"], 0),
            ("pipelined_stage_events_lost_total", ["stage": "live", "where": "client"], nil),
            ("pipelined_stage_queue_depth_events", ["stage": "archive"], nil),
            ("pipelined_stage_queue_capacity_events", ["stage": "archive"], 8192),
            ("pipelined_stage_segments_open", ["stage": "archive"], nil),
            ("pipelined_stage_clients_connected", ["stage": "live", "type": "unix_socket"], 1),
            ("pipelined_stage_clients_refused_total", ["stage": "live"], 1),
            ("pipelined_stage_buffer_used_bytes", ["stage": "kernel"], nil),
            ("pipelined_stage_buffer_size_bytes", ["stage": "kernel"], Double(8 << 20)),
            ("pipelined_stage_bpf_stats_enabled", ["stage": "kernel"], 1),
            ("pipelined_stage_attached_events", ["stage": "kernel", "event": "connect", "mode": "tracepoint", "capture": "exit"], 1),
            ("pipelined_build_info", [:], 1),
            ("pipelined_process_resident_memory_bytes", [:], nil),
            ("pipelined_reloads_total", ["result": "failure"], 0),
            ("pipelined_last_reload_success_timestamp_seconds", [:], 0),
        ]
        for (name, labels, expected) in present {
            let value = after.value(name, labels)
            #expect(value != nil, "\(name)\(labels) is missing")
            if let expected { #expect(value == expected, "\(name)\(labels)") }
        }
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        _ = client.finish()
    }

    /// Overload: a sink whose file (a FIFO) nobody reads blocks, its queue
    /// holds the kernel source back, the kernel buffer overflows; a second
    /// sink, also unread, drops at its queue. Once the FIFOs are read and the
    /// pipeline is quiet, each stage's lost counter equals the sum of the
    /// `count`s of the lost records it put in the stream.
    @Test(.enabled(if: KernelGate.enabled))
    func lostCountersEqualTheLostRecordsAfterAnOverload() throws {
        let blocked = directory.appendingPathComponent("blocked.fifo").path
        let dropping = directory.appendingPathComponent("dropping.fifo").path
        #expect(mkfifo(blocked, 0o600) == 0 && mkfifo(dropping, 0o600) == 0)
        // Opened first (non-blocking), so the sinks' opens do not wait; read later.
        let readers = [FIFOReader(blocked), FIFOReader(dropping)]
        let file = try write("overload.yaml", """
            sources:
              # Refused connects only: the test's own scrapes (successful
              # connects) are skipped in the kernel, so the run goes quiet.
              kernel: {type: syscall_monitor, events: [connect], ringbuf_bytes: 64KiB, skip_retvals: [0, -2, -115]}
            sinks:
              # First: a batch reaches it before the blocked sink holds the source back.
              dropping: {type: file, inputs: [kernel], path: "\(dropping)", queue_events: 16, queue_full: drop}
              blocked: {type: file, inputs: [kernel], path: "\(blocked)", queue_events: 16}
            """)
        let pipeline = try RunningPipeline(file)
        let load = try Loadgen.start(count: 200_000, rate: 0, mode: "tcp")
        load.process.waitUntilExit()
        for reader in readers { reader.start() }
        // Quiet: every record the source sent was written and read, twice running.
        var metrics = try pipeline.scrape()
        var quietScrapes = 0
        let quiet = try eventually(timeout: 30) {
            let now = try pipeline.scrape()
            let sent = now.value("pipelined_stage_events_out_total", ["stage": "kernel"]) ?? -1
            let settled = ["blocked", "dropping"].enumerated().allSatisfy { index, sink in
                let written = now.value("pipelined_stage_events_in_total", ["stage": sink]) ?? -2
                let lost = now.value("pipelined_stage_events_lost_total", ["stage": sink]) ?? 0
                return Double(readers[index].lines) == written && (sink == "dropping" || written == sent) && lost >= 0
            }
            let stages = { (exposition: Exposition) in exposition.samples.filter { $0.name.hasPrefix("pipelined_stage_") }.map(\.value) }
            quietScrapes = settled && stages(now) == stages(metrics) ? quietScrapes + 1 : 0
            metrics = now
            usleep(300_000)
            return quietScrapes >= 2
        }
        #expect(quiet, "lines read \(readers.map(\.lines)); \(metrics.samples.filter { $0.name.hasPrefix("pipelined_stage_") }.map { "\($0.name)\($0.labels) \($0.value)" })")
        func lostRecords(_ reader: FIFOReader, where site: String) -> Int {
            jsonLines(reader.text).filter { $0["event"] as? String == "lost" && $0["where"] as? String == site }
                .reduce(0) { $0 + ($1["count"] as? Int ?? 0) }
        }
        let kernelLost = metrics.value("pipelined_stage_events_lost_total", ["stage": "kernel", "where": "kernel"]) ?? -1
        let queueLost = metrics.value("pipelined_stage_events_lost_total", ["stage": "dropping", "where": "queue"]) ?? -1
        #expect(kernelLost > 0, "no kernel loss: the overload did not overload")
        #expect(queueLost > 0, "no queue loss")
        #expect(Double(lostRecords(readers[0], where: "kernel")) == kernelLost)
        #expect(Double(lostRecords(readers[1], where: "queue")) == queueLost)
        #expect(metrics.value("pipelined_stage_events_lost_total", ["stage": "blocked"]) == 0)
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
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

/// The read end of a FIFO, opened at once (so a writer's open does not
/// wait) and read to its end on a thread of its own once started.
final class FIFOReader: @unchecked Sendable {
    // `data` and `newlines` are only touched under `lock`.
    private let lock = NSLock()
    private var data = Data()
    private var newlines = 0
    private let fd: Int32

    init(_ path: String) {
        fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
    }

    func start() {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        Thread.detachNewThread { [self] in
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let count = read(fd, &chunk, chunk.count)
                if count < 0, errno == EINTR { continue }
                if count <= 0 { break }
                lock.lock()
                data.append(contentsOf: chunk[0..<count])
                newlines += chunk[0..<count].reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
                lock.unlock()
            }
            close(fd)
        }
    }

    /// Whole lines read so far.
    var lines: Int {
        lock.lock(); defer { lock.unlock() }
        return newlines
    }

    var text: String {
        lock.lock(); defer { lock.unlock() }
        return String(decoding: data, as: UTF8.self)
    }
}
