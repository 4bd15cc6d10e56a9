import EventArchive
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
@testable import TestSupport
#endif

/// Once the pipeline runs, `run` drops its privileges (issue 14,
/// docs/pipeline-file.md#privileges): no capability left in any thread,
/// no_new_privs, optionally another user; rotation, sealing, the socket and
/// map-only reloads keep working, reloads that need new programs say why not.
// Serialized: each test runs a kernel pipeline under a connect load.
@Suite("privilege drop", .serialized, .enabled(if: KernelGate.enabled))
final class PrivilegeCLITests: Sendable {
    let directory: URL

    init() throws {
        // Short: a unix socket path holds at most 107 bytes.
        directory = URL(fileURLWithPath: "/tmp/pl-priv-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    private func path(_ name: String) -> String { directory.path + "/" + name }

    /// The credential lines of /proc/PID/status (or of a thread's), by key.
    private func credentials(_ statusPath: String) throws -> [String: String] {
        let text = try String(contentsOfFile: statusPath, encoding: .utf8)
        var lines: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let key = String(parts[0])
            if ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Uid", "Gid", "Groups"].contains(key) {
                lines[key] = parts[1].split(whereSeparator: { $0 == "\t" || $0 == " " }).joined(separator: " ")
            }
        }
        return lines
    }

    /// Every thread of `pid`, by thread id.
    private func threadCredentials(_ pid: Int32) throws -> [String: [String: String]] {
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")
        var result: [String: [String: String]] = [:]
        for tid in tasks { result[tid] = try? credentials("/proc/\(pid)/task/\(tid)/status") }
        return result
    }

    private func dropped(uid: UInt32, gid: UInt32, seccomp: Bool) -> [String: String] {
        let none = "0000000000000000"
        return [
            "CapInh": none, "CapPrm": none, "CapEff": none, "CapBnd": none, "CapAmb": none,
            "NoNewPrivs": "1", "Seccomp": seccomp ? "2" : "0", "Uid": "\(uid) \(uid) \(uid) \(uid)", "Gid": "\(gid) \(gid) \(gid) \(gid)",
            "Groups": uid == 0 ? "" : "\(gid)",
        ]
    }

    /// The kernel source, a rotating file, a sealing archive and a socket.
    private func pipelineText(settings: String, events: String = "[connect, socket]", skip: String = "[-2, -115, -111]", extraSinks: String = "") -> String {
        """
        settings: \(settings)
        sources:
          kernel: {type: syscall_monitor, events: \(events), ringbuf_bytes: 64MiB, skip_retvals: \(skip)}
        filters:
          connects: {type: event_id, inputs: [kernel], include: [connect]}
        sinks:
          log: {type: file, inputs: [connects], path: "\(path("out/log.jsonl"))", rotate_bytes: 256KiB}
          store: {type: lz4_segments, inputs: [connects], directory: "\(path("out/archive"))", segment_bytes: 64KiB, block_size: 64KiB}
          live: {type: unix_socket, inputs: [connects], path: "\(path("out/live.sock"))", allow_uids: [0, 65534], client_buffer: 1000000}
        \(extraSinks)
        """
    }

    private func writePipeline(_ text: String) throws {
        let partial = path("p.yaml.partial")
        try text.write(toFile: partial, atomically: false, encoding: .utf8)
        chmod(partial, 0o644)
        #expect(rename(partial, path("p.yaml")) == 0)
    }

    /// Starts the pipeline and waits for the drop (or the end of a run that fails).
    private func start() throws -> RunningPipeline {
        let pipeline = try RunningPipeline(path("p.yaml"))
        #expect(pipeline.run.waitFor { _, stderr in stderr.contains("privileges dropped") || stderr.contains("drop_privileges is false") }, "\(pipeline.run.stderr.text.suffix(2000))")
        return pipeline
    }

    /// The peer ports of process `pid`'s connects in NDJSON `text`, in order.
    private func ports(of pid: Int32, in text: String) -> [Int] {
        text.split(separator: "\n").compactMap { line -> Int? in
            guard line.contains("\"host_pid\":\(pid),"), line.contains("\"event\":\"connect\""),
                  let range = line.range(of: "\"port\":") else { return nil }
            return Int(line[range.upperBound...].prefix { $0.isNumber })
        }
    }

    /// The current file and its rotations, oldest first (the names sort in rotation order).
    private func logFiles() throws -> [String] {
        let names = try FileManager.default.contentsOfDirectory(atPath: path("out")).filter { $0.hasPrefix("log.jsonl.") }.sorted()
        return names.map { path("out/\($0)") } + [path("out/log.jsonl")]
    }

    /// `nobody` and its primary group.
    private var nobody: (uid: UInt32, gid: UInt32) {
        guard let entry = getpwnam("nobody") else { return (65534, 65534) }
        return (entry.pointee.pw_uid, entry.pointee.pw_gid)
    }

    /// Who the pipeline runs as after the drop, and with what.
    enum Identity: String, CaseIterable, Sendable {
        case root, nobody, rootWithSeccomp
    }

    @Test(arguments: Identity.allCases)
    func afterTheDropNoThreadHasACapability_andRotationSealingAndTheSocketWork(as identity: Identity) throws {
        let asNobody = identity == .nobody
        let output = path("out")
        try FileManager.default.createDirectory(atPath: output + "/archive", withIntermediateDirectories: true)
        let (uid, gid) = asNobody ? nobody : (0, 0)
        if asNobody {
            #expect(chown(directory.path, uid, gid) == 0 && chown(output, uid, gid) == 0 && chown(output + "/archive", uid, gid) == 0)
        }
        let settings = ["root": "{}", "nobody": "{user: nobody}", "rootWithSeccomp": "{seccomp: kill}"][identity.rawValue]!
        try writePipeline(pipelineText(settings: settings))
        let pipeline = try start()
        let pid = pipeline.run.pid

        // The exact sets, in the process and in every one of its threads.
        let expected = dropped(uid: uid, gid: gid, seccomp: identity == .rootWithSeccomp)
        #expect(try credentials("/proc/\(pid)/status") == expected)
        let threads = try threadCredentials(pid)
        #expect(threads.count > 3)
        for (tid, lines) in threads { #expect(lines == expected, "thread \(tid)") }

        // Events after the drop: rotations, seals and a socket client.
        let tail = try CLI.start(["tail", output + "/live.sock"])
        // Connected before the load starts: it is to get every connect.
        #expect(try eventually { try pipeline.scrape().value("pipelined_stage_clients_connected", ["stage": "live"]) == 1 })
        let total = 20_000
        let load = try Loadgen.start(count: total, rate: 10_000)
        let worker = load.worker
        load.process.waitUntilExit()
        #expect(load.process.terminationStatus == 0)
        #expect(tail.waitFor { stdout, _ in self.ports(of: worker, in: stdout).count == total },
                "the socket client got \(ports(of: worker, in: tail.stdout.text).count) of \(total) connects; lost records: \(tail.stdout.text.split(separator: "\n").filter { $0.contains("\"event\":\"lost\"") }.prefix(3))")
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(3000))")
        #expect(!result.stderr.contains("error"), "\(result.stderr.suffix(3000))")
        #expect(tail.finish().status == 0)

        // Every connect once, in order, across the rotated files (each made after the drop).
        let files = try logFiles()
        let perFile = try files.map { ports(of: worker, in: try String(contentsOfFile: $0, encoding: .utf8)) }
        #expect(perFile.filter { !$0.isEmpty }.count >= 3, "no rotation after the drop: \(files)")
        #expect(perFile.flatMap { $0 } == (1...total).map { $0 })
        for file in files {
            let text = try String(contentsOfFile: file, encoding: .utf8)
            #expect(text.isEmpty || text.hasSuffix("\n"), "\(file) does not end with a whole line")
            #expect(jsonLines(text).count == text.split(separator: "\n").count, "\(file) holds a line that is not JSON")
        }
        if asNobody {
            var info = stat()
            #expect(stat(path("out/log.jsonl"), &info) == 0 && info.st_uid == uid, "the file opened after the rotation is not the user's")
        }

        // Sealed segments, whole, with every connect.
        let verify = try CLI.run(["archive", "verify", output + "/archive"])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let sealed = try ArchiveDirectory(output + "/archive").segments().filter { !$0.isOpen }
        #expect(sealed.count >= 3, "no segment sealed after the drop")
        let archived = try CLI.run(["archive", "cat", output + "/archive"])
        #expect(archived.status == 0)
        #expect(ports(of: worker, in: archived.stdout) == (1...total).map { $0 })
    }

    @Test func dropPrivilegesFalseKeepsEverything() throws {
        try FileManager.default.createDirectory(atPath: path("out/archive"), withIntermediateDirectories: true)
        try writePipeline(pipelineText(settings: "{drop_privileges: false}"))
        let pipeline = try start()
        // What this (root) test process has, the pipeline keeps.
        var mine = try credentials("/proc/self/status")
        mine["Groups"] = nil
        var theirs = try credentials("/proc/\(pipeline.run.pid)/status")
        theirs["Groups"] = nil
        #expect(theirs == mine)
        #expect(mine["CapEff"] != "0000000000000000")
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(result.stderr.contains("settings.drop_privileges is false"))
        #expect(!result.stderr.contains("privileges dropped"))
    }

    @Test(arguments: ["{}", "{seccomp: log}", "{seccomp: kill}"])
    func afterTheDrop_aMapsFiltersAndSinksReloadWorks_aNewProgramReloadFailsSayingWhy(settings: String) throws {
        try FileManager.default.createDirectory(atPath: path("out/archive"), withIntermediateDirectories: true)
        // A sink of every event: with pushdown, a graph whose only paths keep
        // connects would not attach `socket` at all, and the reload below
        // must switch off an attached event.
        let everything = """
              sockets: {type: file, inputs: [kernel], path: "\(path("out/everything.jsonl"))"}
            """
        try writePipeline(pipelineText(settings: settings, extraSinks: everything))
        let pipeline = try start()
        #expect(try pipeline.scrape().value("pipelined_stage_attached_events", ["event": "socket"]) == 1)
        #expect(try credentials("/proc/\(pipeline.run.pid)/status")["Seccomp"] == (settings.contains("seccomp") ? "2" : "0"))
        let load = try Loadgen.start(count: 400_000, rate: 20_000)
        defer {
            kill(load.worker, SIGKILL)
            load.process.waitUntilExit()
        }
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_events_in_total", ["stage": "log"]) ?? 0) > 2_000 })

        // Fewer events and other skip_retvals (map writes through open descriptors) and a new sink.
        try writePipeline(pipelineText(settings: settings, events: "[connect]", skip: "[-2, -115, -111, -13]", extraSinks: everything + "\n" + """
              more: {type: file, inputs: [kernel], path: "\(path("out/more.jsonl"))"}
            """))
        pipeline.run.signal(SIGHUP)
        #expect(pipeline.run.waitFor { _, stderr in stderr.contains("reloaded:") || stderr.contains("reload failed") })
        #expect(pipeline.run.stderr.text.contains("reloaded: unchanged 5, reconfigured [kernel], added [more]"), "\(pipeline.run.stderr.text.suffix(2000))")
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_events_in_total", ["stage": "more"]) ?? 0) > 2_000 })
        let socketOff = try pipeline.scrape().value("pipelined_stage_attached_events", ["event": "socket"])
        #expect(socketOff == 0, "socket is still switched on")

        // An event the running programs do not have: new programs, which the drop forbids.
        try writePipeline(pipelineText(settings: settings, events: "[connect, unlink]", extraSinks: everything + "\n" + """
              more: {type: file, inputs: [kernel], path: "\(path("out/more.jsonl"))"}
            """))
        pipeline.run.signal(SIGHUP)
        #expect(pipeline.run.waitFor { _, stderr in stderr.contains("reload failed") })
        let failed = pipeline.run.stderr.text
        #expect(failed.contains("reload failed, the running pipeline is unchanged: kernel: cannot load the programs of unlink"), "\(failed.suffix(2000))")
        #expect(failed.contains("Privileges were dropped once the pipeline ran (settings.drop_privileges)"))
        // Untouched: events go on reaching both sinks.
        let before = try pipeline.scrape()
        let more = before.value("pipelined_stage_events_in_total", ["stage": "more"]) ?? 0
        #expect(try eventually { (try pipeline.scrape().value("pipelined_stage_events_in_total", ["stage": "more"]) ?? 0) > more + 2_000 })
        let after = try pipeline.scrape()
        #expect(after.value("pipelined_reloads_total", ["result": "success"]) == 1)
        #expect(after.value("pipelined_reloads_total", ["result": "failure"]) == 1)
        #expect(after.value("pipelined_stage_attached_events", ["event": "connect"]) == 1)
        let result = pipeline.finish()
        #expect(result.status == 0, "\(result.stderr.suffix(2000))")
        #expect(!pipeline.run.process.isRunning && pipeline.run.process.terminationReason == .exit, "killed (by the seccomp filter?)")
    }

    @Test func aSinkDirectoryTheUserCannotWriteFailsTheRunNamingIt() throws {
        // The directory stays root's: nobody cannot create the rotated files there.
        try FileManager.default.createDirectory(atPath: path("out/archive"), withIntermediateDirectories: true)
        chmod(directory.path, 0o755)
        try writePipeline("""
            settings: {user: nobody}
            sources:
              kernel: {type: syscall_monitor, events: [connect]}
            sinks:
              log: {type: file, inputs: [kernel], path: "\(path("out/log.jsonl"))"}
            """)
        let run = try CLI.start(["run", path("p.yaml")])
        let result = run.finish()
        #expect(result.status == 1)
        #expect(result.stderr.contains("the pipeline could not go on as user nobody (uid \(nobody.uid)): sink 'log': directory '\(path("out"))' is not writable after the drop (Permission denied)"), "\(result.stderr.suffix(2000))")
    }

    /// A replay-to-stdout file whose `settings` are the given lines; `sink` adds to the sink.
    private func settingsFile(_ name: String, _ settings: String, sink: String = "") throws {
        try """
            \(settings)
            sources:
              r: {type: replay, path: /dev/null}
            sinks:
              s: {type: file, inputs: [r], path: "-"\(sink)}
            """.write(toFile: path(name), atomically: true, encoding: .utf8)
    }

    @Test func unknownUsersAndGroupsAreLocatedErrors() throws {
        try settingsFile("a.yaml", "settings:\n  user: no-such-user-here")
        try settingsFile("b.yaml", "settings:\n  drop_privileges: false\n  user: nobody\n  group: no-such-group-here")
        try settingsFile("c.yaml", "settings: {group: nogroup, drop_privileges: maybe}")
        try settingsFile("d.yaml", "settings: {drop_privileges: false, seccomp: kill}", sink: ", pth: x")
        try settingsFile("e.yaml", "settings: {seccomp: strict}")
        let result = try CLI.run(["validate", path("a.yaml"), path("b.yaml"), path("c.yaml"), path("d.yaml"), path("e.yaml")])
        #expect(result.status == 78)
        #expect(result.stderr == """
            \(path("a.yaml")):2:9: error: settings: 'user': no such user 'no-such-user-here' on this machine
            \(path("b.yaml")):3:3: error: settings: 'user' needs drop_privileges: true (the user is switched to when privileges are dropped)
            \(path("b.yaml")):4:10: error: settings: 'group': no such group 'no-such-group-here' on this machine
            \(path("c.yaml")):1:12: error: settings: 'group' needs 'user' (the group is switched to with the user)
            \(path("c.yaml")):1:45: error: settings: 'drop_privileges' must be true or false, not 'maybe'
            \(path("d.yaml")):1:36: error: settings: 'seccomp' needs drop_privileges: true (the filter is installed after the drop)
            \(path("d.yaml")):5:43: error: sink 's': unknown key 'pth' (did you mean 'path'?)
            \(path("e.yaml")):1:21: error: settings: 'seccomp' must be off, log or kill, not 'strict'

            """, "\(result.stderr)")
        // The user is looked up: `run` refuses before it touches the kernel.
        let run = try CLI.run(["run", path("a.yaml")])
        #expect(run.status == 78)
    }
}
