/// Filter pushdown: what the sinks downstream of a source can still want,
/// stated in terms a source can test before it makes a record (an eBPF
/// source tests it in the kernel, before it submits anything).
///
/// A filter that can say what it keeps is a ``ConditionFilter``; the plan
/// computes, for each source, the union over every path from it to a sink of
/// the conjunction of the filters on that path (``PipelinePlan/keptCondition(of:)``),
/// and hands it to the source if it is a ``PushdownSource``. A condition is
/// always a superset of what the paths keep: pushdown only removes records
/// that every path would drop, and the filters still run as written, so it
/// never changes a result (docs/pipeline-file.md, `settings.pushdown`).

/// One conjunction: every field that is set must hold. The empty clause keeps everything.
public struct KeepClause: Sendable, Hashable, CustomStringConvertible {
    /// Which events origin may come from (host or container, by namespace).
    public enum Origin: String, Sendable, Hashable {
        case host, container
    }

    /// Event ids kept; nil for any event.
    public var events: Set<UInt32>?
    /// Inclusive bounds on the return value; nil for unbounded.
    public var retvalMin: Int64?
    public var retvalMax: Int64?
    /// The return value is one of these; nil for any.
    public var retvalIn: Set<Int64>?
    /// The return value is none of these.
    public var retvalNotIn: Set<Int64>
    /// Where the event's process runs; nil for anywhere.
    public var origin: Origin?

    public init(
        events: Set<UInt32>? = nil, retvalMin: Int64? = nil, retvalMax: Int64? = nil,
        retvalIn: Set<Int64>? = nil, retvalNotIn: Set<Int64> = [], origin: Origin? = nil
    ) {
        self.events = events
        self.retvalMin = retvalMin
        self.retvalMax = retvalMax
        self.retvalIn = retvalIn
        self.retvalNotIn = retvalNotIn
        self.origin = origin
    }

    /// Keeps everything.
    public static let all = KeepClause()

    /// True when the clause tests nothing.
    public var keepsEverything: Bool {
        events == nil && retvalMin == nil && retvalMax == nil && retvalIn == nil && retvalNotIn.isEmpty && origin == nil
    }

    /// True when no record can satisfy the clause.
    public var keepsNothing: Bool {
        if let events, events.isEmpty { return true }
        if let retvalMin, let retvalMax, retvalMin > retvalMax { return true }
        if let retvalIn, retvalIn.allSatisfy({ !retvalAllowedByBoundsAndExclusions($0) }) { return true }
        return false
    }

    private func retvalAllowedByBoundsAndExclusions(_ value: Int64) -> Bool {
        if let retvalMin, value < retvalMin { return false }
        if let retvalMax, value > retvalMax { return false }
        return !retvalNotIn.contains(value)
    }

    /// Whether a record with these fields satisfies the clause: the meaning
    /// every source that tests a clause must match.
    public func matches(eventID: UInt32, retval: Int64, isContainer: Bool) -> Bool {
        if let events, !events.contains(eventID) { return false }
        if !retvalAllowedByBoundsAndExclusions(retval) { return false }
        if let retvalIn, !retvalIn.contains(retval) { return false }
        if let origin, (origin == .container) != isContainer { return false }
        return true
    }

    /// The clause an event satisfies when it satisfies both: exact.
    public func intersection(_ other: KeepClause) -> KeepClause {
        func both<T>(_ a: Set<T>?, _ b: Set<T>?) -> Set<T>? {
            switch (a, b) {
            case (nil, nil): return nil
            case (let a?, nil): return a
            case (nil, let b?): return b
            case (let a?, let b?): return a.intersection(b)
            }
        }
        var result = KeepClause(
            events: both(events, other.events),
            retvalMin: [retvalMin, other.retvalMin].compactMap { $0 }.max(),
            retvalMax: [retvalMax, other.retvalMax].compactMap { $0 }.min(),
            retvalIn: both(retvalIn, other.retvalIn),
            retvalNotIn: retvalNotIn.union(other.retvalNotIn),
            origin: origin ?? other.origin)
        if let a = origin, let b = other.origin, a != b {
            result.events = [] // host and container at once: nothing
        }
        return result.simplified
    }

    /// The smallest single clause that keeps everything either keeps: an
    /// over-approximation of the union (used when a union has too many clauses).
    public func hull(_ other: KeepClause) -> KeepClause {
        func either<T>(_ a: Set<T>?, _ b: Set<T>?) -> Set<T>? {
            guard let a, let b else { return nil }
            return a.union(b)
        }
        return KeepClause(
            events: either(events, other.events),
            retvalMin: retvalMin.flatMap { a in other.retvalMin.map { Swift.min(a, $0) } },
            retvalMax: retvalMax.flatMap { a in other.retvalMax.map { Swift.max(a, $0) } },
            retvalIn: either(retvalIn, other.retvalIn),
            retvalNotIn: retvalNotIn.intersection(other.retvalNotIn),
            origin: origin == other.origin ? origin : nil)
    }

    /// The same clause with what its other fields already decide removed:
    /// exclusions outside the bounds, listed values the bounds exclude.
    public var simplified: KeepClause {
        var clause = self
        if let retvalIn = clause.retvalIn {
            clause.retvalIn = retvalIn.filter(retvalAllowedByBoundsAndExclusions)
            clause.retvalNotIn = []
        } else {
            clause.retvalNotIn = clause.retvalNotIn.filter { value in
                (clause.retvalMin.map { value >= $0 } ?? true) && (clause.retvalMax.map { value <= $0 } ?? true)
            }
        }
        return clause
    }

    /// `events [connect] retval <= -1 origin host`; `everything` for the empty clause.
    public var description: String {
        var parts: [String] = []
        if let events {
            let names = events.sorted().map { EventCatalog.kind(id: $0)?.name ?? String($0) }
            parts.append("events [\(names.joined(separator: ", "))]")
        }
        switch (retvalMin, retvalMax) {
        case (nil, nil): break
        case (let low?, nil) where low == 0: parts.append("retval >= 0 (success)")
        case (nil, let high?) where high == -1: parts.append("retval < 0 (failure)")
        case (let low?, nil): parts.append("retval >= \(low)")
        case (nil, let high?): parts.append("retval <= \(high)")
        case (let low?, let high?): parts.append("retval in \(low)...\(high)")
        }
        if let retvalIn { parts.append("retval one of [\(retvalIn.sorted().map(String.init).joined(separator: ", "))]") }
        if !retvalNotIn.isEmpty { parts.append("retval none of [\(retvalNotIn.sorted().map(String.init).joined(separator: ", "))]") }
        if let origin { parts.append("origin \(origin.rawValue)") }
        return parts.isEmpty ? "everything" : parts.joined(separator: ", ")
    }
}

/// A union of clauses: a record is kept when it satisfies any of them.
public struct KeepCondition: Sendable, Hashable, CustomStringConvertible {
    /// No clause keeps nothing; a clause that keeps everything makes the whole condition keep everything.
    public private(set) var clauses: [KeepClause]

    /// The most clauses a condition holds; a larger union is merged into
    /// hulls (over-approximated), never truncated.
    public static let maxClauses = 8

    public init(_ clauses: [KeepClause]) {
        self.clauses = []
        for clause in clauses { add(clause) }
    }

    public static let everything = KeepCondition([.all])
    public static let nothing = KeepCondition([])

    public var keepsEverything: Bool { clauses.contains(where: \.keepsEverything) }
    public var keepsNothing: Bool { clauses.isEmpty }

    public func matches(eventID: UInt32, retval: Int64, isContainer: Bool) -> Bool {
        clauses.contains { $0.matches(eventID: eventID, retval: retval, isContainer: isContainer) }
    }

    /// The events some clause can keep; nil when some clause keeps any event.
    public var events: Set<UInt32>? {
        var union: Set<UInt32> = []
        for clause in clauses {
            guard let events = clause.events else { return nil }
            union.formUnion(events)
        }
        return union
    }

    private mutating func add(_ clause: KeepClause) {
        let clause = clause.simplified
        if clause.keepsNothing || clauses.contains(clause) { return }
        if clause.keepsEverything {
            clauses = [.all]
            return
        }
        if keepsEverything { return }
        clauses.append(clause)
        while clauses.count > Self.maxClauses {
            // Merge the two clauses whose hull adds least: here, simply the
            // last two (stable, and the bound is rarely reached).
            let last = clauses.removeLast()
            let previous = clauses.removeLast()
            clauses.append(previous.hull(last).simplified)
        }
    }

    public func union(_ other: KeepCondition) -> KeepCondition {
        KeepCondition(clauses + other.clauses)
    }

    /// Exact up to ``maxClauses``: every pair of clauses, intersected.
    public func intersection(_ other: KeepCondition) -> KeepCondition {
        if keepsEverything { return other }
        if other.keepsEverything { return self }
        var result: [KeepClause] = []
        for a in clauses {
            for b in other.clauses { result.append(a.intersection(b)) }
        }
        return KeepCondition(result)
    }

    public var description: String {
        if clauses.isEmpty { return "nothing" }
        return clauses.map { $0.keepsEverything ? "everything" : "(\($0))" }.joined(separator: " or ")
    }
}

/// A filter that can state a superset of the events it keeps (its `lost`
/// policy aside: lost records are not made by a source's test).
public protocol ConditionFilter: EventFilter {
    /// Every event the filter keeps satisfies this condition.
    var keeps: KeepCondition { get }
}

/// What a source made of the condition pushed to it, for `validate
/// --explain` and the startup log.
public struct PushdownReport: Sendable, Equatable {
    /// What the source tests itself before making records, a line each.
    public var pushed: [String]
    /// What it could not test and leaves to the filters (they run anyway).
    public var remaining: [String]

    public init(pushed: [String] = [], remaining: [String] = []) {
        self.pushed = pushed
        self.remaining = remaining
    }
}

/// A source that can skip, before making them, the records no sink wants.
public protocol PushdownSource: EventSource {
    /// Called before ``EventSource/prepare(_:)`` (and on a reload's new
    /// instance before it is compared), with what the sinks downstream keep.
    /// Must not touch the system: `validate --explain` calls it too. The
    /// source keeps at least every record that satisfies `condition`.
    func push(_ condition: KeepCondition) -> PushdownReport
}

extension PipelinePlan {
    /// What the sinks reachable from `sourceID` keep of its records: the
    /// union over every path from the source to a sink of the intersection of
    /// what the filters on the path keep. A filter that is not a
    /// ``ConditionFilter`` counts as keeping everything, so the result is
    /// always a superset of what the paths keep. Computed once per stage
    /// (a graph with many diamonds has many paths, not many stages).
    public func keptCondition(of sourceID: String) -> KeepCondition {
        var memo: [String: KeepCondition] = [:]
        var readers: [String: [PlannedStage]] = [:]
        for stage in stages {
            for input in stage.inputs { readers[input, default: []].append(stage) }
        }
        // The graph is acyclic (the loader refuses cycles); `visiting`
        // guards against a plan built by hand that is not.
        var visiting: Set<String> = []
        func downstream(of id: String) -> KeepCondition {
            (readers[id] ?? []).reduce(KeepCondition.nothing) { $0.union(kept(by: $1)) }
        }
        func kept(by stage: PlannedStage) -> KeepCondition {
            if let known = memo[stage.id] { return known }
            guard visiting.insert(stage.id).inserted else { return .everything }
            defer { visiting.remove(stage.id) }
            let result: KeepCondition
            switch stage.instance {
            case .sink:
                result = .everything
            case .filter(let filter):
                let own = (filter as? any ConditionFilter)?.keeps ?? .everything
                result = own.intersection(downstream(of: stage.id))
            case .source:
                result = .nothing
            }
            memo[stage.id] = result
            return result
        }
        return downstream(of: sourceID)
    }

    /// One source's pushdown, for the startup log and `validate --explain`.
    public struct PushdownOutcome: Sendable {
        /// The source's id and type.
        public var source: String
        public var type: String
        /// What its paths keep; nil when nothing was pushed (pushdown off, or
        /// a source that is no ``PushdownSource``).
        public var condition: KeepCondition?
        /// What the source made of it; nil when nothing was pushed.
        public var report: PushdownReport?
        /// The filters between the source and its sinks: they run as written.
        public var filters: [String]
    }

    /// Tells every ``PushdownSource`` what its paths keep (unless
    /// `settings.pushdown` is false) and records it in the stage's
    /// ``PlannedStage/pushed``. Touches no system resource: sources only
    /// record the condition until they are prepared.
    @discardableResult
    public mutating func pushDown() -> [PushdownOutcome] {
        var outcomes: [PushdownOutcome] = []
        for index in stages.indices {
            guard case .source(let source) = stages[index].instance else { continue }
            let id = stages[index].id
            var outcome = PushdownOutcome(source: id, type: stages[index].type, filters: filters(downstreamOf: id))
            if settings.pushdown, let pushable = source as? any PushdownSource {
                let condition = keptCondition(of: id)
                stages[index].pushed = condition
                outcome.condition = condition
                outcome.report = pushable.push(condition)
            } else {
                stages[index].pushed = nil
            }
            outcomes.append(outcome)
        }
        return outcomes
    }

    /// The ids of the filters reachable from `id`, in plan order.
    func filters(downstreamOf id: String) -> [String] {
        var reached: Set<String> = []
        var frontier = [id]
        while let next = frontier.popLast() {
            for stage in stages where stage.inputs.contains(next) && reached.insert(stage.id).inserted {
                frontier.append(stage.id)
            }
        }
        return stages.filter { $0.kind == .filter && reached.contains($0.id) }.map(\.id)
    }
}

extension PipelinePlan.PushdownOutcome {
    /// The lines `validate --explain` and the startup log print for it.
    public var explanation: [String] {
        var lines = ["source '\(source)' (\(type)):"]
        guard let condition, let report else {
            lines.append("  nothing pushed: every record is made; the filters decide")
            if !filters.isEmpty { lines.append("  in user space: \(filters.map { "'\($0)'" }.joined(separator: ", ")) (as written)") }
            return lines
        }
        lines.append("  the sinks keep: \(condition)")
        if report.pushed.isEmpty {
            lines.append("  in the source: nothing (it makes every record)")
        } else {
            lines.append(contentsOf: report.pushed.map { "  in the source: \($0)" })
        }
        lines.append(contentsOf: report.remaining.map { "  left to the filters: \($0)" })
        if !filters.isEmpty { lines.append("  in user space: \(filters.map { "'\($0)'" }.joined(separator: ", ")) (as written)") }
        return lines
    }
}
