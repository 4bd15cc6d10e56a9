/// How a stage type is made: its name, kind, documented options and factory.
///
/// Made with ``source(type:summary:options:make:)``, ``filter(type:summary:options:make:)``
/// or ``sink(type:summary:options:make:)``: the constructor fixes the kind and
/// the type of stage its factory returns together, so a descriptor whose kind
/// and stage disagree does not compile.
///
/// The factory decodes options from a ``StageConfig`` and returns the stage, or
/// nil after reporting its problems on the config. It must have no side effects:
/// `validate` calls it too. Resources are acquired later, in
/// ``EventSource/prepare(_:)`` or ``EventSink/open(_:)``.
public struct StageDescriptor: Sendable {
    /// The `type:` written in pipeline files (`lz4_segments`).
    public let type: String
    public let kind: StageKind
    /// One line for `pipelined plugins`.
    public let summary: String
    /// The stage's own options (the runtime adds ``PipelineSettings/sinkQueueOptions`` to sinks).
    public let options: [OptionSpec]
    private let factory: @Sendable (StageConfig) -> StageInstance?

    private init(type: String, kind: StageKind, summary: String, options: [OptionSpec], factory: @escaping @Sendable (StageConfig) -> StageInstance?) {
        self.type = type
        self.kind = kind
        self.summary = summary
        self.options = options
        self.factory = factory
    }

    /// A source type: `make` returns the source, or nil after reporting on the config.
    public static func source(type: String, summary: String, options: [OptionSpec], make: @escaping @Sendable (StageConfig) -> (any EventSource)?) -> StageDescriptor {
        StageDescriptor(type: type, kind: .source, summary: summary, options: options) { make($0).map(StageInstance.source) }
    }

    /// A filter type: `make` returns the filter, or nil after reporting on the config.
    public static func filter(type: String, summary: String, options: [OptionSpec], make: @escaping @Sendable (StageConfig) -> (any EventFilter)?) -> StageDescriptor {
        StageDescriptor(type: type, kind: .filter, summary: summary, options: options) { make($0).map(StageInstance.filter) }
    }

    /// A sink type: `make` returns the sink, or nil after reporting on the config.
    public static func sink(type: String, summary: String, options: [OptionSpec], make: @escaping @Sendable (StageConfig) -> (any EventSink)?) -> StageDescriptor {
        StageDescriptor(type: type, kind: .sink, summary: summary, options: options) { make($0).map(StageInstance.sink) }
    }

    /// A source type whose options are `Options`: the source is made from
    /// them once they decode.
    public static func source<Options: StageOptions>(type: String, summary: String, options: Options.Type, make: @escaping @Sendable (Options) -> any EventSource) -> StageDescriptor {
        source(type: type, summary: summary, options: Options.specs) { Options($0).map(make) }
    }

    /// A filter type whose options are `Options`.
    public static func filter<Options: StageOptions>(type: String, summary: String, options: Options.Type, make: @escaping @Sendable (Options) -> any EventFilter) -> StageDescriptor {
        filter(type: type, summary: summary, options: Options.specs) { Options($0).map(make) }
    }

    /// A sink type whose options are `Options`.
    public static func sink<Options: StageOptions>(type: String, summary: String, options: Options.Type, make: @escaping @Sendable (Options) -> any EventSink) -> StageDescriptor {
        sink(type: type, summary: summary, options: Options.specs) { Options($0).map(make) }
    }

    /// Builds a stage from its options: always of ``kind``; nil when the
    /// config reported a problem.
    public func make(_ config: StageConfig) -> StageInstance? { factory(config) }

    /// Every option a stage of this type accepts, the common ones included.
    public var allOptions: [OptionSpec] {
        kind == .sink ? options + PipelineSettings.sinkQueueOptions : options
    }
}

/// A stage type's options struct (`RetvalFilterOptions`, in the file beside
/// its stage): the options it documents and its decoding from a config.
public protocol StageOptions: Sendable {
    /// The options `plugins` prints and the loader accepts for this type.
    static var specs: [OptionSpec] { get }
    /// Reads the options, reporting every problem on `config`; nil when there was one.
    init?(_ config: StageConfig)
}

/// The one explicit map from stage type names to their descriptors. The
/// `pipelined` command registers every built-in stage once at start-up; tests
/// and plugin authors build registries of their own.
public struct StageRegistry: Sendable {
    public private(set) var descriptors: [String: StageDescriptor] = [:]

    public init() {}

    public init(_ descriptors: [StageDescriptor]) {
        for descriptor in descriptors { register(descriptor) }
    }

    /// Adds a stage type; registering a name twice is a programming error.
    public mutating func register(_ descriptor: StageDescriptor) {
        precondition(descriptors[descriptor.type] == nil, "stage type '\(descriptor.type)' registered twice")
        descriptors[descriptor.type] = descriptor
    }

    public func descriptor(for type: String) -> StageDescriptor? { descriptors[type] }

    /// Descriptors of one kind, sorted by type name.
    public func types(of kind: StageKind) -> [StageDescriptor] {
        descriptors.values.filter { $0.kind == kind }.sorted { $0.type < $1.type }
    }
}
