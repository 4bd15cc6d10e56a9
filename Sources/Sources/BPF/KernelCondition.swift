import CBPF
import PipelineCore

/// A pushed-down ``KeepCondition`` in the kernel program's terms: which of
/// the configured events to attach, the clauses of the `keep` map (`struct
/// pl_keep`, bpf/wire.h) and, per event, the `enabled` value that selects
/// the clauses applying to it. Built by ``SyscallMonitorSource/push(_:)``
/// (pure: no kernel) and written by `prepare` and reloads.
///
/// The kernel's test keeps at least what the condition keeps: where the
/// program's tables are too small (more than ``maxValues`` listed return
/// values), the clause is widened, never narrowed, and the report says what
/// stays for the filters.
struct KernelCondition: Equatable {
    /// The most clauses and listed values of one clause the program tests.
    static let maxClauses = Int(PL_KEEP_MAX_CLAUSES)
    static let maxValues = Int(PL_KEEP_MAX_VALUES)

    /// One clause as the kernel tests it.
    struct Clause: Equatable {
        var events: Set<UInt32>?
        var min = Int64.min
        var max = Int64.max
        /// nil: any value within the bounds.
        var values: [Int64]?
        var excluded: [Int64] = []
        var origin: KeepClause.Origin?

        /// True when the kernel has nothing to test but the event.
        var testsNothing: Bool { min == .min && max == .max && values == nil && excluded.isEmpty && origin == nil }

        /// The clause in PipelineCore's terms (for the report).
        var keepClause: KeepClause {
            KeepClause(
                events: events, retvalMin: min == .min ? nil : min, retvalMax: max == .max ? nil : max,
                retvalIn: values.map(Set.init), retvalNotIn: Set(excluded), origin: origin)
        }
    }

    /// The configured events the condition can keep, in their order.
    let events: [EventKind]
    /// The clauses with something to test; empty when every kept event is kept whole.
    let clauses: [Clause]
    /// By event id: the `enabled` value of each kept event (PL_EVENT_ON and
    /// the bits of the clauses that apply, none when one keeps it whole).
    let enabled: [UInt32: UInt32]
    /// What the kernel tests and what stays for the filters.
    let report: PushdownReport

    init(_ condition: KeepCondition, configured: [EventKind]) {
        var remaining: [String] = []
        var clauses: [Clause] = []
        for keep in condition.clauses.prefix(Self.maxClauses) {
            var clause = Clause(events: keep.events, origin: keep.origin)
            if let low = keep.retvalMin { clause.min = low }
            if let high = keep.retvalMax { clause.max = high }
            if let values = keep.retvalIn {
                let sorted = values.sorted()
                if sorted.count <= Self.maxValues {
                    clause.values = sorted
                } else if let first = sorted.first, let last = sorted.last {
                    // Too many to list: the range they span (a superset).
                    clause.min = Swift.max(clause.min, first)
                    clause.max = Swift.min(clause.max, last)
                    remaining.append("retval one of \(sorted.count) values [\(sorted.map(String.init).joined(separator: ", "))]: the kernel lists at most \(Self.maxValues), so it keeps \(first)...\(last)")
                }
            }
            let excluded = keep.retvalNotIn.sorted()
            clause.excluded = Array(excluded.prefix(Self.maxValues))
            if excluded.count > Self.maxValues {
                remaining.append("retval none of [\(excluded.dropFirst(Self.maxValues).map(String.init).joined(separator: ", "))]: past the kernel's \(Self.maxValues) exclusions")
            }
            clauses.append(clause)
        }
        // KeepCondition holds at most as many clauses as the program does.
        precondition(condition.clauses.count <= Self.maxClauses, "KeepCondition.maxClauses exceeds PL_KEEP_MAX_CLAUSES")

        let kept = configured.filter { kind in
            clauses.contains { $0.events?.contains(kind.id) ?? true }
        }
        // Clauses with nothing to test keep their events whole: no clause
        // bits for those events, and no slot in the map.
        let tested = clauses.filter { !$0.testsNothing }
        var enabled: [UInt32: UInt32] = [:]
        for kind in kept {
            let applying = clauses.filter { $0.events?.contains(kind.id) ?? true }
            var value = PL_EVENT_ON
            if !applying.contains(where: \.testsNothing) {
                for (index, clause) in tested.enumerated() where applying.contains(clause) {
                    value |= 1 << UInt32(index)
                }
            }
            enabled[kind.id] = value
        }
        self.events = kept
        self.clauses = tested
        self.enabled = enabled

        var pushed: [String] = []
        if kept.count == configured.count {
            pushed.append("events: all \(configured.count) configured attached")
        } else if kept.isEmpty {
            pushed.append("events: none attached (no sink keeps a record of this source)")
        } else {
            pushed.append("events: attach only [\(kept.map(\.name).joined(separator: ", "))] (\(kept.count) of \(configured.count) configured)")
        }
        let wholeEvents = kept.filter { enabled[$0.id] == PL_EVENT_ON }
        if !kept.isEmpty, wholeEvents.count < kept.count {
            for clause in tested {
                var shown = clause.keepClause
                if let events = shown.events { shown.events = events.intersection(kept.map(\.id)) }
                pushed.append("retval/origin at exit: keep (\(shown))")
            }
            if !wholeEvents.isEmpty {
                pushed.append("kept whole: [\(wholeEvents.map(\.name).joined(separator: ", "))]")
            }
        } else if !kept.isEmpty {
            pushed.append("retval/origin: nothing to test (every kept event is kept whole)")
        }
        report = PushdownReport(pushed: pushed, remaining: remaining)
    }

    /// Keeps everything that is configured: what a source with nothing pushed tests.
    static func everything(_ configured: [EventKind]) -> KernelCondition {
        KernelCondition(.everything, configured: configured)
    }

    /// The `enabled` value of an event: 0 when it is not traced.
    func enabledValue(_ id: UInt32) -> UInt32 { enabled[id] ?? 0 }

    /// The `keep` map's value.
    var mapValue: pl_keep {
        var value = pl_keep()
        withUnsafeMutableBytes(of: &value.clauses) { raw in
            let slots = raw.bindMemory(to: pl_keep_clause.self)
            for (index, clause) in clauses.enumerated() {
                var slot = pl_keep_clause()
                slot.min = clause.min
                slot.max = clause.max
                slot.in_count = clause.values.map { UInt32($0.count) } ?? PL_KEEP_IN_ANY
                withUnsafeMutableBytes(of: &slot.in_values) { values in
                    for (at, value) in (clause.values ?? []).enumerated() { values.storeBytes(of: value, toByteOffset: at * 8, as: Int64.self) }
                }
                slot.not_in_count = UInt32(clause.excluded.count)
                withUnsafeMutableBytes(of: &slot.not_in) { values in
                    for (at, value) in clause.excluded.enumerated() { values.storeBytes(of: value, toByteOffset: at * 8, as: Int64.self) }
                }
                switch clause.origin {
                case nil: slot.origin = PL_KEEP_ANY.rawValue
                case .host: slot.origin = PL_KEEP_HOST.rawValue
                case .container: slot.origin = PL_KEEP_CONTAINER.rawValue
                }
                slots[index] = slot
            }
        }
        return value
    }
}
