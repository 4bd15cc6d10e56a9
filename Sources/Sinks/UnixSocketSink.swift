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
/// event as NDJSON (SPEC section 6).
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
///   delivered + lost. `when_full: disconnect` closes it (metric `clientsDropped`).
/// - A client whose peer uid (SO_PEERCRED) is not in `allow_uids` is closed
///   before it is sent anything; the log names its uid and pid.
/// - ``close()`` stops accepting, lets clients take what is already buffered
///   for them (closing one that takes nothing for `close_timeout`), closes them and removes the socket file.
public final class UnixSocketSink: EventSink {
    /// The `unix_socket` stage type, for the registry.
    public static let descriptor = StageDescriptor(
        type: "unix_socket", kind: .sink,
        summary: "serve NDJSON event lines to local clients on a unix stream socket (socat, nc -U, pipelined tail)",
        options: UnixSocketSinkOptions.specs,
        make: { config in UnixSocketSinkOptions(config).map { .sink(UnixSocketSink($0)) } }
    )

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
        state.scratch.reserveCapacity(1 << 20)
        let file = try UnixSocketFile.create(path: options.path, mode: options.mode)
        if file.replacedStale {
            context.logger.notice("replaced a stale socket file no process was serving", metadata: ["path": "\(options.path)"])
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let hub = ClientHub(loop: loop, options: options, metrics: context.metrics, counters: clients, logger: context.logger)
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

/// Events dropped for every client at once, and what they count for in a
/// `lost` record.
struct Drops: Sendable {
    /// Events dropped (the stage's `lost` metric, per client).
    var events: UInt64 = 0
    /// Events plus the losses that dropped `lost` records carried.
    var weight: UInt64 = 0

    mutating func add(_ batch: EventBatch) {
        events += UInt64(batch.eventCount)
        weight += batch.lossWeight
    }
}

/// One encoded batch on its way to every client.
struct Delivery: Sendable {
    /// The NDJSON lines, shared by every client's write (no copy per client).
    var bytes: ByteBuffer
    /// `bytes` cut at line ends, in order; each is one write to a client.
    var pieces: [Piece]
    /// Lines, which is what a client buffer counts.
    var records: Int
    /// Events among them (the rest are `lost` records).
    var events: Int
    var weight: UInt64
    /// Dropped before this batch because the loop lagged.
    var earlier: Drops

    /// Consecutive whole lines of a batch.
    struct Piece: Sendable, Equatable {
        var bytes: Int
        var records: Int
        var events: Int
    }

    /// Cuts the lines `batch` was encoded into (`encoded`, a line per record,
    /// each ending in `\n`) into pieces of at most `linesPerPiece` lines.
    static func pieces(of batch: EventBatch, encoded: UnsafeRawBufferPointer, linesPerPiece: Int) -> [Piece] {
        guard let base = encoded.baseAddress, !batch.isEmpty else { return [] }
        var pieces: [Piece] = []
        pieces.reserveCapacity(batch.count / linesPerPiece + 1)
        var piece = Piece(bytes: 0, records: 0, events: 0)
        var start = 0, offset = 0
        for index in batch.records.indices {
            // Every line ends in a newline; should one not, the rest is one line.
            if let newline = memchr(base + offset, 0x0A, encoded.count - offset) {
                offset = base.distance(to: newline) + 1
            } else {
                offset = encoded.count
            }
            piece.records += 1
            if case .event = batch.records[index] { piece.events += 1 }
            if piece.records == linesPerPiece || index == batch.records.count - 1 {
                piece.bytes = offset - start
                pieces.append(piece)
                piece = Piece(bytes: 0, records: 0, events: 0)
                start = offset
            }
        }
        // Bytes past the last line (none, from the encoder) go with it.
        pieces[pieces.count - 1].bytes += encoded.count - offset
        return pieces
    }
}

/// The peer of a connected unix socket, as SO_PEERCRED reports it.
/// Laid out as the kernel's `struct ucred` (which Swift's Glibc does not export).
struct PeerCredentials: Sendable {
    var pid: Int32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
}

/// The clients of one sink and everything done to them.
///
/// `@unchecked Sendable`: every mutable property is read and written only on
/// `loop` (the sink hands work over with `loop.execute`/`flatSubmit`, and NIO
/// runs channel callbacks there); the counters it shares are atomics.
final class ClientHub: @unchecked Sendable {
    let loop: any EventLoop
    private let options: UnixSocketSinkOptions
    private let metrics: StageMetrics
    private let counters: UnixSocketSink.ClientCounters
    private let logger: Logger
    private let encoder = NDJSONEncoder()
    private let lowWater: Int
    private var clients: [Int: Client] = [:]
    private var nextID = 0
    private var shuttingDown = false
    private var reportedSmallSendBuffer = false

    /// One connected client.
    ///
    /// `@unchecked Sendable`: like the hub, touched only on `loop`.
    final class Client: @unchecked Sendable {
        let id: Int
        let channel: any Channel
        let peer: PeerCredentials
        /// Records handed to the client and not yet taken by its socket
        /// (counted by piece: a piece waits until the kernel took all of it).
        var waiting = 0
        var waitingEvents = 0
        /// Set while the client is over its buffer and its events are dropped.
        var dropping = false
        /// What the client's next `lost` record will say.
        var pendingLost: UInt64 = 0
        var closing = false
        /// At shutdown: `waiting` at the last progress check.
        var closeMark = 0
        /// Completes when everything written so far has reached the kernel.
        var lastWrite: EventLoopFuture<Void>?

        init(id: Int, channel: any Channel, peer: PeerCredentials) {
            self.id = id
            self.channel = channel
            self.peer = peer
        }
    }

    init(loop: any EventLoop, options: UnixSocketSinkOptions, metrics: StageMetrics, counters: UnixSocketSink.ClientCounters, logger: Logger) {
        self.loop = loop
        self.options = options
        self.metrics = metrics
        self.counters = counters
        self.logger = logger
        lowWater = options.clientBuffer / 2
    }

    // MARK: Admission

    /// The child channel initializer: checks the peer's uid before the client
    /// can receive anything. A failed future makes NIO close the channel.
    func admit(_ channel: any Channel) -> EventLoopFuture<Void> {
        guard !shuttingDown, let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ClientRefused())
        }
        let credentials: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(
            level: .socket, name: NIOBSDSocket.Option(rawValue: SO_PEERCRED)
        )
        return credentials.flatMapThrowing { peer in
            guard self.options.allowUIDs.contains(peer.uid) else {
                self.counters.refused.wrappingIncrement(ordering: .relaxed)
                self.logger.warning("refused a client: its uid is not in allow_uids", metadata: [
                    "uid": "\(peer.uid)", "pid": "\(peer.pid)",
                    "allow_uids": "\(self.options.allowUIDs.map(String.init).joined(separator: ","))",
                ])
                throw ClientRefused()
            }
            self.raiseSendBuffer(of: provider)
            self.nextID += 1
            let client = Client(id: self.nextID, channel: channel, peer: peer)
            try channel.pipeline.syncOperations.addHandler(ClientHandler(hub: self, client: client))
        }.flatMapErrorThrowing { error in
            if !(error is ClientRefused) {
                self.logger.warning("refused a client: cannot read its credentials: \(error)")
            }
            throw error
        }
    }

    /// Asks for a send buffer of ``UnixSocketSink/socketSendBuffer``, so that
    /// a burst goes into the kernel at once; says once if the system gave less.
    private func raiseSendBuffer(of provider: any SocketOptionProvider) {
        let size = CInt(UnixSocketSink.socketSendBuffer)
        // SO_SNDBUFFORCE needs CAP_NET_ADMIN; SO_SNDBUF stops at net.core.wmem_max.
        provider.unsafeSetSocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_SNDBUFFORCE), value: size)
            .flatMapError { _ in provider.unsafeSetSocketOption(level: .socket, name: .so_sndbuf, value: size) }
            .flatMap { () -> EventLoopFuture<CInt> in provider.unsafeGetSocketOption(level: .socket, name: .so_sndbuf) }
            .whenSuccess { granted in
                // The kernel reports twice what was asked, its own accounting.
                guard granted < 2 * size, !self.reportedSmallSendBuffer else { return }
                self.reportedSmallSendBuffer = true
                self.logger.notice("client sockets get a smaller send buffer than asked: a client then absorbs smaller bursts", metadata: [
                    "asked_bytes": "\(2 * size)", "granted_bytes": "\(granted)",
                    "hint": "run with CAP_NET_ADMIN, or raise net.core.wmem_max",
                ])
            }
    }

    /// The channel is active: from now on it receives every batch.
    fileprivate func activate(_ client: Client) {
        guard clients[client.id] == nil, !client.closing else { return }
        guard !shuttingDown else {
            client.channel.close(promise: nil)
            return
        }
        clients[client.id] = client
        counters.connected.wrappingIncrement(ordering: .relaxed)
        counters.accepted.wrappingIncrement(ordering: .relaxed)
        logger.info("client connected", metadata: ["uid": "\(client.peer.uid)", "pid": "\(client.peer.pid)"])
    }

    fileprivate func deactivate(_ client: Client) {
        guard clients.removeValue(forKey: client.id) != nil else { return }
        counters.connected.wrappingDecrement(ordering: .relaxed)
        logger.info("client disconnected", metadata: ["uid": "\(client.peer.uid)", "pid": "\(client.peer.pid)"])
    }

    // MARK: Delivery

    /// Offers one batch to every client.
    func deliver(_ delivery: Delivery) {
        for client in clients.values where !client.closing {
            if delivery.earlier.weight > 0 {
                client.pendingLost += delivery.earlier.weight
                metrics.add(metrics.lost, delivery.earlier.events)
            }
            if delivery.records > 0 {
                offer(delivery, to: client)
            } else if !client.dropping {
                // Only news of earlier drops: tell it now.
                sendLost(to: client)
            }
        }
    }

    private func offer(_ delivery: Delivery, to client: Client) {
        if client.dropping {
            if client.waiting <= lowWater {
                caughtUp(client)
            } else {
                drop(delivery, for: client)
                return
            }
        }
        // A whole batch, however large, for a client with room; none for one
        // that still has a buffer's worth waiting: it is behind.
        if client.waiting >= options.clientBuffer {
            switch options.whenFull {
            case .drop:
                client.dropping = true
                logger.debug("client buffer full: dropping its events until it catches up", metadata: [
                    "uid": "\(client.peer.uid)", "pid": "\(client.peer.pid)",
                ])
                drop(delivery, for: client)
            case .disconnect:
                disconnect(client)
            }
            return
        }
        sendLost(to: client)
        send(delivery, to: client)
    }

    private func drop(_ delivery: Delivery, for client: Client) {
        client.pendingLost += delivery.weight
        metrics.add(metrics.lost, UInt64(delivery.events))
    }

    private func caughtUp(_ client: Client) {
        client.dropping = false
        logger.info("client caught up after losing events", metadata: [
            "uid": "\(client.peer.uid)", "pid": "\(client.peer.pid)", "lost": "\(client.pendingLost)",
        ])
        sendLost(to: client)
    }

    private func disconnect(_ client: Client) {
        client.closing = true
        counters.disconnected.wrappingIncrement(ordering: .relaxed)
        metrics.add(metrics.clientsDropped, 1)
        logger.warning("disconnecting a client: its buffer is full (when_full: disconnect)", metadata: [
            "uid": "\(client.peer.uid)", "pid": "\(client.peer.pid)", "client_buffer": "\(options.clientBuffer)",
        ])
        client.channel.close(promise: nil)
    }

    /// Writes a batch piece by piece: the socket takes at once what its
    /// buffer holds, NIO keeps the rest until the client reads.
    private func send(_ delivery: Delivery, to client: Client) {
        var offset = delivery.bytes.readerIndex
        for piece in delivery.pieces {
            guard let bytes = delivery.bytes.getSlice(at: offset, length: piece.bytes) else { break }
            offset += piece.bytes
            write(bytes, records: piece.records, events: piece.events, to: client)
        }
        client.channel.flush()
    }

    private func write(_ bytes: ByteBuffer, records: Int, events: Int, to client: Client) {
        client.waiting += records
        client.waitingEvents += events
        let size = UInt64(bytes.readableBytes)
        let promise = loop.makePromise(of: Void.self)
        client.lastWrite = promise.futureResult
        promise.futureResult.whenComplete { result in
            client.waiting -= records
            client.waitingEvents -= events
            if case .success = result {
                self.metrics.add(self.metrics.recordsOut, UInt64(events))
                self.metrics.add(self.metrics.bytes, size)
            }
            if client.dropping, !client.closing, client.waiting <= self.lowWater {
                self.caughtUp(client)
            }
        }
        client.channel.write(bytes, promise: promise)
    }

    /// Writes the client's pending `lost` record, if it has one.
    private func sendLost(to client: Client) {
        guard client.pendingLost > 0 else { return }
        var line: [UInt8] = []
        encoder.encode(.lost(LostRecord(timeNs: Clock.wallNs(), count: client.pendingLost, site: .client)), into: &line)
        client.pendingLost = 0
        write(ByteBuffer(bytes: line), records: 1, events: 0, to: client)
        client.channel.flush()
    }

    // MARK: Shutdown

    /// Tells every client its losses and lets it take what is buffered for
    /// it; a client that takes nothing for `timeoutNs` is closed at once.
    /// Completes when all are closed.
    func shutdown(earlier: Drops, timeoutNs: Int64) -> EventLoopFuture<Void> {
        shuttingDown = true
        let open = Array(clients.values)
        for client in open where !client.closing {
            if earlier.weight > 0 {
                client.pendingLost += earlier.weight
                metrics.add(metrics.lost, earlier.events)
            }
            client.dropping = false
            sendLost(to: client)
            client.closing = true
            let channel = client.channel
            (client.lastWrite ?? loop.makeSucceededFuture(())).whenComplete { _ in channel.close(promise: nil) }
        }
        // A client that keeps reading may take as long as it needs; one that
        // takes nothing for `timeoutNs` is closed (checked every `timeoutNs`).
        for client in open { client.closeMark = client.waiting }
        let deadline = loop.scheduleRepeatedTask(initialDelay: .nanoseconds(timeoutNs), delay: .nanoseconds(max(timeoutNs, 1_000_000))) { _ in
            for client in self.clients.values where client.channel.isActive {
                if client.waiting < client.closeMark {
                    client.closeMark = client.waiting
                    continue
                }
                // Whatever it has not taken by now is lost to it.
                self.metrics.add(self.metrics.lost, UInt64(max(0, client.waitingEvents)))
                self.logger.warning("closing a client that took none of its buffered events in time", metadata: [
                    "uid": "\(client.peer.uid)", "pid": "\(client.peer.pid)", "events": "\(client.waitingEvents)",
                ])
                client.channel.close(promise: nil)
            }
        }
        return EventLoopFuture.andAllComplete(open.map { $0.channel.closeFuture }, on: loop).always { _ in
            deadline.cancel()
        }
    }
}

/// The error that makes NIO close a refused client.
struct ClientRefused: Error {}

/// Sits in each client's pipeline: tracks when it becomes active and
/// inactive, discards what it sends, closes it on error.
private final class ClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let hub: ClientHub
    private let client: ClientHub.Client

    init(hub: ClientHub, client: ClientHub.Client) {
        self.hub = hub
        self.client = client
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { hub.activate(client) }
    }

    func channelActive(context: ChannelHandlerContext) {
        hub.activate(client)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        hub.deactivate(client)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Clients only listen; whatever they send is ignored.
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
