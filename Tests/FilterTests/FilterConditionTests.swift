import EventFilters
import PipelineCore
import PipelineTesting
import Testing

/// What each filter tells a source it keeps (`keeps`, pushed down) must be
/// exactly what it keeps: checked over every event of the catalog, a spread
/// of return values and both origins, for a range of options.
@Suite("filters: pushed-down conditions")
struct FilterConditionTests {
    static let retvals: [Int64] = [-111, -22, -2, -1, 0, 1, 3, 42, 4096]
    static let events: [SyscallEvent] = EventCatalog.all.flatMap { kind in
        retvals.flatMap { retval in
            [
                StageHarness.event(kind.name, retval: retval),
                StageHarness.event(kind.name, retval: retval, pidNamespace: 4026532300, mountNamespace: 4026532301),
                StageHarness.event(kind.name, retval: retval, pidNamespace: 4026532300, mountNamespace: 0),
            ]
        }
    }

    private func expectExact(_ filter: some ConditionFilter, _ label: String) {
        let condition = filter.keeps
        var disagreements: [String] = []
        for event in Self.events {
            let kept = filter.includes(.event(event))
            let said = condition.matches(eventID: event.eventID, retval: event.retval, isContainer: event.isContainer)
            if kept != said { disagreements.append("\(event.kind?.name ?? "?") retval \(event.retval) container \(event.isContainer): filter \(kept), condition \(said)") }
        }
        #expect(disagreements.isEmpty, "\(label) (\(condition)): \(disagreements.prefix(5))")
    }

    private func retval(_ options: KeyValuePairs<String, Any>) throws {
        let config = StageHarness.config(.filter, "retval", specs: RetvalFilter.descriptor.options, options)
        expectExact(RetvalFilter(try #require(RetvalFilterOptions(config), "\(config.diagnostics)")), "retval \(options)")
    }

    private func eventID(_ options: KeyValuePairs<String, Any>) throws {
        let config = StageHarness.config(.filter, "event_id", specs: EventIDFilter.descriptor.options, options)
        expectExact(EventIDFilter(try #require(EventIDFilterOptions(config), "\(config.diagnostics)")), "event_id \(options)")
    }

    private func scope(_ options: KeyValuePairs<String, Any>) throws {
        let config = StageHarness.config(.filter, "scope", specs: ScopeFilter.descriptor.options, options)
        expectExact(ScopeFilter(try #require(ScopeFilterOptions(config), "\(config.diagnostics)")), "scope \(options)")
    }

    @Test func retvalConditionsAreExact() throws {
        try retval(["success": "false"])
        try retval(["success": "true"])
        try retval(["equals": ["0", "3"]])
        try retval(["not_equals": ["-2", "0"]])
        try retval(["min": "-2"])
        try retval(["max": "1"])
        try retval(["min": "-22", "max": "3"])
        try retval(["errno": ["ECONNREFUSED", "ENOENT"]])
        try retval(["success": "false", "errno": ["ECONNREFUSED"]])
        try retval(["equals": ["-111", "0", "42"], "not_equals": ["0"], "min": "-111"])
        try retval(["success": "false", "not_equals": ["-2"]])
        try retval([:])
    }

    @Test func eventIDConditionsAreExact() throws {
        try eventID(["include": ["connect"]])
        try eventID(["include": ["connect", "openat", "execve"]])
        try eventID(["exclude": ["close", "openat"]])
        try eventID(["include": ["connect", "bind"], "exclude": ["bind"]])
        try eventID(["exclude": ["lost"]])
    }

    @Test func scopeConditionsAreExact() throws {
        try scope(["scopes": ["network"]])
        try scope(["scopes": ["file", "process"]])
        try scope(["origin": "host"])
        try scope(["origin": "container"])
        try scope(["scopes": ["capabilities"], "origin": "container"])
        try scope(["scopes": ["file", "process", "network", "capabilities"]])
        try scope([:])
    }

    @Test func aFilterThatKeepsEverythingSaysSo() throws {
        let none = StageHarness.config(.filter, "retval", specs: RetvalFilter.descriptor.options, ["lost": "drop"])
        #expect(RetvalFilter(try #require(RetvalFilterOptions(none))).keeps.keepsEverything)
        let lostOnly = StageHarness.config(.filter, "event_id", specs: EventIDFilter.descriptor.options, ["exclude": ["lost"]])
        #expect(EventIDFilter(try #require(EventIDFilterOptions(lostOnly))).keeps.keepsEverything)
        let all = StageHarness.config(.filter, "scope", specs: ScopeFilter.descriptor.options, [:])
        #expect(ScopeFilter(try #require(ScopeFilterOptions(all))).keeps.keepsEverything)
    }
}
