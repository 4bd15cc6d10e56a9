#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Atomics
import Logging
import NIOCore
import PipelineCore

// The event-loop side of the `unix_socket` sink (``UnixSocketSink``): the
// batches it hands over, and the hub that offers each to every client,
// buffers what a client's socket has not taken yet, drops and counts for a
// client that falls behind, and says goodbye at shutdown.

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
    /// The machine the clients' `lost` records name (`settings.node`).
    private let node: NodeID
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

    init(loop: any EventLoop, options: UnixSocketSinkOptions, metrics: StageMetrics, counters: UnixSocketSink.ClientCounters, logger: Logger, node: NodeID) {
        self.loop = loop
        self.node = node
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
                metrics.addLost(delivery.earlier.events, at: .client)
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
        metrics.addLost(UInt64(delivery.events), at: .client)
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
        encoder.encode(.lost(LostRecord(timeNs: Clock.wallNs(), count: client.pendingLost, site: .client, node: node)), into: &line)
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
                metrics.addLost(earlier.events, at: .client)
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
                self.metrics.addLost(UInt64(max(0, client.waitingEvents)), at: .client)
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
