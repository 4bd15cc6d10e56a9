#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Atomics
import Logging
import NIOCore
import NIOPosix
import PipelineCore

/// The `unix_socket` sink: every client that connects receives every later
/// event as NDJSON (docs/socket.md).
///
/// ```
///  sink thread                         event loop (one thread, swift-nio)
///  write(batch) ─ encode once ─▶ bytes ──▶ for each client:
///       │        (cut in pieces)           fewer than client_buffer waiting? ── write (shared bytes):
///       │                                      the socket takes what it can, the rest waits
///       └ loop lagging? drop, count ─┐       else: drop + count, later a `lost` record
///                                    └──▶    (or disconnect, as when_full says)
/// ```
///
/// Promises:
/// - ``write(_:)`` never blocks on a client: it encodes the batch once and
///   hands the bytes to the event loop. Should the loop itself fall more than
///   `max(client_buffer, 65536)` records behind, batches are dropped for every
///   client and counted in the `lost` record they get next.
/// - A client's buffer counts the records *waiting* for it: handed to it and
///   not yet taken by its socket, whose send buffer is raised to
///   ``UnixSocketSink/socketSendBuffer`` so that a burst goes straight into
///   the kernel. Each batch is given to a client whole while fewer than
///   `client_buffer` records wait for it (so at most `client_buffer` plus one
///   batch wait), or else dropped whole for it: a reader that keeps up
///   loses nothing however large the batches, only one that falls behind does.
/// - `when_full: drop` counts what it drops (stage metric `lost`); once the
///   client's backlog is down to half its buffer it receives a `lost` record
///   (`"where":"client"`) with the count, so that it can tell
///   delivered + lost. `when_full: disconnect` closes it (metric `clients_dropped`).
/// - A client whose peer uid (SO_PEERCRED) is not in `allow_uids` is closed
///   before it is sent anything; the log names its uid and pid.
/// - ``close()`` stops accepting, lets clients take what is already buffered
///   for them (closing one that takes nothing for `close_timeout`), closes them and removes the socket file.
public final class UnixSocketSink: EventSink {
    /// The `unix_socket` stage type, for the registry.
    public static let descriptor = StageDescriptor.sink(
        type: "unix_socket", summary: "serve NDJSON event lines to local clients on a unix stream socket (socat, nc -U, pipelined tail)",
        options: UnixSocketSinkOptions.self, make: UnixSocketSink.init)

    /// The options the sink was made with.
    public let options: UnixSocketSinkOptions
    /// Client counts, readable from any thread.
    public let clients = ClientCounters()
    /// Records handed to the event loop and not yet offered to clients.
    private let loopBacklog = ManagedAtomic<Int>(0)
    private let loopBacklogLimit: Int
    private let encoder = NDJSONEncoder()
    // Touched only from the sink's own thread (the EventSink contract).
    private nonisolated(unsafe) var state = State()

    private struct State {
        var group: MultiThreadedEventLoopGroup?
        var serverChannel: (any Channel)?
        var hub: ClientHub?
        var socketFile: UnixSocketFile?
        var logger: Logger?
        var scratch: [UInt8] = []
        /// Dropped because the loop lagged; told to clients with the next batch.
        var laggedDrops = Drops()
    }

    /// A sink with these options; nothing is opened until ``open(_:)``.
    public convenience init(_ options: UnixSocketSinkOptions) {
        self.init(options, loopBacklogLimit: max(options.clientBuffer, 65_536))
    }

    /// Tests set a small `loopBacklogLimit` to reach the lagging-loop path.
    init(_ options: UnixSocketSinkOptions, loopBacklogLimit: Int) {
        self.options = options
        self.loopBacklogLimit = loopBacklogLimit
    }

    /// The sink's event loop once open (tests block it to make it lag).
    var eventLoop: (any EventLoop)? { state.hub?.loop }

    /// Live client counts of one sink.
    public final class ClientCounters: Sendable {
        /// Clients connected now (admitted and not yet closed).
        public let connected = ManagedAtomic<Int>(0)
        /// Clients admitted since open.
        public let accepted = ManagedAtomic<UInt64>(0)
        /// Clients refused because their uid is not allowed.
        public let refused = ManagedAtomic<UInt64>(0)
        /// Clients disconnected because their buffer was full.
        public let disconnected = ManagedAtomic<UInt64>(0)
    }

    /// The socket file's path.
    public var path: String { options.path }

    /// The send buffer asked for each client's socket (SO_SNDBUFFORCE where
    /// allowed, else SO_SNDBUF up to `net.core.wmem_max`); the kernel counts
    /// twice this, about 4 MiB of lines, enough for the bursts a source hands
    /// over at once (its batches, and the sink queue's backlog).
    public static let socketSendBuffer = 2 << 20

    /// Lines per write: a client's waiting count falls as the kernel takes
    /// each piece of a batch, not only once it took the whole batch.
    static let linesPerPiece = 128

    public func open(_ context: StageContext) throws {
        state.logger = context.logger
        clients.declare(in: context.metrics)
        state.scratch.reserveCapacity(1 << 20)
        let file = try UnixSocketFile.create(path: options.path, mode: options.mode)
        if file.replacedStale {
            context.logger.notice("replaced a stale socket file no process was serving", metadata: ["path": "\(options.path)"])
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let hub = ClientHub(loop: loop, options: options, metrics: context.metrics, counters: clients, logger: context.logger, node: context.node)
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in hub.admit(channel) }
        do {
            state.serverChannel = try bootstrap.withBoundSocket(file.fd).wait()
        } catch {
            // The descriptor is not closed here: NIO may already own (and
            // have closed) it, and a second close could hit a reused number.
            file.remove()
            try? group.syncShutdownGracefully()
            throw UnixSocketError("cannot serve on '\(options.path)': \(error)")
        }
        state.group = group
        state.hub = hub
        state.socketFile = file
        context.logger.info("serving events", metadata: [
            "path": "\(options.path)", "mode": "0\(String(options.mode, radix: 8))",
            "allow_uids": "\(options.allowUIDs.map(String.init).joined(separator: ","))",
        ])
    }

    public func write(_ batch: EventBatch) throws {
        guard let hub = state.hub, !batch.isEmpty else { return }
        if clients.connected.load(ordering: .relaxed) == 0 {
            // Nobody to tell: a client that connects now gets later events only.
            state.laggedDrops = Drops()
            return
        }
        let records = batch.count
        if loopBacklog.load(ordering: .relaxed) + records > loopBacklogLimit {
            state.laggedDrops.add(batch)
            return
        }
        state.scratch.removeAll(keepingCapacity: true)
        encoder.encode(batch, into: &state.scratch)
        let pieces = state.scratch.withUnsafeBytes { Delivery.pieces(of: batch, encoded: $0, linesPerPiece: Self.linesPerPiece) }
        let delivery = Delivery(
            bytes: ByteBuffer(bytes: state.scratch), pieces: pieces, records: records, events: batch.eventCount,
            weight: batch.lossWeight, earlier: state.laggedDrops
        )
        state.laggedDrops = Drops()
        loopBacklog.wrappingIncrement(by: records, ordering: .relaxed)
        let backlog = loopBacklog
        hub.loop.execute {
            hub.deliver(delivery)
            backlog.wrappingDecrement(by: records, ordering: .relaxed)
        }
    }

    /// Tells clients about batches dropped while the loop lagged, when no new
    /// batch would carry the news.
    public func idle(nowNs: Int64) throws {
        guard let hub = state.hub, state.laggedDrops.weight > 0 else { return }
        let delivery = Delivery(bytes: ByteBuffer(), pieces: [], records: 0, events: 0, weight: 0, earlier: state.laggedDrops)
        state.laggedDrops = Drops()
        hub.loop.execute { hub.deliver(delivery) }
    }

    public func close() throws {
        guard let group = state.group, let hub = state.hub else { return }
        defer {
            state.group = nil
            state.hub = nil
            state.serverChannel = nil
            state.socketFile = nil
        }
        // Stop accepting first, so that no client arrives during the goodbyes.
        try? state.serverChannel?.close().wait()
        state.socketFile?.remove()
        let earlier = state.laggedDrops
        state.laggedDrops = Drops()
        let timeout = options.closeTimeoutNs
        do {
            try hub.loop.flatSubmit { hub.shutdown(earlier: earlier, timeoutNs: timeout) }.wait()
        } catch {
            state.logger?.warning("closing clients failed: \(error)")
        }
        do {
            try group.syncShutdownGracefully()
        } catch {
            throw UnixSocketError("cannot stop the event loop of '\(options.path)': \(error)")
        }
    }
}
