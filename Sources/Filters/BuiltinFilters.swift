import PipelineCore

/// The filter stages this module provides, for the registry.
public enum BuiltinFilters {
    public static var descriptors: [StageDescriptor] { [] }
}
