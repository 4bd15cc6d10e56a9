import Foundation
import Testing

/// The docs that are generated from the code stay equal to what the code says.
@Suite("docs")
struct DocsTests {
    /// The command that rewrites the stage types block of `docs/pipeline-file.md`.
    static let regenerate = """
        swift build && { sed '/^<!-- plugins:begin/q' docs/pipeline-file.md; \
        .build/debug/pipelined plugins --format markdown; echo; \
        sed -n '/^<!-- plugins:end/,$p' docs/pipeline-file.md; } > /tmp/pipeline-file.md \
        && mv /tmp/pipeline-file.md docs/pipeline-file.md
        """

    @Test func stageTypesBlockIsThePluginsOutput() throws {
        let result = try CLI.run(["plugins", "--format", "markdown"])
        #expect(result.status == 0, "plugins --format markdown failed: \(result.stderr)")
        let page = try String(contentsOf: CLI.packageRoot.appendingPathComponent("docs/pipeline-file.md"), encoding: .utf8)
        let block = try #require(
            Self.generatedBlock(of: page),
            "docs/pipeline-file.md has no '<!-- plugins:begin -->' line followed by a '<!-- plugins:end -->' line"
        )
        let difference = firstDifference(block, result.stdout)
        #expect(
            difference == nil,
            """
            docs/pipeline-file.md's stage types block is not what `pipelined plugins --format markdown` prints \
            (\(difference ?? "")). A stage type or option changed: regenerate the block, from the package root:
              \(Self.regenerate)
            """
        )
    }

    @Test func readmeNamesEveryStageType() throws {
        let result = try CLI.run(["plugins", "--format", "markdown"])
        let readme = try String(contentsOf: CLI.packageRoot.appendingPathComponent("README.md"), encoding: .utf8)
        let section = try #require(Self.section("### Stage types", of: readme), "README.md has no '### Stage types' section")
        let types = Self.stageTypes(in: result.stdout)
        #expect(!types.isEmpty, "no stage types found in the plugins markdown")
        for (type, kind) in types {
            let named = section.contains("`\(type)`")
            #expect(
                named,
                "README.md's Stage types section does not name the \(kind) type `\(type)`: add it to the list there (its options are in docs/pipeline-file.md)"
            )
        }
    }

    /// What lies between the `<!-- plugins:begin -->` line and the blank line
    /// before the `<!-- plugins:end -->` line; nil without both markers.
    static func generatedBlock(of page: String) -> String? {
        guard let begin = page.range(of: "\n<!-- plugins:begin -->\n"),
              let end = page.range(of: "\n<!-- plugins:end -->\n", range: begin.upperBound..<page.endIndex)
        else { return nil }
        return String(page[begin.upperBound..<end.lowerBound])
    }

    /// The text from `heading` to the next heading of the same or a higher level.
    static func section(_ heading: String, of text: String) -> String? {
        guard let start = text.range(of: "\n" + heading + "\n") else { return nil }
        let level = heading.prefix { $0 == "#" }.count
        var body = ""
        for line in text[start.upperBound...].split(separator: "\n", omittingEmptySubsequences: false) {
            let hashes = line.prefix { $0 == "#" }.count
            if hashes > 0, hashes <= level, line.dropFirst(hashes).first == " " { break }
            body += line + "\n"
        }
        return body
    }

    /// The (type, kind) of every row of the overview table that opens the
    /// plugins markdown: `| [`type`](#anchor) | kind | summary |`.
    static func stageTypes(in markdown: String) -> [(type: String, kind: String)] {
        markdown.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("| [`") else { return nil }
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 2, let open = cells[0].firstIndex(of: "`") else { return nil }
            let rest = cells[0][cells[0].index(after: open)...]
            guard let close = rest.firstIndex(of: "`") else { return nil }
            return (String(rest[..<close]), cells[1])
        }
    }
}
