import EventSinks
import NATSClient
import PipelineCore
import PipelineTesting
import Testing

/// The `nats` sink's options and subject template, without a server (the
/// fleet tests run the sink against real ones).
@Suite("nats sink options")
struct NATSSinkOptionsTests {
    private func config(_ options: KeyValuePairs<String, Any>) -> StageConfig {
        StageHarness.config(.sink, "nats", specs: NATSSink.descriptor.options, options)
    }

    @Test func defaults() throws {
        let options = try #require(NATSSinkOptions(config([:])))
        #expect(options.endpoint.urls == ["nats://127.0.0.1:4222"])
        #expect(options.subject == .default && options.stream == "PIPELINED")
        #expect(options.duplicateWindowNs == 120_000_000_000 && options.replicas == 1)
        #expect(options.maxPending == 4096 && options.bufferBytes == 64 << 20)
        #expect(options.maxAgeNs == nil && options.maxBytes == nil)
        #expect(options.endpoint.credentials == nil && options.endpoint.tls == nil)
    }

    @Test("buffer_sync: 1s by default with buffer: disk, 0s for never; set with buffer: memory, or not a duration, it is an error")
    func bufferSync() throws {
        let disk: KeyValuePairs<String, Any> = ["state_directory": "/var/lib/pipelined", "buffer": "disk"]
        #expect(NATSSinkOptions(config(disk))?.bufferSyncNs == 1_000_000_000)
        #expect(NATSSinkOptions(config(["state_directory": "/var/lib/pipelined", "buffer": "disk", "buffer_sync": "0s"]))?.bufferSyncNs == 0)
        #expect(NATSSinkOptions(config(["state_directory": "/var/lib/pipelined", "buffer": "disk", "buffer_sync": "250ms"]))?.bufferSyncNs == 250_000_000)
        let memory = config(["state_directory": "/var/lib/pipelined", "buffer_sync": "1s"])
        #expect(NATSSinkOptions(memory) == nil)
        #expect(memory.diagnostics.map(\.message) == ["sink 't': 'buffer_sync' applies to buffer: disk only (a buffer in memory is not written to the disk)"])
        let bad = config(["state_directory": "/var/lib/pipelined", "buffer": "disk", "buffer_sync": "often"])
        #expect(NATSSinkOptions(bad) == nil)
        #expect(bad.diagnostics.map(\.message) == ["sink 't': 'buffer_sync' must be a duration such as 500ms, 10s, 5m or 1h, not 'often'"])
    }

    @Test("urls in logs hide a password or a token, and nothing else")
    func urlsAreRedactedForLogs() {
        #expect(NATSEndpoint.redacted("nats://node:s3cr@t@10.0.0.1:4222") == "nats://node:***@10.0.0.1:4222")
        #expect(NATSEndpoint.redacted("tls://sometoken@nats.example:4222") == "tls://***@nats.example:4222")
        #expect(NATSEndpoint.redacted("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222")
        #expect(NATSEndpoint(urls: ["nats://a:b@h1:1", "nats://h2:2"]).urlList == "nats://a:***@h1:1, nats://h2:2")
    }

    @Test func oneUrlOrAList() throws {
        #expect(NATSSinkOptions(config(["url": "nats://10.0.0.1:4222"]))?.endpoint.urls == ["nats://10.0.0.1:4222"])
        let list = config(["url": ["nats://a:4222", "tls://b:4222"]])
        #expect(NATSSinkOptions(list)?.endpoint.urls == ["nats://a:4222", "tls://b:4222"])
        let bad = config(["url": ["nats://a:4222", "http://b"]])
        #expect(NATSSinkOptions(bad) == nil)
        #expect(bad.diagnostics.map(\.message) == ["sink 't': 'url' must be nats://HOST:PORT or tls://HOST:PORT, not 'http://b'"])
    }

    @Test func everyProblemIsReported() {
        let bad = config([
            "stream": "my.stream", "replicas": 7, "max_age": "1m", "duplicate_window": "5m",
            "buffer_bytes": "1KiB", "credentials": "/nonexistent/x.creds", "subject": "pipelined.{host}",
        ])
        #expect(NATSSinkOptions(bad) == nil)
        #expect(bad.diagnostics.map(\.message) == [
            "sink 't': 'credentials' cannot read '/nonexistent/x.creds': No such file or directory",
            "sink 't': 'subject' has an unknown placeholder '{host}' (known: {node}, {scope}, {event})",
            "sink 't': 'stream' must not contain '.' (a JetStream name is one plain word such as PIPELINED)",
            "sink 't': 'duplicate_window' must not be longer than max_age (1m)",
            "sink 't': 'replicas' must be between 1 and 5, not 7",
            "sink 't': 'buffer_bytes' must be at least 64KiB, not 1KiB",
        ])
    }

    @Test func subjectTemplates() throws {
        let template = SubjectTemplate.default
        #expect(template.render(node: "web-1", scope: "network", event: "connect") == "pipelined.web-1.network.connect")
        // A host name's dots (and wildcards, white space) stay inside one token.
        #expect(template.render(node: "web-1.example.com", scope: "file", event: "open") == "pipelined.web-1_example_com.file.open")
        #expect(template.pattern == "pipelined.*.*.*")
        #expect(template.streamSubjects == "pipelined.>")
        let mixed = try SubjectTemplate.parse("fleet.n-{node}.{event}").get()
        #expect(mixed.render(node: "a", scope: "x", event: "bind") == "fleet.n-a.bind")
        #expect(mixed.pattern == "fleet.*.*")
        #expect(mixed.streamSubjects == "fleet.>")
        for (text, problem) in [
            ("", "must not be empty"),
            ("a..b", "has an empty token (two dots, or a dot at an end): 'a..b'"),
            ("a.{nod}", "has an unknown placeholder '{nod}' (known: {node}, {scope}, {event}) (did you mean '{node}'?)"),
            ("a.{node", "has a '{' without its '}': 'a.{node'"),
            ("a.*", "must not contain wildcards or white space ('*', '>'): 'a.*'"),
            ("{node}.x", "must start with a fixed token, such as 'pipelined.' (the stream is created with the subjects '<first token>.>')"),
        ] {
            guard case .failure(let error) = SubjectTemplate.parse(text) else {
                Issue.record("'\(text)' should not parse")
                continue
            }
            #expect(error.message == problem, "\(text)")
        }
    }

    @Test func streamSubjectsCoverTheTemplate() {
        #expect(NATSSubject.covers("pipelined.>", "pipelined.*.*.*"))
        #expect(NATSSubject.covers(">", "pipelined.*.*.*"))
        #expect(NATSSubject.covers("pipelined.*.*.*", "pipelined.*.*.*"))
        #expect(!NATSSubject.covers("pipelined.*.network.*", "pipelined.*.*.*"))
        #expect(!NATSSubject.covers("other.>", "pipelined.*.*.*"))
        #expect(!NATSSubject.covers("pipelined.*", "pipelined.*.*.*"))
        #expect(!NATSSubject.covers("pipelined.>", "pipelined"))
    }

    @Test("a look in the stream filters on the narrowest subject covering what it looks for: shared tokens kept, differing ones '*', differing lengths '>'")
    func narrowestFilter() {
        let cases: [([String], String?)] = [
            ([], nil),
            (["pipelined.web-1.network.connect"], "pipelined.web-1.network.connect"),
            (["pipelined.web-1.network.connect", "pipelined.web-1.network.bind"], "pipelined.web-1.network.*"),
            (["pipelined.web-1.network.connect", "pipelined.web-1.lost.lost", "pipelined.web-1.file.openat"], "pipelined.web-1.*.*"),
            (["pipelined.web-1.network.connect", "pipelined.web-2.network.connect"], "pipelined.*.network.connect"),
            (["fleet.a.b", "fleet.a.b.c.d", "fleet.x.b.c"], "fleet.*.>"),
            (["fleet.a.b.c", "fleet.a.b"], "fleet.a.>"),
            (["a", "b.c"], ">"),
        ]
        for (subjects, expected) in cases {
            let filter = NATSSubject.narrowestFilter(covering: subjects)
            #expect(filter == expected, "\(subjects)")
            // Whatever it gives matches every subject it was given.
            for subject in subjects {
                #expect(filter.map { NATSSubject.covers($0, subject) } == true, "\(filter ?? "nil") must match \(subject)")
            }
        }
    }
}
