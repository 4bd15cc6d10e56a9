import EventArchive
import PipelineCore

/// A `manifest.jsonl` file's bytes through ``ArchiveManifest/read()``, as
/// archive recovery at startup, `archive ls`, `verify` and replay read it.
///
/// Properties: every unreadable line is reported with a line number that
/// exists, in order, a line at most once; entries plus problems never exceed
/// the lines; each entry's own line parses back to the same entry; and
/// writing the entries (``ArchiveManifest/write(_:)``) then reading gives the
/// same entries and no problem.
enum ManifestReaderCheck {
    static func check(_ input: UnsafeRawBufferPointer) throws(PropertyViolation) {
        let path = try ScratchFile.write(input, named: "manifest.jsonl")
        let manifest = ArchiveManifest(path: path)
        let contents: ArchiveManifest.Contents
        do {
            contents = try manifest.read()
        } catch {
            throw PropertyViolation("reading a regular file threw: \(error)")
        }
        try require(contents.exists, "an existing manifest read as missing")
        let lines = input.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) } + (input.last == UInt8(ascii: "\n") || input.isEmpty ? 0 : 1)
        let numbers = contents.problems.map(\.line)
        try require(numbers.allSatisfy { (1...max(lines, 1)).contains($0) }, "a problem on line \(numbers) of \(lines)")
        try require(zip(numbers, numbers.dropFirst()).allSatisfy { $0 < $1 }, "problems out of order or repeated: \(numbers)")
        try require(contents.entries.count + contents.problems.count <= lines, "\(contents.entries.count) entries and \(contents.problems.count) problems in \(lines) lines")
        try require(contents.problems.allSatisfy { !$0.message.isEmpty }, "a problem without a message")

        for entry in contents.entries {
            let line = entry.line
            try require(line.last == "\n" && line.dropLast().allSatisfy { $0 != "\n" }, "an entry's line is not one line: \(line)")
            do {
                let again = try ManifestEntry(line: line.dropLast())
                try require(again == entry, "an entry changed through its line \(line): \(entry) became \(again)")
            } catch {
                throw PropertyViolation("an entry's own line does not parse (\(error)): \(line)")
            }
        }
        do {
            try manifest.write(contents.entries)
            let rewritten = try manifest.read()
            try require(rewritten.problems.isEmpty, "the rewritten manifest has problems: \(rewritten.problems)")
            try require(rewritten.entries == contents.entries, "the rewritten manifest reads back different entries")
        } catch let violation as PropertyViolation {
            throw violation
        } catch {
            throw PropertyViolation("rewriting the manifest failed: \(error)")
        }
    }
}
