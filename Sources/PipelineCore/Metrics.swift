import Atomics

/// Per-stage counters. Updated with relaxed atomics from the hot path; read by
/// the shutdown summary, tests, and (later) the Prometheus endpoint and `top`.
public final class StageMetrics: Sendable {
    /// Records the stage received (sources: records produced).
    public let recordsIn = ManagedAtomic<UInt64>(0)
    /// Records the stage passed on or wrote.
    public let recordsOut = ManagedAtomic<UInt64>(0)
    /// Events lost at this stage (kernel buffer, full queue, slow client).
    public let lost = ManagedAtomic<UInt64>(0)
    /// Records that could not be decoded (sources) and were skipped.
    public let malformed = ManagedAtomic<UInt64>(0)
    /// Bytes written (sinks) or read (sources).
    public let bytes = ManagedAtomic<UInt64>(0)
    /// Consumers the stage dropped: `unix_socket` clients disconnected because
    /// their buffer was full (`when_full: disconnect`).
    public let clientsDropped = ManagedAtomic<UInt64>(0)

    public init() {}

    @inlinable public func add(_ counter: ManagedAtomic<UInt64>, _ value: UInt64) {
        if value != 0 { counter.wrappingIncrement(by: value, ordering: .relaxed) }
    }

    /// A consistent-enough snapshot for reports.
    public var snapshot: Snapshot {
        Snapshot(
            recordsIn: recordsIn.load(ordering: .relaxed),
            recordsOut: recordsOut.load(ordering: .relaxed),
            lost: lost.load(ordering: .relaxed),
            malformed: malformed.load(ordering: .relaxed),
            bytes: bytes.load(ordering: .relaxed),
            clientsDropped: clientsDropped.load(ordering: .relaxed)
        )
    }

    public struct Snapshot: Sendable, Equatable {
        public var recordsIn, recordsOut, lost, malformed, bytes, clientsDropped: UInt64
    }
}
