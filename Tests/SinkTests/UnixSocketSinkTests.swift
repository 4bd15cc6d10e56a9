import Atomics
@testable import EventSinks
import Foundation
import Logging
import PipelineCore
import PipelineTesting
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A real client of a unix socket: connects at once, and reads on a thread of
/// its own (started now, or later for a client that stalls first), keeping a
/// tally of the event lines and `lost` records it received.
private final class SocketClient: @unchecked Sendable {
    // `@unchecked Sendable`: `fd` never changes; everything else is guarded by `lock`.
    let fd: Int32
    private let lock = ConditionLock()
    private var data: [UInt8] = []
    private var partial: [UInt8] = []
    private var tally = Tally()
    private var ended = false
    private let keepBytes: Bool

    struct Tally: Equatable {
        var events = 0
        var lost: UInt64 = 0
        var lostRecords = 0
        /// Every lost record said `"where":"client"`.
        var lostSitesOK = true
        /// Event times (the `time` strings sort chronologically) never went back.
        var inOrder = true
        var lastTime = ""
    }

    init(path: String, keepBytes: Bool = false) throws {
        switch UnixSocketPath.connect(path) {
        case .success(let fd): self.fd = fd
        case .failure(let error): throw error
        }
        self.keepBytes = keepBytes
    }

    deinit { close(fd) }

    /// Starts reading until end of stream.
    func startReading() {
        _ = RuntimeThread(name: "test-client") { [self] in
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count < 0, errno == EINTR { continue }
                if count <= 0 { break }
                lock.withLock { take(buffer[0..<count]) }
                lock.broadcast()
            }
            lock.withLock { ended = true }
            lock.broadcast()
        }
    }

    private func take(_ chunk: ArraySlice<UInt8>) {
        if keepBytes { data += chunk }
        partial += chunk
        var start = partial.startIndex
        while let newline = partial[start...].firstIndex(of: UInt8(ascii: "\n")) {
            let line = String(decoding: partial[start..<newline], as: UTF8.self)
            if line.contains("\"event\":\"lost\"") {
                tally.lostRecords += 1
                tally.lost += UInt64(Self.field("count", in: line) ?? "") ?? 0
                if !line.contains("\"where\":\"client\"") { tally.lostSitesOK = false }
            } else {
                tally.events += 1
                let time = Self.field("time", in: line) ?? ""
                if time < tally.lastTime { tally.inOrder = false }
                tally.lastTime = time
            }
            start = newline + 1
        }
        partial.removeSubrange(..<start)
    }

    /// The raw value of `"key":` in a line: a number, or a string without quotes.
    static func field(_ key: String, in line: String) -> String? {
        guard let range = line.range(of: "\"\(key)\":") else { return nil }
        var value = line[range.upperBound...]
        if value.hasPrefix("\"") {
            value = value.dropFirst()
            return String(value.prefix { $0 != "\"" })
        }
        return String(value.prefix { $0.isNumber || $0 == "-" })
    }

    /// Waits (generously) until `condition` holds; false if it never did.
    @discardableResult
    func wait(seconds: Int64 = 60, until condition: (Tally, Bool) -> Bool) -> Bool {
        let deadline = Clock.monotonicNs() + seconds * 1_000_000_000
        return lock.withLock {
            while !condition(tally, ended) {
                if Clock.monotonicNs() >= deadline { return false }
                lock.wait(untilMonotonicNs: min(deadline, Clock.monotonicNs() + 100_000_000))
            }
            return true
        }
    }

    /// Waits for end of stream.
    @discardableResult
    func waitForEnd(seconds: Int64 = 60) -> Bool { wait(seconds: seconds) { $1 } }

    var counts: Tally { lock.withLock { tally } }
    var bytes: [UInt8] { lock.withLock { data } }
    var isEnded: Bool { lock.withLock { ended } }
}

/// nil when equal, else where two byte streams part (a short text instead of
/// a diff of megabytes).
private func difference(_ actual: [UInt8], _ expected: [UInt8]) -> String? {
    if actual == expected { return nil }
    let common = zip(actual, expected).prefix { $0 == $1 }.count
    let context = { (bytes: [UInt8]) in String(decoding: bytes[common..<min(bytes.count, common + 80)], as: UTF8.self) }
    return "\(actual.count) bytes, expected \(expected.count); they part at byte \(common): '\(context(actual))' vs '\(context(expected))'"
}

/// Waits, polling, until `condition` holds or a generous deadline passes.
@discardableResult
private func eventually(seconds: Int64 = 60, _ condition: () -> Bool) -> Bool {
    let deadline = Clock.monotonicNs() + seconds * 1_000_000_000
    while !condition() {
        if Clock.monotonicNs() >= deadline { return false }
        Clock.sleep(ns: 2_000_000)
    }
    return true
}

/// A source that waits for ``release()`` (so that clients can connect first),
/// pushes its records, then runs until stopped like a live source.
private final class GatedSource: EventSource {
    private let records: [PipelineRecord]
    private let gate = ConditionLock()
    private nonisolated(unsafe) var open = false  // guarded by `gate`
    private let stopped = ManagedAtomic<Bool>(false)

    init(_ records: [PipelineRecord]) { self.records = records }

    func prepare(_ context: StageContext) throws {}

    func run(_ output: SourceOutput) throws {
        gate.withLock { while !open, !stopped.load(ordering: .relaxed) { gate.wait(untilMonotonicNs: Clock.monotonicNs() + 10_000_000) } }
        var index = 0
        while index < records.count, !stopped.load(ordering: .relaxed) {
            let end = min(records.count, index + 500)
            output.emit(EventBatch(Array(records[index..<end])))
            index = end
        }
        while !stopped.load(ordering: .relaxed) { Clock.sleep(ns: 1_000_000) }
    }

    func release() {
        gate.withLock { open = true }
        gate.broadcast()
    }

    func stop() { stopped.store(true, ordering: .relaxed) }
}

/// A client tool (socat, nc) run as a child process: its stdin stays open
/// and silent, its stdout is collected as it arrives.
private final class ToolProcess: @unchecked Sendable {
    // `@unchecked Sendable`: `collected` and `ended` are guarded by `lock`.
    let arguments: [String]
    let process = Process()
    private let stdin = Pipe()
    private let lock = ConditionLock()
    private var collected: [UInt8] = []
    private var ended = false

    init(_ arguments: [String]) throws {
        self.arguments = arguments
        process.executableURL = URL(fileURLWithPath: arguments[0])
        process.arguments = Array(arguments.dropFirst())
        let stdout = Pipe()
        process.standardOutput = stdout
        process.standardInput = stdin
        process.standardError = FileHandle.nullDevice
        try process.run()
        let handle = stdout.fileHandleForReading
        _ = RuntimeThread(name: "tool-output") { [self] in
            var buffer = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let count = buffer.withUnsafeMutableBytes { read(handle.fileDescriptor, $0.baseAddress, $0.count) }
                if count < 0, errno == EINTR { continue }
                if count <= 0 { break }
                lock.withLock { collected += buffer[0..<count] }
                lock.broadcast()
            }
            lock.withLock { ended = true }
            lock.broadcast()
        }
    }

    func waitForOutput(bytes count: Int) -> Bool {
        let deadline = Clock.monotonicNs() + 60_000_000_000
        return lock.withLock {
            while collected.count < count {
                if Clock.monotonicNs() >= deadline { return false }
                lock.wait(untilMonotonicNs: min(deadline, Clock.monotonicNs() + 100_000_000))
            }
            return true
        }
    }

    /// Waits for the tool to exit and its output to end; its exit status.
    func finish() -> Int32 {
        process.waitUntilExit()
        let deadline = Clock.monotonicNs() + 60_000_000_000
        lock.withLock { while !ended, Clock.monotonicNs() < deadline { lock.wait(untilMonotonicNs: Clock.monotonicNs() + 100_000_000) } }
        return process.terminationStatus
    }

    var output: [UInt8] { lock.withLock { collected } }
}

@Suite("unix_socket sink")
final class UnixSocketSinkTests: Sendable {
    let directory: String

    init() throws {
        // Short (sun_path holds 107 bytes) and reachable by other uids (0755).
        directory = "/tmp/pl-sock-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    private func context(_ log: CapturedLog? = nil, metrics: StageMetrics = StageMetrics()) -> StageContext {
        StageContext(id: "live", logger: log?.logger ?? Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }), metrics: metrics)
    }

    private func events(_ count: Int, from start: Int = 0) -> [PipelineRecord] {
        (start..<start + count).map { .event(StageHarness.event("connect", retval: -111, timeNs: 1_795_000_000_000_000_000 + Int64($0))) }
    }

    private func encoded(_ records: [PipelineRecord]) -> [UInt8] {
        var bytes: [UInt8] = []
        NDJSONEncoder().encode(EventBatch(records), into: &bytes)
        return bytes
    }

    private func write(_ records: [PipelineRecord], to sink: UnixSocketSink, batch: Int = 500) throws {
        var index = 0
        while index < records.count {
            let end = min(records.count, index + batch)
            try sink.write(EventBatch(Array(records[index..<end])))
            index = end
        }
    }

    private func fileType(_ path: String) -> (exists: Bool, socket: Bool, mode: UInt32) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return (false, false, 0) }
        return (true, info.st_mode & S_IFMT == S_IFSOCK, UInt32(info.st_mode & 0o7777))
    }

    /// A socket file left behind by a process that is gone: bound, then closed.
    private func makeStaleSocket(_ path: String) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8))
        }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(fd)
        try #require(result == 0)
    }

    /// Whether a socket of this process gets the send buffer the sink asks
    /// for its clients (what lets a burst go into the kernel at once).
    private func sendBufferIsGranted() -> Bool {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0 else { return false }
        defer { pair.forEach { close($0) } }
        var size = Int32(UnixSocketSink.socketSendBuffer)
        let length = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(pair[0], SOL_SOCKET, SO_SNDBUFFORCE, &size, length) != 0 {
            _ = setsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &size, length)
        }
        var granted: Int32 = 0
        var grantedLength = length
        guard getsockopt(pair[0], SOL_SOCKET, SO_SNDBUF, &granted, &grantedLength) == 0 else { return false }
        return granted >= 2 * size
    }

    // MARK: The socket file

    @Test(arguments: ["0600", "0660", "0666", "0640"])
    func socketFileHasTheConfiguredMode(mode: String) throws {
        let path = directory + "/m.sock"
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, mode: try #require(UnixSocketSinkOptions.parseMode(mode))))
        try sink.open(context())
        let file = fileType(path)
        #expect(file.socket)
        #expect(file.mode == UInt32(mode, radix: 8))
        // The private directory it was bound in is gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["m.sock"])
        try sink.close()
    }

    @Test func theSocketFileIsRemovedOnClose() throws {
        let path = directory + "/r.sock"
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path))
        try sink.open(context())
        #expect(fileType(path).socket)
        try sink.close()
        #expect(!fileType(path).exists)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
    }

    @Test func aStaleSocketFileIsReplaced() throws {
        let path = directory + "/stale.sock"
        try makeStaleSocket(path)
        #expect(fileType(path).socket)
        let log = CapturedLog()
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path))
        try sink.open(context(log))
        #expect(log.all.contains { $0.contains("stale") })
        let client = try SocketClient(path: path, keepBytes: true)
        client.startReading()
        #expect(eventually { sink.clients.connected.load(ordering: .relaxed) == 1 })
        let input = events(10)
        try write(input, to: sink)
        try sink.close()
        #expect(client.waitForEnd())
        #expect(difference(client.bytes, encoded(input)) == nil)
    }

    @Test func aLiveSocketIsRefused_andKeepsServing() throws {
        let path = directory + "/live.sock"
        let first = UnixSocketSink(UnixSocketSinkOptions(path: path))
        try first.open(context())
        let second = UnixSocketSink(UnixSocketSinkOptions(path: path))
        let error = #expect(throws: UnixSocketError.self) { try second.open(context()) }
        #expect(error?.description.contains("in use") == true)
        #expect(error?.description.contains(path) == true)
        // The first sink still serves on its file. It admitted the second
        // sink's probe too (a connection that closes at once but still counts
        // as connected until the next write), so wait for both admissions.
        let client = try SocketClient(path: path, keepBytes: true)
        client.startReading()
        #expect(eventually { first.clients.accepted.load(ordering: .relaxed) == 2 })
        try write(events(3), to: first)
        try first.close()
        #expect(client.waitForEnd())
        #expect(difference(client.bytes, encoded(events(3))) == nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
    }

    @Test func aFileThatIsNotASocketIsAnError_andIsLeftAlone() throws {
        let path = directory + "/plain"
        try Data("keep me\n".utf8).write(to: URL(fileURLWithPath: path))
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path))
        let error = #expect(throws: UnixSocketError.self) { try sink.open(context()) }
        #expect(error?.description.contains("is not a socket") == true)
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data("keep me\n".utf8))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["plain"])
    }

    @Test func aMissingDirectoryIsAnError() {
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: directory + "/no/such/dir/s.sock"))
        let error = #expect(throws: UnixSocketError.self) { try sink.open(context()) }
        #expect(error?.description.contains("No such file or directory") == true)
    }

    // MARK: Clients

    /// 100k events through the runtime: a reading client, a client that
    /// stalls and then catches up, and one that never reads, beside a file sink.
    @Test func aStalledClientNeverSlowsThePipelineOrTheOthers() throws {
        let total = 100_000
        let input = events(total)
        let socketPath = directory + "/busy.sock"
        let filePath = directory + "/events.jsonl"
        let socketSink = UnixSocketSink(UnixSocketSinkOptions(path: socketPath, clientBuffer: 2048, closeTimeoutNs: 200_000_000))
        let fileSink = FileSink(FileSinkOptions(path: filePath))
        let source = GatedSource(input)
        let plan = StageHarness.plan(
            sources: [("src", source)],
            sinks: [("live", socketSink, QueuePolicy()), ("file", fileSink, QueuePolicy())]
        )
        let runtime = PipelineRuntime(plan: plan, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        try runtime.start()

        let reader = try SocketClient(path: socketPath)
        let stalled = try SocketClient(path: socketPath)
        let neverReads = try SocketClient(path: socketPath)
        reader.startReading()
        try #require(eventually { socketSink.clients.connected.load(ordering: .relaxed) == 3 })
        source.release()

        // The file sink gets everything while two clients do not read.
        let liveMetrics = try #require(runtime.metrics["live"])
        #expect(eventually { runtime.metrics["file"]?.recordsIn.load(ordering: .relaxed) == UInt64(total) })
        #expect(eventually { liveMetrics.recordsIn.load(ordering: .relaxed) == UInt64(total) })
        // The reader accounts for every event.
        #expect(reader.wait { tally, _ in UInt64(tally.events) + tally.lost == UInt64(total) })
        // Drops were counted for the stalled clients.
        #expect(liveMetrics.lostTotal > 0)

        // The stalled client catches up and is told what it lost.
        stalled.startReading()
        #expect(stalled.wait { tally, _ in UInt64(tally.events) + tally.lost == UInt64(total) })

        runtime.stop()
        let summary = runtime.wait()
        #expect(summary.succeeded)
        #expect(reader.waitForEnd())
        #expect(stalled.waitForEnd())

        let readerTally = reader.counts, stalledTally = stalled.counts
        #expect(UInt64(readerTally.events) + readerTally.lost == UInt64(total))
        #expect(UInt64(stalledTally.events) + stalledTally.lost == UInt64(total))
        #expect(stalledTally.lost > 0)
        #expect(stalledTally.lostRecords >= 1)
        #expect(readerTally.inOrder && stalledTally.inOrder)
        #expect(readerTally.lostSitesOK && stalledTally.lostSitesOK)
        // Every event the sink dropped is in some client's count; the client
        // that never read accounts for the rest.
        let lost = liveMetrics.lostTotal
        #expect(lost > readerTally.lost + stalledTally.lost)

        // The one that never read: what the kernel held for it, then the end.
        neverReads.startReading()
        #expect(neverReads.waitForEnd())
        #expect(neverReads.counts.events < total)
        #expect(neverReads.counts.inOrder)

        let file = try Data(contentsOf: URL(fileURLWithPath: filePath))
        #expect(difference(Array(file), encoded(input)) == nil)
        #expect(!fileType(socketPath).exists)
    }

    /// Batches four times `client_buffer`, handed over two at a time while the
    /// event loop is held (as when its thread is not scheduled while the sink
    /// hands it work): a reader that keeps up between bursts gets every event,
    /// and a client that never reads loses whole batches, counted exactly.
    @Test func aReaderThatKeepsUpGetsEveryEventOfBurstsLargerThanItsBuffer() throws {
        guard sendBufferIsGranted() else {
            print("skipped: a client socket here cannot get the sink's send buffer (needs CAP_NET_ADMIN or net.core.wmem_max >= \(UnixSocketSink.socketSendBuffer))")
            return
        }
        let path = directory + "/burst.sock"
        let metrics = StageMetrics()
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, clientBuffer: 1024, closeTimeoutNs: 200_000_000))
        try sink.open(context(metrics: metrics))
        let reader = try SocketClient(path: path)
        let stalled = try SocketClient(path: path)
        reader.startReading()
        try #require(eventually { sink.clients.connected.load(ordering: .relaxed) == 2 })
        let loop = try #require(sink.eventLoop)
        let batch = 4096, total = 8 * batch
        let input = events(total)
        for pair in stride(from: 0, to: total, by: 2 * batch) {
            // The reader has taken everything so far: it keeps up on average.
            #expect(reader.wait { tally, _ in UInt64(tally.events) + tally.lost == UInt64(pair) })
            let gate = ConditionLock()
            nonisolated(unsafe) var held = true
            loop.execute { gate.withLock { while held { gate.wait() } } }
            try write(Array(input[pair..<pair + 2 * batch]), to: sink, batch: batch)
            gate.withLock { held = false }
            gate.broadcast()
        }
        #expect(reader.wait { tally, _ in tally.events == total })

        // The client that never read: what its socket and buffer held, then
        // a `lost` record for the rest, once it reads.
        #expect(eventually { metrics.lostTotal > 0 })
        stalled.startReading()
        #expect(stalled.wait { tally, _ in UInt64(tally.events) + tally.lost == UInt64(total) })
        try sink.close()
        #expect(reader.waitForEnd())
        #expect(stalled.waitForEnd())

        let readerTally = reader.counts, stalledTally = stalled.counts
        #expect(readerTally.events == total)
        #expect(readerTally.lostRecords == 0)
        #expect(readerTally.inOrder && stalledTally.inOrder)
        #expect(UInt64(stalledTally.events) + stalledTally.lost == UInt64(total))
        #expect(stalledTally.lostRecords == 1)
        #expect(stalledTally.lostSitesOK)
        // Batches are admitted or dropped whole.
        #expect(stalledTally.events % batch == 0)
        #expect(stalledTally.lost > 0)
        #expect(metrics.lostTotal == stalledTally.lost)
        #expect(metrics.recordsOut.load(ordering: .relaxed) == UInt64(total + stalledTally.events))
    }

    @Test func aBatchIsCutIntoPiecesOfWholeLines() throws {
        var records = events(300)
        records[200] = .lost(LostRecord(timeNs: 1_795_000_000_000_000_000, count: 7, site: .kernel, cpu: 1))
        let batch = EventBatch(records)
        let bytes = encoded(records)
        let pieces = bytes.withUnsafeBytes { Delivery.pieces(of: batch, encoded: $0, linesPerPiece: 128) }
        #expect(pieces.map(\.records) == [128, 128, 44])
        #expect(pieces.map(\.events) == [128, 127, 44])
        #expect(pieces.map(\.bytes).reduce(0, +) == bytes.count)
        // Each piece ends where its last line does.
        var end = 0, lines = 0
        for piece in pieces {
            end += piece.bytes
            lines += piece.records
            #expect(bytes[..<end].last == UInt8(ascii: "\n"))
            #expect(bytes[..<end].filter { $0 == UInt8(ascii: "\n") }.count == lines)
        }
        #expect(bytes.withUnsafeBytes { Delivery.pieces(of: EventBatch(), encoded: $0, linesPerPiece: 128) }.isEmpty)
    }

    /// When the event loop itself lags, write() still never waits: batches
    /// are dropped for every client and each is told the exact count.
    @Test func aLaggingEventLoopNeverBlocksWrite_andDropsAreToldExactly() throws {
        let path = directory + "/lag.sock"
        let metrics = StageMetrics()
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, clientBuffer: 1_000_000), loopBacklogLimit: 10_000)
        try sink.open(context(metrics: metrics))
        let clients = try (0..<2).map { _ in try SocketClient(path: path) }
        clients.forEach { $0.startReading() }
        try #require(eventually { sink.clients.connected.load(ordering: .relaxed) == 2 })
        // Hold the event loop until every batch has been written.
        let gate = ConditionLock()
        nonisolated(unsafe) var held = true
        let loop = try #require(sink.eventLoop)
        loop.execute { gate.withLock { while held { gate.wait() } } }
        try write(events(30_000), to: sink, batch: 500)
        gate.withLock { held = false }
        gate.broadcast()
        // No batch follows: the idle call carries the news.
        try sink.idle(nowNs: Clock.wallNs())
        for client in clients {
            #expect(client.wait { tally, _ in UInt64(tally.events) + tally.lost == 30_000 })
            #expect(client.counts.events == 10_000)
            #expect(client.counts.lost == 20_000)
            #expect(client.counts.lostRecords == 1)
        }
        #expect(metrics.lostTotal == 2 * 20_000)
        try sink.close()
    }

    @Test func whenFullDisconnectClosesTheStalledClientOnly() throws {
        let path = directory + "/d.sock"
        let metrics = StageMetrics()
        let log = CapturedLog()
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, clientBuffer: 4096, whenFull: .disconnect))
        try sink.open(context(log, metrics: metrics))
        let reader = try SocketClient(path: path)
        let stalled = try SocketClient(path: path)
        reader.startReading()
        try #require(eventually { sink.clients.connected.load(ordering: .relaxed) == 2 })

        // Write at the reader's pace until the stalled client is disconnected.
        var written = 0
        while sink.clients.disconnected.load(ordering: .relaxed) == 0, written < 1_000_000 {
            try write(events(256, from: written), to: sink, batch: 256)
            written += 256
            let expected = written
            #expect(reader.wait { tally, _ in tally.events == expected })
        }
        #expect(sink.clients.disconnected.load(ordering: .relaxed) == 1)
        #expect(metrics.value(of: "clients_dropped") == 1)
        #expect(eventually { sink.clients.connected.load(ordering: .relaxed) == 1 })
        #expect(log.all.contains { $0.contains("disconnecting") && $0.contains("pid=\(getpid())") })

        // The stalled client finds the end of its stream, short of everything.
        stalled.startReading()
        #expect(stalled.waitForEnd())
        #expect(stalled.counts.events < written)
        #expect(stalled.counts.lostRecords == 0)

        // The reader goes on receiving everything.
        try write(events(1000, from: written), to: sink)
        try sink.close()
        #expect(reader.waitForEnd())
        #expect(reader.counts.events == written + 1000)
        #expect(reader.counts.lost == 0)
        #expect(metrics.lostTotal == 0)
    }

    @Test func aUidOutsideAllowUIDsIsRefused_andReceivesNothing() throws {
        guard geteuid() == 0 else {
            print("skipped: running a client as uid 65534 needs root")
            return
        }
        let path = directory + "/uid.sock"
        let log = CapturedLog()
        // World-writable, so that only the peer-credential check stands in the way.
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, mode: 0o666, allowUIDs: [0]))
        try sink.open(context(log))

        let outsider = Process()
        outsider.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        outsider.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "socat", "-u", "UNIX-CONNECT:" + path, "-"]
        let output = Pipe(), errors = Pipe()
        outsider.standardOutput = output
        outsider.standardError = errors
        outsider.standardInput = FileHandle.nullDevice
        try outsider.run()
        let insider = try SocketClient(path: path, keepBytes: true)
        insider.startReading()

        #expect(eventually { sink.clients.refused.load(ordering: .relaxed) == 1 })
        #expect(eventually { sink.clients.connected.load(ordering: .relaxed) == 1 })
        let input = events(100)
        try write(input, to: sink)
        #expect(insider.wait { tally, _ in tally.events == 100 })

        let refusedOutput = output.fileHandleForReading.readDataToEndOfFile()
        outsider.waitUntilExit()
        #expect(refusedOutput.isEmpty)
        #expect(sink.clients.accepted.load(ordering: .relaxed) == 1)
        // The log says who: uid and pid (setpriv execs socat in place).
        #expect(log.all.contains { $0.contains("refused") && $0.contains("uid=65534") && $0.contains("pid=\(outsider.processIdentifier)") })
        try sink.close()
        #expect(insider.waitForEnd())
        #expect(difference(insider.bytes, encoded(input)) == nil)
    }

    @Test func fiftyClientsAtOnceEachGetTheFullStream() throws {
        let path = directory + "/many.sock"
        // A generous close_timeout: the clients take everything before they are closed.
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, closeTimeoutNs: 120_000_000_000))
        let metrics = StageMetrics()
        try sink.open(context(metrics: metrics))
        let clients = try (0..<50).map { _ in try SocketClient(path: path, keepBytes: true) }
        clients.forEach { $0.startReading() }
        try #require(eventually { sink.clients.connected.load(ordering: .relaxed) == 50 })
        let input = events(5000)
        try write(input, to: sink)
        try sink.close()
        let expected = encoded(input)
        for client in clients {
            #expect(client.waitForEnd())
            #expect(difference(client.bytes, expected) == nil)
        }
        #expect(metrics.recordsOut.load(ordering: .relaxed) == 50 * 5000)
        #expect(metrics.bytes.load(ordering: .relaxed) == UInt64(50 * expected.count))
        #expect(metrics.lostTotal == 0)
    }

    /// A client that only shuts down its sending side is still a reader and
    /// keeps getting events; one that closes is noticed while nothing is
    /// written (no write has to fail first).
    @Test func aHalfClosedClientKeepsReading_aClosedOneIsNoticedWhileIdle() throws {
        let path = directory + "/half.sock"
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path))
        try sink.open(context())
        let connected = { sink.clients.connected.load(ordering: .relaxed) }
        let half = try SocketClient(path: path, keepBytes: true)
        half.startReading()
        try #require(eventually { connected() == 1 })
        #expect(shutdown(half.fd, Int32(SHUT_WR)) == 0)
        let input = events(100)
        try write(input, to: sink)
        #expect(half.wait { tally, _ in tally.events == 100 })
        #expect(connected() == 1)

        // Another client connects and closes; nothing is written meanwhile.
        let gone = try UnixSocketPath.connect(path).get()
        #expect(eventually { connected() == 2 })
        close(gone)
        #expect(eventually { connected() == 1 }, "a closed client stayed counted while idle")

        try sink.close()
        #expect(half.waitForEnd())
        #expect(difference(half.bytes, encoded(input)) == nil)
    }

    /// Fault injection (docs/fault-injection.md): a client that sends
    /// garbage and never reads, then a thousand that connect and go at once.
    /// Nothing crashes, every descriptor the sink opened for them is closed
    /// again, and a well-behaved client then gets every event.
    @Test func garbageAndAThousandReconnectsLeakNoDescriptor_andAGoodClientGetsEveryEvent() throws {
        let path = directory + "/fault.sock"
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path, closeTimeoutNs: 60_000_000_000))
        let metrics = StageMetrics()
        try sink.open(context(metrics: metrics))
        let connected = { sink.clients.connected.load(ordering: .relaxed) }
        let baseline = Faults.openFDs()

        // Garbage: 4 MiB of random bytes (and NULs, and no newline), as fast as the socket takes them.
        let noisy = try UnixSocketPath.connect(path).get()
        _ = fcntl(noisy, F_SETFL, fcntl(noisy, F_GETFL) | O_NONBLOCK)
        var generator = SystemRandomNumberGenerator()
        let junk = (0..<(1 << 16)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var sent = 0
        for _ in 0..<64 {
            let count = junk.withUnsafeBytes { Glibc.write(noisy, $0.baseAddress, $0.count) }
            if count > 0 { sent += count } else { Clock.sleep(ns: 1_000_000) }
        }
        #expect(sent > 0)
        #expect(eventually { connected() == 1 })
        close(noisy)
        // A thousand that connect and disconnect at once, some after a line of garbage.
        for index in 0..<1000 {
            let fd = try UnixSocketPath.connect(path).get()
            if index % 10 == 0 { _ = "GET / HTTP/1.0\r\n\u{0}\u{7f}".withCString { Glibc.write(fd, $0, 18) } }
            close(fd)
        }
        #expect(eventually { connected() == 0 }, "every client is noticed gone")
        #expect(eventually { Faults.openFDs() == baseline }, "descriptors back to the \(baseline) before: \(Faults.openFDs())")

        let good = try SocketClient(path: path, keepBytes: true)
        good.startReading()
        try #require(eventually { connected() == 1 })
        let input = events(20_000)
        try write(input, to: sink)
        try sink.close()
        #expect(good.waitForEnd())
        #expect(difference(good.bytes, encoded(input)) == nil)
        #expect(metrics.lostTotal == 0)
    }

    @Test func socatAndNetcatAreClients() throws {
        let path = directory + "/tools.sock"
        let sink = UnixSocketSink(UnixSocketSinkOptions(path: path))
        try sink.open(context())
        let tools = try [
            ["/usr/bin/socat", "-u", "UNIX-CONNECT:" + path, "-"],
            ["/usr/bin/socat", "-", "UNIX-CONNECT:" + path],
            ["/usr/bin/nc", "-U", path],
        ].map { try ToolProcess($0) }
        try #require(eventually { sink.clients.connected.load(ordering: .relaxed) == 3 })
        let input = events(2000)
        try write(input, to: sink)
        let expected = encoded(input)
        // Each tool prints the whole stream while the sink still runs.
        for tool in tools {
            #expect(tool.waitForOutput(bytes: expected.count), "\(tool.arguments)")
        }
        try sink.close()
        for tool in tools {
            #expect(tool.finish() == 0, "\(tool.arguments)")
            #expect(difference(tool.output, expected) == nil, "\(tool.arguments)")
        }
    }

    // MARK: Options

    @Test func optionsHaveTheDocumentedDefaults() throws {
        let config = StageHarness.config(.sink, "unix_socket", specs: UnixSocketSink.descriptor.options, ["path": "/run/x.sock"])
        let options = try #require(UnixSocketSinkOptions(config))
        #expect(options.mode == 0o600)
        #expect(options.allowUIDs.contains(UInt32(geteuid())))
        #expect(options.allowUIDs.contains(0))
        #expect(options.clientBuffer == 65_536)
        #expect(options.whenFull == .drop)
    }

    @Test func optionsAreRead() throws {
        let config = StageHarness.config(.sink, "unix_socket", specs: UnixSocketSink.descriptor.options, [
            "path": "/run/x.sock", "mode": "0660", "allow_uids": ["root", 1000], "client_buffer": 128, "when_full": "disconnect", "close_timeout": "500ms",
        ])
        let options = try #require(UnixSocketSinkOptions(config))
        #expect(options == UnixSocketSinkOptions(path: "/run/x.sock", mode: 0o660, allowUIDs: [0, 1000], clientBuffer: 128, whenFull: .disconnect, closeTimeoutNs: 500_000_000))
    }

    @Test func badOptionsAreReportedWithTheirKeys() {
        let config = StageHarness.config(.sink, "unix_socket", specs: UnixSocketSink.descriptor.options, [
            "path": "/" + String(repeating: "p", count: 120), "mode": "0999", "allow_uids": ["no-such-user-here", -1],
            "client_buffer": 0, "when_full": "dropp",
        ])
        #expect(UnixSocketSinkOptions(config) == nil)
        let messages = config.diagnostics.map(\.message)
        #expect(messages == [
            "sink 't': 'path' is 121 bytes long; a unix socket path holds at most 107",
            "sink 't': 'mode' must be octal permission bits such as \"0600\" or \"0660\" (at most 0777), not '0999'",
            "sink 't': 'allow_uids' items must be uids (0-4294967294) or user names, not 'no-such-user-here'",
            "sink 't': 'allow_uids' items must be uids (0-4294967294) or user names, not '-1'",
            "sink 't': 'client_buffer' must be between 1 and 16777216, not 0",
            "sink 't': 'when_full' must be one of drop, disconnect, not 'dropp' (did you mean 'drop'?)",
        ])
    }

    @Test func modesParseAsOctal() {
        #expect(UnixSocketSinkOptions.parseMode("0600") == 0o600)
        #expect(UnixSocketSinkOptions.parseMode("660") == 0o660)
        #expect(UnixSocketSinkOptions.parseMode("0o644") == 0o644)
        #expect(UnixSocketSinkOptions.parseMode("4755") == nil)
        #expect(UnixSocketSinkOptions.parseMode("rw-------") == nil)
        #expect(UnixSocketSinkOptions.parseMode("") == nil)
    }
}
