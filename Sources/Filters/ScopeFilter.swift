import PipelineCore

/// The `scope` filter: keeps events by scope and by origin (host or container).
public struct ScopeFilter: ConditionFilter {
    public static let descriptor = StageDescriptor.filter(
        type: "scope", summary: "keep events by scope (file, process, network, capabilities) and origin",
        options: ScopeFilterOptions.self, make: ScopeFilter.init)

    /// The options the filter was made with.
    public let options: ScopeFilterOptions
    /// A bit per scope that passes.
    private let scopeMask: UInt8

    public init(_ options: ScopeFilterOptions) {
        self.options = options
        scopeMask = options.scopes.reduce(0) { $0 | 1 << $1.rawValue }
    }

    public func includes(_ record: PipelineRecord) -> Bool {
        switch record {
        case .lost:
            return options.keepLost
        case .event(let event):
            guard let kind = event.kind, scopeMask & (1 << kind.scope.rawValue) != 0 else { return false }
            switch options.origin {
            case .any: return true
            case .host: return !event.isContainer
            case .container: return event.isContainer
            }
        }
    }

    /// The catalog's events of the kept scopes, from the kept origin (exact).
    public var keeps: KeepCondition {
        let events = options.scopes == Set(Scope.allCases)
            ? nil : Set(EventCatalog.all.filter { options.scopes.contains($0.scope) }.map(\.id))
        let origin: KeepClause.Origin? = switch options.origin {
        case .any: nil
        case .host: .host
        case .container: .container
        }
        return KeepCondition([KeepClause(events: events, origin: origin)])
    }
}
