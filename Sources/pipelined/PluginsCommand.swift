import ArgumentParser
import BuiltinStages
import PipelineCore

/// `pipelined plugins`: lists the stage types and their options.
struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List the stage types and their options.",
        discussion: "--format markdown prints the stage types tables of docs/pipeline-file.md, the block between its plugins markers."
    )

    /// How the listing is printed.
    enum Format: String, ExpressibleByArgument, CaseIterable {
        /// Aligned text for a terminal.
        case text
        /// The Markdown block of `docs/pipeline-file.md` (a test keeps the two equal).
        case markdown
    }

    @Option(help: "Output format: text or markdown.")
    var format: Format = .text

    func run() throws {
        switch format {
        case .text: print(Self.render(Builtins.registry), terminator: "")
        case .markdown: print(Self.renderMarkdown(Builtins.registry), terminator: "")
        }
    }

    /// The listing: each kind, each type with its summary, each option with
    /// its type, default and meaning.
    static func render(_ registry: StageRegistry) -> String {
        var out = ""
        for kind in StageKind.allCases {
            out += "\(kind.sectionKey):\n"
            for descriptor in registry.types(of: kind) {
                out += "  \(descriptor.type)  \(descriptor.summary)\n"
                let options = descriptor.allOptions
                let width = options.map(\.name.count).max() ?? 0
                for option in options {
                    var line = "      \(option.name.padding(width))  \(option.type)"
                    if option.required { line += ", required" }
                    if let value = option.defaultValue { line += ", default \(value)" }
                    out += line + "\n          \(option.summary)\n"
                }
            }
            out += "\n"
        }
        out += "settings:\n"
        for option in PipelineSettings.options {
            out += "      \(option.name)  \(option.type), default \(option.defaultValue ?? "-")\n          \(option.summary)\n"
        }
        return out
    }

    /// The same listing as Markdown: a table of every stage type, then a
    /// table of options per type (its own options; the queue options every
    /// sink takes and the `settings` keys follow once, in tables of their own).
    /// Headings are level 3, for a page whose section they sit in.
    static func renderMarkdown(_ registry: StageRegistry) -> String {
        var out = "| type | kind | what it does |\n|---|---|---|\n"
        for kind in StageKind.allCases {
            for descriptor in registry.types(of: kind) {
                let heading = "`\(descriptor.type)` \(kind.rawValue)"
                out += "| [`\(descriptor.type)`](#\(anchor(heading))) | \(kind.rawValue) | \(cell(descriptor.summary)) |\n"
            }
        }
        let sinkOptions = "Options every sink takes"
        for kind in StageKind.allCases {
            for descriptor in registry.types(of: kind) {
                out += "\n### `\(descriptor.type)` \(kind.rawValue)\n\n\(descriptor.summary.capitalizedFirst).\n\n"
                out += optionTable(descriptor.options)
                if kind == .sink {
                    out += "\nAnd the [options every sink takes](#\(anchor(sinkOptions))).\n"
                }
            }
        }
        out += "\n### \(sinkOptions)\n\nEach sink reads from a queue of its own; these options shape it.\n\n"
        out += optionTable(PipelineSettings.sinkQueueOptions)
        out += "\n### The `settings` keys\n\nThe keys of the pipeline file's optional top-level `settings` map.\n\n"
        out += optionTable(PipelineSettings.options)
        return out
    }

    /// One row per option: name, value type, default (or "required"), meaning.
    static func optionTable(_ options: [OptionSpec]) -> String {
        guard !options.isEmpty else { return "No options.\n" }
        var out = "| option | value | default | meaning |\n|---|---|---|---|\n"
        for option in options {
            let value: String
            if option.required {
                value = "required"
            } else if let text = option.defaultValue {
                value = "`\(cell(text))`"
            } else {
                value = "—"
            }
            out += "| `\(option.name)` | `\(cell(option.type))` | \(value) | \(cell(option.summary)) |\n"
        }
        return out
    }

    /// Text that stays inside one table cell: `|` escaped, line breaks as spaces.
    static func cell(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "|": out += "\\|"
            case "\n", "\r": out += " "
            default: out.append(character)
            }
        }
        return out
    }

    /// The fragment GitHub gives a heading: lowercased, spaces to `-`, and
    /// everything but letters, digits, `-` and `_` removed.
    static func anchor(_ heading: String) -> String {
        var out = ""
        for character in heading.lowercased() {
            if character == " " {
                out += "-"
            } else if character.isLetter || character.isNumber || character == "-" || character == "_" {
                out.append(character)
            }
        }
        return out
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }

    /// The text with its first character in upper case.
    var capitalizedFirst: String {
        guard let first else { return self }
        return first.uppercased() + dropFirst()
    }
}
