import NATSClient
import PipelineCore

/// Options of the `nats` source (SPEC sections 2 and 9).
public struct NATSSourceOptions: StageOptions, Equatable {
    public enum Deliver: String, Sendable, CaseIterable {
        /// A new consumer starts at the stream's first message.
        case all
        /// A new consumer starts with the messages published after it.
        case new
    }

    public var endpoint: NATSEndpoint
    public var stream: String
    /// The subjects read, each through a durable consumer of its own (see
    /// ``consumers``); empty takes every subject of the stream. No two
    /// overlap (checked when the file is read), so no event comes twice.
    public var subjects: [String]
    /// Where each of `subjects` is written, for errors only the server finds.
    public var subjectLocations: [SourceLocation] = []
    /// The durable consumer's name: where the aggregator resumes after a restart.
    public var durable: String
    public var deliver: Deliver
    /// Most messages one fetch asks for.
    public var batch: Int
    /// How long the server waits for an ack before it delivers a message again.
    public var ackWaitNs: Int64
    /// Messages delivered and not yet acknowledged, at most: the window a
    /// killed aggregator receives again.
    public var maxAckPending: Int

    public init(
        endpoint: NATSEndpoint = NATSEndpoint(), stream: String = "PIPELINED", subjects: [String] = [], durable: String,
        deliver: Deliver = .all, batch: Int = 512, ackWaitNs: Int64 = 30_000_000_000, maxAckPending: Int = 8192
    ) {
        self.endpoint = endpoint
        self.stream = stream
        self.subjects = subjects
        self.durable = durable
        self.deliver = deliver
        self.batch = batch
        self.ackWaitNs = ackWaitNs
        self.maxAckPending = maxAckPending
    }

    public static let specs: [OptionSpec] = NATSEndpoint.specs + [
        OptionSpec("stream", "string", default: "PIPELINED", "the JetStream stream to read (waited for while it does not exist)"),
        OptionSpec("subjects", "[string]", default: "all", "subjects to read (wildcards allowed), within the stream's and none overlapping another; several are read through a durable consumer each, '<durable>_<subject>_<hash>' (one subject keeps the name durable), fetched in turn"),
        OptionSpec("durable", "string", required: true, "the durable consumer's name: a restarted aggregator resumes where it acknowledged"),
        OptionSpec("deliver", "all|new", default: "all", "where a new consumer starts: the stream's first message, or the next one published"),
        OptionSpec("batch", "int", default: "512", "most messages one fetch asks for (1-65536)"),
        OptionSpec("ack_wait", "duration", default: "30s", "how long the server waits for an acknowledgement before delivering a message again"),
        OptionSpec("max_ack_pending", "int", default: "8192", "most messages delivered and not yet acknowledged, per consumer (what a killed aggregator gets again)"),
    ]

    /// Reads the options; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        let endpoint = NATSEndpoint(config)
        config.require("durable")
        let durable = config.string("durable")
        if let durable, let problem = NATSEndpoint.plainNameProblem(durable) { config.error("durable", problem) }
        let stream = config.string("stream") ?? "PIPELINED"
        if let problem = NATSEndpoint.plainNameProblem(stream) { config.error("stream", problem) }
        var subjects: [String] = []
        var subjectLocations: [SourceLocation] = []
        if let items = config.scalarList("subjects") {
            for (index, item) in items.enumerated() {
                if let problem = Self.subjectProblem(item.text) {
                    config.error(at: item.location, "'subjects' items must be NATS subjects such as pipelined.> or pipelined.web-1.>, not '\(item.text)' (\(problem))")
                    continue
                }
                // An event on a subject two filters share would come twice, once per consumer.
                let earlier = items[..<index].first { $0.text == item.text }
                    ?? items[..<index].first { Self.subjectProblem($0.text) == nil && NATSSubject.overlaps($0.text, item.text) }
                if let earlier {
                    let what = earlier.text == item.text ? "is listed twice" : "overlaps '\(earlier.text)'"
                    config.error(at: item.location, "'subjects' item '\(item.text)' \(what): an event on a subject both match would be delivered twice; list subjects that do not overlap")
                    continue
                }
                subjects.append(item.text)
                subjectLocations.append(item.location)
            }
        }
        let deliver = config.choice("deliver", Deliver.allCases.map(\.rawValue)).flatMap(Deliver.init(rawValue:)) ?? .all
        let batch = config.int("batch", in: 1...65_536) ?? 512
        let ackWait = config.duration("ack_wait", minimumNs: 1_000_000_000) ?? 30_000_000_000
        let maxAckPending = config.int("max_ack_pending", in: 1...1_000_000) ?? 8192
        if maxAckPending < batch { config.error("max_ack_pending", "must be at least batch (\(batch))") }
        guard config.diagnostics.count == errors, let endpoint, let durable else { return nil }
        self.init(endpoint: endpoint, stream: stream, subjects: subjects, durable: durable, deliver: deliver,
                  batch: batch, ackWaitNs: ackWait, maxAckPending: maxAckPending)
        self.subjectLocations = subjectLocations
    }

    /// Why `text` is not a subject a consumer can filter on, or nil: tokens
    /// between dots, none empty, no white space; `*` and `>` only as whole
    /// tokens, `>` only last.
    static func subjectProblem(_ text: String) -> String? {
        if text.isEmpty { return "empty" }
        let tokens = text.split(separator: ".", omittingEmptySubsequences: false)
        for (index, token) in tokens.enumerated() {
            if token.isEmpty { return "an empty token" }
            if token == "*" { continue }
            if token == ">" {
                if index != tokens.count - 1 { return "'>' must be the last token" }
                continue
            }
            if !NATSSubject.isPlainToken(token) { return "'*' and '>' stand alone as tokens, and white space is not allowed" }
        }
        return nil
    }

    /// One durable consumer per subject: its name and filter (nil: every
    /// subject of the stream). With one subject or none it is `durable`
    /// itself, as before lists were allowed, so an aggregator keeps its
    /// place. With several, each is named from `durable` and its subject
    /// alone (`agg_pipelined_web-1_all_1a2b3c4d`), so reordering the list or
    /// restarting finds the same consumers; the hash keeps subjects that
    /// read alike (`a.b`, `a_b`) apart.
    public var consumers: [(name: String, subject: String?)] {
        guard subjects.count > 1 else { return [(durable, subjects.first)] }
        return subjects.map { (Self.consumerName(durable: durable, subject: $0), $0) }
    }

    /// `durable_<subject, readable>_<FNV-1a of the subject, 8 hex digits>`.
    static func consumerName(durable: String, subject: String) -> String {
        let readable = subject.split(separator: ".", omittingEmptySubsequences: false).map { token -> String in
            switch token {
            case "*": "any"
            case ">": "all"
            default: String(token.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
            }
        }.joined(separator: "_")
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in subject.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x100_0000_01b3
        }
        let digits = String(hash & 0xffff_ffff, radix: 16)
        return "\(durable)_\(readable.prefix(64))_\(String(repeating: "0", count: 8 - digits.count))\(digits)"
    }
}

extension NATSSubject {
    /// True when some subject matches both filters (`pipelined.>` and
    /// `pipelined.web-1.>`, or `pipelined.*.network.>` and `pipelined.web-1.>`).
    public static func overlaps(_ first: String, _ second: String) -> Bool {
        let a = first.split(separator: ".", omittingEmptySubsequences: false)
        let b = second.split(separator: ".", omittingEmptySubsequences: false)
        var index = 0
        while index < a.count, index < b.count {
            // `>` takes one token or more: whatever the other has from here.
            if a[index] == ">" || b[index] == ">" { return true }
            if a[index] != "*", b[index] != "*", a[index] != b[index] { return false }
            index += 1
        }
        return a.count == b.count
    }
}
