import PackagePlugin

/// Builds the kernel program as part of `swift build`: compiles
/// `bpf/pipelined.bpf.c` with clang's BPF target and hands the target a
/// generated Swift file that embeds the object (see the `BPFEmbed` tool).
/// The command reruns whenever the program or one of its headers changes.
@main
struct BPFObjectPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) async throws -> [Command] {
        let bpf = context.package.directoryURL.appending(path: "bpf")
        let source = bpf.appending(path: "pipelined.bpf.c")
        let headers = ["wire.h", "kernel_types.h"].map { bpf.appending(path: $0) }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedBPFObject.swift")
        let embed = try context.tool(named: "BPFEmbed")
        var arguments = ["--source", source.path, "--include", bpf.path, "--output", output.path]
        // The toolchain's own clang (next to swift) has the BPF target; the tool
        // falls back to PATH when SwiftPM does not know one.
        if let clang = try? context.tool(named: "clang") {
            arguments += ["--clang", clang.url.path]
        }
        return [
            .buildCommand(
                displayName: "Compiling eBPF program \(source.lastPathComponent)",
                executable: embed.url,
                arguments: arguments,
                inputFiles: [source] + headers,
                outputFiles: [output]
            ),
        ]
    }
}
