#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Atomics
import PipelineCore

/// In-memory stages and helpers for driving stages without the kernel, files
/// or sockets: what pipelined's own tests use, and what a plugin author can
/// use for theirs (in the spirit of swift-nio's `EmbeddedChannel`).
public enum StageHarness {
    /// Runs records through a filter in batches of `batchSize` and returns what passed.
    public static func filter(_ filter: some EventFilter, _ records: [PipelineRecord], batchSize: Int = 64) -> [PipelineRecord] {
        var out: [PipelineRecord] = []
        var index = 0
        while index < records.count {
            var batch = EventBatch(Array(records[index..<min(records.count, index + batchSize)]))
            filter.apply(&batch)
            out += batch.records
            index += batchSize
        }
        return out
    }

    /// A plan of `sources` → `sinks` (every sink reads every source) with no filters.
    public static func plan(sources: [(String, any EventSource)], sinks: [(String, any EventSink, QueuePolicy)], settings: PipelineSettings = PipelineSettings()) -> PipelinePlan {
        var stages: [PlannedStage] = sources.map { PlannedStage(id: $0.0, type: "memory", instance: .source($0.1)) }
        for (id, sink, policy) in sinks {
            stages.append(PlannedStage(id: id, type: "memory", instance: .sink(sink), inputs: sources.map(\.0), queue: policy))
        }
        return PipelinePlan(name: "harness", settings: settings, stages: stages)
    }
}

/// A source that pushes a fixed list of records in batches, then either ends
/// or (with `holdOpen`) keeps running until stopped, like a live source.
public final class MemorySource: EventSource {
    private let records: [PipelineRecord]
    private let batchSize: Int
    private let holdOpen: Bool
    private let stopped = ManagedAtomic<Bool>(false)
    /// Records pushed so far (the source's own count, for assertions).
    public let pushed = ManagedAtomic<Int>(0)

    public init(_ records: [PipelineRecord], batchSize: Int = 256, holdOpen: Bool = false) {
        self.records = records
        self.batchSize = batchSize
        self.holdOpen = holdOpen
    }

    public func prepare(_ context: StageContext) throws {}

    public func run(_ output: SourceOutput) throws {
        var index = 0
        while index < records.count, !stopped.load(ordering: .relaxed) {
            let end = min(records.count, index + batchSize)
            output.emit(EventBatch(Array(records[index..<end])))
            pushed.wrappingIncrement(by: end - index, ordering: .relaxed)
            index = end
        }
        while holdOpen, !stopped.load(ordering: .relaxed) {
            Clock.sleep(ns: 1_000_000)
        }
    }

    public func stop() { stopped.store(true, ordering: .relaxed) }
}

/// A sink that keeps every record it receives; optionally stalls each write
/// until ``release()`` is called, to stand in for a slow disk or peer.
public final class MemorySink: EventSink {
    private let lock = ConditionLock()
    // Guarded by `lock`.
    private nonisolated(unsafe) var _records: [PipelineRecord] = []
    private nonisolated(unsafe) var _closed = false
    private nonisolated(unsafe) var stalled: Bool

    public init(stalled: Bool = false) { self.stalled = stalled }

    public func open(_ context: StageContext) throws {}

    public func write(_ batch: EventBatch) throws {
        lock.withLock {
            while stalled { lock.wait() }
            _records += batch.records
        }
    }

    public func close() throws { lock.withLock { _closed = true } }

    /// Lets stalled writes proceed.
    public func release() {
        lock.withLock {
            stalled = false
            lock.broadcast()
        }
    }

    public var records: [PipelineRecord] { lock.withLock { _records } }
    public var closed: Bool { lock.withLock { _closed } }

    /// Events received, plus the counts carried by `lost` records.
    public var accounted: (events: Int, lost: UInt64) {
        lock.withLock {
            var events = 0
            var lost: UInt64 = 0
            for record in _records {
                switch record {
                case .event: events += 1
                case .lost(let record): lost += record.count
                }
            }
            return (events, lost)
        }
    }
}

extension Clock {
    /// Sleeps this thread (never call from the cooperative pool).
    public static func sleep(ns: Int64) {
        var request = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
        var remaining = timespec()
        while nanosleep(&request, &remaining) != 0, errno == EINTR { request = remaining }
    }
}

extension StageHarness {
    /// A plausible event for tests: `connect` from pid 4242 unless told otherwise.
    public static func event(
        _ name: String = "connect", retval: Int64 = 0, timeNs: Int64 = 1_795_000_000_000_000_000,
        pid: UInt32 = 4242, comm: String = "test", pidNamespace: UInt32 = 0, mountNamespace: UInt32 = 0,
        args: [Argument]? = nil
    ) -> SyscallEvent {
        guard let kind = EventCatalog.kind(named: name) else { preconditionFailure("unknown event \(name)") }
        let defaults: [Argument] = kind.argTypes.map { type in
            switch type {
            case .int: .int(3)
            case .string, .fileType: .string("/tmp/x")
            case .stringArray: .strings(["x"], truncated: false)
            case .sockaddr: .sockaddr(.inet(address: 0x7f00_0001, port: 80))
            default: .flags(type.flagKind!, 0)
            }
        }
        return SyscallEvent(
            timeNs: timeNs, ktimeNs: 1_000, eventID: kind.id, retval: retval,
            pid: pid, ppid: pidNamespace == 0 ? 1 : 0, hostPid: pid, hostPpid: 1, uid: 0,
            pidNamespace: pidNamespace, mountNamespace: mountNamespace, comm: Comm(comm),
            args: Arguments(args ?? defaults)
        )
    }

    /// A stage config built in code, as the loader would build it from a file
    /// named `test.yaml`; each value is a scalar or a list of scalars.
    public static func config(_ kind: StageKind, _ type: String, specs: [OptionSpec], _ options: KeyValuePairs<String, Any>) -> StageConfig {
        var line = 2
        func at() -> SourceLocation {
            line += 1
            return SourceLocation(file: "test.yaml", line: line, column: 5)
        }
        var entries: [ConfigEntry] = []
        for (key, value) in options {
            let keyLocation = at()
            let configValue: ConfigValue
            if let list = value as? [Any] {
                configValue = .sequence(list.map { .scalar("\($0)", quoted: false, at: at()) }, at: keyLocation)
            } else {
                configValue = .scalar("\(value)", quoted: value is String, at: SourceLocation(file: "test.yaml", line: keyLocation.line, column: 7 + key.count))
            }
            entries.append(ConfigEntry(key: key, keyLocation: keyLocation, value: configValue))
        }
        return StageConfig(id: "t", kind: kind, type: type, location: SourceLocation(file: "test.yaml", line: 2, column: 3), specs: specs, entries: entries)
    }
}
