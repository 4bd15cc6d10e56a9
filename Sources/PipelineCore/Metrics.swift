import Atomics

/// Per-stage counters. Updated with relaxed atomics from the hot path; read by
/// the shutdown summary, tests, and (later) the Prometheus endpoint and `top`.
///
/// Every stage has the common counters (``recordsIn``, ``recordsOut``,
/// ``malformed``, ``bytes``) and its lost events counted per ``LossSite``
/// (``lostTotal`` is their sum). A stage adds series of its own by name, with
/// help text, when it starts: ``counter(_:help:)`` and ``gauge(_:help:)``
/// return a handle to update, ``observe(_:_:help:read:)`` reads a value the
/// stage already keeps, ``observeEach(_:_:help:read:)`` a labelled family. ``series`` lists them all, each with its labels (the
/// loss counters carry `where`), so that the summary and the metrics endpoint
/// need no special case for any stage. The core declares the sites
/// `kernel`, `queue` and `sink`; a stage declares its own
/// (`extension LossSite { static let client = LossSite("client") }`).
///
/// Declaring takes a lock; updating a handle, ``add(_:_:)`` and
/// ``addLost(_:at:)`` never do (a loss site is found in a short array of
/// set-once slots).
public final class StageMetrics: Sendable {
    /// Records the stage received (sources: records produced).
    public let recordsIn = ManagedAtomic<UInt64>(0)
    /// Records the stage passed on or wrote.
    public let recordsOut = ManagedAtomic<UInt64>(0)
    /// Records that could not be decoded (sources) and were skipped.
    public let malformed = ManagedAtomic<UInt64>(0)
    /// Bytes written (sinks) or read (sources).
    public let bytes = ManagedAtomic<UInt64>(0)

    /// The most loss sites one stage may count (declaring more is a programming error).
    public static let maxLossSites = 8
    private let lostCount = ManagedAtomic<UInt64>(0)
    private let lossSlots: [ManagedAtomicLazyReference<Counter>] = (0..<StageMetrics.maxLossSites).map { _ in .init() }
    private let declaring = ConditionLock()
    // Guarded by `declaring`.
    private nonisolated(unsafe) var declared: [Declared] = []

    /// A stage's counters, all zero, with no loss site and no series of its own yet.
    public init() {}

    /// Adds `value` to one of the common counters (relaxed; nothing for 0).
    @inlinable public func add(_ counter: ManagedAtomic<UInt64>, _ value: UInt64) {
        if value != 0 { counter.wrappingIncrement(by: value, ordering: .relaxed) }
    }

    // MARK: Losses

    /// Events lost at this stage, every site together.
    public var lostTotal: UInt64 { lostCount.load(ordering: .relaxed) }

    /// The counter of events lost at `site` (the `lost` series with
    /// `where: site`), declared on first use. Adding to it adds to
    /// ``lostTotal`` too.
    @discardableResult
    public func loss(_ site: LossSite) -> Counter {
        if let counter = lossCounter(site) { return counter }
        return declaring.withLock {
            for slot in lossSlots {
                if let counter = slot.load() {
                    if counter.site == site { return counter }
                    continue
                }
                let counter = Counter(name: "lost", help: Self.lostHelp, site: site, total: lostCount)
                return slot.storeIfNilThenLoad(counter)
            }
            preconditionFailure("more than \(Self.maxLossSites) loss sites on one stage")
        }
    }

    /// Counts `count` events lost at `site`.
    public func addLost(_ count: UInt64, at site: LossSite) {
        guard count != 0 else { return }
        (lossCounter(site) ?? loss(site)).add(count)
    }

    /// Events lost at `site` so far (0 for a site never counted).
    public func lost(at site: LossSite) -> UInt64 { lossCounter(site)?.value ?? 0 }

    private func lossCounter(_ site: LossSite) -> Counter? {
        for slot in lossSlots {
            guard let counter = slot.load() else { return nil }
            if counter.site == site { return counter }
        }
        return nil
    }

    private var lossCounters: [Counter] { lossSlots.compactMap { $0.load() } }

    // MARK: A stage's own series

    /// A counter of the stage's own (`clients_dropped`), declared once; the
    /// same name again returns the same counter.
    public func counter(_ name: String, help: String) -> Counter {
        declare(name) { existing in
            if let existing {
                guard case .counter(let counter) = existing else { Self.clash(name) }
                return (existing, counter)
            }
            let counter = Counter(name: name, help: help, site: nil, total: nil)
            return (.counter(counter), counter)
        }
    }

    /// A gauge of the stage's own (a level that goes up and down), declared
    /// once; the same name again returns the same gauge.
    public func gauge(_ name: String, help: String) -> Gauge {
        declare(name) { existing in
            if let existing {
                guard case .gauge(let gauge) = existing else { Self.clash(name) }
                return (existing, gauge)
            }
            let gauge = Gauge(name: name, help: help)
            return (.gauge(gauge), gauge)
        }
    }

    /// A series whose value the stage already keeps (an atomic of its own):
    /// `read` is called whenever the series is listed, from any thread.
    /// Declaring the name again replaces `read` (a stage opened again).
    public func observe(_ kind: Series.Kind, _ name: String, help: String, read: @escaping @Sendable () -> Int64) {
        declare(name) { existing in
            if let existing {
                guard case .observed(_, _, let declaredKind, _) = existing, declaredKind == kind else { Self.clash(name) }
            }
            return (.observed(name: name, help: help, kind: kind, read: read), ())
        }
    }

    /// A family of series the stage reads at once, each with labels of its
    /// own (one per kernel program: `program`, `id`). `read` is called
    /// whenever the series are listed, from any thread; declaring the name
    /// again replaces it.
    public func observeEach(_ kind: Series.Kind, _ name: String, help: String, read: @escaping @Sendable () -> [(labels: [String: String], value: Int64)]) {
        declare(name) { existing in
            if let existing {
                guard case .observedEach(_, _, let declaredKind, _) = existing, declaredKind == kind else { Self.clash(name) }
            }
            return (.observedEach(name: name, help: help, kind: kind, read: read), ())
        }
    }

    private func declare<Handle>(_ name: String, _ body: (Declared?) -> (Declared, Handle)) -> Handle {
        precondition(Series.isValidName(name) && !Self.commonNames.contains(name), "'\(name)' is not a name a stage may declare")
        return declaring.withLock {
            let index = declared.firstIndex { $0.name == name }
            let (entry, handle) = body(index.map { declared[$0] })
            if let index { declared[index] = entry } else { declared.append(entry) }
            return handle
        }
    }

    private static func clash(_ name: String) -> Never {
        preconditionFailure("series '\(name)' is already declared as another kind")
    }

    // MARK: Reading

    /// Every series of the stage: the common counters, the loss counters
    /// (label `where`), then the stage's own in the order declared.
    public var series: [Series] {
        let common: [Series] = [
            Series(name: "records_in", help: "records the stage received (a source: records it produced)", kind: .counter, value: recordsIn),
            Series(name: "records_out", help: "records the stage passed on or wrote", kind: .counter, value: recordsOut),
            Series(name: "malformed", help: "records that could not be decoded and were skipped", kind: .counter, value: malformed),
            Series(name: "bytes", help: "bytes the stage wrote (sinks) or read (sources)", kind: .counter, value: bytes),
        ]
        return common + lossCounters.map(\.series) + ownSeries
    }

    /// The value of the stage's own series `name` (`clients_dropped`), nil when not declared.
    public func value(of name: String) -> Int64? {
        ownSeries.first { $0.name == name }?.value
    }

    private var ownSeries: [Series] { declaring.withLock { declared }.flatMap(\.series) }

    private static let commonNames: Set<String> = ["records_in", "records_out", "malformed", "bytes", "lost"]
    private static let lostHelp = "events lost at this stage, by where they were lost"

    /// A consistent-enough snapshot for reports.
    public var snapshot: Snapshot {
        Snapshot(
            recordsIn: recordsIn.load(ordering: .relaxed),
            recordsOut: recordsOut.load(ordering: .relaxed),
            lostTotal: lostTotal,
            malformed: malformed.load(ordering: .relaxed),
            bytes: bytes.load(ordering: .relaxed),
            lost: Dictionary(lossCounters.map { ($0.site!, $0.value) }, uniquingKeysWith: +),
            declared: ownSeries
        )
    }

    /// Every value of one stage at one moment (each read on its own, relaxed).
    public struct Snapshot: Sendable, Equatable {
        public var recordsIn, recordsOut, lostTotal, malformed, bytes: UInt64
        /// Lost events by where they were lost.
        public var lost: [LossSite: UInt64]
        /// The stage's own series, in the order declared.
        public var declared: [Series]
    }

    /// One series as the metrics endpoint and the summary list it.
    public struct Series: Sendable, Equatable {
        /// A counter only goes up; a gauge is a level.
        public enum Kind: String, Sendable { case counter, gauge }
        /// `records_out`, `clients_dropped`: lower case, digits and `_`.
        public var name: String
        public var help: String
        public var kind: Kind
        /// `where` for a loss counter; the runtime adds `stage` and `type`.
        public var labels: [String: String]
        public var value: Int64

        /// A series with these fields, as listed at one moment.
        public init(name: String, help: String, kind: Kind, labels: [String: String] = [:], value: Int64) {
            self.name = name
            self.help = help
            self.kind = kind
            self.labels = labels
            self.value = value
        }

        init(name: String, help: String, kind: Kind, value: ManagedAtomic<UInt64>) {
            self.init(name: name, help: help, kind: kind, value: Int64(truncatingIfNeeded: value.load(ordering: .relaxed)))
        }

        /// A letter or `_` first, then lower-case letters, digits and `_`.
        static func isValidName(_ name: String) -> Bool {
            guard let first = name.utf8.first, first == UInt8(ascii: "_") || (first >= 0x61 && first <= 0x7A) else { return false }
            return name.utf8.allSatisfy { $0 == UInt8(ascii: "_") || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) }
        }
    }

    /// A count that only goes up; ``add(_:)`` is a relaxed atomic add.
    public final class Counter: Sendable {
        public let name: String
        public let help: String
        /// Set for a loss counter: its `where`.
        public let site: LossSite?
        private let count = ManagedAtomic<UInt64>(0)
        /// The stage's lost total, which a loss counter adds to as well.
        private let total: ManagedAtomic<UInt64>?

        init(name: String, help: String, site: LossSite?, total: ManagedAtomic<UInt64>?) {
            self.name = name
            self.help = help
            self.site = site
            self.total = total
        }

        /// Adds `value` (relaxed; a loss counter adds to the stage's lost total too).
        public func add(_ value: UInt64 = 1) {
            guard value != 0 else { return }
            count.wrappingIncrement(by: value, ordering: .relaxed)
            total?.wrappingIncrement(by: value, ordering: .relaxed)
        }

        /// The count so far.
        public var value: UInt64 { count.load(ordering: .relaxed) }

        var series: Series {
            Series(name: name, help: help, kind: .counter, labels: site.map { ["where": $0.rawValue] } ?? [:], value: Int64(truncatingIfNeeded: value))
        }
    }

    /// A level that goes up and down (clients connected now).
    public final class Gauge: Sendable {
        public let name: String
        public let help: String
        private let level = ManagedAtomic<Int64>(0)

        init(name: String, help: String) {
            self.name = name
            self.help = help
        }

        /// Sets the level (relaxed).
        public func set(_ value: Int64) { level.store(value, ordering: .relaxed) }
        /// Moves the level by `delta`, up or down (relaxed).
        public func add(_ delta: Int64) { level.wrappingIncrement(by: delta, ordering: .relaxed) }
        /// The level now.
        public var value: Int64 { level.load(ordering: .relaxed) }
    }

    private enum Declared: Sendable {
        case counter(Counter)
        case gauge(Gauge)
        case observed(name: String, help: String, kind: Series.Kind, read: @Sendable () -> Int64)
        case observedEach(name: String, help: String, kind: Series.Kind, read: @Sendable () -> [(labels: [String: String], value: Int64)])

        var name: String {
            switch self {
            case .counter(let counter): counter.name
            case .gauge(let gauge): gauge.name
            case .observed(let name, _, _, _), .observedEach(let name, _, _, _): name
            }
        }

        var series: [Series] {
            switch self {
            case .counter(let counter): [counter.series]
            case .gauge(let gauge): [Series(name: gauge.name, help: gauge.help, kind: .gauge, value: gauge.value)]
            case .observed(let name, let help, let kind, let read): [Series(name: name, help: help, kind: kind, value: read())]
            case .observedEach(let name, let help, let kind, let read):
                read().map { Series(name: name, help: help, kind: kind, labels: $0.labels, value: $0.value) }
            }
        }
    }
}
