import EventFilters
import PipelineCore
import PipelineTesting
import Testing

@Suite("scope filter")
struct ScopeFilterTests {
    let records: [PipelineRecord] = [
        .event(StageHarness.event("connect")),  // network, host
        .event(StageHarness.event("openat", pidNamespace: 4026532300, mountNamespace: 4026532301)),  // file, container
        .event(StageHarness.event("execve", pidNamespace: 4026532300, mountNamespace: 0)),  // process, host (one ns only)
        .event(StageHarness.event("setuid")),  // capabilities, host
        .lost(LostRecord(timeNs: 1, count: 2, site: .queue)),
    ]

    private func names(_ records: [PipelineRecord]) -> [String] {
        records.map { record in
            if case .event(let event) = record { return event.kind!.name }
            return "lost"
        }
    }

    private func make(_ options: KeyValuePairs<String, Any>) -> (ScopeFilter?, StageConfig) {
        let config = StageHarness.config(.filter, "scope", specs: ScopeFilter.descriptor.options, options)
        return (ScopeFilterOptions(config).map(ScopeFilter.init), config)
    }

    @Test func scopesKeepTheirEvents() throws {
        let filter = try #require(make(["scopes": ["network", "capabilities"]]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["connect", "setuid", "lost"])
    }

    @Test func originContainerNeedsBothNamespaces() throws {
        let filter = try #require(make(["origin": "container"]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["openat", "lost"])
    }

    @Test func originHost() throws {
        let filter = try #require(make(["origin": "host"]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["connect", "execve", "setuid", "lost"])
    }

    @Test func scopesAndOriginAreAnded_lostCanBeDropped() throws {
        let filter = try #require(make(["scopes": ["file", "process"], "origin": "host", "lost": "drop"]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["execve"])
    }

    @Test func badValuesAreReportedWithLocations() {
        let (filter, config) = make(["scopes": ["netwrok"], "origin": "vm"])
        #expect(filter == nil)
        #expect(config.diagnostics.map(\.description) == [
            "test.yaml:4:5: error: filter 't': 'scopes': unknown scope 'netwrok' (did you mean 'network'?); scopes are file, process, network, capabilities",
            "test.yaml:5:13: error: filter 't': 'origin' must be one of host, container, any, not 'vm'",
        ])
    }
}
