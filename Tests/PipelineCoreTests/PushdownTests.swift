import Atomics
import Logging
import PipelineCore
import PipelineTesting
import Testing

/// A filter that keeps what its condition says (the core knows no real filter).
struct ConditionKeeper: ConditionFilter {
    let keeps: KeepCondition
    func includes(_ record: PipelineRecord) -> Bool {
        guard case .event(let event) = record else { return true }
        return keeps.matches(eventID: event.eventID, retval: event.retval, isContainer: event.isContainer)
    }
}

/// A source that, as the kernel source does in the kernel, makes only the
/// records its pushed condition keeps, and takes a new condition in place.
final class SkippingSource: PushdownSource, ReconfigurableSource, @unchecked Sendable {
    let records: [PipelineRecord]
    let made = ManagedAtomic<Int>(0)
    private let lock = ConditionLock()
    private var condition: KeepCondition = .everything
    private(set) var pushes: [KeepCondition] = []
    private let stopped = ManagedAtomic<Bool>(false)
    let holdOpen: Bool

    init(_ records: [PipelineRecord], holdOpen: Bool = false) {
        self.records = records
        self.holdOpen = holdOpen
    }

    var current: KeepCondition { lock.withLock { condition } }

    func push(_ condition: KeepCondition) -> PushdownReport {
        lock.withLock {
            self.condition = condition
            pushes.append(condition)
        }
        return PushdownReport(pushed: ["\(condition)"])
    }

    func reconfigure(like replacement: any EventSource, context: StageContext) throws -> Bool {
        guard let replacement = replacement as? SkippingSource else { return false }
        let newCondition = replacement.current
        lock.withLock { condition = newCondition }
        return true
    }

    func prepare(_ context: StageContext) throws {}

    func run(_ output: SourceOutput) throws {
        repeat {
            let condition = current
            let kept = records.filter { record in
                guard case .event(let event) = record else { return true }
                return condition.matches(eventID: event.eventID, retval: event.retval, isContainer: event.isContainer)
            }
            made.wrappingIncrement(by: kept.count, ordering: .relaxed)
            output.emit(EventBatch(kept))
            if holdOpen { Clock.sleep(ns: 1_000_000) }
        } while holdOpen && !stopped.load(ordering: .relaxed)
    }

    func stop() { stopped.store(true, ordering: .relaxed) }
}

@Suite("pushdown: conditions")
struct KeepConditionTests {
    /// Every combination of the fields a condition tests, over a small universe.
    static let ids: [UInt32] = [2, 42, 43, 59]
    static let retvals: [Int64] = [-111, -2, -1, 0, 1, 3, 7]
    static let samples: [(UInt32, Int64, Bool)] = ids.flatMap { id in retvals.flatMap { r in [(id, r, false), (id, r, true)] } }

    static let clauses: [KeepClause] = [
        .all,
        KeepClause(events: [42]),
        KeepClause(events: [42, 59], retvalMax: -1),
        KeepClause(retvalMin: 0),
        KeepClause(retvalMin: -2, retvalMax: 3, retvalNotIn: [0, 9]),
        KeepClause(retvalIn: [-111, -2, 7]),
        KeepClause(retvalIn: [-111, 1], retvalNotIn: [1]),
        KeepClause(origin: .container),
        KeepClause(events: [2], origin: .host),
        KeepClause(events: []),
    ]

    private func agree(_ condition: KeepCondition, _ expected: (UInt32, Int64, Bool) -> Bool) -> Bool {
        Self.samples.allSatisfy { condition.matches(eventID: $0.0, retval: $0.1, isContainer: $0.2) == expected($0.0, $0.1, $0.2) }
    }

    @Test func intersectionIsExact() {
        for a in Self.clauses {
            for b in Self.clauses {
                let both = KeepCondition([a]).intersection(KeepCondition([b]))
                #expect(agree(both) { a.matches(eventID: $0, retval: $1, isContainer: $2) && b.matches(eventID: $0, retval: $1, isContainer: $2) }, "\(a) and \(b)")
            }
        }
    }

    @Test func unionIsExactWithinTheBound() {
        for a in Self.clauses {
            for b in Self.clauses {
                let either = KeepCondition([a]).union(KeepCondition([b]))
                #expect(agree(either) { a.matches(eventID: $0, retval: $1, isContainer: $2) || b.matches(eventID: $0, retval: $1, isContainer: $2) }, "\(a) or \(b)")
            }
        }
    }

    @Test func aUnionPastTheBoundKeepsASuperset() {
        // Twelve single-value clauses: merged into hulls, never dropped.
        let clauses = (0..<12).map { KeepClause(events: [42], retvalIn: [Int64($0) - 6]) }
        let union = KeepCondition(clauses)
        #expect(union.clauses.count <= KeepCondition.maxClauses)
        for value in -6..<6 {
            #expect(union.matches(eventID: 42, retval: Int64(value), isContainer: false))
        }
        #expect(!union.matches(eventID: 43, retval: 0, isContainer: false), "the hull keeps the event set")
    }

    @Test func everythingAndNothing() {
        #expect(KeepCondition.everything.keepsEverything)
        #expect(KeepCondition.nothing.keepsNothing)
        #expect(KeepCondition([KeepClause(events: [42]), .all]).clauses == [.all])
        #expect(KeepCondition([KeepClause(retvalMin: 3, retvalMax: 1)]).keepsNothing)
        #expect(KeepCondition([KeepClause(origin: .host)]).intersection(KeepCondition([KeepClause(origin: .container)])).keepsNothing)
        #expect(KeepCondition([KeepClause(events: [42]), KeepClause(events: [59], retvalMin: 0)]).events == [42, 59])
        #expect(KeepCondition([KeepClause(events: [42]), KeepClause(retvalMin: 0)]).events == nil)
    }

    @Test func descriptionsNameEventsAndBounds() {
        let connect = EventCatalog.kind(named: "connect")!.id
        #expect(KeepCondition([KeepClause(events: [connect], retvalMax: -1)]).description == "(events [connect], retval < 0 (failure))")
        #expect(KeepCondition.everything.description == "everything")
        #expect(KeepCondition.nothing.description == "nothing")
        #expect(KeepClause(retvalMin: 0, origin: .host).description == "retval >= 0 (success), origin host")
    }
}

@Suite("pushdown: the plan")
struct PlanPushdownTests {
    let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
    static let connect = EventCatalog.kind(named: "connect")!.id
    static let openat = EventCatalog.kind(named: "openat")!.id
    let failures = KeepCondition([KeepClause(retvalMax: -1)])
    let connects = KeepCondition([KeepClause(events: [connect])])

    private func plan(_ stages: [PlannedStage], pushdown: Bool = true) -> PipelinePlan {
        var settings = PipelineSettings()
        settings.pushdown = pushdown
        return PipelinePlan(name: "p", settings: settings, stages: stages)
    }

    /// A filter stage whose options, as a reload compares them, are its condition.
    private func filter(_ id: String, _ condition: KeepCondition, _ inputs: [String]) -> PlannedStage {
        let nowhere = SourceLocation(file: "", line: 0, column: 0)
        let options = ConfigValue.mapping([ConfigEntry(key: "keeps", keyLocation: nowhere, value: .scalar("\(condition)", quoted: false, at: nowhere))], at: nowhere)
        return PlannedStage(id: id, type: "keeper", instance: .filter(ConditionKeeper(keeps: condition)), inputs: inputs, options: options)
    }

    private func sink(_ id: String, _ inputs: [String]) -> PlannedStage {
        PlannedStage(id: id, type: "memory", instance: .sink(MemorySink()), inputs: inputs)
    }

    private var source: PlannedStage { PlannedStage(id: "src", type: "skipping", instance: .source(SkippingSource([]))) }

    @Test func aSinglePathKeepsItsFilter() {
        let plan = plan([source, filter("f", failures, ["src"]), sink("out", ["f"])])
        #expect(plan.keptCondition(of: "src") == failures)
    }

    @Test func filtersInSeriesIntersect() {
        let plan = plan([source, filter("f", failures, ["src"]), filter("c", connects, ["f"]), sink("out", ["c"])])
        #expect(plan.keptCondition(of: "src") == KeepCondition([KeepClause(events: [Self.connect], retvalMax: -1)]))
    }

    @Test func aPathThatKeepsEverythingPushesNothing() {
        // One path keeps everything, one keeps failures: the union is everything.
        let plan = plan([source, filter("f", failures, ["src"]), sink("failed", ["f"]), sink("all", ["src"])])
        #expect(plan.keptCondition(of: "src").keepsEverything)
    }

    @Test func pathsInParallelUnite() {
        let opens = KeepCondition([KeepClause(events: [Self.openat], retvalMin: 0)])
        let plan = plan([
            source, filter("f", failures, ["src"]), filter("o", opens, ["src"]),
            sink("failed", ["f"]), sink("opened", ["o"]),
        ])
        #expect(plan.keptCondition(of: "src") == failures.union(opens))
    }

    @Test func aDiamondCountsEachStageOnce() {
        // src → a, b → join → out: the join's condition meets each branch.
        let plan = plan([
            source, filter("a", failures, ["src"]), filter("b", connects, ["src"]),
            filter("join", KeepCondition([KeepClause(retvalIn: [-111, 0])]), ["a", "b"]), sink("out", ["join"]),
        ])
        let kept = plan.keptCondition(of: "src")
        #expect(kept.matches(eventID: Self.openat, retval: -111, isContainer: false))
        #expect(kept.matches(eventID: Self.connect, retval: 0, isContainer: false))
        #expect(!kept.matches(eventID: Self.openat, retval: 0, isContainer: false))
        #expect(!kept.matches(eventID: Self.connect, retval: -2, isContainer: false))
    }

    @Test func aFilterThatCannotSayKeepsEverything() {
        let plan = plan([
            source,
            PlannedStage(id: "opaque", type: "x", instance: .filter(KeepFailures()), inputs: ["src"]),
            sink("out", ["opaque"]),
        ])
        #expect(plan.keptCondition(of: "src").keepsEverything)
    }

    @Test func pushDownTellsTheSourceAndRecordsIt() throws {
        var on = plan([source, filter("f", failures, ["src"]), sink("out", ["f"])])
        let outcomes = on.pushDown()
        #expect(outcomes.map(\.source) == ["src"])
        #expect(outcomes.first?.condition == failures)
        #expect(outcomes.first?.filters == ["f"])
        #expect(on.stage("src")?.pushed == failures)
        guard case .source(let pushedTo) = try #require(on.stage("src")).instance else { return }
        #expect((pushedTo as? SkippingSource)?.pushes == [failures])

        var off = plan([source, filter("f", failures, ["src"]), sink("out", ["f"])], pushdown: false)
        let offOutcomes = off.pushDown()
        #expect(offOutcomes.first?.condition == nil)
        #expect(off.stage("src")?.pushed == nil)
        guard case .source(let untouched) = try #require(off.stage("src")).instance else { return }
        #expect((untouched as? SkippingSource)?.pushes == [])
        #expect(offOutcomes.first?.explanation.contains { $0.contains("nothing pushed") } == true)
    }

    /// The same records through the same graph, with and without pushdown:
    /// the sink gets the same, and the source made only what the sink keeps.
    @Test func theRuntimePushesBeforeTheSourceRuns_andTheOutputIsTheSame() throws {
        var records: [PipelineRecord] = []
        for index in 0..<1_000 {
            records.append(.event(StageHarness.event(retval: index % 10 == 0 ? -111 : 0, timeNs: Int64(index))))
        }
        func run(pushdown: Bool) throws -> (made: Int, written: [PipelineRecord]) {
            let source = SkippingSource(records)
            let out = MemorySink()
            let runtime = PipelineRuntime(plan: plan([
                PlannedStage(id: "src", type: "skipping", instance: .source(source)),
                filter("f", failures, ["src"]), PlannedStage(id: "out", type: "memory", instance: .sink(out), inputs: ["f"]),
            ], pushdown: pushdown), logger: logger)
            try runtime.start()
            #expect(runtime.wait().succeeded)
            return (source.made.load(ordering: .relaxed), out.records)
        }
        let on = try run(pushdown: true), off = try run(pushdown: false)
        #expect(on.made == 100)
        #expect(off.made == 1_000)
        #expect(on.written.count == 100)
        #expect(on.written == off.written)
    }

    /// A reload that changes only a filter changes what the kept source is told.
    @Test func aReloadThatChangesAFilterReconfiguresTheSource() throws {
        let running = SkippingSource([.event(StageHarness.event(retval: -111)), .event(StageHarness.event(retval: 0))], holdOpen: true)
        let runtime = PipelineRuntime(plan: plan([
            PlannedStage(id: "src", type: "skipping", instance: .source(running)),
            filter("f", failures, ["src"]), sink("out", ["f"]),
        ]), logger: logger)
        try runtime.start()
        #expect(running.current == failures)

        let successes = KeepCondition([KeepClause(retvalMin: 0)])
        let report = try runtime.apply(plan([
            PlannedStage(id: "src", type: "skipping", instance: .source(SkippingSource([]))),
            filter("f", successes, ["src"]), sink("out", ["f"]),
        ]))
        #expect(report.reconfigured == ["src"])
        #expect(running.current == successes)
        #expect(runtime.plan.stage("src")?.pushed == successes)

        // The same plan again: nothing changes.
        let again = try runtime.apply(plan([
            PlannedStage(id: "src", type: "skipping", instance: .source(SkippingSource([]))),
            filter("f", successes, ["src"]), sink("out", ["f"]),
        ]))
        #expect(again.reconfigured.isEmpty)
        runtime.stop()
        #expect(runtime.wait().succeeded)
    }
}
