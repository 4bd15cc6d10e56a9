import PipelineCore

/// The `scope` filter: keeps events by scope and by origin (host or container).
public struct ScopeFilter: EventFilter {
    public static let descriptor = StageDescriptor.filter(
        type: "scope",
        summary: "keep events by scope (file, process, network, capabilities) and origin",
        options: [
            OptionSpec("scopes", "[file|process|network|capabilities]", "keep events of these scopes (default: all)"),
            OptionSpec("origin", "host|container|any", default: "any", "keep events from the host, from containers, or both"),
            LostPolicy.option,
        ],
        make: { config in ScopeFilter(config) }
    )

    /// Where an event comes from, by its namespaces.
    public enum Origin: String, Sendable { case host, container, any }

    /// A bit per scope that passes.
    private let scopeMask: UInt8
    private let origin: Origin
    private let keepLost: Bool

    public init(scopes: Set<Scope> = Set(Scope.allCases), origin: Origin = .any, keepLost: Bool = true) {
        scopeMask = scopes.reduce(0) { $0 | 1 << $1.rawValue }
        self.origin = origin
        self.keepLost = keepLost
    }

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

    public func includes(_ record: PipelineRecord) -> Bool {
        switch record {
        case .lost:
            return keepLost
        case .event(let event):
            guard let kind = event.kind, scopeMask & (1 << kind.scope.rawValue) != 0 else { return false }
            switch origin {
            case .any: return true
            case .host: return !event.isContainer
            case .container: return event.isContainer
            }
        }
    }
}
