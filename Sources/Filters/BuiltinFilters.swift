import PipelineCore

/// The filter stages this module provides, for the registry.
public enum BuiltinFilters {
    public static var descriptors: [StageDescriptor] {
        [EventIDFilter.descriptor, RetvalFilter.descriptor, ScopeFilter.descriptor]
    }
}

/// What a filter does with `lost` records (docs/pipeline-file.md: they pass unless
/// the filter names `lost`). Shared by the filters that have no event names.
enum LostPolicy {
    static let option = OptionSpec("lost", "pass|drop", default: "pass", "what to do with 'lost' records: pass them on, or drop them")

    /// Reads the `lost` option: true when lost records pass.
    static func passes(_ config: StageConfig) -> Bool {
        config.choice("lost", ["pass", "drop"]).map { $0 == "pass" } ?? true
    }
}
