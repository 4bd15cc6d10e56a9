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
    /// The consumer's filter; nil takes every subject of the stream.
    public var subject: String?
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
        endpoint: NATSEndpoint = NATSEndpoint(), stream: String = "PIPELINED", subject: String? = nil, durable: String,
        deliver: Deliver = .all, batch: Int = 512, ackWaitNs: Int64 = 30_000_000_000, maxAckPending: Int = 8192
    ) {
        self.endpoint = endpoint
        self.stream = stream
        self.subject = subject
        self.durable = durable
        self.deliver = deliver
        self.batch = batch
        self.ackWaitNs = ackWaitNs
        self.maxAckPending = maxAckPending
    }

    public static let specs: [OptionSpec] = NATSEndpoint.specs + [
        OptionSpec("stream", "string", default: "PIPELINED", "the JetStream stream to read (waited for while it does not exist)"),
        OptionSpec("subjects", "[string]", default: "all", "the consumer's subject filter (one subject, wildcards allowed; nats-server 2.9 filters on one)"),
        OptionSpec("durable", "string", required: true, "the durable consumer's name: a restarted aggregator resumes where it acknowledged"),
        OptionSpec("deliver", "all|new", default: "all", "where a new consumer starts: the stream's first message, or the next one published"),
        OptionSpec("batch", "int", default: "512", "most messages one fetch asks for (1-65536)"),
        OptionSpec("ack_wait", "duration", default: "30s", "how long the server waits for an acknowledgement before delivering a message again"),
        OptionSpec("max_ack_pending", "int", default: "8192", "most messages delivered and not yet acknowledged (what a killed aggregator gets again)"),
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
        var subject: String?
        if let items = config.scalarList("subjects") {
            if items.count > 1 {
                config.error(at: items[1].location, "'subjects' takes one subject for now (nats-server 2.9 filters a consumer on one); use a wildcard such as pipelined.*.network.>")
            }
            if let first = items.first {
                if first.text.isEmpty || first.text.split(separator: ".", omittingEmptySubsequences: false).contains(where: \.isEmpty) || first.text.contains(" ") {
                    config.error(at: first.location, "'subjects' items must be NATS subjects such as pipelined.> or pipelined.web-1.>, not '\(first.text)'")
                }
                subject = first.text
            }
        }
        let deliver = config.choice("deliver", Deliver.allCases.map(\.rawValue)).flatMap(Deliver.init(rawValue:)) ?? .all
        let batch = config.int("batch", in: 1...65_536) ?? 512
        let ackWait = config.duration("ack_wait", minimumNs: 1_000_000_000) ?? 30_000_000_000
        let maxAckPending = config.int("max_ack_pending", in: 1...1_000_000) ?? 8192
        if maxAckPending < batch { config.error("max_ack_pending", "must be at least batch (\(batch))") }
        guard config.diagnostics.count == errors, let endpoint, let durable else { return nil }
        self.init(endpoint: endpoint, stream: stream, subject: subject, durable: durable, deliver: deliver,
                  batch: batch, ackWaitNs: ackWait, maxAckPending: maxAckPending)
    }
}
