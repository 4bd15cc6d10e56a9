import PipelineCore

/// The sink stages this module provides, for the registry.
public enum BuiltinSinks {
    public static var descriptors: [StageDescriptor] {
        [
            FileSink.descriptor,
            LZ4SegmentSink.descriptor,
            NATSSink.descriptor,
            UnixSocketSink.descriptor,
        ]
    }
}
