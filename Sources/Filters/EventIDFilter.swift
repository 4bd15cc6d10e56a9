import PipelineCore

/// The `event_id` filter: keeps events by name or id.
///
/// `include` keeps only the listed events; `exclude` removes the listed ones;
/// both together keep what is included and not excluded. The name `lost` in
/// `exclude` removes `lost` records, which otherwise always pass.
public struct EventIDFilter: EventFilter {
    public static let descriptor = StageDescriptor.filter(
        type: "event_id",
        summary: "keep events by name or id (include / exclude)",
        options: [
            OptionSpec("include", "[event]", "keep only these events (names such as connect, or ids such as 42)"),
            OptionSpec("exclude", "[event]", "drop these events; 'lost' here also drops lost records"),
        ],
        make: { config in EventIDFilter(config) }
    )

    /// Pass/drop by event id: a dense table indexed by id.
    private let keep: [Bool]
    private let keepLost: Bool

    /// Builds the filter from explicit sets.
    public init(include: Set<UInt32>?, exclude: Set<UInt32> = [], keepLost: Bool = true) {
        var keep = [Bool](repeating: include == nil, count: 512)
        for id in include ?? [] where id < 512 { keep[Int(id)] = true }
        for id in exclude where id < 512 { keep[Int(id)] = false }
        self.keep = keep
        self.keepLost = keepLost
    }

    /// Reads `include` and `exclude`; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        func resolve(_ key: String) -> (ids: Set<UInt32>, lost: Bool)? {
            guard let items = config.scalarList(key) else { return nil }
            var ids: Set<UInt32> = []
            var lost = false
            for item in items {
                if item.text == "lost" {
                    lost = true
                } else if let kind = EventCatalog.resolve(item.text) {
                    ids.insert(kind.id)
                } else {
                    var message = "'\(key)': unknown event '\(item.text)'"
                    if let suggestion = closestMatch(to: item.text, in: EventCatalog.all.map(\.name)) {
                        message += " (did you mean '\(suggestion)'?)"
                    }
                    config.error(at: item.location, message)
                }
            }
            return (ids, lost)
        }
        let errors = config.diagnostics.count
        let include = resolve("include")
        let exclude = resolve("exclude")
        if !config.has("include") && !config.has("exclude") {
            config.error(nil, "needs 'include' or 'exclude'")
        }
        guard config.diagnostics.count == errors else { return nil }
        self.init(include: include?.ids, exclude: exclude?.ids ?? [], keepLost: !(exclude?.lost ?? false))
    }

    @inlinable
    public func includes(_ record: PipelineRecord) -> Bool {
        switch record {
        case .event(let event): event.eventID < 512 && passes(id: event.eventID)
        case .lost: keepsLost
        }
    }

    @usableFromInline func passes(id: UInt32) -> Bool { keep[Int(id)] }
    @usableFromInline var keepsLost: Bool { keepLost }
}
