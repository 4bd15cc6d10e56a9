/// The untrusted inputs pipelined parses, one fuzz harness each
/// (TESTING.md): the property checks a harness runs on every input the
/// fuzzer makes, and the regression tests run on every committed one.
///
/// A check returns normally when the input was handled as the contract says
/// (decoded, or rejected with an error) and throws ``PropertyViolation`` when
/// it was not; a crash, a leak or a hang is the fuzzer's to see.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// One kernel record through ``WireDecoder``.
    case wireDecoder = "wire_decoder"
    /// One NDJSON line through ``NDJSONDecoder`` (replay, `archive cat`, the nats source).
    case ndjsonDecoder = "ndjson_decoder"
    /// Pipeline file text through ``PipelineLoader`` with the built-in stages.
    case pipelineLoader = "pipeline_loader"
    /// A segment file's bytes through ``SegmentReader``.
    case segmentReader = "segment_reader"
    /// A `manifest.jsonl` file's bytes through ``ArchiveManifest``.
    case manifestReader = "manifest_reader"

    /// The harness's name: its executable, and its folders under fuzz/corpus and fuzz/regressions.
    public var name: String { rawValue }

    /// Runs this target's checks on one input.
    public func check(_ input: UnsafeRawBufferPointer) throws(PropertyViolation) {
        switch self {
        case .wireDecoder: try WireDecoderCheck.check(input)
        case .ndjsonDecoder: try NDJSONDecoderCheck.check(input)
        case .pipelineLoader: try PipelineLoaderCheck.check(input)
        case .segmentReader: try SegmentReaderCheck.check(input)
        case .manifestReader: try ManifestReaderCheck.check(input)
        }
    }

    /// Runs this target's checks on one input given as bytes.
    public func check(_ input: [UInt8]) throws(PropertyViolation) {
        let result = input.withUnsafeBytes { raw in
            Result { () throws(PropertyViolation) in try check(raw) }
        }
        try result.get()
    }
}

/// An input the code under test handled against its contract: what was
/// expected and what happened.
public struct PropertyViolation: Error, Sendable, CustomStringConvertible {
    public var message: String

    /// A violation described by `message`.
    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// Throws a ``PropertyViolation`` with `message` unless `condition` holds.
@inline(__always)
func require(_ condition: Bool, _ message: @autoclosure () -> String) throws(PropertyViolation) {
    if !condition { throw PropertyViolation(message()) }
}

#if canImport(Glibc)
import Glibc
#endif

extension FuzzTarget {
    /// What a harness's `LLVMFuzzerTestOneInput` does: runs the checks and,
    /// on a violation, prints it and aborts, which libFuzzer reports as a
    /// crash and saves the input of. Returns 0 (the input is kept if it is new).
    public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        do {
            try check(UnsafeRawBufferPointer(start: size > 0 ? data : nil, count: size))
        } catch {
            let report = Array("\(name): property violated: \(error.message)\n".utf8)
            _ = report.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
            abort()
        }
        return 0
    }
}
