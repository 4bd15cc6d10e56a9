import ArgumentParser
import BuiltinStages
import PipelineCore

/// `pipelined validate FILE...`: checks pipeline files without starting anything.
///
/// Every problem of every file is printed, compiler style, on standard error;
/// the exit status is 78 when any file is invalid. `run` performs exactly these
/// checks (through the same ``PipelineLoader``) before it touches the kernel.
struct ValidateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check pipeline files without starting anything.",
        discussion: "Prints one 'FILE:LINE:COLUMN: error: ...' line per problem; exits 78 if any file is invalid."
    )

    @ArgumentParser.Argument(help: "Pipeline files to check.")
    var files: [String]

    @Flag(name: .shortAndLong, help: "Print nothing for valid files.")
    var quiet = false

    @Flag(help: "For each source, print what its paths to the sinks keep, what the source tests itself (in the kernel, for syscall_monitor) and what is left to the filters.")
    var explain = false

    func validate() throws {
        if files.isEmpty { throw ValidationError("name at least one pipeline file") }
    }

    func run() throws {
        let loader = PipelineLoader(registry: Builtins.registry, environment: ProcessEnvironment.current)
        var invalid = 0
        for file in files {
            do {
                var plan = try loader.load(path: file)
                if !quiet {
                    let count = { (kind: StageKind) in plan.stages.filter { $0.kind == kind }.count }
                    print("\(file): ok (\(count(.source)) sources, \(count(.filter)) filters, \(count(.sink)) sinks)")
                }
                if explain {
                    // The same pushdown `run` does, without touching the system.
                    if !plan.settings.pushdown { print("  pushdown off (settings.pushdown: false)") }
                    for outcome in plan.pushDown() {
                        for line in outcome.explanation { print("  " + line) }
                    }
                }
            } catch {
                invalid += 1
                FileHandleStderr.write(error.description + "\n")
            }
        }
        if invalid > 0 {
            throw ExitCode(ExitStatus.invalidPipeline)
        }
    }
}
