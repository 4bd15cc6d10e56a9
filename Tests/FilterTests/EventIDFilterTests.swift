import EventFilters
import PipelineCore
import PipelineTesting
import Testing

@Suite("event_id filter")
struct EventIDFilterTests {
    let records: [PipelineRecord] = [
        .event(StageHarness.event("connect")),
        .event(StageHarness.event("openat")),
        .event(StageHarness.event("execve")),
        .lost(LostRecord(timeNs: 1, count: 7, site: .kernel, cpu: 1)),
        .event(StageHarness.event("umount")),
    ]

    private func names(_ records: [PipelineRecord]) -> [String] {
        records.map { record in
            switch record {
            case .event(let event): event.kind!.name
            case .lost: "lost"
            }
        }
    }

    private func make(_ options: KeyValuePairs<String, Any>) -> (EventIDFilter?, StageConfig) {
        let config = StageHarness.config(.filter, "event_id", specs: EventIDFilter.descriptor.options, options)
        return (EventIDFilterOptions(config).map(EventIDFilter.init), config)
    }

    @Test func includeKeepsOnlyTheNamedEventsAndLostRecords() throws {
        let filter = try #require(make(["include": ["connect", "execve"]]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["connect", "execve", "lost"])
    }

    @Test func excludeRemovesTheNamedEvents() throws {
        let filter = try #require(make(["exclude": ["openat"]]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["connect", "execve", "lost", "umount"])
    }

    @Test func idsAndNamesMix_umount2IsUmount() throws {
        let filter = try #require(make(["include": [42, "umount2"]]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["connect", "lost", "umount"])
    }

    @Test func includeAndExcludeAreAnded() throws {
        let filter = try #require(make(["include": ["connect", "openat"], "exclude": ["openat"]]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["connect", "lost"])
    }

    @Test func namingLostInExcludeDropsLostRecords() throws {
        let filter = try #require(make(["exclude": ["lost", "execve"]]).0)
        #expect(names(StageHarness.filter(filter, records)) == ["connect", "openat", "umount"])
    }

    @Test func unknownEventIsReportedAtItsListItemWithASuggestion() {
        let (filter, config) = make(["include": ["connect", "conect"]])
        #expect(filter == nil)
        #expect(config.diagnostics.map(\.description) == [
            "test.yaml:5:5: error: filter 't': 'include': unknown event 'conect' (did you mean 'connect'?)"
        ])
    }

    @Test func needsIncludeOrExclude() {
        let (filter, config) = make([:])
        #expect(filter == nil)
        #expect(config.diagnostics.map(\.message) == ["filter 't': needs 'include' or 'exclude'"])
    }

    @Test func aBatchWhereEverythingPassesIsNotCopied() throws {
        let filter = try #require(make(["exclude": ["ptrace"]]).0)
        var batch = EventBatch(records)
        filter.apply(&batch)
        #expect(batch.records == records)
    }
}
