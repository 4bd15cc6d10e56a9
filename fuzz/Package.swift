// swift-tools-version:6.0
import PackageDescription

// The libFuzzer harnesses, one executable per untrusted input (TESTING.md at the root).
// A package of their own, depending on pipelined's by path, so that the
// root package's `swift build --build-tests` never builds them: they only
// link with `-sanitize=fuzzer`, which brings libFuzzer's driver. run.sh
// passes that flag and ASan through toolset.json, which applies to the code
// built for the target and not to build tools (the BPF embedding plugin's
// tool must stay an ordinary program).
let harnesses = ["wire_decoder", "ndjson_decoder", "pipeline_loader", "segment_reader", "manifest_reader"]

let package = Package(
    name: "pipelined-fuzz",
    dependencies: [.package(name: "pipelined", path: "..")],
    targets: [
        // libFuzzer's `LLVMFuzzerRunDriver`, declared for Swift.
        .target(name: "CLibFuzzer", path: "CLibFuzzer"),
        // What every harness's main is: libFuzzer's driver on one FuzzTarget.
        .target(
            name: "FuzzDriver",
            dependencies: ["CLibFuzzer", .product(name: "FuzzChecks", package: "pipelined")],
            path: "Driver"
        ),
    ] + harnesses.map { name in
        .executableTarget(name: name, dependencies: ["FuzzDriver"], path: "Harnesses/\(name)")
    },
    swiftLanguageModes: [.v6]
)
