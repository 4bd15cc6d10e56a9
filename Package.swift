// swift-tools-version:6.0
import PackageDescription

// Linux only (eBPF, epoll, SO_PEERCRED): `platforms` lists minimum versions
// of Apple platforms and has no Linux entry, so the package names none.
let package = Package(
    name: "pipelined",
    products: [
        .executable(name: "pipelined", targets: ["pipelined"]),
        .library(name: "PipelineCore", targets: ["PipelineCore"]),
        // In-memory stages and helpers for testing a stage (what pipelined's
        // own tests use), for plugin authors too.
        .library(name: "PipelineTesting", targets: ["PipelineTesting"]),
        // The fuzz harnesses' property checks, for the nested package fuzz/
        // (built there with libFuzzer and ASan; here only for the regression tests).
        .library(name: "FuzzChecks", targets: ["FuzzChecks"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        // libbpf, found through pkg-config; also exposes bpf/wire.h so the Swift
        // side is checked against the same wire layout the kernel program writes.
        .systemLibrary(
            name: "CBPF",
            path: "Sources/CBPF",
            pkgConfig: "libbpf",
            providers: [.apt(["libbpf-dev", "libelf-dev"])]
        ),
        // liblz4's frame API.
        .systemLibrary(
            name: "CLZ4",
            path: "Sources/CLZ4",
            pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"])]
        ),
        // The NATS C client (connections, JetStream publish, pull consumers).
        .systemLibrary(
            name: "CNATS",
            path: "Sources/CNATS",
            pkgConfig: "libnats",
            providers: [.apt(["libnats-dev"])]
        ),
        // Dropping privileges in every thread at once (capset and prctl act
        // on the calling thread only): what `run` does once the pipeline runs.
        .target(name: "CPrivilege", path: "Sources/CPrivilege"),
        .target(
            name: "PipelineCore",
            dependencies: [
                .product(name: "Yams", package: "Yams"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            path: "Sources/PipelineCore"
        ),
        // The archive format: LZ4 segments, their manifest, salvage and
        // verification; shared by lz4_segments, replay and `archive`.
        .target(
            name: "EventArchive",
            dependencies: [
                "PipelineCore",
                "CLZ4",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Archive"
        ),
        .target(
            name: "PipelineTesting",
            dependencies: [
                "PipelineCore",
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            path: "Sources/PipelineTesting"
        ),
        // What the nats source and sink share over the C client: connection
        // options, connecting, errors, subject matching.
        .target(
            name: "NATSClient",
            dependencies: [
                "CNATS",
                "PipelineCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/NATSClient"
        ),
        .target(
            name: "EventFilters",
            dependencies: ["PipelineCore"],
            path: "Sources/Filters"
        ),
        .target(
            name: "EventSinks",
            dependencies: [
                "PipelineCore",
                "EventArchive",
                "CNATS",
                "NATSClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            path: "Sources/Sinks"
        ),
        .target(
            name: "EventSources",
            dependencies: [
                "PipelineCore",
                "EventArchive",
                "CBPF",
                "CNATS",
                "NATSClient",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            path: "Sources/Sources",
            plugins: ["BPFObjectPlugin"]
        ),
        // Compiles bpf/pipelined.bpf.c with clang's BPF target during the build
        // and embeds the object in EventSources.
        .executableTarget(name: "BPFEmbed", path: "Plugins/BPFEmbed"),
        .plugin(
            name: "BPFObjectPlugin",
            capability: .buildTool(),
            dependencies: ["BPFEmbed"],
            path: "Plugins/BPFObjectPlugin"
        ),
        // The stage types pipelined ships, in one registry: the command's, and
        // the one the pipeline-loader fuzz harness loads files against.
        .target(
            name: "BuiltinStages",
            dependencies: ["PipelineCore", "EventFilters", "EventSinks", "EventSources"],
            path: "Sources/BuiltinStages"
        ),
        // What each fuzz harness checks of one input (TESTING.md); shared
        // by the libFuzzer executables in fuzz/ and FuzzRegressionTests.
        .target(
            name: "FuzzChecks",
            dependencies: ["PipelineCore", "EventArchive", "BuiltinStages"],
            path: "fuzz/Checks"
        ),
        .executableTarget(
            name: "pipelined",
            dependencies: [
                "CPrivilege",
                "BuiltinStages",
                "PipelineCore",
                "EventArchive",
                "EventFilters",
                "EventSinks",
                "EventSources",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ],
            path: "Sources/pipelined"
        ),
        // What several test targets share: running the built binary (CLI),
        // the syscall driver child (Driver, ExpectedEvent) and whether the
        // kernel tests can run here (KernelTests).
        .target(
            name: "TestSupport",
            dependencies: [
                "PipelineCore",
                "EventSources",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Tests/TestSupport",
            // driver.c is compiled by the tests themselves, at run time.
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "PipelineCoreTests",
            dependencies: ["PipelineCore", "PipelineTesting", "CBPF"],
            path: "Tests/PipelineCoreTests"
        ),
        .testTarget(
            name: "ArchiveTests",
            dependencies: ["EventArchive", "PipelineCore"],
            path: "Tests/ArchiveTests"
        ),
        .testTarget(
            name: "FilterTests",
            dependencies: ["PipelineCore", "PipelineTesting", "EventFilters"],
            path: "Tests/FilterTests"
        ),
        .testTarget(
            name: "SinkTests",
            dependencies: ["PipelineCore", "PipelineTesting", "EventArchive", "EventSinks", "NATSClient"],
            path: "Tests/SinkTests",
            // faultfs.c (the EIO file system) is compiled by the tests themselves, at run time.
            exclude: ["Fixtures"]
        ),
        .testTarget(
            name: "SourceTests",
            dependencies: ["PipelineCore", "PipelineTesting", "EventSources", "CBPF", "TestSupport"],
            path: "Tests/SourceTests"
        ),
        .testTarget(
            name: "CLITests",
            dependencies: ["PipelineCore", "PipelineTesting", "EventArchive", "EventSinks", "EventSources", "TestSupport"],
            path: "Tests/CLITests",
            // Bad pipeline files, each with the errors it must give.
            exclude: ["Corpus"]
        ),
        // Nodes and aggregators through real nats-server processes, driving
        // the built binary; the kernel case runs TestSupport's driver.
        .testTarget(
            name: "FleetTests",
            dependencies: ["PipelineCore", "NATSClient", "CNATS", "TestSupport"],
            path: "Tests/FleetTests"
        ),
        // The command line's own pieces (top's table), through the
        // executable target itself.
        .testTarget(
            name: "CommandTests",
            dependencies: ["pipelined"],
            path: "Tests/CommandTests"
        ),
        // Every committed fuzz corpus and regression input through the
        // harnesses' own checks (fuzz/corpus, fuzz/regressions).
        .testTarget(
            name: "FuzzRegressionTests",
            dependencies: ["FuzzChecks"],
            path: "Tests/FuzzRegressionTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
