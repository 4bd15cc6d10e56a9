import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import PipelineCore

/// The HTTP endpoint of `settings.metrics.listen` (SPEC section 8), served by
/// the process itself on one NIO event-loop thread:
///
///     GET /metrics    the Prometheus text format, rendered at scrape time
///     GET /-/healthy  200 while the process runs
///     GET /-/ready    200 once every source is attached, 503 before
///
/// Anything else is 404 (405 for another method). The server binds in
/// ``start(at:exporter:logger:)``, before the pipeline starts, so a busy port
/// fails the run at once, naming the setting.
final class MetricsServer: Sendable {
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    /// Where it listens: the configured address with port 0 resolved.
    let address: ListenAddress

    private init(group: MultiThreadedEventLoopGroup, channel: any Channel, address: ListenAddress) {
        self.group = group
        self.channel = channel
        self.address = address
    }

    /// Why the endpoint could not start: the message names the setting.
    struct StartError: Error, CustomStringConvertible {
        var description: String
    }

    /// Binds `address` and serves `exporter`; throws ``StartError``, naming
    /// `setting` (what chose the address), when the address cannot be bound
    /// (in use, not local, no such host).
    static func start(at address: ListenAddress, setting: String, exporter: MetricsExporter, logger: Logger) async throws -> MetricsServer {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(exporter: exporter))
                }
            }
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: address.host, port: address.port).get()
        } catch {
            try? await group.shutdownGracefully()
            throw StartError(description: "\(setting) \(address): cannot listen: \(Self.reason(error)) (set another HOST:PORT, port 0 for a free one, or false for no endpoint)")
        }
        let port = channel.localAddress?.port ?? address.port
        let bound = ListenAddress(host: address.host, port: port)
        logger.info("metrics endpoint listening on http://\(bound)/metrics", metadata: ["listen": "\(bound)"])
        return MetricsServer(group: group, channel: channel, address: bound)
    }

    private static func reason(_ error: any Error) -> String {
        if let io = error as? IOError {
            return io.description
        }
        return "\(error)"
    }

    /// Closes the listener and stops the event loop.
    func stop() async {
        try? await channel.close()
        try? await group.shutdownGracefully()
    }
}

/// Answers one HTTP/1.1 request at a time on a connection.
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let exporter: MetricsExporter
    private var head: HTTPRequestHead?

    init(exporter: MetricsExporter) {
        self.exporter = exporter
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            head = request
        case .body:
            break
        case .end:
            guard let request = head else { return }
            head = nil
            respond(to: request, context: context)
        }
    }

    private func respond(to request: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        let status: HTTPResponseStatus
        var body: [UInt8]
        var contentType = "text/plain; charset=utf-8"
        if request.method != .GET && request.method != .HEAD {
            (status, body) = (.methodNotAllowed, Array("only GET\n".utf8))
        } else {
            switch path {
            case "/metrics":
                status = .ok
                body = exporter.render()
                contentType = "text/plain; version=0.0.4; charset=utf-8"
            case "/-/healthy":
                (status, body) = (.ok, Array("OK\n".utf8))
            case "/-/ready":
                let ready = exporter.isReady
                (status, body) = ready ? (.ok, Array("ready\n".utf8)) : (.serviceUnavailable, Array("not ready: sources are not attached yet\n".utf8))
            default:
                (status, body) = (.notFound, Array("not found; try /metrics, /-/healthy or /-/ready\n".utf8))
            }
        }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        let response = HTTPResponseHead(version: request.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(response)), promise: nil)
        if request.method != .HEAD {
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        body = []
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
