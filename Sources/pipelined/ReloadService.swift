import Logging
import PipelineCore
import ServiceLifecycle
import UnixSignals

/// Reloads the pipeline file on SIGHUP (`kill -HUP`, `systemctl reload`).
///
/// The file is read and checked exactly as `validate` does (the same
/// ``PipelineLoader``). An invalid file changes nothing: each problem is
/// logged as `FILE:LINE:COL: error: ...` and the failure is counted. A valid
/// one goes to ``PipelineRuntime/apply(_:)``, which replaces only the stages
/// that changed. One reload at a time: a SIGHUP that arrives during a reload
/// is handled after it.
///
/// After the privilege drop (``PrivilegeDropService``) no eBPF program can
/// be loaded: a reload that needs one (a `syscall_monitor` gaining events,
/// a new one, one whose transport changed) fails in the source, before
/// anything changed, and the error says that the drop is why. Reloads that
/// change only a source's maps (fewer events, `skip_retvals`, `visibility`),
/// filters or sinks go on working.
final class ReloadService: Service, Sendable {
    private let runtime: PipelineRuntime
    private let loader: PipelineLoader
    /// The pipeline file; nil for the embedded default pipeline.
    private let file: String?
    private let signals: UnixSignalsSequence
    private let counts: ReloadCounts
    private let privileges: PrivilegeState
    private let logger: Logger

    init(runtime: PipelineRuntime, loader: PipelineLoader, file: String?, signals: UnixSignalsSequence, counts: ReloadCounts, privileges: PrivilegeState, logger: Logger) {
        self.runtime = runtime
        self.privileges = privileges
        self.loader = loader
        self.file = file
        self.signals = signals
        self.counts = counts
        self.logger = logger
    }

    func run() async {
        for await _ in signals.cancelOnGracefulShutdown() {
            await reload()
        }
    }

    /// One reload, counted as a success or a failure.
    func reload() async {
        let name = file ?? "<default pipeline>"
        logger.info("SIGHUP: reloading \(name)")
        let plan: PipelinePlan
        do {
            if let file {
                plan = try loader.load(path: file)
            } else {
                plan = try loader.load(text: DefaultPipeline.yaml, file: name)
            }
        } catch {
            for diagnostic in error.diagnostics {
                logger.error("\(diagnostic.description)")
            }
            fail("\(name) is invalid (\(error.diagnostics.count) error(s)); the running pipeline is unchanged")
            return
        }
        let running = runtime.plan.settings
        if running.dropPrivileges != plan.settings.dropPrivileges || running.runAs != plan.settings.runAs || running.seccomp != plan.settings.seccomp {
            logger.warning("settings drop_privileges, user, group and seccomp apply at start only: restart pipelined to apply them")
        }
        // apply() joins stage threads: never on the cooperative pool.
        let runtime = self.runtime
        let outcome: Result<ReloadReport, any Error> = await withCheckedContinuation { continuation in
            _ = RuntimeThread(name: "reload") {
                continuation.resume(returning: Result { try runtime.apply(plan) })
            }
        }
        switch outcome {
        case .success(let report):
            if !report.settingsNeedingRestart.isEmpty {
                logger.warning("settings \(report.settingsNeedingRestart.joined(separator: ", ")) changed: they apply at start only; restart pipelined to apply them")
            }
            counts.succeeded.wrappingIncrement(ordering: .relaxed)
            counts.lastSuccessNs.store(Clock.wallNs(), ordering: .relaxed)
        case .failure(let error):
            var message = "reload failed, the running pipeline is unchanged: \(error)"
            if let error = error as? StageStartError, privileges.hasDropped,
               plan.stage(error.stage).map({ $0.kind == .source && $0.type == "syscall_monitor" }) ?? false {
                message += ". Privileges were dropped once the pipeline ran (settings.drop_privileges): loading eBPF programs needs CAP_BPF and CAP_PERFMON, so a syscall_monitor cannot gain events, change transport or be added by a reload; restart pipelined for that. Reloads that change fewer events, skip_retvals, visibility, filters or sinks still work"
            }
            fail(message)
        }
    }

    private func fail(_ message: String) {
        logger.error("\(message)")
        counts.failed.wrappingIncrement(ordering: .relaxed)
    }
}
