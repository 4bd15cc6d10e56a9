import Foundation
import PipelineCore
import Testing
@testable import TestSupport

/// One fleet test's files: a scratch directory, pipeline files for nodes
/// and aggregators, and the events a node replays.
struct FleetScratch {
    let directory: String

    init(_ label: String) throws {
        directory = try CLI.temporaryDirectory("fleet-\(label)").path
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }

    /// `count` connect records numbered `0..<count` (ktime_ns 8e9 + n), with no
    /// `node`: the replaying node gives them its own.
    func events(_ name: String, count: Int) throws -> String {
        let path = directory + "/\(name).jsonl"
        var text = ""
        text.reserveCapacity(count * 420)
        for n in 0..<count { text += connectLine(n, node: nil) + "\n" }
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        return path
    }

    /// A node: `replay` of `events` (at `rate`, if given) into a `nats` sink.
    func nodePipeline(_ node: String, events: String, urls: [String], rate: Int? = nil, sink extra: String = "") throws -> String {
        let path = directory + "/node-\(node).yaml"
        try """
            name: node-\(node)
            settings:
              node: \(node)
            sources:
              recorded:
                type: replay
                path: \(events)\(rate.map { "\n    rate: \($0)" } ?? "")
            sinks:
              fleet:
                type: nats
                inputs: [recorded]
                url: [\(urls.joined(separator: ", "))]
                close_timeout: 90s
            \(extra.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))

            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// An aggregator: a `nats` source (durable `agg`) into an archive at `archive`.
    func aggregatorPipeline(urls: [String], archive: String, source extra: String = "") throws -> String {
        let path = directory + "/aggregator.yaml"
        try """
            name: aggregator
            settings:
              node: aggregator
            sources:
              fleet:
                type: nats
                url: [\(urls.joined(separator: ", "))]
                durable: agg
            \(extra.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
            sinks:
              archive:
                type: lz4_segments
                inputs: [fleet]
                directory: \(archive)
                flush_interval: 100ms

            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }
}

/// What a run wrote, read back as records.
enum FleetRecords {
    /// The records of an archive directory, oldest segment first (`pipelined archive cat`).
    static func archive(_ directory: String) throws -> [PipelineRecord] {
        let result = try CLI.run(["archive", "cat", directory], timeout: 300)
        #expect(result.status == 0, "archive cat: \(result.stderr)")
        return try decode(result.stdout)
    }

    /// NDJSON text as records (every line must be one).
    static func decode(_ text: String) throws -> [PipelineRecord] {
        let decoder = NDJSONDecoder()
        var records: [PipelineRecord] = []
        for line in text.split(separator: "\n") {
            var line = line
            records.append(try line.withUTF8 { try decoder.decode(UnsafeRawBufferPointer($0)) })
        }
        return records
    }

    /// Event numbers (`connectLine`'s n) per node, in the order they came.
    static func numbers(_ records: [PipelineRecord]) -> [String: [Int]] {
        var byNode: [String: [Int]] = [:]
        for record in records {
            guard case .event(let event) = record else { continue }
            byNode[event.node.name, default: []].append(Int(event.ktimeNs) - 8_000_000_000)
        }
        return byNode
    }

    /// What to show of a child's stderr when it failed: the last log lines
    /// and, if it crashed, the backtrace of the thread that crashed (not
    /// the register and image dumps that end a crash report).
    static func excerpt(_ stderr: String) -> String {
        let lines = stderr.split(separator: "\n", omittingEmptySubsequences: false)
        guard let crash = lines.firstIndex(where: { $0.contains("*** Program crashed") || $0.contains("*** Signal") }) else {
            return lines.suffix(30).joined(separator: "\n")
        }
        let before = lines[..<crash].suffix(15)
        var report = Array(lines[crash...].prefix(6))
        if let thread = lines[crash...].firstIndex(where: { $0.hasSuffix("crashed:") }) {
            report += lines[thread...].prefix(30)
        }
        return (before + report).joined(separator: "\n")
    }

    /// The counts carried by `lost` records.
    static func lost(_ records: [PipelineRecord]) -> UInt64 {
        records.reduce(0) { total, record in
            if case .lost(let lost) = record { return total + lost.count }
            return total
        }
    }
}

extension FleetScratch {
    /// `LINE:COLUMN` of the value of the first `key:` in a pipeline file.
    static func valueLocation(of key: String, in path: String) throws -> String {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        for (index, line) in lines.enumerated() {
            if let range = line.range(of: "\(key): "), line[..<range.lowerBound].allSatisfy({ $0 == " " }) {
                return "\(index + 1):\(line.distance(from: line.startIndex, to: range.upperBound) + 1)"
            }
        }
        throw CocoaError(.fileReadCorruptFile)
    }

    /// `LINE:COLUMN` of the first `key:` itself in a pipeline file (where a
    /// map's first entry starts, which is where errors about the map point).
    static func keyLocation(of key: String, in path: String) throws -> String {
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        for (index, line) in lines.enumerated() {
            let indent = line.prefix { $0 == " " }.count
            if line.dropFirst(indent).hasPrefix("\(key):") { return "\(index + 1):\(indent + 1)" }
        }
        throw CocoaError(.fileReadCorruptFile)
    }
}

extension CLI.Running {
    /// SIGKILL if still running (a test that failed early), then reaps it.
    func stopIfRunning() {
        guard process.isRunning else { return }
        signal(SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM, then the result; a child still running after `timeout` is killed.
    func terminate(timeout: Double = 120) -> CLI.Result {
        signal(SIGTERM)
        return finish(timeout: timeout)
    }
}
