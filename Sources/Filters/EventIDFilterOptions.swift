import PipelineCore

/// Options of the `event_id` filter.
public struct EventIDFilterOptions: StageOptions, Equatable {
    /// The ids kept; nil keeps every event that is not excluded.
    public var include: Set<UInt32>?
    /// The ids removed.
    public var exclude: Set<UInt32>
    /// False when `exclude` names `lost`: lost records are removed too.
    public var keepLost: Bool

    public init(include: Set<UInt32>?, exclude: Set<UInt32> = [], keepLost: Bool = true) {
        self.include = include
        self.exclude = exclude
        self.keepLost = keepLost
    }

    public static let specs: [OptionSpec] = [
        OptionSpec("include", "[event]", "keep only these events (names such as connect, or ids such as 42)"),
        OptionSpec("exclude", "[event]", "drop these events; 'lost' here also drops lost records"),
    ]

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
}
