import EventFilters
import PipelineCore
import PipelineTesting
import Testing

@Suite("retval filter")
struct RetvalFilterTests {
    /// One connect per return value, then a lost record.
    let retvals: [Int64] = [-115, -111, -13, -2, -1, 0, 3, 42]
    var records: [PipelineRecord] {
        retvals.map { .event(StageHarness.event("connect", retval: $0)) } + [.lost(LostRecord(timeNs: 1, count: 5, site: .kernel, cpu: 0))]
    }

    private func make(_ options: KeyValuePairs<String, Any>) -> (RetvalFilter?, StageConfig) {
        let config = StageHarness.config(.filter, "retval", specs: RetvalFilter.descriptor.options, options)
        let filter = RetvalFilterOptions(config).map(RetvalFilter.init)
        config.finish()
        return (filter, config)
    }

    /// What passes, as return values; `nil` stands for the lost record.
    private func kept(_ options: KeyValuePairs<String, Any>) throws -> [Int64?] {
        let filter = try #require(make(options).0)
        return StageHarness.filter(filter, records).map { record in
            if case .event(let event) = record { return event.retval }
            return nil
        }
    }

    @Test func successTrueAndFalse() throws {
        #expect(try kept(["success": true]) == [0, 3, 42, nil])
        #expect(try kept(["success": false]) == [-115, -111, -13, -2, -1, nil])
    }

    @Test func equalsAndNotEquals() throws {
        #expect(try kept(["equals": [0, -111, 7]]) == [-111, 0, nil])
        #expect(try kept(["not_equals": [-115, -2]]) == [-111, -13, -1, 0, 3, 42, nil])
    }

    @Test func minAndMaxAreInclusive() throws {
        #expect(try kept(["min": -13]) == [-13, -2, -1, 0, 3, 42, nil])
        #expect(try kept(["max": -2]) == [-115, -111, -13, -2, nil])
        #expect(try kept(["min": -2, "max": 3]) == [-2, -1, 0, 3, nil])
    }

    @Test func errnoNames() throws {
        #expect(try kept(["errno": ["ECONNREFUSED", "eacces"]]) == [-111, -13, nil])
        #expect(try kept(["errno": ["EINPROGRESS"]]) == [-115, nil])
    }

    @Test func optionsAreAnded() throws {
        #expect(try kept(["success": false, "not_equals": [-115], "min": -111]) == [-111, -13, -2, -1, nil])
        #expect(try kept(["errno": ["ECONNREFUSED", "ENOENT"], "not_equals": [-2]]) == [-111, nil])
        #expect(try kept(["equals": [0, 3, 42], "max": 3, "success": true]) == [0, 3, nil])
    }

    @Test func lostRecordsPassUnlessDropped() throws {
        #expect(try kept(["success": true, "lost": "drop"]) == [0, 3, 42])
        #expect(try kept([:]) == retvals.map { $0 } + [nil])
    }

    @Test func badOptionsAreReported() {
        let (filter, config) = make(["errno": ["ECONREFUSED"], "min": 5, "max": 1, "equals": ["x"]])
        #expect(filter == nil)
        let messages = config.diagnostics.map(\.description)
        #expect(messages.contains { $0.contains("'errno': unknown errno name 'ECONREFUSED' (did you mean 'ECONNREFUSED'?)") })
        #expect(messages.contains { $0.contains("'min' (5) is greater than 'max' (1)") })
        #expect(messages.contains { $0.contains("'equals'") })
        #expect(messages.allSatisfy { $0.hasPrefix("test.yaml:") && $0.contains(": error: filter 't': ") })

        let (contradiction, config2) = make(["success": true, "errno": ["ENOENT"]])
        #expect(contradiction == nil)
        #expect(config2.diagnostics.map(\.description).contains { $0.contains("cannot be combined with 'success: true'") })
    }
}
