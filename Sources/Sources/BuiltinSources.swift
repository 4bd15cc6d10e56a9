import PipelineCore

/// The source stages this module provides, for the registry.
public enum BuiltinSources {
    public static var descriptors: [StageDescriptor] {
        [
            NATSSource.descriptor,
            ReplaySource.descriptor,
            SyscallMonitorSource.descriptor,
        ]
    }
}
