import ArgumentParser
import BuiltinStages
#if canImport(Glibc)
import Glibc
#endif
import Logging
import PipelineCore
import ServiceLifecycle
import Synchronization
import UnixSignals

/// `pipelined run [FILE]`: runs a pipeline until SIGINT or SIGTERM, then
/// drains every queue, closes every sink and exits 0.
///
/// Order of events: the file is checked exactly as `validate` checks it (exit
/// 78 on any problem, nothing started); sources are prepared (a missing
/// privilege exits 77 before any sink has created a file or socket); sinks
/// open; data flows. The first SIGINT or SIGTERM starts a graceful shutdown;
/// the pipeline also ends by itself when every source reaches the end of its
/// input (a `replay` of a file). SIGHUP reloads the file (``ReloadService``).
/// The metrics endpoint (``MetricsServer``) is bound before anything else:
/// a busy port exits 1, naming the setting. Once the pipeline runs, the
/// process drops its privileges (``PrivilegeDropService``) unless
/// `settings.drop_privileges` is false.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a pipeline until SIGINT/SIGTERM, then drain and exit.",
        discussion: "With no FILE, runs the embedded default pipeline: every supported syscall event as NDJSON on standard output."
    )

    @ArgumentParser.Argument(help: "The pipeline file (default: the embedded default pipeline).")
    var file: String?

    @Option(name: .long, help: "Log level, overriding the file's settings.log_level (trace, debug, info, notice, warning, error, critical).")
    var logLevel: String?

    @Option(name: .long, help: "HOST:PORT of the metrics endpoint (port 0 picks a free one), or false for none, overriding the file's settings.metrics.listen.")
    var metricsListen: String?

    func validate() throws {
        if let logLevel, Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
        }
        if let metricsListen, metricsListen != "false", ListenAddress(parsing: metricsListen) == nil {
            throw ValidationError("--metrics-listen must be HOST:PORT (such as 127.0.0.1:9464; port 0 picks a free one) or false, not '\(metricsListen)'")
        }
    }

    /// The endpoint's address and the name of what set it, for errors.
    private func metricsAddress(_ plan: PipelinePlan) -> (ListenAddress, String)? {
        guard let metricsListen else { return plan.settings.metricsListen.map { ($0, "settings.metrics.listen") } }
        return ListenAddress(parsing: metricsListen).map { ($0, "--metrics-listen") }
    }

    func run() async throws {
        let loader = PipelineLoader(registry: Builtins.registry, environment: ProcessEnvironment.current)
        let plan: PipelinePlan
        do {
            if let file {
                plan = try loader.load(path: file)
            } else {
                plan = try loader.load(text: DefaultPipeline.yaml, file: "<default pipeline>")
            }
        } catch {
            FileHandleStderr.write(error.description + "\n")
            throw ExitCode(ExitStatus.invalidPipeline)
        }

        let level = Logger.Level(rawValue: logLevel ?? plan.settings.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        var logger = Logger(label: "pipelined")
        logger.logLevel = level

        let runtime = PipelineRuntime(plan: plan, logger: logger)
        let exporter = MetricsExporter(runtime: runtime)
        // Bound before anything starts: a busy port fails the run at once.
        var server: MetricsServer?
        if let (listen, setting) = metricsAddress(plan) {
            do {
                server = try await MetricsServer.start(at: listen, setting: setting, exporter: exporter, logger: logger)
            } catch {
                FileHandleStderr.write("pipelined: \(error)\n")
                throw ExitCode(ExitStatus.failure)
            }
        }
        // Trapped now, before the pipeline starts: SIGHUP's default would end the process.
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        let service = PipelineService(runtime: runtime)
        let privileges = PrivilegeState()
        let dropper = PrivilegeDropService(runtime: runtime, file: file, state: privileges, logger: logger)
        let reloader = ReloadService(runtime: runtime, loader: loader, file: file, signals: hangups, counts: exporter.reloads, privileges: privileges, logger: logger)
        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(
                services: [
                    .init(service: service, successTerminationBehavior: .gracefullyShutdownGroup),
                    .init(service: reloader, successTerminationBehavior: .ignore),
                    // Once the pipeline runs; a failed drop ends the run (exit 1).
                    .init(service: dropper, successTerminationBehavior: .ignore),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        logger.info("pipeline starting", metadata: [
            "pipeline": "\(plan.name)",
            "stages": "\(plan.stages.count)",
        ])
        var ended: (any Error)?
        do {
            try await group.run()
        } catch {
            ended = error
        }
        await server?.stop()
        if let error = ended as? StageStartError {
            FileHandleStderr.write(error.report + "\n")
            throw ExitCode(error.exitCode)
        } else if let error = ended {
            // A service that throws ends the group; unwrap what it threw.
            if let start = service.startError {
                FileHandleStderr.write(start.report + "\n")
                throw ExitCode(start.exitCode)
            }
            FileHandleStderr.write("pipelined: \(error)\n")
            throw ExitCode(ExitStatus.failure)
        }

        guard let summary = service.summary else {
            if let start = service.startError {
                FileHandleStderr.write(start.report + "\n")
                throw ExitCode(start.exitCode)
            }
            throw ExitCode(ExitStatus.failure)
        }
        for stage in runtime.plan.stages {
            guard let counts = summary.metrics[stage.id] else { continue }
            var totals: Logger.Metadata = [
                "stage": "\(stage.id)",
                "type": "\(stage.type)",
                "in": "\(counts.recordsIn)",
                "out": "\(counts.recordsOut)",
                "lost": "\(counts.lostTotal)",
                "malformed": "\(counts.malformed)",
                "bytes": "\(counts.bytes)",
            ]
            // The stage's own series (a socket's clients_dropped), whatever they are.
            for series in counts.declared { totals[series.name] = "\(series.value)" }
            logger.info("stage totals", metadata: totals)
        }
        if !summary.succeeded {
            for failure in summary.failures {
                FileHandleStderr.write("pipelined: \(failure)\n")
            }
            throw ExitCode(ExitStatus.failure)
        }
        logger.info("pipeline stopped cleanly", metadata: ["pipeline": "\(plan.name)"])
    }
}

/// The runtime as a swift-service-lifecycle `Service`: graceful shutdown
/// (the first SIGINT or SIGTERM) stops the sources; `run` returns once every
/// queue has drained and every sink is closed.
final class PipelineService: Service, Sendable {
    let runtime: PipelineRuntime
    private let outcome = Mutex(Outcome())

    private struct Outcome {
        var summary: RunSummary?
        var startError: StageStartError?
    }

    init(runtime: PipelineRuntime) {
        self.runtime = runtime
    }

    /// How the run ended, once ``run()`` has returned normally.
    var summary: RunSummary? { outcome.withLock { $0.summary } }
    /// Why the pipeline did not start, if it did not.
    var startError: StageStartError? { outcome.withLock { $0.startError } }

    func run() async throws {
        do {
            let summary = try await cancelWhenGracefulShutdown {
                try await self.runtime.run()
            }
            outcome.withLock { $0.summary = summary }
        } catch let error as StageStartError {
            outcome.withLock { $0.startError = error }
            throw error
        }
    }
}
