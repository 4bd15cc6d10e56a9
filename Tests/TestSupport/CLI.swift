import Foundation
import Testing

/// Runs the built `pipelined` binary as a child process, as a user would.
///
/// The binary is found beside the test bundle (SwiftPM puts both in the same
/// products directory), so the tests exercise exactly what `swift build` made.
enum CLI {
    /// The products directory: where the test runner itself lives.
    static let productsDirectory: URL = {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var url = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // The runner may sit inside a bundle directory; walk up to `pipelined`.
        while !FileManager.default.fileExists(atPath: url.appendingPathComponent("pipelined").path), url.path != "/" {
            url.deleteLastPathComponent()
        }
        return url
    }()

    /// The `pipelined` executable.
    static var binary: URL { productsDirectory.appendingPathComponent("pipelined") }

    /// The package root, for `pipelines/` and fixtures.
    static let packageRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// What a finished run printed and how it ended.
    struct Result {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs `pipelined ARGS` to completion with optional extra environment.
    @discardableResult
    static func run(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 120) throws -> Result {
        try start(arguments, environment: environment).finish(timeout: timeout)
    }

    /// Starts `pipelined ARGS` (behind `prefix`, e.g. `setpriv ...`); the caller
    /// signals and finishes it.
    ///
    /// Tests run in parallel, so a `run` serves its metrics on a free port
    /// (`--metrics-listen 127.0.0.1:0`) unless the test names one itself or
    /// sets `freeMetricsPort` false (to test the file's own setting).
    static func start(_ arguments: [String], environment: [String: String] = [:], prefix: [String] = [], freeMetricsPort: Bool = true) throws -> Running {
        var arguments = arguments
        if freeMetricsPort, arguments.first == "run", !arguments.contains(where: { $0.hasPrefix("--metrics-listen") }) {
            arguments.insert(contentsOf: ["--metrics-listen", "127.0.0.1:0"], at: 1)
        }
        let process = Process()
        if prefix.isEmpty {
            process.executableURL = binary
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: prefix[0])
            process.arguments = Array(prefix.dropFirst()) + [binary.path] + arguments
        }
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        return Running(process: process, stdout: Collector(out.fileHandleForReading), stderr: Collector(err.fileHandleForReading))
    }

    /// A child that is still running, with its output collected as it comes.
    final class Running: @unchecked Sendable {
        // The Process is only touched from the test's own task.
        let process: Process
        let stdout: Collector
        let stderr: Collector

        init(process: Process, stdout: Collector, stderr: Collector) {
            self.process = process
            self.stdout = stdout
            self.stderr = stderr
        }

        var pid: Int32 { process.processIdentifier }

        func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

        /// Waits for exit (killing the child after `timeout` seconds, which
        /// also records a test issue) and returns the result.
        func finish(timeout: Double = 120) -> Result {
            let deadline = Date().addingTimeInterval(timeout)
            while process.isRunning, Date() < deadline { usleep(10_000) }
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                Issue.record("pipelined did not exit within \(timeout) s; killed")
            }
            process.waitUntilExit()
            return Result(status: process.terminationStatus, stdout: stdout.finish(), stderr: stderr.finish())
        }

        /// Waits until `condition` holds for the output so far; false after
        /// `timeout` seconds or when the child exits without it holding.
        func waitFor(timeout: Double = 60, _ condition: (_ stdout: String, _ stderr: String) -> Bool) -> Bool {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if condition(stdout.text, stderr.text) { return true }
                if !process.isRunning { return condition(stdout.text, stderr.text) }
                usleep(20_000)
            }
            return false
        }
    }

    /// Reads a pipe on a thread of its own so that the child never blocks on a full pipe.
    final class Collector: @unchecked Sendable {
        // `data` is only touched under `lock`.
        private let lock = NSLock()
        private var data = Data()
        private let done = DispatchSemaphore(value: 0)

        init(_ handle: FileHandle) {
            Thread.detachNewThread { [self] in
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    lock.lock(); data.append(chunk); lock.unlock()
                }
                done.signal()
            }
        }

        var text: String {
            lock.lock(); defer { lock.unlock() }
            return String(decoding: data, as: UTF8.self)
        }

        func finish() -> String {
            done.wait()
            return text
        }
    }

    /// A fresh directory under /tmp; the caller removes it.
    static func temporaryDirectory(_ label: String = "cli") throws -> URL {
        let url = URL(fileURLWithPath: "/tmp").appendingPathComponent("pipelined-\(label)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// A connect record in the exact shape of docs/event-record.md, numbered by `n`.
/// Every third one fails with ECONNREFUSED.
/// Its `node` is `web-1` (SPEC's example), or absent with `node: nil` (as
/// records written before the fleet work: a replaying pipeline gives them
/// its own node).
func connectLine(_ n: Int, node: String? = "web-1") -> String {
    let failed = n % 3 == 0
    let nanos = String(format: "%09d", n % 1_000_000_000)
    let nodeKey = node.map { #","node":"\#($0)""# } ?? ""
    return #"{"time":"2026-11-24T16:34:13.\#(nanos)Z"\#(nodeKey),"ktime_ns":\#(8_000_000_000 + n),"event":"connect","event_id":42,"#
        + #""scope":"network","retval":\#(failed ? -111 : 0),"result":"\#(failed ? "ECONNREFUSED" : "ok")","pid":4242,"ppid":1,"#
        + #""host_pid":4242,"host_ppid":1,"uid":0,"pid_ns":0,"mnt_ns":0,"origin":"host","comm":"python3","#
        + #""args":{"fd":\#(3 + n % 5),"addr":{"family":"AF_INET","ip":"127.0.0.1","port":\#(1 + n % 60000)}}}"#
}
