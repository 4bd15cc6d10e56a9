import Foundation
import NATSClient
import PipelineCore
import Testing
@testable import TestSupport

/// Nodes and aggregators against servers that require what `tls` and
/// `credentials` give: a server that verifies client certificates, and one
/// in operator mode (JWT accounts) that accepts only users it knows. The
/// certificates, keys and JWTs are made for each test (NATSAuth).
@Suite("fleet: TLS and credentials", .serialized)
struct SecureFleetTests {
    static let count = 20_000

    /// The `tls` map of a stage, for a pipeline file's stage options.
    static func tlsOptions(ca: String, cert: String? = nil, key: String? = nil) -> String {
        var text = "tls:\n  ca: \(ca)"
        if let cert { text += "\n  cert: \(cert)" }
        if let key { text += "\n  key: \(key)" }
        return text
    }

    /// One node replays `count` events into the server, an aggregator reads
    /// them into an archive, both with `options`; every event must be in
    /// the stream and in the archive exactly once.
    static func expectEveryEventOnce(_ scratch: FleetScratch, server: NATSServer, nodeURL: String, aggregatorURL: String,
                                     options: String, inspect endpoint: NATSEndpoint) throws {
        let archive = scratch.directory + "/archive"
        let aggregator = try CLI.start(["run", try scratch.aggregatorPipeline(urls: [aggregatorURL], archive: archive, source: options)])
        defer { aggregator.stopIfRunning() }
        let events = try scratch.events("events", count: count)
        let node = try scratch.nodePipeline("node-a", events: events, urls: [nodeURL], sink: options)
        let result = try CLI.run(["run", node], timeout: 120)
        #expect(result.status == 0, "node: \(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("connected to \(nodeURL)"), "node: \(FleetRecords.excerpt(result.stderr))")

        let inspector = try StreamInspector(endpoint: endpoint)
        #expect(inspector.messageCount("PIPELINED") == UInt64(count))
        #expect(inspector.waitUntilAcknowledged("PIPELINED", "agg", count: UInt64(count)), "the aggregator did not acknowledge every message")
        let stopped = aggregator.terminate()
        #expect(stopped.status == 0, "aggregator: \(FleetRecords.excerpt(stopped.stderr))")
        #expect(stopped.stderr.contains("connected to \(aggregatorURL)"), "aggregator: \(FleetRecords.excerpt(stopped.stderr))")

        let records = try FleetRecords.archive(archive)
        #expect(FleetRecords.lost(records) == 0)
        let problem = FleetTests.exactlyOnceProblem(FleetRecords.numbers(records)["node-a"], count: count)
        #expect(problem == nil, "\(problem ?? "")")
    }

    /// Runs the node pipeline `path` against a server that refuses it: it
    /// must end at start with `status`, its error line beginning with
    /// `prefix` and containing `detail`; the server took nothing.
    static func expectRefused(_ path: String, status: Int32, prefix: String, detail: [String], server: NATSServer, inspect endpoint: NATSEndpoint) throws {
        let result = try CLI.run(["run", path], timeout: 60)
        #expect(result.status == status, "\(FleetRecords.excerpt(result.stderr))")
        #expect(!result.stderr.contains("Program crashed"), "\(FleetRecords.excerpt(result.stderr))")
        let line = try #require(result.stderr.split(separator: "\n").first { $0.contains("\(server.url): ") }, "\(result.stderr)")
        #expect(line.hasPrefix(prefix), "\(line)")
        for text in detail { #expect(line.contains(text), "\(line)") }
        // The server is fine, and took nothing.
        #expect(NATSTests.httpStatus(port: server.monitorPort, path: "/healthz") == 200)
        #expect(try StreamInspector(endpoint: endpoint).messageCount("PIPELINED", timeout: 2) == nil, "no stream was made")
    }

    // MARK: TLS

    /// A server that requires TLS and verifies client certificates against its CA.
    static func tlsServer(_ scratch: FleetScratch, _ certificates: NATSAuth.Certificates, port: Int? = nil, waitReady: Bool = true) throws -> NATSServer {
        try NATSServer(directory: scratch.directory, port: port, config: certificates.serverConfig, waitReady: waitReady)
    }

    @Test("TLS with client certificates: a node (tls://) and an aggregator (nats://) with tls {ca, cert, key} deliver every event once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func tlsNodeAndAggregator() throws {
        let scratch = try FleetScratch("tls")
        defer { scratch.remove() }
        let certificates = try NATSAuth.Certificates(in: scratch.directory)
        let server = try Self.tlsServer(scratch, certificates)
        defer { server.stop() }
        let tls = NATSEndpoint.TLSFiles(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey)
        // The C client speaks TLS to either scheme once `tls` is given.
        try Self.expectEveryEventOnce(
            scratch, server: server, nodeURL: "tls://127.0.0.1:\(server.port)", aggregatorURL: server.url,
            options: Self.tlsOptions(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey),
            inspect: NATSEndpoint(urls: [server.url], tls: tls))
    }

    @Test("TLS: a node started before its server retries with TLS and delivers once the server is there",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func tlsServerComesLater() throws {
        let scratch = try FleetScratch("tls-later")
        defer { scratch.remove() }
        let certificates = try NATSAuth.Certificates(in: scratch.directory)
        let port = NATSTests.freePort()
        let events = try scratch.events("events", count: 1000)
        let options = Self.tlsOptions(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey)
        let node = try CLI.start(["run", try scratch.nodePipeline("node-a", events: events, urls: ["tls://127.0.0.1:\(port)"], sink: options)])
        defer { node.stopIfRunning() }
        #expect(node.waitFor(timeout: 30) { _, stderr in stderr.contains("cannot reach tls://127.0.0.1:\(port)") }, "\(node.stderr.text)")
        #expect(node.process.isRunning, "the pipeline keeps running while the server is unreachable")
        let server = try Self.tlsServer(scratch, certificates, port: port)
        defer { server.stop() }
        let result = node.finish(timeout: 120)
        #expect(result.status == 0, "\(FleetRecords.excerpt(result.stderr))")
        #expect(result.stderr.contains("connected to tls://127.0.0.1:\(port)"), "\(FleetRecords.excerpt(result.stderr))")
        let inspector = try StreamInspector(endpoint: NATSEndpoint(urls: [server.url], tls: .init(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey)))
        let records = try FleetRecords.decode(inspector.payloads("PIPELINED", expected: 1000).joined(separator: "\n"))
        let problem = FleetTests.exactlyOnceProblem(FleetRecords.numbers(records)["node-a"], count: 1000)
        #expect(problem == nil, "\(problem ?? "")")
    }

    /// A node the TLS server refuses, and what it must say.
    struct TLSRefusal: CustomTestStringConvertible, Sendable {
        var name: String
        /// The node's `tls` map from the test's CA, another CA and the client certificate.
        var options: @Sendable (_ ca: String, _ otherCA: String, _ cert: String, _ key: String) -> String
        /// 78 with the error at `tls`; 1 (a runtime failure) without a `tls` map.
        var status: Int32
        var detail: [String]
        var testDescription: String { name }
    }

    static let refusals: [TLSRefusal] = [
        TLSRefusal(name: "no client certificate", options: { ca, _, _, _ in tlsOptions(ca: ca) }, status: 78,
                   detail: ["the server closed the connection during the handshake", "it may require a client certificate (tls.cert and tls.key)"]),
        TLSRefusal(name: "a CA that did not sign the server's certificate", options: { _, other, cert, key in tlsOptions(ca: other, cert: cert, key: key) },
                   status: 78, detail: ["TLS handshake failed", "unable to get local issuer certificate", "tls.ca must hold the CA that signed the server's certificate"]),
        TLSRefusal(name: "no tls at all", options: { _, _, _, _ in "" }, status: 1,
                   detail: ["TLS handshake failed", "the server uses TLS; set tls.ca to the CA that signed its certificate"]),
    ]

    @Test("TLS refused at start: the node ends with an error naming the TLS failure (located at tls, exit 78), nothing crashes, the server takes nothing",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)), arguments: refusals)
    func tlsRefused(_ refusal: TLSRefusal) throws {
        let scratch = try FleetScratch("tls-refused")
        defer { scratch.remove() }
        let certificates = try NATSAuth.Certificates(in: scratch.directory)
        let other = try NATSAuth.Certificates(in: scratch.directory, name: "other")
        let server = try Self.tlsServer(scratch, certificates)
        defer { server.stop() }
        let events = try scratch.events("events", count: 10)
        let options = refusal.options(certificates.ca, other.ca, certificates.clientCert, certificates.clientKey)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: [server.url], sink: options)
        let prefix = refusal.status == 78
            ? "\(pipeline):\(try FleetScratch.keyLocation(of: "ca", in: pipeline)): error: sink 'fleet': \(server.url): "
            : "pipelined: fleet: \(server.url): "
        try Self.expectRefused(pipeline, status: refusal.status, prefix: prefix, detail: refusal.detail, server: server,
                               inspect: NATSEndpoint(urls: [server.url], tls: .init(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey)))
    }

    @Test("bad tls files: missing, a directory, not PEM, a key that is not the certificate's: exit 78 at the file's line and column, from validate")
    func badTLSFiles() throws {
        let scratch = try FleetScratch("tls-files")
        defer { scratch.remove() }
        let certificates = try NATSAuth.Certificates(in: scratch.directory)
        let other = try NATSAuth.Certificates(in: scratch.directory, name: "other")
        let events = try scratch.events("events", count: 1)
        let cases: [(options: String, key: String, message: String)] = [
            (Self.tlsOptions(ca: "/nonexistent/ca.pem"), "ca", "'tls.ca' cannot read '/nonexistent/ca.pem': No such file or directory"),
            (Self.tlsOptions(ca: scratch.directory), "ca", "'tls.ca' cannot read '\(scratch.directory)': it is a directory"),
            (Self.tlsOptions(ca: events), "ca", "'tls.ca' '\(events)' is not a PEM file of CA certificates: Error loading trusted certificates"),
            (Self.tlsOptions(ca: certificates.ca, cert: certificates.clientCert, key: other.clientKey), "key",
             "'tls.cert' '\(certificates.clientCert)' and 'tls.key' '\(other.clientKey)' are not a PEM certificate and its private key"),
        ]
        for (options, key, message) in cases {
            let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:4222"], sink: options)
            let at = try FleetScratch.valueLocation(of: key, in: pipeline)
            let result = try CLI.run(["validate", pipeline], timeout: 60)
            #expect(result.status == 78, "\(result.stderr)")
            #expect(result.stderr.contains("\(pipeline):\(at): error: sink 'fleet': \(message)"), "\(result.stderr)")
        }
    }

    // MARK: Credentials

    /// A server in operator mode: only users of the accounts it preloads get in.
    static func operatorServer(_ scratch: FleetScratch, _ auth: NATSAuth.Operator) throws -> NATSServer {
        try NATSServer(directory: scratch.directory, config: auth.serverConfig)
    }

    @Test("credentials: a node and an aggregator with a user .creds file deliver every event once to a server in operator mode",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func credentialsNodeAndAggregator() throws {
        let scratch = try FleetScratch("creds")
        defer { scratch.remove() }
        let auth = try NATSAuth.Operator()
        let server = try Self.operatorServer(scratch, auth)
        defer { server.stop() }
        let creds = scratch.directory + "/node.creds"
        try auth.creds.write(toFile: creds, atomically: true, encoding: .utf8)
        try Self.expectEveryEventOnce(scratch, server: server, nodeURL: server.url, aggregatorURL: server.url,
                                      options: "credentials: \(creds)", inspect: NATSEndpoint(urls: [server.url], credentials: creds))
    }

    /// A node the operator-mode server refuses, and what it must say.
    struct CredentialsRefusal: CustomTestStringConvertible, Sendable {
        var name: String
        /// Whether the node has a credentials file (of a user the server does not know).
        var foreign: Bool
        var detail: [String]
        var testDescription: String { name }
    }

    static let credentialRefusals: [CredentialsRefusal] = [
        CredentialsRefusal(name: "no credentials", foreign: false,
                           detail: ["the server requires credentials", "Authorization Violation", "set 'credentials' to a .creds file"]),
        CredentialsRefusal(name: "a user of another operator", foreign: true,
                           detail: ["the server refused the credentials in", "Authorization Violation"]),
    ]

    @Test("credentials refused at start: the node ends with an authorization error (at credentials, exit 78, when it has some), nothing crashes",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)), arguments: credentialRefusals)
    func credentialsRefused(_ refusal: CredentialsRefusal) throws {
        let scratch = try FleetScratch("creds-refused")
        defer { scratch.remove() }
        let auth = try NATSAuth.Operator()
        let server = try Self.operatorServer(scratch, auth)
        defer { server.stop() }
        let good = scratch.directory + "/node.creds"
        try auth.creds.write(toFile: good, atomically: true, encoding: .utf8)
        let events = try scratch.events("events", count: 10)
        var options = ""
        if refusal.foreign {
            let foreign = scratch.directory + "/foreign.creds"
            try NATSAuth.Operator().creds.write(toFile: foreign, atomically: true, encoding: .utf8)
            options = "credentials: \(foreign)"
        }
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: [server.url], sink: options)
        let prefix = refusal.foreign
            ? "\(pipeline):\(try FleetScratch.valueLocation(of: "credentials", in: pipeline)): error: sink 'fleet': \(server.url): "
            : "pipelined: fleet: \(server.url): "
        try Self.expectRefused(pipeline, status: refusal.foreign ? 78 : 1, prefix: prefix, detail: refusal.detail, server: server,
                               inspect: NATSEndpoint(urls: [server.url], credentials: good))
        // An aggregator's source connects the same way, and is refused the same way.
        let aggregator = try scratch.aggregatorPipeline(urls: [server.url], archive: scratch.directory + "/archive", source: options)
        let aggregatorPrefix = refusal.foreign
            ? "\(aggregator):\(try FleetScratch.valueLocation(of: "credentials", in: aggregator)): error: source 'fleet': \(server.url): "
            : "pipelined: fleet: \(server.url): "
        try Self.expectRefused(aggregator, status: refusal.foreign ? 78 : 1, prefix: aggregatorPrefix, detail: refusal.detail, server: server,
                               inspect: NATSEndpoint(urls: [server.url], credentials: good))
    }

    @Test("credentials refused after the start (the server came later): the node says the client gave up and why, keeps making new connections, and delivers every event once a server takes it",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(4)))
    func credentialsRefusedLater() throws {
        let scratch = try FleetScratch("creds-later")
        defer { scratch.remove() }
        let auth = try NATSAuth.Operator()
        let port = NATSTests.freePort()
        let events = try scratch.events("events", count: 100)
        let node = try CLI.start(["run", try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:\(port)"])])
        defer { node.stopIfRunning() }
        #expect(node.waitFor(timeout: 30) { _, stderr in stderr.contains("cannot reach nats://127.0.0.1:\(port)") }, "\(node.stderr.text)")
        let refusing = try NATSServer(directory: scratch.directory, name: "operator", port: port, config: auth.serverConfig)
        defer { refusing.stop() }
        // The C client stops after the same authorization error twice: the
        // node says so, and makes new connections (refused too, for now).
        #expect(node.waitFor(timeout: 60) { _, stderr in stderr.contains("gave up on the connection (Authorization Violation)") },
                "\(FleetRecords.excerpt(node.stderr.text))")
        #expect(node.waitFor(timeout: 30) { _, stderr in stderr.contains("a new connection to nats://127.0.0.1:\(port) was refused") },
                "\(FleetRecords.excerpt(node.stderr.text))")
        #expect(node.process.isRunning, "the pipeline runs on")

        // A server that takes the node (its operator let it in, say).
        refusing.stop()
        let open = try NATSServer(directory: scratch.directory, port: port)
        defer { open.stop() }
        #expect(node.waitFor(timeout: 60) { _, stderr in stderr.contains("made a new connection") },
                "\(FleetRecords.excerpt(node.stderr.text))")
        let result = node.finish(timeout: 120)
        #expect(result.status == 0, "the node delivers and ends: \(FleetRecords.excerpt(result.stderr))")
        #expect(!result.stderr.contains("Program crashed"))
        let inspector = try StreamInspector(urls: [open.url])
        let payloads = try inspector.payloads("PIPELINED", expected: 100)
        let numbers = FleetRecords.numbers(try FleetRecords.decode(payloads.joined(separator: "\n")))["node-a"] ?? []
        #expect(FleetTests.exactlyOnceProblem(numbers, count: 100) == nil, "the stream: \(numbers.count) events")
    }

    @Test("a node publishing when its server dies and one that refuses it takes the port: the client gives up, the node makes new connections, and once the first server is back what it never answered is sent again with the same ids: the stream holds every event once",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(4)))
    func refusedMidStreamResendsWhatWasInFlight() throws {
        let scratch = try FleetScratch("creds-mid")
        defer { scratch.remove() }
        let auth = try NATSAuth.Operator()
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let port = server.port
        // Fast (publishes in flight), and for five seconds: the server dies
        // while the node still publishes.
        let count = 150_000
        let events = try scratch.events("events", count: count)
        let node = try CLI.start(["run", try scratch.nodePipeline("node-a", events: events, urls: [server.url], rate: 30_000)])
        defer { node.stopIfRunning() }
        let inspector = try StreamInspector(urls: [server.url])
        #expect(inspector.waitForMessages("PIPELINED", atLeast: 10_000, timeout: 60) >= 10_000)

        // Mid-stream, with publishes in flight, the server on this port dies
        // and one that refuses the node takes its place; then the first comes
        // back on its store.
        server.kill9()
        let refusing = try NATSServer(directory: scratch.directory, name: "operator", port: port, config: auth.serverConfig)
        #expect(node.waitFor(timeout: 60) { _, stderr in stderr.contains("gave up on the connection (Authorization Violation)") },
                "\(FleetRecords.excerpt(node.stderr.text))")
        refusing.stop()
        try server.start()
        // What the dead server never answered goes again (given back by the
        // client as the connection closed, or taken from the outbox as it is
        // replaced), with the same ids.
        #expect(node.waitFor(timeout: 90) { _, stderr in stderr.contains("made a new connection") },
                "\(FleetRecords.excerpt(node.stderr.text))")
        let result = node.finish(timeout: 150)
        #expect(result.status == 0, "the node delivers and ends: \(FleetRecords.excerpt(result.stderr))")
        let reader = try StreamInspector(urls: [server.url])
        let payloads = try reader.payloads("PIPELINED", expected: count)
        let numbers = FleetRecords.numbers(try FleetRecords.decode(payloads.joined(separator: "\n")))["node-a"] ?? []
        #expect(FleetTests.exactlyOnceProblem(numbers, count: count) == nil, "the stream: \(numbers.count) events")
    }

    @Test("an aggregator whose server comes back refusing its credentials: the source says the client gave up, keeps making new connections, and reads again once the server takes it",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(4)))
    func aggregatorRefusedLater() throws {
        let scratch = try FleetScratch("creds-later-agg")
        defer { scratch.remove() }
        let auth = try NATSAuth.Operator()
        let server = try NATSServer(directory: scratch.directory)
        defer { server.stop() }
        let port = server.port
        let first = try scratch.events("first", count: 100)
        let node = try CLI.run(["run", try scratch.nodePipeline("node-a", events: first, urls: [server.url])], timeout: 120)
        #expect(node.status == 0, "node: \(FleetRecords.excerpt(node.stderr))")

        let output = scratch.directory + "/events.jsonl"
        let aggregator = try CLI.start(["run", try FleetAcknowledgementTests.aggregator(scratch, url: server.url, file: output)])
        defer { aggregator.stopIfRunning() }
        let inspector = try StreamInspector(urls: [server.url])
        #expect(inspector.waitUntilAcknowledged("PIPELINED", "agg", count: 100, timeout: 60))

        // The same port, now a server in operator mode that does not know the aggregator.
        server.stop()
        let refusing = try NATSServer(directory: scratch.directory, name: "operator", port: port, config: auth.serverConfig)
        defer { refusing.stop() }
        #expect(aggregator.waitFor(timeout: 60) { _, stderr in stderr.contains("gave up on the connection (Authorization Violation)") },
                "\(FleetRecords.excerpt(aggregator.stderr.text))")
        #expect(aggregator.waitFor(timeout: 30) { _, stderr in stderr.contains("a new connection to nats://127.0.0.1:\(port) was refused") },
                "\(FleetRecords.excerpt(aggregator.stderr.text))")

        // The first server again, on its store: the consumer is still there.
        refusing.stop()
        try server.start()
        #expect(aggregator.waitFor(timeout: 60) { _, stderr in stderr.contains("made a new connection") },
                "\(FleetRecords.excerpt(aggregator.stderr.text))")
        let second = try scratch.events("second", count: 100)
        let later = try CLI.run(["run", try scratch.nodePipeline("node-b", events: second, urls: [server.url])], timeout: 120)
        #expect(later.status == 0, "node: \(FleetRecords.excerpt(later.stderr))")
        let reader = try StreamInspector(urls: [server.url])
        #expect(reader.waitUntilAcknowledged("PIPELINED", "agg", count: 200, timeout: 90),
                "\(String(describing: reader.consumer("PIPELINED", "agg"))): \(FleetRecords.excerpt(aggregator.stderr.text))")
        let result = aggregator.terminate()
        #expect(result.status == 0, "aggregator: \(FleetRecords.excerpt(result.stderr))")
        #expect(!result.stderr.contains("Program crashed"))
        let numbers = FleetRecords.numbers(try FleetRecords.decode(String(contentsOfFile: output, encoding: .utf8)))
        #expect(FleetTests.exactlyOnceProblem(numbers["node-a"] ?? [], count: 100) == nil)
        #expect(FleetTests.exactlyOnceProblem(numbers["node-b"] ?? [], count: 100) == nil)
    }

    @Test("TLS refused after the start (the server came back with a certificate of another CA): the node keeps retrying and says why within a minute",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func tlsRefusedAfterTheStart() throws {
        let scratch = try FleetScratch("tls-after")
        defer { scratch.remove() }
        let certificates = try NATSAuth.Certificates(in: scratch.directory)
        let other = try NATSAuth.Certificates(in: scratch.directory, name: "other")
        let port = NATSTests.freePort()
        let first = try Self.tlsServer(scratch, certificates, port: port)
        defer { first.stop() }
        // A node that is still publishing when its server goes away.
        let events = try scratch.events("events", count: 20_000)
        let options = Self.tlsOptions(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey)
        let node = try CLI.start(["run", try scratch.nodePipeline("node-a", events: events, urls: ["tls://127.0.0.1:\(port)"], rate: 200, sink: options)])
        defer { node.stopIfRunning() }
        #expect(node.waitFor(timeout: 30) { _, stderr in stderr.contains("connected to tls://127.0.0.1:\(port)") }, "\(FleetRecords.excerpt(node.stderr.text))")
        first.stop()
        #expect(node.waitFor(timeout: 30) { _, stderr in stderr.contains("disconnected from the nats server") }, "\(FleetRecords.excerpt(node.stderr.text))")
        let second = try NATSServer(directory: scratch.directory, name: "n2", port: port, config: other.serverConfig)
        defer { second.stop() }
        // The client retries in silence; the node must find the reason and say it.
        #expect(node.waitFor(timeout: 60) { _, stderr in stderr.contains("still retrying; a fresh attempt says: TLS handshake failed") },
                "\(FleetRecords.excerpt(node.stderr.text))")
        #expect(node.stderr.text.contains("tls.ca must hold the CA that signed the server's certificate"))
        #expect(node.process.isRunning, "the pipeline runs on")
        #expect(!node.stderr.text.contains("Program crashed"))
    }

    @Test("tls and credentials together: both required, both given, every event once; with the wrong CA or no client certificate the error is at tls, not credentials",
          .enabled(if: NATSTests.enabled), .timeLimit(.minutes(3)))
    func tlsAndCredentials() throws {
        let scratch = try FleetScratch("tls-creds")
        defer { scratch.remove() }
        let certificates = try NATSAuth.Certificates(in: scratch.directory)
        let other = try NATSAuth.Certificates(in: scratch.directory, name: "other")
        let auth = try NATSAuth.Operator()
        let server = try NATSServer(directory: scratch.directory, config: certificates.serverConfig + "\n" + auth.serverConfig)
        defer { server.stop() }
        let creds = scratch.directory + "/node.creds"
        try auth.creds.write(toFile: creds, atomically: true, encoding: .utf8)
        let endpoint = NATSEndpoint(urls: [server.url], credentials: creds,
                                    tls: .init(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey))

        let events = try scratch.events("events", count: 10)
        for (tls, detail) in [
            (Self.tlsOptions(ca: other.ca, cert: certificates.clientCert, key: certificates.clientKey), "TLS handshake failed"),
            (Self.tlsOptions(ca: certificates.ca), "it may require a client certificate"),
        ] {
            let refused = try scratch.nodePipeline("node-a", events: events, urls: [server.url], sink: "credentials: \(creds)\n" + tls)
            try Self.expectRefused(refused, status: 78,
                                   prefix: "\(refused):\(try FleetScratch.keyLocation(of: "ca", in: refused)): error: sink 'fleet': \(server.url): ",
                                   detail: [detail], server: server, inspect: endpoint)
        }

        let options = "credentials: \(creds)\n" + Self.tlsOptions(ca: certificates.ca, cert: certificates.clientCert, key: certificates.clientKey)
        try Self.expectEveryEventOnce(scratch, server: server, nodeURL: server.url, aggregatorURL: server.url, options: options, inspect: endpoint)
    }

    @Test("a credentials file that is not one (garbage, a JWT without a seed): exit 78 with FILE:LINE:COL, from validate and run alike")
    func garbageCredentials() throws {
        let scratch = try FleetScratch("creds-garbage")
        defer { scratch.remove() }
        let auth = try NATSAuth.Operator()
        let events = try scratch.events("events", count: 1)
        let garbage = scratch.directory + "/garbage.creds"
        try "not a credentials file\n".write(toFile: garbage, atomically: true, encoding: .utf8)
        let noSeed = scratch.directory + "/no-seed.creds"
        try auth.creds.components(separatedBy: "*************************")[0].write(toFile: noSeed, atomically: true, encoding: .utf8)
        for (path, message) in [(garbage, "holds no user JWT"), (noSeed, "holds no user NKey seed (SU…) after its JWT")] {
            let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:4222"], sink: "credentials: \(path)")
            let at = try FleetScratch.valueLocation(of: "credentials", in: pipeline)
            for command in ["validate", "run"] {
                let result = try CLI.run([command, pipeline], timeout: 60)
                #expect(result.status == 78, "\(command): \(result.stderr)")
                #expect(result.stderr.contains("\(pipeline):\(at): error: sink 'fleet': 'credentials' '\(path)' \(message)"), "\(command): \(result.stderr)")
            }
        }
        // What the test generates passes the same check.
        let good = scratch.directory + "/good.creds"
        try auth.creds.write(toFile: good, atomically: true, encoding: .utf8)
        let pipeline = try scratch.nodePipeline("node-a", events: events, urls: ["nats://127.0.0.1:4222"], sink: "credentials: \(good)")
        let result = try CLI.run(["validate", pipeline], timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
    }
}
