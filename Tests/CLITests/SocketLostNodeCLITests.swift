import EventSinks
import Foundation
import PipelineCore
import Testing

#if canImport(Glibc)
import Glibc
@testable import TestSupport
#endif

/// The `lost` record a `unix_socket` client receives names the pipeline's
/// `settings.node`, like every other record the pipeline makes.
@Suite("unix_socket: a client's lost record")
final class SocketLostNodeCLITests: Sendable {
    let directory: String

    init() throws {
        // Short: a unix socket path holds at most 107 bytes.
        directory = "/tmp/pl-lnode-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    private func waitFor(_ condition: () -> Bool) -> Bool {
        let deadline = Clock.monotonicNs() + 60_000_000_000
        while !condition() {
            if Clock.monotonicNs() >= deadline { return false }
            Clock.sleep(ns: 2_000_000)
        }
        return true
    }

    /// Reads what `fd` has within `timeoutMs` into `bytes`; false at end of stream.
    private func readSome(_ fd: Int32, into bytes: inout [UInt8], timeoutMs: Int32) -> Bool {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, timeoutMs) > 0 else { return true }
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 { return errno == EINTR || errno == EAGAIN }
        if count == 0 { return false }
        bytes += buffer[0..<count]
        return true
    }

    @Test("a client that stalls past client_buffer gets a lost record with settings.node, and delivered + lost accounts for every event after it joined")
    func aClientsLostRecordCarriesTheNode() throws {
        let feed = try Feed(in: URL(fileURLWithPath: directory))
        let path = directory + "/live.sock"
        let pipeline = directory + "/p.yaml"
        try """
            settings:
              node: sock-node-7
            sources:
              recorded: {type: replay, path: "\(feed.path)"}
            sinks:
              live: {type: unix_socket, inputs: [recorded], path: "\(path)", client_buffer: 64}
            """.write(toFile: pipeline, atomically: true, encoding: .utf8)
        let run = try CLI.start(["run", pipeline])
        defer {
            if run.process.isRunning { run.signal(SIGKILL) }
        }
        #expect(feed.connect(), "the run never opened its input")
        #expect(waitFor { FileManager.default.fileExists(atPath: path) })
        let fd: Int32
        switch UnixSocketPath.connect(path) {
        case .success(let connected): fd = connected
        case .failure(let error): throw error
        }
        defer { close(fd) }

        // Joined once the first line arrives: every later batch is this client's.
        var bytes: [UInt8] = []
        let joined = waitFor {
            feed.send(10)
            _ = readSome(fd, into: &bytes, timeoutMs: 20)
            return bytes.contains(UInt8(ascii: "\n"))
        }
        try #require(joined, "the client never received a line")
        // Then it stops reading while far more than its socket and its
        // 64-event buffer hold goes by (about 16 MiB of lines).
        feed.send(40_000)
        let sent = feed.close()
        while readSome(fd, into: &bytes, timeoutMs: 60_000) {}
        let result = run.finish()
        #expect(result.status == 0, "\(result.stderr)")

        let decoder = NDJSONDecoder()
        var events: [Int] = []
        var lost: [LostRecord] = []
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let record = try Array(line).withUnsafeBytes { try decoder.decode($0) }
            switch record {
            case .event(let event): events.append(Int(event.ktimeNs) - 8_000_000_000)
            case .lost(let record): lost.append(record)
            }
        }
        let first = try #require(events.first)
        #expect(!lost.isEmpty, "the stalled client lost events")
        #expect(lost.allSatisfy { $0.site == .client })
        #expect(lost.map(\.node.name) == Array(repeating: "sock-node-7", count: lost.count), "the lost records name settings.node")
        let counted = lost.reduce(0) { $0 + $1.count }
        #expect(UInt64(events.count) + counted == UInt64(sent - first), "\(events.count) delivered + \(counted) lost, from event \(first) of \(sent)")
        #expect(events == events.sorted())
    }
}
