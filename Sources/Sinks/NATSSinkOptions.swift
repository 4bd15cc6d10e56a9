import NATSClient
import PipelineCore

/// Options of the `nats` sink (SPEC sections 2 and 9).
public struct NATSSinkOptions: StageOptions, Equatable {
    /// Servers, credentials, TLS.
    public var endpoint: NATSEndpoint
    /// Each event's subject.
    public var subject: SubjectTemplate
    /// The JetStream stream the subjects belong to: created when missing,
    /// checked when present.
    public var stream: String
    public var streamLocation: SourceLocation?
    /// Limits the sink gives the stream when it creates it (nil: none).
    public var maxAgeNs: Int64?
    public var maxBytes: Int?
    /// How long the stream remembers a message id (JetStream's `Duplicates`).
    public var duplicateWindowNs: Int64
    public var replicas: Int
    /// Publishes in flight that no ack has answered yet.
    public var maxPending: Int
    /// NDJSON bytes held until acknowledged; past it, events are dropped and counted.
    public var bufferBytes: Int
    /// How long a publish waits for its ack before it is sent again.
    public var ackTimeoutNs: Int64
    /// How long `close()` waits for the acks of what is still held.
    public var closeTimeoutNs: Int64
    /// Where the sink keeps a file per run (``HeldLedger``): a count of what
    /// it holds, and with `bufferOnDisk` the held lines, so that the next
    /// start reports (or sends) what a killed process held; nil: not kept.
    public var stateDirectory: String?
    public var stateDirectoryLocation: SourceLocation?
    /// `buffer: disk`: the held lines live in a file in `stateDirectory`,
    /// and the next start sends again what a killed process held.
    public var bufferOnDisk = false
    /// With `bufferOnDisk`: how often the held part of the buffer file is
    /// written through to the disk (0: never, the page cache only).
    public var bufferSyncNs: Int64 = 1_000_000_000

    public static let defaultStream = "PIPELINED"

    public init(
        endpoint: NATSEndpoint = NATSEndpoint(), subject: SubjectTemplate = .default, stream: String = NATSSinkOptions.defaultStream,
        maxAgeNs: Int64? = nil, maxBytes: Int? = nil, duplicateWindowNs: Int64 = 120_000_000_000, replicas: Int = 1,
        maxPending: Int = 4096, bufferBytes: Int = 64 << 20, ackTimeoutNs: Int64 = 5_000_000_000, closeTimeoutNs: Int64 = 10_000_000_000
    ) {
        self.endpoint = endpoint
        self.subject = subject
        self.stream = stream
        self.maxAgeNs = maxAgeNs
        self.maxBytes = maxBytes
        self.duplicateWindowNs = duplicateWindowNs
        self.replicas = replicas
        self.maxPending = maxPending
        self.bufferBytes = bufferBytes
        self.ackTimeoutNs = ackTimeoutNs
        self.closeTimeoutNs = closeTimeoutNs
    }

    public static let specs: [OptionSpec] = NATSEndpoint.specs + [
        OptionSpec("subject", "string", default: SubjectTemplate.defaultText, "each event's subject; {node}, {scope} and {event} are replaced (a lost record's scope and event are 'lost')"),
        OptionSpec("stream", "string", default: defaultStream, "the JetStream stream: created if missing, with the subjects '<first subject token>.>', checked if present"),
        OptionSpec("max_age", "duration", "when creating the stream: the oldest message it keeps (default: no limit)"),
        OptionSpec("max_bytes", "size", "when creating the stream: the most bytes it keeps, oldest dropped first (default: no limit)"),
        OptionSpec("duplicate_window", "duration", default: "2m", "when creating the stream: how long it drops a message id it has already stored; a publish not acknowledged within half the stream's window is looked for in the stream before it is sent again (found_in_stream); a resend that goes out without that look and is answered past the window may be stored twice, and is counted (resent_past_duplicate_window) and logged"),
        OptionSpec("replicas", "int", default: "1", "when creating the stream: copies in a cluster (1-5)"),
        OptionSpec("max_pending", "int", default: "4096", "publishes in flight awaiting an ack (1-1048576)"),
        OptionSpec("buffer_bytes", "size", default: "64MiB", "event bytes held until acknowledged (also while the server is unreachable); beyond, events are dropped and counted"),
        OptionSpec("ack_timeout", "duration", default: "5s", "a publish whose ack has not come back by then is sent again (same message id)"),
        OptionSpec("close_timeout", "duration", default: "10s", "at shutdown, how long to wait for the acks of held events; the rest are counted as lost"),
        OptionSpec("state_directory", "path", "where the sink keeps a file per run, mapped, no write per event: a count of the events it holds, and with buffer: disk the events themselves. The next start finds what a killed process (kill -9, the OOM killer) held: sent again with its message ids (buffer: disk), else put in the stream as a lost record (default: not kept)"),
        OptionSpec("buffer", "memory|disk", default: "memory", "where the events held until acknowledged live: in memory, or in state_directory's file (buffer_bytes of it, written through to the disk every buffer_sync), so that what a killed node held is sent on its next start and stored once, and after a crash of the machine what had reached the disk"),
        OptionSpec("buffer_sync", "duration", default: "1s", "with buffer: disk, how often the held part of the file is written through to the disk (msync): a crash of the machine loses at most what came in within it; 0: never (the page cache only, which a kill -9 of the process does not lose)"),
    ]

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        let endpoint = NATSEndpoint(config)
        var subject = SubjectTemplate.default
        if let text = config.string("subject") {
            switch SubjectTemplate.parse(text) {
            case .success(let parsed): subject = parsed
            case .failure(let problem): config.error("subject", problem.message)
            }
        }
        let stream = config.string("stream") ?? Self.defaultStream
        if let problem = NATSEndpoint.plainNameProblem(stream) { config.error("stream", problem) }
        let maxAge = config.duration("max_age", minimumNs: 1_000_000_000)
        let maxBytes = config.size("max_bytes", in: 1 << 20 ... Int.max)
        let duplicateWindow = config.duration("duplicate_window", minimumNs: 1_000_000_000) ?? 120_000_000_000
        if let maxAge, duplicateWindow > maxAge {
            config.error("duplicate_window", "must not be longer than max_age (\(Units.formatDuration(maxAge)))")
        }
        let replicas = config.int("replicas", in: 1...5) ?? 1
        let maxPending = config.int("max_pending", in: 1...1_048_576) ?? 4096
        let bufferBytes = config.size("buffer_bytes", in: 64 << 10 ... Int.max) ?? 64 << 20
        let ackTimeout = config.duration("ack_timeout", minimumNs: 100_000_000) ?? 5_000_000_000
        let closeTimeout = config.duration("close_timeout", minimumNs: 0) ?? 10_000_000_000
        let bufferSync = config.duration("buffer_sync", minimumNs: 0)
        guard config.diagnostics.count == errors, let endpoint else { return nil }
        self.init(
            endpoint: endpoint, subject: subject, stream: stream, maxAgeNs: maxAge, maxBytes: maxBytes,
            duplicateWindowNs: duplicateWindow, replicas: replicas, maxPending: maxPending, bufferBytes: bufferBytes,
            ackTimeoutNs: ackTimeout, closeTimeoutNs: closeTimeout
        )
        streamLocation = config.value("stream")?.location ?? config.location
        stateDirectory = config.string("state_directory")
        stateDirectoryLocation = config.value("state_directory")?.location ?? config.location
        if config.choice("buffer", ["memory", "disk"]) == "disk" {
            guard stateDirectory != nil else {
                config.error("buffer", "must be 'memory' without state_directory ('disk' keeps the events in a file there)")
                return nil
            }
            bufferOnDisk = true
        }
        if let bufferSync {
            guard bufferOnDisk else {
                config.error("buffer_sync", "applies to buffer: disk only (a buffer in memory is not written to the disk)")
                return nil
            }
            bufferSyncNs = bufferSync
        }
    }
}

/// A subject with `{node}`, `{scope}` and `{event}` in it, checked once when
/// the pipeline is read and filled in per (node, event kind), not per event.
public struct SubjectTemplate: Sendable, Equatable {
    /// One piece of a token.
    public enum Part: Sendable, Equatable {
        case text(String)
        case node, scope, event
    }

    /// The tokens between dots, each a run of parts.
    public var tokens: [[Part]]

    public static let defaultText = "pipelined.{node}.{scope}.{event}"
    public static let `default` = try! parse(defaultText).get()

    public struct Problem: Error, Sendable {
        public var message: String
    }

    /// Parses `pipelined.{node}.{scope}.{event}`; a problem says what is wrong.
    public static func parse(_ text: String) -> Result<SubjectTemplate, Problem> {
        if text.isEmpty { return .failure(Problem(message: "must not be empty")) }
        var tokens: [[Part]] = []
        for token in text.split(separator: ".", omittingEmptySubsequences: false) {
            if token.isEmpty { return .failure(Problem(message: "has an empty token (two dots, or a dot at an end): '\(text)'")) }
            var parts: [Part] = []
            var rest = token[...]
            while !rest.isEmpty {
                if rest.first == "{" {
                    guard let close = rest.firstIndex(of: "}") else {
                        return .failure(Problem(message: "has a '{' without its '}': '\(text)'"))
                    }
                    let name = rest[rest.index(after: rest.startIndex)..<close]
                    switch name {
                    case "node": parts.append(.node)
                    case "scope": parts.append(.scope)
                    case "event": parts.append(.event)
                    default:
                        var message = "has an unknown placeholder '{\(name)}' (known: {node}, {scope}, {event})"
                        if let guess = closestMatch(to: String(name), in: ["node", "scope", "event"]) { message += " (did you mean '{\(guess)}'?)" }
                        return .failure(Problem(message: message))
                    }
                    rest = rest[rest.index(after: close)...]
                } else {
                    let end = rest.firstIndex(of: "{") ?? rest.endIndex
                    let literal = rest[..<end]
                    if literal.contains("}") { return .failure(Problem(message: "has a '}' without its '{': '\(text)'")) }
                    guard NATSSubject.isPlainToken(literal) else {
                        return .failure(Problem(message: "must not contain wildcards or white space ('*', '>'): '\(text)'"))
                    }
                    parts.append(.text(String(literal)))
                    rest = rest[end...]
                }
            }
            tokens.append(parts)
        }
        guard case .text = tokens[0].first, tokens[0].count == 1 else {
            return .failure(Problem(message: "must start with a fixed token, such as 'pipelined.' (the stream is created with the subjects '<first token>.>')"))
        }
        return .success(SubjectTemplate(tokens: tokens))
    }

    /// The subject filled in. Values have `.`, `*`, `>` and white space
    /// replaced by `_`, so that a host name such as `web-1.example.com` stays
    /// one token.
    public func render(node: String, scope: String, event: String) -> String {
        tokens.map { parts in
            parts.map { part in
                switch part {
                case .text(let text): text
                case .node: Self.token(node)
                case .scope: Self.token(scope)
                case .event: Self.token(event)
                }
            }.joined()
        }.joined(separator: ".")
    }

    /// Every subject the template can give, as a NATS pattern: a token with a
    /// placeholder is `*` (`pipelined.*.*.*`).
    public var pattern: String {
        tokens.map { parts in
            if parts.count == 1, case .text(let text) = parts[0] { return text }
            return "*"
        }.joined(separator: ".")
    }

    /// The subjects a stream created for this template takes: `<first token>.>`.
    public var streamSubjects: String {
        if case .text(let first) = tokens[0][0] { return first + ".>" }
        return ">"
    }

    static func token(_ value: String) -> String {
        if value.isEmpty { return "_" }
        return String(value.map { character -> Character in
            switch character {
            case ".", "*", ">", " ", "\t", "\r", "\n": "_"
            default: character
            }
        })
    }
}
