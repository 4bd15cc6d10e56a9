import ArgumentParser
import PipelineCore

/// `pipelined plugins`: lists the stage types and their options.
struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins",
        abstract: "List the stage types and their options."
    )

    func run() throws {
        print(Self.render(Builtins.registry), terminator: "")
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
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
