import Foundation
@testable import FuzzChecks
import PipelineCore
import Testing

/// Every committed fuzz input through its harness's checks (TESTING.md):
/// the seed corpora (fuzz/corpus/HARNESS/) and the inputs that once broke a
/// check or crashed (fuzz/regressions/HARNESS/), in the normal test run, so a
/// fixed bug stays fixed without a fuzzer.
@Suite struct FuzzRegressionTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("fuzz")

    /// The files of `fuzz/FOLDER/HARNESS/`, sorted; none when it does not exist.
    static func inputs(_ folder: String, _ target: FuzzTarget) -> [URL] {
        let directory = fuzzDirectory.appendingPathComponent(folder).appendingPathComponent(target.name)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0) }
    }

    static func run(_ target: FuzzTarget, _ files: [URL]) throws {
        for file in files {
            let bytes = try [UInt8](Data(contentsOf: file))
            do {
                try target.check(bytes)
            } catch {
                Issue.record("\(target.name) \(file.lastPathComponent): \(error.message)")
            }
        }
    }

    @Test(arguments: FuzzTarget.allCases)
    func seedCorpus(_ target: FuzzTarget) throws {
        let files = Self.inputs("corpus", target)
        // Every harness has seeds; an empty folder means the corpus went missing.
        #expect(files.count >= 10, "fuzz/corpus/\(target.name) has \(files.count) files")
        try Self.run(target, files)
    }

    @Test(arguments: FuzzTarget.allCases)
    func regressions(_ target: FuzzTarget) throws {
        try Self.run(target, Self.inputs("regressions", target))
    }

    /// The checks can fail: what the contracts rule out is caught.
    @Test func checksCatchViolations() {
        let text = "sources:\n  a: {type: replay}\n"
        let outside = Diagnostic(SourceLocation(file: PipelineLoaderCheck.file, line: 4, column: 1), "past the end")
        #expect(throws: PropertyViolation.self) { try PipelineLoaderCheck.check([outside], text) }
        let wide = Diagnostic(SourceLocation(file: PipelineLoaderCheck.file, line: 2, column: 30), "past the line")
        #expect(throws: PropertyViolation.self) { try PipelineLoaderCheck.check([wide], text) }
        let inside = Diagnostic(SourceLocation(file: PipelineLoaderCheck.file, line: 3, column: 1), "at the end")
        #expect(throws: Never.self) { try PipelineLoaderCheck.check([inside], text) }
        #expect(PipelineLoaderCheck.extent("a\r\nbc\rd\u{2028}") == (lines: 4, longest: 2))
    }
}
