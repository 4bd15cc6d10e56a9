import Foundation

/// A FIFO that a test feeds connect records into while `pipelined run`
/// replays it. The run cannot reach the end of its input until the test closes
/// the FIFO, so what a test does mid-stream (a signal, a client joining) never
/// races the input running out, however slow the machine.
final class Feed: @unchecked Sendable {
    let path: String
    /// How many records went in (at most); record `n` is `line(n)`.
    private(set) var sent = 0
    /// Record `n` (`connectLine(n)` unless the test gives another).
    private let line: @Sendable (Int) -> String
    // Written only by the test's own task, or by `stream`'s thread while it runs.
    private var fd: Int32 = -1
    private var streaming: Thread?
    private let streamDone = DispatchSemaphore(value: 0)

    init(in directory: URL, name: String = "events.fifo", line: @escaping @Sendable (Int) -> String = { connectLine($0) }) throws {
        path = directory.appendingPathComponent(name).path
        self.line = line
        // A write to a FIFO whose reader is gone raises SIGPIPE; the test
        // process takes it as EPIPE instead of dying of it.
        signal(SIGPIPE, SIG_IGN)
        guard mkfifo(path, 0o600) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno)!) }
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// Opens the write end once `run` has opened the read end; false if it
    /// did not within a minute.
    func connect() -> Bool {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            // Without a reader, a non-blocking open fails with ENXIO: retry.
            let opened = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK)
            if opened >= 0 {
                _ = fcntl(opened, F_SETFL, fcntl(opened, F_GETFL) & ~O_NONBLOCK)
                fd = opened
                return true
            }
            usleep(10_000)
        }
        return false
    }

    /// Sends the next `count` records, waiting while the FIFO is full; false
    /// once the reader has gone (EPIPE).
    @discardableResult
    func send(_ count: Int) -> Bool {
        let text = (sent..<(sent + count)).map { line($0) + "\n" }.joined()
        let written = text.utf8CString.withUnsafeBytes { raw in
            writeAll(raw.baseAddress!, raw.count - 1)
        }
        // Counted even when the reader went away part way: some of these
        // records may have been read, so `sent` stays an upper bound.
        sent += count
        return written
    }

    /// Sends records in chunks on a thread of its own until ``close()`` or
    /// until the reader goes away.
    func stream(chunk: Int = 500) {
        streaming = Thread { [self] in
            while !(Thread.current.isCancelled), send(chunk) {}
            streamDone.signal()
        }
        streaming!.start()
    }

    /// Ends the input: stops a stream, then closes the write end (the run
    /// sees the end of its input). Returns the number of records sent.
    @discardableResult
    func close() -> Int {
        if let streaming {
            streaming.cancel()
            streamDone.wait()
            self.streaming = nil
        }
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        return sent
    }

    private func writeAll(_ start: UnsafeRawPointer, _ count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let n = write(fd, start + offset, count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }
}
