import PipelineCore
import PipelineTesting
import Testing

/// `EventFilter`'s default `apply`, which compacts a batch in place.
@Suite("filter apply")
struct FilterApplyTests {
    struct FailuresOnly: EventFilter {
        func includes(_ record: PipelineRecord) -> Bool {
            if case .event(let event) = record { return event.retval < 0 }
            return true
        }
    }

    /// Events with strings (so records own memory), every third a success.
    private func records(_ count: Int) -> [PipelineRecord] {
        (0..<count).map { n in
            .event(StageHarness.event("openat", retval: n % 3 == 0 ? 0 : -Int64(n), timeNs: Int64(n), comm: "proc\(n)",
                                      args: [.int(-100), .string("/tmp/file-\(n)"), .flags(.open, 0)]))
        }
    }

    @Test func keepsExactlyThePassingRecordsInOrder() {
        let input = records(100) + [.lost(LostRecord(timeNs: 7, count: 3, site: .kernel, cpu: 1))]
        var batch = EventBatch(input)
        FailuresOnly().apply(&batch)
        #expect(batch.records == input.filter { FailuresOnly().includes($0) })
        #expect(batch.count == 67)
    }

    @Test func aBatchSharedWithAnotherBranchIsNotChanged() {
        let input = records(30)
        var mine = EventBatch(input)
        let other = mine  // fan-out: two branches hold the same storage
        FailuresOnly().apply(&mine)
        #expect(other.records == input)
        #expect(mine.records == input.filter { FailuresOnly().includes($0) })
    }

    @Test func edgeCases() {
        var empty = EventBatch()
        FailuresOnly().apply(&empty)
        #expect(empty.isEmpty)
        let failures = records(10).filter { FailuresOnly().includes($0) }
        var allPass = EventBatch(failures)
        FailuresOnly().apply(&allPass)
        #expect(allPass.records == failures)
        var nonePass = EventBatch(records(10).filter { !FailuresOnly().includes($0) })
        FailuresOnly().apply(&nonePass)
        #expect(nonePass.isEmpty)
    }
}
