// swift-tools-version:6.0
// The codec chain benchmark: kernel wire records → WireDecoder → a retval
// filter → NDJSONEncoder → write(2). Built against the root package by path;
// `run.sh` builds it in release mode next to the C baseline in baseline.c.
import PackageDescription

let package = Package(
    name: "codec-bench",
    // Named, so the identity does not depend on the checkout directory name.
    dependencies: [.package(name: "pipelined", path: "../..")],
    targets: [
        .executableTarget(
            name: "codec-bench",
            dependencies: [.product(name: "PipelineCore", package: "pipelined")],
            path: "Sources/CodecBench"
        )
    ],
    swiftLanguageModes: [.v6]
)
