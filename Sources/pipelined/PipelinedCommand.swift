import ArgumentParser
import PipelineCore

@main
struct PipelinedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pipelined", abstract: "Kernel syscall events as pipelines.")
}
