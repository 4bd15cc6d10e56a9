import EventFilters
import EventSinks
import EventSources
import PipelineCore

/// Every stage type pipelined ships, registered once, explicitly: the registry
/// `run`, `validate` and `plugins` use, and the one the pipeline-loader fuzz
/// harness loads files against (fuzz/), so both see the same stage types.
public enum Builtins {
    /// The built-in sources, filters and sinks.
    public static let registry = StageRegistry(
        BuiltinSources.descriptors + BuiltinFilters.descriptors + BuiltinSinks.descriptors
    )
}
