import PipelineCore

/// Options of the `scope` filter.
public struct ScopeFilterOptions: StageOptions, Equatable {
    /// Where an event comes from, by its namespaces.
    public enum Origin: String, Sendable { case host, container, any }

    /// The scopes kept.
    public var scopes: Set<Scope>
    public var origin: Origin
    /// Whether `lost` records pass (`lost: pass`).
    public var keepLost: Bool

    public init(scopes: Set<Scope> = Set(Scope.allCases), origin: Origin = .any, keepLost: Bool = true) {
        self.scopes = scopes
        self.origin = origin
        self.keepLost = keepLost
    }

    public static let specs: [OptionSpec] = [
        OptionSpec("scopes", "[file|process|network|capabilities]", "keep events of these scopes (default: all)"),
        OptionSpec("origin", "host|container|any", default: "any", "keep events from the host, from containers, or both"),
        LostPolicy.option,
    ]

    /// Reads `scopes`, `origin` and `lost`; nil when the config reported a problem.
    public init?(_ config: StageConfig) {
        let errors = config.diagnostics.count
        var scopes = Set(Scope.allCases)
        if let items = config.scalarList("scopes") {
            scopes = []
            for item in items {
                if let scope = Scope(name: item.text) {
                    scopes.insert(scope)
                } else {
                    var message = "'scopes': unknown scope '\(item.text)'"
                    if let suggestion = closestMatch(to: item.text, in: Scope.allCases.map(\.name)) {
                        message += " (did you mean '\(suggestion)'?)"
                    }
                    message += "; scopes are file, process, network, capabilities"
                    config.error(at: item.location, message)
                }
            }
        }
        let origin = config.choice("origin", ["host", "container", "any"]).flatMap(Origin.init(rawValue:)) ?? .any
        let keepLost = LostPolicy.passes(config)
        guard config.diagnostics.count == errors else { return nil }
        self.init(scopes: scopes, origin: origin, keepLost: keepLost)
    }
}
