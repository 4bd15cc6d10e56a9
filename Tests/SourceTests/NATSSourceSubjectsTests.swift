import EventSources
import NATSClient
import PipelineCore
import PipelineTesting
import Testing

/// The `nats` source's `subjects` list, without a server: which lists are
/// refused and what each subject's consumer is called (the fleet tests read
/// them from a real server).
@Suite("nats source subjects")
struct NATSSourceSubjectsTests {
    private func config(_ options: KeyValuePairs<String, Any>) -> StageConfig {
        StageHarness.config(.source, "nats", specs: NATSSource.descriptor.options, options)
    }

    @Test(arguments: [
        ("pipelined.>", "pipelined.web-1.>", true),
        ("pipelined.web-1.>", "pipelined.>", true),
        ("pipelined.web-1.>", "pipelined.web-1.>", true),
        ("pipelined.*.network.>", "pipelined.web-1.>", true),
        ("pipelined.*.*.connect", "pipelined.db-1.network.*", true),
        (">", "pipelined.web-1.network.connect", true),
        ("pipelined.web-1.>", "pipelined.db-1.>", false),
        ("pipelined.*.network.>", "pipelined.*.file.>", false),
        ("pipelined.web-1", "pipelined.web-1.>", false),
        ("pipelined.*", "pipelined.web-1.network", false),
        ("pipelined.>", "other.>", false),
    ])
    func overlapIsSomeSubjectMatchingBoth(first: String, second: String, overlap: Bool) {
        #expect(NATSSubject.overlaps(first, second) == overlap)
        #expect(NATSSubject.overlaps(second, first) == overlap)
    }

    @Test func subjectsThatDoNotOverlapAreKeptInOrder() throws {
        let options = try #require(NATSSourceOptions(config(["durable": "agg", "subjects": ["pipelined.web-1.>", "pipelined.db-1.>", "pipelined.*"]])))
        #expect(options.subjects == ["pipelined.web-1.>", "pipelined.db-1.>", "pipelined.*"])
        #expect(options.subjectLocations.count == 3)
    }

    @Test func overlapsAndDuplicatesAreReportedNamingBoth() {
        let overlapping = config(["durable": "agg", "subjects": ["pipelined.web-1.>", "pipelined.>", "pipelined.db-1.>", "pipelined.db-1.>"]])
        #expect(NATSSourceOptions(overlapping) == nil)
        #expect(overlapping.diagnostics.map(\.message) == [
            "source 't': 'subjects' item 'pipelined.>' overlaps 'pipelined.web-1.>': an event on a subject both match would be delivered twice; list subjects that do not overlap",
            "source 't': 'subjects' item 'pipelined.db-1.>' overlaps 'pipelined.>': an event on a subject both match would be delivered twice; list subjects that do not overlap",
            "source 't': 'subjects' item 'pipelined.db-1.>' is listed twice: an event on a subject both match would be delivered twice; list subjects that do not overlap",
        ])
        let partial = config(["durable": "agg", "subjects": ["pipelined.*.network.>", "pipelined.web-1.>"]])
        #expect(NATSSourceOptions(partial) == nil)
        #expect(partial.diagnostics.count == 1)
    }

    @Test(arguments: ["", "pipelined..x", "pipelined.>.x", "pipelined.web*", "pipelined.a b", "pipelined.>x"])
    func malformedSubjectsAreRefused(subject: String) {
        let bad = config(["durable": "agg", "subjects": [subject]])
        #expect(NATSSourceOptions(bad) == nil)
        #expect(bad.diagnostics.first?.message.hasPrefix("source 't': 'subjects' items must be NATS subjects such as pipelined.> or pipelined.web-1.>, not '\(subject)'") == true)
    }

    @Test func oneSubjectOrNoneKeepsTheNameDurable() throws {
        let none = try #require(NATSSourceOptions(config(["durable": "agg"])))
        #expect(none.consumers.map(\.name) == ["agg"] && none.consumers.map(\.subject) == [nil])
        let one = try #require(NATSSourceOptions(config(["durable": "agg", "subjects": ["pipelined.web-1.>"]])))
        #expect(one.consumers.map(\.name) == ["agg"] && one.consumers.map(\.subject) == ["pipelined.web-1.>"])
    }

    @Test func severalSubjectsGetNamesFromDurableAndTheSubjectAlone() throws {
        let list = ["pipelined.web-1.>", "pipelined.db-1.>", "other.*.file.*"]
        let forward = try #require(NATSSourceOptions(config(["durable": "agg", "subjects": list])))
        let backward = try #require(NATSSourceOptions(config(["durable": "agg", "subjects": Array(list.reversed())])))
        let names = Dictionary(uniqueKeysWithValues: forward.consumers.map { ($0.subject!, $0.name) })
        #expect(Dictionary(uniqueKeysWithValues: backward.consumers.map { ($0.subject!, $0.name) }) == names)
        #expect(Set(names.values).count == list.count)
        for (subject, name) in names {
            #expect(name.hasPrefix("agg_"), "\(subject): \(name)")
            #expect(NATSEndpoint.plainNameProblem(name) == nil, "\(subject): \(name)")
        }
        #expect(names["pipelined.web-1.>"]?.hasPrefix("agg_pipelined_web-1_all_") == true)
        #expect(names["other.*.file.*"]?.hasPrefix("agg_other_any_file_any_") == true)
        // Subjects that read alike still get consumers of their own.
        let alike = try #require(NATSSourceOptions(config(["durable": "agg", "subjects": ["a.b_c", "a_b.c"]])))
        #expect(Set(alike.consumers.map(\.name)).count == 2)
    }
}
