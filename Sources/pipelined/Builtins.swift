import EventFilters
import EventSinks
import EventSources
import PipelineCore

/// Every stage type pipelined ships, registered once, explicitly.
enum Builtins {
    static let registry = StageRegistry(
        BuiltinSources.descriptors + BuiltinFilters.descriptors + BuiltinSinks.descriptors
    )
}
