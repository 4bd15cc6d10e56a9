// BPFEmbed: compiles the kernel program with clang's BPF target and writes a
// Swift file that embeds the object as a base64 string literal (a literal
// that size compiles in a moment; the same bytes as a [UInt8] literal take
// the type checker minutes). Run by the BPFObjectPlugin during `swift build`.
//
//   BPFEmbed --source bpf/pipelined.bpf.c --include bpf --output X.swift [--clang PATH]
//
// clang is, in order: --clang, $PIPELINED_BPF_CLANG, clang next to the
// running toolchain's swift, clang on PATH. A failure names what was tried
// and prints clang's own diagnostics.
import Foundation

struct Failure: Error, CustomStringConvertible {
    var description: String
}

func option(_ name: String, in arguments: [String]) -> String? {
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return nil }
    return arguments[index + 1]
}

func isExecutable(_ path: String) -> Bool {
    FileManager.default.isExecutableFile(atPath: path)
}

func searchPath(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") where isExecutable("\(directory)/\(name)") {
        return "\(directory)/\(name)"
    }
    return nil
}

/// Candidates for clang, best first.
func clangCandidates(explicit: String?) -> [String] {
    var candidates: [String] = []
    if let explicit { candidates.append(explicit) }
    if let fromEnvironment = ProcessInfo.processInfo.environment["PIPELINED_BPF_CLANG"] {
        candidates.append(fromEnvironment)
    }
    if let swift = searchPath("swift") {
        let resolved = URL(fileURLWithPath: swift).resolvingSymlinksInPath()
        candidates.append(resolved.deletingLastPathComponent().appendingPathComponent("clang").path)
    }
    if let clang = searchPath("clang") { candidates.append(clang) }
    for version in stride(from: 21, through: 14, by: -1) {
        if let clang = searchPath("clang-\(version)") { candidates.append(clang) }
    }
    var seen = Set<String>()
    return candidates.filter { isExecutable($0) && seen.insert($0).inserted }
}

/// Runs a program, returning its exit status and combined output.
func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

func multiarchIncludeDirectory() -> String? {
    var name = utsname()
    uname(&name)
    let machine = withUnsafeBytes(of: &name.machine) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
    let directory = "/usr/include/\(machine)-linux-gnu"
    return FileManager.default.fileExists(atPath: directory) ? directory : nil
}

func main() throws {
    let arguments = Array(CommandLine.arguments.dropFirst())
    guard let source = option("--source", in: arguments),
          let include = option("--include", in: arguments),
          let output = option("--output", in: arguments)
    else {
        throw Failure(description: "usage: BPFEmbed --source FILE.bpf.c --include DIR --output FILE.swift [--clang PATH]")
    }
    let candidates = clangCandidates(explicit: option("--clang", in: arguments))
    guard !candidates.isEmpty else {
        throw Failure(description: "no clang found to compile \(source) for the BPF target: install clang, or set PIPELINED_BPF_CLANG to a clang with the BPF target")
    }
    let outputURL = URL(fileURLWithPath: output)
    let object = outputURL.deletingLastPathComponent().appendingPathComponent("pipelined.bpf.o").path
    var flags = [
        "-target", "bpf", "-O2", "-g", "-Wall", "-Werror",
        "-D__TARGET_ARCH_x86",
        "-I", include, "-I", "/usr/include",
    ]
    if let multiarch = multiarchIncludeDirectory() { flags += ["-I", multiarch] }
    flags += ["-c", source, "-o", object]

    var failures: [String] = []
    var used: String?
    for clang in candidates {
        let result = try run(clang, flags)
        if result.status == 0 {
            used = clang
            break
        }
        failures.append("\(clang) \(flags.joined(separator: " ")) failed (status \(result.status)):\n\(result.output)")
    }
    guard let clang = used else {
        throw Failure(description: "cannot compile the eBPF program:\n" + failures.joined(separator: "\n"))
    }

    // DWARF is not needed at run time (libbpf reads .BTF and .BTF.ext): strip
    // it when the toolchain has llvm-objcopy, to keep the binary smaller.
    let objcopy = URL(fileURLWithPath: clang).resolvingSymlinksInPath().deletingLastPathComponent()
        .appendingPathComponent("llvm-objcopy").path
    if isExecutable(objcopy) {
        _ = try? run(objcopy, ["--strip-debug", object])
    }

    let bytes = try Data(contentsOf: URL(fileURLWithPath: object))
    let version = (try? run(clang, ["--version"]).output.split(separator: "\n").first.map(String.init)) ?? nil
    var text = """
    // Generated by the BPFObjectPlugin from \(URL(fileURLWithPath: source).lastPathComponent) during `swift build`. Do not edit.
    // Compiler: \(version ?? clang)

    /// The compiled kernel program, an ELF object for the BPF target.
    enum EmbeddedBPFObject {
        /// The object's size in bytes.
        static let byteCount = \(bytes.count)
        /// The object, base64 encoded.
        static let base64: StaticString = "
    """
    text += bytes.base64EncodedString()
    text += "\"\n}\n"
    // Only rewrite when the content changed, so dependents stay built.
    if let existing = try? String(contentsOf: outputURL, encoding: .utf8), existing == text { return }
    try text.write(to: outputURL, atomically: true, encoding: .utf8)
}

do {
    try main()
} catch {
    FileHandle.standardError.write(Data("error: BPFEmbed: \(error)\n".utf8))
    exit(1)
}
