import Foundation
import Logging
import PipelineCore
import Testing
@testable import EventSources

/// The `replay` source reading a FIFO: it starts before any writer, takes what
/// the writer sends as it comes, ends when the writer closes, and stops at once
/// when asked while the writer is idle.
@Suite("replay source on a FIFO")
struct ReplaySourceTests {
    /// A connect record numbered by `n` (its `ktime_ns` is `n`).
    private static func line(_ n: Int) -> String {
        #"{"time":"2026-11-24T16:34:13.000000000Z","ktime_ns":\#(n),"event":"connect","event_id":42,"#
            + #""scope":"network","retval":0,"result":"ok","pid":7,"ppid":1,"host_pid":7,"host_ppid":1,"#
            + #""uid":0,"pid_ns":0,"mnt_ns":0,"origin":"host","comm":"client","#
            + #""args":{"fd":3,"addr":{"family":"AF_INET","ip":"127.0.0.1","port":80}}}"# + "\n"
    }

    /// A FIFO in a scratch directory, a replay source on it, and its run on a
    /// thread of its own, feeding a queue the test reads.
    private final class Harness: @unchecked Sendable {
        let directory: URL
        let fifo: String
        let source: ReplaySource
        let queue = SinkQueue(policy: QueuePolicy(capacityEvents: 1 << 20), metrics: StageMetrics())
        let finished = DispatchSemaphore(value: 0)
        // Written by the run thread before it signals `finished`.
        var runError: (any Error)?

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("replay-fifo-\(UUID().uuidString.prefix(8))")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            fifo = directory.appendingPathComponent("events.fifo").path
            guard mkfifo(fifo, 0o600) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno)!) }
            source = ReplaySource(ReplaySourceOptions(path: fifo))
            let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
            // No writer yet: prepare must still return.
            try source.prepare(StageContext(id: "recorded", logger: logger, metrics: StageMetrics()))
            let output = SourceOutput(routes: [.sink(id: "out", queue)], metrics: StageMetrics(), batchEvents: 64)
            Thread.detachNewThread { [self] in
                do { try source.run(output) } catch { runError = error }
                finished.signal()
            }
        }

        deinit { try? FileManager.default.removeItem(at: directory) }

        /// Opens the FIFO's write end (the reader is already open, so this
        /// does not wait).
        func openWriter() throws -> FileHandle {
            let fd = open(fifo, O_WRONLY | O_CLOEXEC | O_NONBLOCK)
            guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno)!) }
            // Writes may wait for the reader to make room.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        }

        /// The `ktime_ns` of the next `count` events, waiting up to a minute
        /// (a liveness bound, not a speed check).
        func take(_ count: Int) -> [UInt64] {
            var taken: [UInt64] = []
            let deadline = Clock.monotonicNs() + 60_000_000_000
            while taken.count < count, Clock.monotonicNs() < deadline {
                guard case .batch(let batch) = queue.pop(untilMonotonicNs: deadline) else { break }
                for case .event(let event) in batch.records { taken.append(event.ktimeNs) }
            }
            return taken
        }

        /// True once `run` has returned (within a minute).
        func runReturned() -> Bool {
            finished.wait(timeout: .now() + 60) == .success
        }
    }

    private static func send(_ range: Range<Int>, to writer: FileHandle) throws {
        try writer.write(contentsOf: Data(range.map(line).joined().utf8))
    }

    @Test func readsWhatTheWriterSendsAsItComes_andEndsWhenTheWriterCloses() throws {
        let harness = try Harness()
        let writer = try harness.openWriter()
        try Self.send(0..<100, to: writer)
        // The first part arrives while the writer is still open.
        #expect(harness.take(100) == (0..<100).map(UInt64.init))
        try Self.send(100..<150, to: writer)
        try writer.close()
        #expect(harness.runReturned())
        #expect(harness.runError == nil)
        #expect(harness.take(50) == (100..<150).map(UInt64.init))
    }

    @Test func stopEndsARunWaitingOnAnIdleWriter() throws {
        let harness = try Harness()
        let writer = try harness.openWriter()
        try Self.send(0..<10, to: writer)
        #expect(harness.take(10) == (0..<10).map(UInt64.init))
        // The writer stays open and sends nothing more: only stop() ends the run.
        harness.source.stop()
        #expect(harness.runReturned())
        #expect(harness.runError == nil)
        try writer.close()
    }

    @Test func stopEndsARunThatNeverHadAWriter() throws {
        let harness = try Harness()
        harness.source.stop()
        #expect(harness.runReturned())
        #expect(harness.runError == nil)
        #expect(harness.queue.pop(untilMonotonicNs: Clock.monotonicNs()).isEmptyOrTimedOut)
    }
}

extension SinkQueue.Pop {
    fileprivate var isEmptyOrTimedOut: Bool {
        if case .batch = self { return false }
        return true
    }
}
