/// A checked pipeline: every stage built from its options, wired by id.
/// ``PipelineLoader`` makes one from a file; ``PipelineRuntime`` runs it.
public struct PipelinePlan: Sendable {
    /// The file's `name`, or the file name.
    public var name: String
    public var settings: PipelineSettings
    /// Sources, then filters, then sinks, each in file order.
    public var stages: [PlannedStage]

    public init(name: String, settings: PipelineSettings = PipelineSettings(), stages: [PlannedStage]) {
        self.name = name
        self.settings = settings
        self.stages = stages
    }

    public func stage(_ id: String) -> PlannedStage? { stages.first { $0.id == id } }
}

/// One stage of a plan.
public struct PlannedStage: Sendable {
    public var id: String
    public var type: String
    public var instance: StageInstance
    /// The ids this stage reads from (empty for sources).
    public var inputs: [String]
    /// For sinks: how its queue behaves when full.
    public var queue: QueuePolicy
    /// The stage's options as written (every key but `type` and `inputs`),
    /// locations removed (``ConfigValue/comparable``): a reload keeps a
    /// stage running when its type and these are unchanged.
    public var options: ConfigValue
    /// For a ``PushdownSource``: the condition pushed to it (``PipelinePlan/pushDown()``),
    /// nil when none was. A reload that changes it reconfigures the source.
    public var pushed: KeepCondition?

    public init(id: String, type: String, instance: StageInstance, inputs: [String] = [], queue: QueuePolicy = QueuePolicy(), options: ConfigValue = .mapping([], at: SourceLocation(file: "", line: 0, column: 0))) {
        self.id = id
        self.type = type
        self.instance = instance
        self.inputs = inputs
        self.queue = queue
        self.options = options.comparable
    }

    /// True when `other` is the same stage with the same options: a reload
    /// leaves it running (its `inputs` may still be rewired).
    public func hasSameConfiguration(as other: PlannedStage) -> Bool {
        id == other.id && kind == other.kind && type == other.type && options == other.options
    }

    public var kind: StageKind { instance.kind }
}

/// How a sink's queue behaves (the common sink options `queue_events` and `queue_full`).
public struct QueuePolicy: Sendable, Equatable {
    public enum WhenFull: String, Sendable {
        /// The producer waits: back-pressure reaches the source (and the
        /// kernel buffer, whose losses are counted there).
        case block
        /// The batch is dropped and counted; the sink later receives a
        /// `lost` record with `where: queue`.
        case drop
    }

    /// Events the queue holds before it is full. The default, 16 batches of
    /// the default size, keeps a sink busy; bursts are better held upstream,
    /// where a kernel source's buffer keeps a record in about 100 bytes and
    /// a decoded event in a queue takes about 240.
    public var capacityEvents: Int
    public var whenFull: WhenFull

    public init(capacityEvents: Int = 8_192, whenFull: WhenFull = .block) {
        self.capacityEvents = capacityEvents
        self.whenFull = whenFull
    }
}

/// The pipeline file's optional `settings` map.
public struct PipelineSettings: Sendable, Equatable {
    /// The most records a source puts in one batch.
    public var batchEvents: Int = 512
    /// How long shutdown waits for queues to drain before giving up.
    public var drainTimeoutNs: Int64 = 30_000_000_000
    /// `trace`, `debug`, `info`, `notice`, `warning`, `error`, `critical`.
    public var logLevel: String = "info"
    /// How far the runtime lowers each stage thread's nice value below that
    /// of the thread that started it (0-20; needs CAP_SYS_NICE), as auditd's
    /// `priority_boost` (also 4 by default): a monitor that gets only its
    /// fair share of a busy machine falls behind the very load it watches,
    /// and its buffers overflow.
    public var priorityBoost: Int = 4
    /// The name records carry in `node` (docs/pipeline-file.md); nil for the host name.
    public var node: String?
    /// `metrics.listen`: where the command serves its Prometheus endpoint,
    /// or nil for none (`listen: false`). The core only carries the address.
    public var metricsListen: ListenAddress? = ListenAddress(host: "127.0.0.1", port: 9464)
    /// `pushdown`: whether sources that can are told what the sinks keep
    /// (Pushdown.swift), so that they make only records some path keeps.
    public var pushdown: Bool = true
    // Privileges after start (docs/pipeline-file.md, "Privileges"): the
    // command line acts on these; the core only carries them.
    /// `drop_privileges`: once the pipeline runs, drop every capability, the
    /// bounding and ambient sets, and set no_new_privs.
    public var dropPrivileges: Bool = true
    /// `user` / `group`: the account to switch to when dropping; nil keeps the ids.
    public var runAs: RunAsIdentity?
    /// `seccomp`: the syscall allow-list installed after the drop, and what it does otherwise.
    public var seccomp: SeccompMode = .off

    public init() {}

    /// The node records made by this pipeline carry.
    public var nodeID: NodeID { node.map(NodeID.init) ?? .host }

    /// The options of the `settings` map, for `plugins` and unknown-key checks.
    public static let options: [OptionSpec] = [
        OptionSpec("batch_events", "int", default: "512", "most records a source puts in one batch (1-65536)"),
        OptionSpec("drain_timeout", "duration", default: "30s", "how long shutdown waits for queues to drain"),
        OptionSpec("log_level", "trace|debug|info|notice|warning|error|critical", default: "info", "log verbosity (stderr)"),
        OptionSpec("priority_boost", "int", default: "4", "raise the stage threads' scheduling priority by this much (nice -N, 0-20; needs CAP_SYS_NICE), as auditd's priority_boost"),
        OptionSpec("node", "string", default: "the host name", "the machine's name in every record's node key (a fleet's records say where they came from)"),
        OptionSpec("pushdown", "bool", default: "true", "tell each source what its paths to the sinks keep, so that it skips, before making them, the records every path drops (the kernel source tests them in the kernel); the filters still run as written. `pipelined validate --explain` shows what is pushed"),
        OptionSpec("metrics", "{listen: HOST:PORT|false}", default: "{listen: 127.0.0.1:9464}", "metrics.listen: HOST:PORT of the Prometheus endpoint (GET /metrics, /-/healthy, /-/ready); port 0 picks a free one; false for none"),
        OptionSpec("drop_privileges", "bool", default: "true", "once the pipeline runs (programs attached, sinks open, metrics bound), drop every capability (effective, permitted, inheritable, bounding, ambient) and set no_new_privs; a reload then cannot load new eBPF programs"),
        OptionSpec("user", "name|uid", default: "none (stay uid 0)", "when dropping privileges, also switch to this user (sink directories must be writable by it)"),
        OptionSpec("group", "name|gid", default: "the user's primary group", "the group to switch to with user (the only group: supplementary groups are cleared)"),
        OptionSpec("seccomp", "off|log|kill", default: "off", "after the drop, allow only the syscalls the running pipeline uses; log (the call goes ahead, the kernel logs it) or kill the process on any other"),
    ]

    /// Options every sink accepts: its input queue.
    public static let sinkQueueOptions: [OptionSpec] = [
        OptionSpec("queue_events", "int", default: "8192", "events the sink's input queue holds (16-16777216)"),
        OptionSpec("queue_full", "block|drop", default: "block", "when the queue is full: block the producers, or drop and count (a 'lost' record with where=queue)"),
    ]
}

/// A TCP address to listen on, as `settings.metrics.listen` writes it:
/// `HOST:PORT`, with an IPv6 host in brackets (`[::1]:9464`).
public struct ListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    /// 0 asks the kernel for a free port.
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` or `[V6]:PORT`; nil when it is neither.
    public init?(parsing text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65_535).contains(port) else {
            return nil
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") {
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            return nil
        }
        guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "/" }) else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
