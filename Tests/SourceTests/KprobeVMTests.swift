import Foundation
import PipelineCore
import Testing
@testable import EventSources
@testable import TestSupport

/// Whether the kprobe path can be tested here: this project's machines have
/// no kprobes, so the test boots a kernel that has them in qemu (``TestVM``).
enum KprobeVM {
    static var enabled: Bool { TestVM.enabled("the kprobe VM test") }
}

/// The kprobe/kretprobe programs, attached for real: a VM boots a kernel
/// with kprobes and runs pipelined and the driver as root, first with
/// `attach: auto` (which must choose kprobes for every event), the default
/// capture (exit-only kretprobes on a kernel with bpf_task_pt_regs, 5.15+)
/// and the ring buffer, then with `attach: kprobe`, `capture: entry` (the
/// kprobe/kretprobe pairs) and the perf buffer. The driver's
/// scenarios are compared event by event, as the tracepoint tests do.
@Suite("syscall_monitor with kprobes, in a VM", .enabled(if: KprobeVM.enabled))
struct KprobeVMTests {
    /// A pass: one `pipelined run` with all events traced, and the driver's
    /// scenarios while it runs.
    struct Pass {
        let name: String
        let source: String
        /// Whether the args are read at exit (the VM's kernel has bpf_task_pt_regs).
        let exitOnly: Bool
    }

    static let passes = [
        Pass(name: "ringbuf", source: "{type: syscall_monitor, attach: auto, transport: ringbuf}", exitOnly: true),
        Pass(name: "perf", source: "{type: syscall_monitor, attach: kprobe, capture: entry, transport: perf}", exitOnly: false),
    ]

    /// Scenario, the events it is compared on.
    static let scenarios: [(name: String, events: Set<String>)] = [
        ("connect", ["connect"]),
        ("server", ["socket", "bind", "listen", "accept", "connect"]),
        ("files", ["open", "openat", "close", "unlink", "unlinkat", "rmdir", "chown", "fchownat"]),
        ("process", ["execve", "execveat", "setuid", "setgid", "ptrace", "mount", "umount"]),
        ("thread-exec", ["execve"]),
    ]

    /// The VM's first process: brings up loopback, then per pass starts
    /// pipelined, runs every scenario, stops it with SIGTERM and prints its
    /// log and events. Sections start with `=== ` lines, on the second
    /// serial port.
    static func initScript() -> String {
        var script = TestVM.initPreamble + """
            mount -t tracefs tracefs /sys/kernel/tracing
            echo "=== kernel $(uname -r)" >&3

            """
        for pass in passes {
            script += """
                /pipelined run /\(pass.name).yaml 2>/tmp/\(pass.name).log &
                P=$!
                i=0
                while ! grep -q "pipeline started" /tmp/\(pass.name).log && kill -0 $P 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done

                """
            for scenario in scenarios {
                let directory = "/tmp/\(pass.name)-\(scenario.name)"
                let extra = ["process", "thread-exec"].contains(scenario.name) ? " /test/driver" : ""
                script += """
                    mkdir \(directory)
                    echo "=== run \(pass.name) \(scenario.name)" >&3
                    /test/driver \(scenario.name) \(directory)\(extra) >&3
                    echo "=== status $?" >&3

                    """
            }
            script += """
                kill -TERM $P
                wait $P
                echo "=== exit \(pass.name) $?" >&3
                echo "=== log \(pass.name)" >&3
                cat /tmp/\(pass.name).log >&3
                echo "=== events \(pass.name)" >&3
                cat /tmp/\(pass.name).jsonl >&3

                """
        }
        script += """
            echo "=== done" >&3
            poweroff -f

            """
        return script
    }

    /// Runs the VM; its output split into sections by their `=== ` line.
    static func boot() throws -> (sections: [(title: String, lines: [String])], console: String) {
        let root = try TemporaryDirectory()
        defer { root.remove() }
        let files = FileManager.default
        try files.copyItem(atPath: try #require(TestVM.binary), toPath: root.path + "/pipelined")
        // In a directory of its own: the process scenario execveat()s the
        // driver through its directory.
        try files.createDirectory(atPath: root.path + "/test", withIntermediateDirectories: false)
        try files.copyItem(atPath: Driver.path, toPath: root.path + "/test/driver")
        for pass in passes {
            try """
                sources:
                  kernel: \(pass.source)
                sinks:
                  out: {type: file, inputs: [kernel], path: /tmp/\(pass.name).jsonl}
                """.write(toFile: root.path + "/\(pass.name).yaml", atomically: true, encoding: .utf8)
        }
        try initScript().write(toFile: root.path + "/init", atomically: true, encoding: .utf8)
        chmod(root.path + "/init", 0o755)

        return try TestVM.boot(root: root.path)
    }

    @Test func everyScenarioThroughKprobesWithBothTransports() throws {
        let (sections, console) = try Self.boot()
        let titles = sections.map(\.title)
        try #require(titles.last == "done", "the VM did not finish: \(titles)\nits console:\n\(console.suffix(4000))")
        #expect(titles.first?.hasPrefix("kernel ") == true)

        for pass in Self.passes {
            let exit = sections.first { $0.title.hasPrefix("exit \(pass.name) ") }?.title
            #expect(exit == "exit \(pass.name) 0", "pipelined run (\(pass.name)) ended with \(exit ?? "nothing")")
            let log = sections.first { $0.title == "log \(pass.name)" }?.lines ?? []
            // Every event on its kretprobe (exit-only) or kprobe pair (entry
            // capture, and the exec events always), none fallen back.
            for kind in EventCatalog.all {
                let name = KernelProgram.kernelName(kind)
                let line = pass.exitOnly && KernelProgram.hasExitOnlyPrograms(kind)
                    ? "event \(kind.name): kretprobe on __x64_sys_\(name), args read at exit"
                    : "event \(kind.name): kprobe/kretprobe on __x64_sys_\(name)"
                #expect(log.contains { $0.contains(line) },
                        "\(pass.name): \(kind.name) not on a kprobe:\n\(log.joined(separator: "\n"))")
            }
            #expect(log.contains { $0.contains(pass.exitOnly ? "exit-only capture" : "entry+exit capture") })
            #expect(!log.contains { $0.contains("using its tracepoint") })
            #expect(log.contains { $0.contains(pass.name == "perf" ? "through a perf buffer" : "through a ring buffer") })
            #expect(log.contains { $0.contains("stage=kernel") && $0.contains("stage totals") && $0.contains("lost=0 malformed=0") },
                    "\(log.joined(separator: "\n"))")

            let decoder = NDJSONDecoder()
            let lines = sections.first { $0.title == "events \(pass.name)" }?.lines.filter { !$0.isEmpty } ?? []
            let records = try lines.map { line in try Array(line.utf8).withUnsafeBytes { try decoder.decode($0) } }
            #expect(!records.isEmpty)

            for scenario in Self.scenarios {
                let index = try #require(sections.firstIndex { $0.title == "run \(pass.name) \(scenario.name)" })
                #expect(sections[index + 1].title == "status 0", "\(pass.name) \(scenario.name): driver \(sections[index + 1].title)")
                let output = Data(sections[index].lines.joined(separator: "\n").utf8)
                let pid = try #require(sections[index].lines.first { $0.hasPrefix("# pid ") }.flatMap { Int32($0.dropFirst(6)) })
                let run = Driver.Run(pid: pid, status: 0, output: output)
                let directory = "/tmp/\(pass.name)-\(scenario.name)"
                let events = records.events(of: pid).filter { $0.kind.map { scenario.events.contains($0.name) } ?? false }
                var expected = try run.expected()
                var actual = events
                switch scenario.name {
                case "files":
                    actual = try run.fileEvents(in: events, directory: directory)
                case "process", "thread-exec":
                    // busybox's spawn of the driver is the first execve.
                    expected.insert(.spawn("/test/driver", [scenario.name, directory, "/test/driver"]), at: 0)
                default:
                    break
                }
                #expect(!expected.isEmpty)
                #expect(actual.map(\.expectedForm) == expected,
                        "\(pass.name) \(scenario.name):\n\(actual.map(\.expectedForm.description).joined(separator: "\n"))")
            }
        }
    }
}
