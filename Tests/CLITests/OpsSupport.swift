@testable import EventSources
import Foundation
import Testing
@testable import TestSupport

/// Whether the kernel tests of this suite can run here: the same gate as
/// SourceTests' (skip with the reason, or fail under PIPELINED_REQUIRE_BPF=1).
enum KernelGate {
    static var enabled: Bool {
        guard let reason = KernelSupport.unavailableReason else { return true }
        if ProcessInfo.processInfo.environment["PIPELINED_REQUIRE_BPF"] == "1" { return true }
        print("skipping a pipelined run with syscall_monitor: \(reason) (set PIPELINED_REQUIRE_BPF=1 to fail instead)")
        return false
    }
}

/// bench/connect/loadgen.c, compiled once per version of its source.
enum Loadgen {
    static let path: String = {
        let source = CLI.packageRoot.appendingPathComponent("bench/connect/loadgen.c").path
        let text = FileManager.default.contents(atPath: source) ?? Data()
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let binary = "/tmp/pipelined-loadgen-\(String(hash, radix: 16))"
        if FileManager.default.isExecutableFile(atPath: binary) { return binary }
        let partial = "\(binary).\(getpid())"
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = ["cc", "-O1", "-o", partial, source]
        try? compiler.run()
        compiler.waitUntilExit()
        precondition(compiler.terminationStatus == 0 && rename(partial, binary) == 0, "cannot build \(source)")
        return binary
    }()

    /// A run of `loadgen N 1 MODE RATE` (by default `seq`: N UDP connects
    /// whose ports count up), made by one worker process.
    struct Run {
        var process: Process
        /// The worker's pid: its events are the run's.
        var worker: Int32
    }

    static func start(count: Int, rate: Int, mode: String = "seq") throws -> Run {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["\(count)", "1", mode, "\(rate)"]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        // The first line names the worker; the rest is read by nobody but
        // is small (one summary line).
        var line = Data()
        while let byte = try out.fileHandleForReading.read(upToCount: 1), !byte.isEmpty, byte != Data("\n".utf8) {
            line += byte
        }
        let text = String(decoding: line, as: UTF8.self)
        guard text.hasPrefix("worker="), let worker = Int32(text.dropFirst(7)) else {
            throw LoadgenFailed(output: text)
        }
        return Run(process: process, worker: worker)
    }

    struct LoadgenFailed: Error {
        var output: String
    }
}

/// `pipelined run FILE` with its metrics endpoint on a free port.
final class RunningPipeline: @unchecked Sendable {
    // Only touched from the test's own task.
    let run: CLI.Running
    let port: Int

    init(_ file: String, arguments: [String] = []) throws {
        run = try CLI.start(["run"] + arguments + [file])
        var port: Int?
        let started = run.waitFor { _, stderr in
            port = Self.port(in: stderr)
            return port != nil && stderr.contains("pipeline started")
        }
        guard started, let port else {
            run.signal(SIGKILL)
            let result = run.finish()
            throw PipelineDidNotStart(stderr: result.stderr)
        }
        self.port = port
    }

    struct PipelineDidNotStart: Error, CustomStringConvertible {
        var stderr: String
        var description: String { "pipelined did not start:\n\(stderr)" }
    }

    static func port(in log: String) -> Int? {
        guard let range = log.range(of: "metrics endpoint listening on http://127.0.0.1:") else { return nil }
        return Int(log[range.upperBound...].prefix { $0.isNumber })
    }

    func scrape() throws -> Exposition { try Exposition(HTTP.get(port: port, path: "/metrics").body) }

    /// SIGTERM, then the end of the run.
    func finish() -> CLI.Result {
        run.signal(SIGTERM)
        return run.finish()
    }
}

/// A minimal HTTP/1.0 client for the metrics endpoint.
enum HTTP {
    struct Response {
        var status: Int
        var body: String
    }

    static func get(port: Int, path: String) throws -> Response {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        let request = Array("GET \(path) HTTP/1.0\r\n\r\n".utf8)
        _ = send(fd, request, request.count, 0)
        var data = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count <= 0 { break }
            data += chunk[0..<count]
        }
        let text = String(decoding: data, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let status = Int(parts[0].split(separator: " ").dropFirst().first ?? "") ?? 0
        return Response(status: status, body: parts.dropFirst().joined(separator: "\r\n\r\n"))
    }
}

/// The samples of one scrape, and the `# TYPE` of each family.
struct Exposition {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var samples: [Sample] = []
    var types: [String: String] = [:]

    init(_ text: String) {
        for line in text.split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let words = line.split(separator: " ")
                if words.count == 4 { types[String(words[2])] = String(words[3]) }
                continue
            }
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            var labels: [String: String] = [:]
            var name = String(series)
            if let brace = series.firstIndex(of: "{") {
                name = String(series[..<brace])
                // Our label values hold no quotes or commas.
                for pair in series[series.index(after: brace)..<series.index(before: series.endIndex)].split(separator: ",") {
                    let kv = pair.split(separator: "=", maxSplits: 1)
                    if kv.count == 2 { labels[String(kv[0])] = String(kv[1].dropFirst().dropLast()) }
                }
            }
            samples.append(Sample(name: name, labels: labels, value: value))
        }
    }

    /// The sum of the samples of `name` whose labels include `labels`; nil when there is none.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        let matching = samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }
        return matching.isEmpty ? nil : matching.reduce(0) { $0 + $1.value }
    }
}

/// The records of an NDJSON stream, as dictionaries.
func jsonLines(_ text: String) -> [[String: Any]] {
    text.split(separator: "\n").compactMap { line in
        try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
    }
}

/// Waits (a liveness bound, not a timing assertion) until `condition` holds.
func eventually(timeout: Double = 60, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(50_000)
    }
    return try condition()
}
