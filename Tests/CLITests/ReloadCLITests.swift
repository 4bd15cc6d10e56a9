import Foundation
import Testing

#if canImport(Glibc)
import Glibc
@testable import TestSupport
#endif

/// `kill -HUP` reloads the pipeline file (issue 12): only what changed is
/// replaced, and no event is lost or repeated on the way.
// Serialized: each test makes 20,000 connects a second; two at once on a
// shared 2-core machine only measure the machine.
@Suite("reload on SIGHUP", .serialized, .enabled(if: KernelGate.enabled))
final class ReloadCLITests: Sendable {
    let directory: URL

    init() throws {
        // Short: a unix socket path holds at most 107 bytes.
        directory = URL(fileURLWithPath: "/tmp/pl-reload-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    private var pipelineFile: String { directory.appendingPathComponent("p.yaml").path }

    /// Replaces the pipeline file whole (rename), as an editor or a deploy would.
    private func writePipeline(_ text: String) throws {
        let partial = directory.appendingPathComponent("p.yaml.partial")
        try text.write(to: partial, atomically: false, encoding: .utf8)
        #expect(rename(partial.path, pipelineFile) == 0)
    }

    private func occurrences(_ needle: String, in text: String) -> Int {
        text.components(separatedBy: needle).count - 1
    }

    /// The peer ports of the connect events of process `pid` in an NDJSON
    /// file, in file order (loadgen's `seq` mode counts them up from 1).
    /// The files are large (tens of MB): searched with memmem, not parsed.
    private func ports(of pid: Int32, in path: String) throws -> [Int] {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let marker = Array("\"host_pid\":\(pid),".utf8), connect = Array("\"event\":\"connect\"".utf8), port = Array("\"port\":".utf8)
        var result: [Int] = []
        bytes.withUnsafeBytes { buffer in
            guard let base = buffer.baseAddress else { return }
            // memchr for the first byte, then memcmp: memmem is not in Swift's Glibc.
            func find(_ needle: [UInt8], from: Int, to: Int) -> Int? {
                var at = from
                while to - at >= needle.count, let hit = memchr(base + at, Int32(needle[0]), to - at - needle.count + 1) {
                    let index = base.distance(to: UnsafeRawPointer(hit))
                    if memcmp(hit, needle, needle.count) == 0 { return index }
                    at = index + 1
                }
                return nil
            }
            var offset = 0
            while let hit = find(marker, from: offset, to: buffer.count) {
                var start = hit
                while start > 0, buffer[start - 1] != UInt8(ascii: "\n") { start -= 1 }
                var end = hit
                while end < buffer.count, buffer[end] != UInt8(ascii: "\n") { end += 1 }
                offset = end
                guard find(connect, from: start, to: end) != nil, var digit = find(port, from: hit, to: end).map({ $0 + port.count }) else { continue }
                var value = 0
                while digit < end, buffer[digit] >= 0x30, buffer[digit] <= 0x39 {
                    value = value * 10 + Int(buffer[digit] - 0x30)
                    digit += 1
                }
                result.append(value)
            }
        }
        return result
    }

    /// 1, 2, ... count, as loadgen's `seq` mode numbers its connects.
    private func sequence(_ count: Int) -> [Int] { (0..<count).map { 1 + $0 % 65535 } }

    private func steadyPipeline(filter: Int) -> String {
        """
        sources:
          # A large ring: a debug build on a busy machine may stall for
          # seconds. Refused connects (other tests' storms) are not traced.
          kernel: {type: syscall_monitor, events: [connect], ringbuf_bytes: 128MiB, skip_retvals: [-2, -115, -111]}
        filters:
          pick: {type: retval, inputs: [kernel], not_equals: [\(filter)]}
        sinks:
          all: {type: file, inputs: [kernel], path: "\(directory.path)/all.jsonl"}
          live: {type: unix_socket, inputs: [pick], path: "\(directory.path)/live.sock"}
        """
    }

    private var invalidPipeline: String {
        """
        sources:
          kernel: {type: syscall_monitor, events: [connect], ringbuf_bytes: 128MiB, skip_retvals: [-2, -115, -111]}
        filters:
          pick: {type: retval, inputs: [kernel], not_equals: [7]}
        sinks:
          all: {type: file, inputs: [kernel], pth: "\(directory.path)/all.jsonl"}
          live: {type: unix_sockets, inputs: [pick], path: "\(directory.path)/live.sock"}
        """
    }

    @Test func tenReloadsUnderLoad_theUnchangedSinkGetsEveryEventOnce() throws {
        try writePipeline(steadyPipeline(filter: 1000))
        let pipeline = try RunningPipeline(pipelineFile)
        // 20,000 connects a second for 10 s.
        let total = 200_000
        let load = try Loadgen.start(count: total, rate: 20_000)
        let tail = try CLI.start(["tail", directory.path + "/live.sock"])
        #expect(tail.waitFor { stdout, _ in stdout.contains("\"event\":\"connect\"") }, "the socket client got nothing")

        for reload in 0..<10 {
            if reload % 2 == 0 {
                try writePipeline(steadyPipeline(filter: 1001 + reload))
            } else {
                try writePipeline(invalidPipeline)
            }
            pipeline.run.signal(SIGHUP)
            let done = pipeline.run.waitFor { _, stderr in
                occurrences("reloaded:", in: stderr) + occurrences("is invalid", in: stderr) == reload + 1
            }
            #expect(done, "reload \(reload + 1) was not reported")
            // Spread the reloads over the load.
            usleep(700_000)
        }
        let worker = load.worker
        load.process.waitUntilExit()
        #expect(load.process.terminationStatus == 0)
        // SIGTERM drains the kernel buffers and every queue: whatever was
        // generated reaches the file before the run ends.
        let allPath = directory.path + "/all.jsonl"
        #expect(tail.process.isRunning, "the socket client was disconnected")
        let metrics = try pipeline.scrape()
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(tail.finish().status == 0)

        let seen = try ports(of: worker, in: allPath)
        #expect(seen.count == total)
        #expect(seen == sequence(total), "a gap or a duplicate in the unchanged sink's file")
        let lostLines = try String(contentsOfFile: allPath, encoding: .utf8).split(separator: "\n").filter { $0.contains("\"event\":\"lost\"") }
        #expect(lostLines.isEmpty, "\(lostLines.prefix(5))\n\(result.stderr.suffix(3000))")

        // Each invalid reload logged every problem, located, and changed nothing.
        #expect(occurrences("reloaded:", in: result.stderr) == 5)
        #expect(occurrences("\(pipelineFile):6:3: error: sink 'all': missing required option 'path'", in: result.stderr) == 5, "\(result.stderr.suffix(3000))")
        #expect(occurrences("\(pipelineFile):6:39: error: sink 'all': unknown key 'pth' (did you mean 'path'?)", in: result.stderr) == 5)
        #expect(occurrences("\(pipelineFile):7:16: error: sink 'live': unknown type 'unix_sockets' (did you mean 'unix_socket'?)", in: result.stderr) == 5)
        #expect(metrics.value("pipelined_reloads_total", ["result": "success"]) == 5)
        #expect(metrics.value("pipelined_reloads_total", ["result": "failure"]) == 5)
        #expect((metrics.value("pipelined_last_reload_success_timestamp_seconds") ?? 0) > 1_700_000_000)
    }

    @Test func addingAndRemovingSinksAndChangingEvents_keepsTheKernelProgram() throws {
        let path = { (name: String) in self.directory.path + "/" + name }
        try writePipeline("""
            sources:
              kernel: {type: syscall_monitor, events: [connect, socket], ringbuf_bytes: 128MiB, skip_retvals: [-2, -115, -111]}
            sinks:
              a: {type: file, inputs: [kernel], path: "\(path("a.jsonl"))"}
              old: {type: file, inputs: [kernel], path: "\(path("old.jsonl"))"}
            """)
        let pipeline = try RunningPipeline(pipelineFile)
        // Long enough to outlast the reload on a slow machine; stopped once
        // the new sink has its share.
        let load = try Loadgen.start(count: 400_000, rate: 20_000)
        let worker = load.worker
        // Reload once the old sink has some of the run.
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_events_in_total", ["stage": "old"]) ?? 0) > 5_000 })
        try writePipeline("""
            sources:
              kernel: {type: syscall_monitor, events: [connect], ringbuf_bytes: 128MiB, skip_retvals: [-2, -115, -111]}
            sinks:
              a: {type: file, inputs: [kernel], path: "\(path("a.jsonl"))"}
              new: {type: file, inputs: [kernel], path: "\(path("new.jsonl"))"}
            """)
        // The kernel programs by name and id: the same after the reload.
        let programs = { (scrape: Exposition) in
            Set(scrape.samples.filter { $0.name == "pipelined_stage_bpf_runs_total" }.map { "\($0.labels["program"] ?? "")#\($0.labels["id"] ?? "")" })
        }
        let programsBefore = programs(try pipeline.scrape())
        pipeline.run.signal(SIGHUP)
        #expect(pipeline.run.waitFor { _, stderr in stderr.contains("reloaded:") })
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_events_in_total", ["stage": "new"]) ?? 0) > 5_000 })
        let reloaded = try pipeline.scrape()
        #expect(programs(reloaded) == programsBefore && programsBefore.contains { $0.hasPrefix("tp_ret_connect#") }, "\(programsBefore) -> \(programs(reloaded))")
        #expect(reloaded.value("pipelined_stage_attached_events", ["event": "socket"]) == 0, "socket is still switched on")
        #expect(reloaded.value("pipelined_stage_attached_events", ["event": "connect"]) == 1)
        kill(worker, SIGKILL)
        load.process.waitUntilExit()
        // A second run after the reload: its socket() calls are no longer traced.
        let after = try Loadgen.start(count: 100, rate: 0)
        let afterWorker = after.worker
        after.process.waitUntilExit()
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(result.stderr.contains("reloaded: unchanged 1, reconfigured [kernel], added [new], removed [old]"), "\(result.stderr.suffix(2000))")
        #expect(occurrences("tracing 2 event(s)", in: result.stderr) == 1, "the kernel program was loaded again")

        let old = try String(contentsOfFile: path("old.jsonl"), encoding: .utf8)
        #expect(old.hasSuffix("\n"), "the removed sink's file does not end with a whole line")
        let (all, before, later) = (try ports(of: worker, in: path("a.jsonl")), try ports(of: worker, in: path("old.jsonl")), try ports(of: worker, in: path("new.jsonl")))
        #expect(all.count > 10_000)
        #expect(all == sequence(all.count), "a gap or a duplicate in the sink that stayed")
        #expect(!before.isEmpty && !later.isEmpty)
        #expect(before + later == all, "the new sink does not start with the event after the removed sink's last")

        let a = try String(contentsOfFile: path("a.jsonl"), encoding: .utf8)
        #expect(a.contains("\"event\":\"socket\",\"event_id\":41"), "the first run's socket() calls were traced")
        #expect(try ports(of: afterWorker, in: path("a.jsonl")).count == 100)
        #expect(!a.split(separator: "\n").contains { $0.contains("\"host_pid\":\(afterWorker),") && $0.contains("\"event\":\"socket\"") },
                "socket() is still traced after the reload removed it")
    }

    @Test func aChangeMapsCannotTakeAttachesTheNewProgramFirst() throws {
        let path = directory.path + "/all.jsonl"
        let pipeline = { (flush: String) in
            """
            # Replacing the source loads new programs: that needs the privileges kept.
            settings: {drop_privileges: false}
            sources:
              kernel: {type: syscall_monitor, events: [connect], flush_interval: \(flush), ringbuf_bytes: 128MiB, skip_retvals: [-2, -115, -111]}
            sinks:
              all: {type: file, inputs: [kernel], path: "\(path)"}
            """
        }
        try writePipeline(pipeline("100ms"))
        let running = try RunningPipeline(pipelineFile)
        let load = try Loadgen.start(count: 400_000, rate: 20_000)
        let programs = { (scrape: Exposition) in
            Set(scrape.samples.filter { $0.name == "pipelined_stage_bpf_runs_total" }.compactMap { $0.labels["id"] })
        }
        #expect(try eventually { (try running.scrape().value("pipelined_stage_events_in_total", ["stage": "all"]) ?? 0) > 5_000 })
        let before = programs(try running.scrape())
        // flush_interval is set at start: the source is replaced whole.
        try writePipeline(pipeline("50ms"))
        running.run.signal(SIGHUP)
        #expect(running.run.waitFor { _, stderr in stderr.contains("reloaded:") })
        let atReload = try running.scrape().value("pipelined_stage_events_in_total", ["stage": "all"]) ?? 0
        #expect(try eventually { (try running.scrape().value("pipelined_stage_events_in_total", ["stage": "all"]) ?? 0) > atReload + 5_000 })
        let after = programs(try running.scrape())
        kill(load.worker, SIGKILL)
        load.process.waitUntilExit()
        let result = running.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(result.stderr.contains("reloaded: unchanged 1, replaced [kernel]"), "\(result.stderr.suffix(2000))")
        #expect(!before.isEmpty && before.isDisjoint(with: after), "the programs were not replaced: \(before) -> \(after)")
        // Every call was seen (a call made while both programs were attached may be seen twice).
        let seen = try ports(of: load.worker, in: path)
        let top = seen.max() ?? 0
        #expect(seen.count > 10_000)
        #expect(Set(seen) == Set(1...max(1, top)), "a call went unseen while the source was replaced")
    }

}
