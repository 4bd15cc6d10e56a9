#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CNATS
import Logging
import PipelineCore
import Synchronization

/// A failure of the NATS C client: its status and its explanation.
public struct NATSError: Error, CustomStringConvertible, Sendable {
    public var status: natsStatus
    /// The JetStream error code the server gave, 0 when none.
    public var code: Int
    public var message: String

    public init(status: natsStatus, code: Int = 0, message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// What the client says about `status` right now, on this thread:
    /// `nats_GetLastError` carries the detail (`No server available for connection`).
    public init(_ status: natsStatus, code: jsErrCode = jsErrCode(rawValue: 0), _ what: String) {
        self.init(status: status, code: Int(code.rawValue), message: "\(what): \(NATSError.lastDetail(status))")
    }

    /// The client's explanation of `status` on this thread, without the
    /// source location it starts with (`(conn.c:733): `), which tells an
    /// operator nothing.
    static func lastDetail(_ status: natsStatus) -> String {
        var detail = String(cString: natsStatus_GetText(status))
        if let last = nats_GetLastError(nil) {
            var text = Substring(String(cString: last))
            if text.hasPrefix("("), let end = text.range(of: "): "), text[..<end.lowerBound].contains(".c:") {
                text = text[end.upperBound...]
            }
            if !text.isEmpty, text != detail { detail = String(text) }
        }
        return detail
    }

    public var description: String { message }
}

/// Throws a ``NATSError`` for any status but `NATS_OK`.
@inline(__always)
public func natsCheck(_ status: natsStatus, code: jsErrCode = jsErrCode(rawValue: 0), _ what: @autoclosure () -> String) throws {
    if status != NATS_OK { throw NATSError(status, code: code, what()) }
}

/// One connection to a NATS server (or cluster) through the C client, with
/// JetStream on it.
///
/// It never gives up: a server that cannot be reached at start, or that goes
/// away later, is retried every ``reconnectWaitMs`` for as long as the
/// connection lives (the client's `RetryOnFailedConnect`, unlimited
/// reconnects), with one exception the C client makes: credentials refused
/// twice in a row end it (``Event/gaveUp(reason:)``). ``Event``s say when
/// it connects and disconnects; they are delivered on the C client's own
/// callback thread.
public final class NATSConnection: @unchecked Sendable {
    // `handle` and `firstFailure` are set once in `connect` and only read
    // after; the C client is thread-safe. That is why this is
    // @unchecked Sendable.
    /// The C client's `natsConnection*`.
    public let handle: OpaquePointer
    public let endpoint: NATSEndpoint

    /// How long the client waits between connection attempts.
    public static let reconnectWaitMs: Int64 = 500

    /// After the client gave up on a connection (``Event/gaveUp(reason:)``),
    /// a stage makes a new one at once; while the server refuses those, it
    /// waits 1 s, 2 s, 4 s ... (at most a minute) between them. The wait
    /// after one refused following a wait of `previous` ns (0 at first).
    public static func renewalWaitNs(after previous: Int64) -> Int64 {
        min(max(previous * 2, 1_000_000_000), 60_000_000_000)
    }

    /// After how long without a connection the reason is first looked for
    /// (and reported), and the longest wait between two reports.
    static let firstReportNs: Int64 = 20_000_000_000
    static let mostReportNs: Int64 = 600_000_000_000

    /// The options of one connection attempt: servers, name, timeout,
    /// credentials and TLS; no callbacks, no retries.
    static func attemptOptions(_ endpoint: NATSEndpoint, name: String) throws -> OpaquePointer {
        var options: OpaquePointer?
        try natsCheck(natsOptions_Create(&options), "cannot create NATS options")
        do {
            let servers = endpoint.urls.map { strdup($0) }
            defer { servers.forEach { free($0) } }
            var pointers = servers.map { UnsafePointer<CChar>($0) }
            try natsCheck(natsOptions_SetServers(options, &pointers, Int32(pointers.count)), "bad server list \(endpoint.urlList)")
            try natsCheck(natsOptions_SetNoRandomize(options, true), "cannot set server order")
            try natsCheck(natsOptions_SetName(options, name), "cannot set the connection name")
            try natsCheck(natsOptions_SetTimeout(options, 2_000), "cannot set the connect timeout")
            if let credentials = endpoint.credentials {
                try natsCheck(natsOptions_SetUserCredentialsFromFiles(options, credentials, nil), "cannot use credentials '\(credentials)'")
            }
            if let tls = endpoint.tls {
                try natsCheck(natsOptions_SetSecure(options, true), "cannot enable TLS")
                if let ca = tls.ca {
                    try natsCheck(natsOptions_LoadCATrustedCertificates(options, ca), "cannot load the TLS roots '\(ca)'")
                }
                if let cert = tls.cert, let key = tls.key {
                    try natsCheck(natsOptions_LoadCertificatesChain(options, cert, key), "cannot load the TLS certificate '\(cert)' and key '\(key)'")
                }
            }
        } catch {
            natsOptions_Destroy(options)
            throw error
        }
        return options!
    }

    /// What happens to the connection, as the C client reports it.
    public enum Event: Sendable, Equatable {
        /// Connected for the first time (after a failed first attempt), to `url`.
        case connected(url: String?)
        case disconnected
        /// Connected again, to `url`.
        case reconnected(url: String?)
        /// Closed for good: by ``close()``, or by the client when it gives up
        /// (after ``gaveUp(reason:)``).
        case closed
        /// The client stopped reconnecting and closes the connection: libnats
        /// 3.4.1 does so after a server refused the same credentials twice in
        /// a row. The connection cannot be used again; a stage that must go
        /// on makes a new one (``connect(_:name:onEvent:)``).
        case gaveUp(reason: String)
        /// An asynchronous error (a permission violation, a slow consumer).
        case error(String)
    }

    /// Holds the event handler for the C callbacks. Its reference is taken
    /// when the connection is made and never given back: nothing in the
    /// client promises that no callback follows `closed`, and a box freed
    /// under a late one would be a use after free. One small object per
    /// connection a stage opens; handlers hold their stage weakly.
    final class CallbackBox: @unchecked Sendable {
        // `handler` is set once before the connection exists and only read
        // by callbacks; `closing` is atomic.
        let handler: @Sendable (Event) -> Void
        /// Set by ``close()``: a `closed` after it is ours, not the client giving up.
        let closing = Atomic<Bool>(false)
        /// Set when the connection is closed for good (by us or by the client).
        let ended = Atomic<Bool>(false)
        /// Whether a server is connected, as the callbacks last said.
        let connected = Atomic<Bool>(false)
        /// Whether a ``watchReconnecting()`` thread runs.
        let watching = Atomic<Bool>(false)
        /// What a fresh attempt is made with when reconnecting takes long
        /// (never freed, like the box, unless no connection was made).
        let probe: OpaquePointer
        let endpoint: NATSEndpoint
        init(_ handler: @escaping @Sendable (Event) -> Void, endpoint: NATSEndpoint, probe: OpaquePointer) {
            self.handler = handler
            self.endpoint = endpoint
            self.probe = probe
        }

        /// The client retries in silence: it keeps no reason for a failed
        /// reconnect (libnats 3.4.1 clears it), so a server that now refuses
        /// us (another certificate, a revoked user) would look like one that
        /// is away. While disconnected, after ``firstReportNs`` and then
        /// twice as long each time, a connection of the same options is
        /// tried once on the side and its failure reported as an `error`.
        func watchReconnecting() {
            guard !watching.exchange(true, ordering: .acquiringAndReleasing) else { return }
            _ = RuntimeThread(name: "nats-reconnect-watch") { [self] in
                let since = Clock.monotonicNs()
                var next = NATSConnection.firstReportNs
                while !closing.load(ordering: .acquiring), !ended.load(ordering: .acquiring) {
                    if connected.load(ordering: .acquiring) {
                        watching.store(false, ordering: .releasing)
                        // A disconnect between the two loads finds no watcher: look again.
                        guard !connected.load(ordering: .acquiring),
                              !watching.exchange(true, ordering: .acquiringAndReleasing) else { return }
                    }
                    usleep(200_000)
                    let waited = Clock.monotonicNs() - since
                    guard waited >= next, !connected.load(ordering: .acquiring) else { continue }
                    next = min(next * 2, NATSConnection.mostReportNs)
                    var handle: OpaquePointer?
                    let status = natsConnection_Connect(&handle, probe)
                    if status == NATS_OK {
                        natsConnection_Destroy(handle)
                        continue
                    }
                    let reason = NATSConnection.explain(NATSError.lastDetail(status), status: status, endpoint: endpoint)
                    if !closing.load(ordering: .acquiring), !connected.load(ordering: .acquiring) {
                        handler(.error("no connection to \(endpoint.urlList) for \(Units.formatDuration(waited)), still retrying; a fresh attempt says: \(reason)"))
                    }
                }
                watching.store(false, ordering: .releasing)
            }
        }
    }

    private let box: CallbackBox

    private init(handle: OpaquePointer, endpoint: NATSEndpoint, box: CallbackBox) {
        self.handle = handle
        self.endpoint = endpoint
        self.box = box
    }

    /// Connects to the endpoint's servers. Returns at once whether or not a
    /// server answered (`connected` says which); when none did, the client
    /// keeps trying in the background and sends ``Event/connected`` when one
    /// does. Throws for what retrying cannot mend: options the client
    /// rejects (a TLS file it cannot load), and a server that answers but
    /// refuses us (a failed TLS handshake, credentials it does not accept).
    public static func connect(
        _ endpoint: NATSEndpoint, name: String, onEvent: @escaping @Sendable (Event) -> Void
    ) throws -> (connection: NATSConnection, connected: Bool) {
        let options: OpaquePointer? = try attemptOptions(endpoint, name: name)
        defer { natsOptions_Destroy(options) }
        try natsCheck(natsOptions_SetMaxReconnect(options, -1), "cannot set reconnects")
        try natsCheck(natsOptions_SetReconnectWait(options, reconnectWaitMs), "cannot set the reconnect wait")
        // A server that hangs without closing the socket is noticed within ~15 s.
        try natsCheck(natsOptions_SetPingInterval(options, 5_000), "cannot set the ping interval")
        try natsCheck(natsOptions_SetMaxPingsOut(options, 3), "cannot set pings out")
        let probe = try attemptOptions(endpoint, name: name + " (probe)")
        do {
            try natsCheck(natsOptions_SetAllowReconnect(probe, false), "cannot set the probe's reconnects")
        } catch {
            natsOptions_Destroy(probe)
            throw error
        }
        let callbacks = CallbackBox(onEvent, endpoint: endpoint, probe: probe)
        let box = Unmanaged.passRetained(callbacks)
        let closure = box.toOpaque()
        try natsCheck(natsOptions_SetDisconnectedCB(options, { _, closure in
            let box = Unmanaged<CallbackBox>.fromOpaque(closure!).takeUnretainedValue()
            box.connected.store(false, ordering: .releasing)
            box.handler(.disconnected)
            if !box.closing.load(ordering: .acquiring) { box.watchReconnecting() }
        }, closure), "cannot set the disconnect handler")
        try natsCheck(natsOptions_SetReconnectedCB(options, { handle, closure in
            let box = Unmanaged<CallbackBox>.fromOpaque(closure!).takeUnretainedValue()
            box.connected.store(true, ordering: .releasing)
            box.handler(.reconnected(url: NATSConnection.connectedURL(of: handle)))
        }, closure), "cannot set the reconnect handler")
        try natsCheck(natsOptions_SetClosedCB(options, { handle, closure in
            let box = Unmanaged<CallbackBox>.fromOpaque(closure!).takeUnretainedValue()
            if !box.closing.load(ordering: .acquiring) {
                // libnats 3.4.1 stops reconnecting after a server refused the
                // same credentials twice: the stage must know, or it would
                // wait for a connection that never comes.
                box.handler(.gaveUp(reason: NATSConnection.lastError(of: handle)))
            }
            box.ended.store(true, ordering: .releasing)
            box.handler(.closed)
        }, closure), "cannot set the close handler")
        try natsCheck(natsOptions_SetErrorHandler(options, { connection, _, status, closure in
            var text = String(cString: natsStatus_GetText(status))
            // The server's words say what was refused ("Permissions
            // Violation for Publish to ...").
            var detail: UnsafePointer<CChar>?
            if status == NATS_NOT_PERMITTED, let connection, natsConnection_GetLastError(connection, &detail) != NATS_OK,
               let detail, detail.pointee != 0 {
                text += ": " + String(cString: detail)
            }
            Unmanaged<CallbackBox>.fromOpaque(closure!).takeUnretainedValue().handler(.error(text))
        }, closure), "cannot set the error handler")

        // A first attempt without retries: when it fails, the client says
        // why, which a connect that goes on retrying in the background does
        // not (it keeps "no server available"). A server that answered but
        // refused us (a TLS handshake, an authorization violation) fails the
        // start: given such a first failure, the C client's retrying connect
        // closes the connection for good at once (libnats 3.4.1). Later
        // refusals, on reconnects, it does retry.
        var handle: OpaquePointer?
        var status = natsConnection_Connect(&handle, options)
        if status == NATS_OK, let handle {
            callbacks.connected.store(true, ordering: .releasing)
            return (NATSConnection(handle: handle, endpoint: endpoint, box: box.takeUnretainedValue()), true)
        }
        let failure = NATSConnection.explain(NATSError.lastDetail(status), status: status, endpoint: endpoint)
        guard retryable.contains(status.rawValue) else {
            // No connection was made, so no callback can come: the box can go.
            natsOptions_Destroy(callbacks.probe)
            box.release()
            throw NATSError(status: status, message: "\(endpoint.urlList): \(failure)")
        }

        try natsCheck(natsOptions_SetRetryOnFailedConnect(options, true, { handle, closure in
            let box = Unmanaged<CallbackBox>.fromOpaque(closure!).takeUnretainedValue()
            box.connected.store(true, ordering: .releasing)
            box.handler(.connected(url: NATSConnection.connectedURL(of: handle)))
        }, closure), "cannot set connect retries")
        handle = nil
        status = natsConnection_Connect(&handle, options)
        guard status == NATS_OK || status == NATS_NOT_YET_CONNECTED, let handle else {
            throw NATSError(status, "cannot connect to \(endpoint.urlList)")
        }
        let connection = NATSConnection(handle: handle, endpoint: endpoint, box: box.takeUnretainedValue())
        connection.firstFailure = failure
        if status == NATS_OK { callbacks.connected.store(true, ordering: .releasing) } else { callbacks.watchReconnecting() }
        return (connection, status == NATS_OK)
    }

    /// What a first attempt may fail with and still be retried: no server
    /// answered (refused, unreachable, timed out).
    static let retryable: Set<UInt32> = [NATS_NO_SERVER.rawValue, NATS_IO_ERROR.rawValue, NATS_TIMEOUT.rawValue]

    /// Why the first attempt failed, in words an operator can act on: the
    /// client's own text, and for the failures that TLS or credentials
    /// cause, which option to look at.
    static func explain(_ detail: String, status: natsStatus, endpoint: NATSEndpoint) -> String {
        if detail.contains("SSL handshake error") {
            guard endpoint.tls?.ca != nil else {
                return "TLS handshake failed (\(detail)): the server uses TLS; set tls.ca to the CA that signed its certificate"
            }
            return "TLS handshake failed (\(detail)): tls.ca must hold the CA that signed the server's certificate, "
                + "and the certificate must name the url's host"
        }
        if status == NATS_CONNECTION_AUTH_FAILED || detail.lowercased().contains("authorization violation") {
            return endpoint.credentials == nil
                ? "the server requires credentials (\(detail)): set 'credentials' to a .creds file of a user it knows"
                : "the server refused the credentials in '\(endpoint.credentials!)' (\(detail)): is the user's account known to it, and the user JWT still valid?"
        }
        if detail.contains("Expected 'PONG', got ''") || detail.contains("Connection closed") {
            guard let tls = endpoint.tls else {
                return "the server closed the connection during the handshake (\(detail)); the server's log says why"
            }
            let hint = tls.cert == nil
                ? "it may require a client certificate (tls.cert and tls.key)"
                : "it may not accept the client certificate '\(tls.cert!)'"
            return "the server closed the connection during the handshake (\(detail)): \(hint); the server's log says why"
        }
        return detail
    }

    /// True while a server is connected.
    public var isConnected: Bool { natsConnection_Status(handle) == NATS_CONN_STATUS_CONNECTED }

    /// The url of the server connected to, if any.
    public var connectedURL: String? { Self.connectedURL(of: handle) }

    /// The url `handle` is connected to (the callbacks get the handle, not this object).
    static func connectedURL(of handle: OpaquePointer?) -> String? {
        guard let handle else { return nil }
        var buffer = [CChar](repeating: 0, count: 512)
        guard natsConnection_GetConnectedUrl(handle, &buffer, buffer.count) == NATS_OK, buffer[0] != 0 else { return nil }
        return buffer.withUnsafeBufferPointer { NATSEndpoint.redacted(String(cString: $0.baseAddress!)) }
    }

    /// Why the first attempt to connect failed (set in `connect`, before
    /// the connection is shared).
    private var firstFailure: String?

    /// The reason the last attempt failed, for logs (`No server available
    /// for connection`; at start, what the first attempt found, such as a
    /// TLS handshake that failed).
    public var lastError: String {
        var text: UnsafePointer<CChar>?
        let status = natsConnection_GetLastError(handle, &text)
        if let firstFailure, status == NATS_OK || status == NATS_NO_SERVER { return firstFailure }
        return Self.lastError(of: handle)
    }

    /// The client's last error on `handle` (the callbacks get the handle, not this object).
    static func lastError(of handle: OpaquePointer?) -> String {
        guard let handle else { return "closed" }
        var text: UnsafePointer<CChar>?
        let status = natsConnection_GetLastError(handle, &text)
        if let text, text.pointee != 0 { return String(cString: text) }
        return String(cString: natsStatus_GetText(status))
    }

    /// A JetStream context on this connection; `configure` adjusts its options
    /// (publish handlers, pending limits) before it is made.
    public func jetStream(_ configure: (inout jsOptions) -> Void = { _ in }) throws -> OpaquePointer {
        var options = jsOptions()
        try natsCheck(jsOptions_Init(&options), "cannot initialise JetStream options")
        configure(&options)
        var context: OpaquePointer?
        try natsCheck(natsConnection_JetStream(&context, handle, &options), "cannot open JetStream")
        return context!
    }

    /// Closes and frees the connection; the `closed` event follows on the
    /// client's thread. Call once, after the last use of ``handle``.
    public func close() {
        box.closing.store(true, ordering: .releasing)
        natsConnection_Close(handle)
        natsConnection_Destroy(handle)
    }
}

/// NATS subject matching, token by token (`*` one token, `>` the rest).
/// What JetStream says of a message it delivered.
public enum JetStreamMessage {
    /// A delivered message's stream sequence and how many times it was
    /// delivered (0 and 0 when its metadata cannot be read).
    public static func metadata(of message: OpaquePointer) -> (sequence: UInt64, deliveries: UInt64) {
        var metadata: UnsafeMutablePointer<jsMsgMetaData>?
        guard natsMsg_GetMetaData(&metadata, message) == NATS_OK, let metadata else { return (0, 0) }
        defer { jsMsgMetaData_Destroy(metadata) }
        return (metadata.pointee.Sequence.Stream, metadata.pointee.NumDelivered)
    }
}

public enum NATSSubject {
    /// True when every subject `pattern` can stand for is matched by `filter`:
    /// `pipelined.>` covers `pipelined.*.*.*`; `pipelined.*.network.*` does not.
    public static func covers(_ filter: String, _ pattern: String) -> Bool {
        let filterTokens = filter.split(separator: ".", omittingEmptySubsequences: false)
        let patternTokens = pattern.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in filterTokens.enumerated() {
            if token == ">" { return index < patternTokens.count }
            guard index < patternTokens.count else { return false }
            let other = patternTokens[index]
            if other == ">" { return false }
            if token == "*" { continue }
            if token != other { return false }
        }
        return filterTokens.count == patternTokens.count
    }

    /// The narrowest single filter that matches every one of `subjects`
    /// (plain subjects, no wildcards): a token they share stays, a token in
    /// which they differ becomes `*`, and when their lengths differ the
    /// shortest one's last token and all after it become `>`.
    /// `pipelined.web-1.network.connect` and `pipelined.web-1.network.bind`
    /// give `pipelined.web-1.network.*`. Nil for no subjects.
    public static func narrowestFilter(covering subjects: some Sequence<String>) -> String? {
        var common: [Substring]?
        var shortest = Int.max
        for subject in subjects {
            let tokens = subject.split(separator: ".", omittingEmptySubsequences: false)
            shortest = Swift.min(shortest, tokens.count)
            guard var kept = common else {
                common = tokens
                continue
            }
            for index in 0..<Swift.min(kept.count, tokens.count) where kept[index] != tokens[index] { kept[index] = "*" }
            if tokens.count > kept.count { kept += tokens[kept.count...] }
            common = kept
        }
        guard var tokens = common else { return nil }
        if tokens.count > shortest {
            // `>` stands for one token or more: it takes the shortest's last.
            tokens = Array(tokens[..<(shortest - 1)]) + [">"]
        }
        return tokens.joined(separator: ".")
    }

    /// True when a subject token needs no escaping: NATS separates tokens
    /// with `.` and treats `*`, `>` and white space specially.
    public static func isPlainToken(_ token: Substring) -> Bool {
        !token.isEmpty && !token.contains(where: { $0 == "." || $0 == "*" || $0 == ">" || $0 == " " || $0 == "\t" || $0 == "\r" || $0 == "\n" })
    }
}
