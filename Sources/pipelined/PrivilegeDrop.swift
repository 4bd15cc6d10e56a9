import CPrivilege
#if canImport(Glibc)
import Glibc
#endif
import Logging
import PipelineCore
import ServiceLifecycle
import Synchronization

/// Whether this run has dropped its privileges, for ``ReloadService`` (a
/// reload after the drop cannot load new eBPF programs, and says so).
final class PrivilegeState: Sendable {
    private let dropped = Atomic<Bool>(false)

    var hasDropped: Bool { dropped.load(ordering: .acquiring) }
    func markDropped() { dropped.store(true, ordering: .releasing) }
}

/// Drops the process's privileges once the pipeline runs (docs/pipeline-file.md,
/// "Privileges").
///
/// It waits until ``PipelineRuntime/isReady`` (programs loaded and attached,
/// sinks open; the metrics endpoint was bound before the pipeline started),
/// then, in every thread of the process (``pl_drop_privileges``): clears the
/// ambient set, empties the bounding set, switches to `settings.user` /
/// `settings.group` if set (supplementary groups cleared), empties the
/// effective, permitted and inheritable sets and sets no_new_privs. No
/// capability is kept: what runs afterwards needs none (perf and ring buffers
/// are read, maps written, through descriptors already open; files and
/// sockets are made in directories the process may write as their owner).
/// Before the drop RLIMIT_NICE is raised to what `priority_boost` needs, so
/// that stage threads a reload starts still get it without CAP_SYS_NICE.
///
/// After the drop every thread is checked in /proc/self/task, and so is what
/// the running stages will need to write (their directories) and read (the
/// pipeline file, a nats credentials file): anything missing fails the run
/// (exit 1) with a message that names it, instead of a rotation failing hours
/// later.
final class PrivilegeDropService: Service, Sendable {
    private let runtime: PipelineRuntime
    private let file: String?
    private let state: PrivilegeState
    private let logger: Logger

    init(runtime: PipelineRuntime, file: String?, state: PrivilegeState, logger: Logger) {
        self.runtime = runtime
        self.file = file
        self.state = state
        self.logger = logger
    }

    func run() async throws {
        let settings = runtime.plan.settings
        guard settings.dropPrivileges else {
            logger.notice("settings.drop_privileges is false: the process keeps every privilege it started with")
            return
        }
        // Until the pipeline runs; a pipeline that fails to start or ends first drops nothing.
        while !runtime.isReady {
            if Task.isCancelled || Task.isShuttingDownGracefully { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
        let runtime = self.runtime, file = self.file
        // Blocks while every thread answers: not on the cooperative pool.
        let outcome: Result<PrivilegeDrop.Report, any Error> = await withCheckedContinuation { continuation in
            _ = RuntimeThread(name: "privilege-drop") {
                continuation.resume(returning: Result { try PrivilegeDrop.perform(plan: runtime.plan, file: file) })
            }
        }
        let report = try outcome.get()
        state.markDropped()
        logger.info("privileges dropped: no capabilities (\(report.sets)), no_new_privs set, \(report.identity) in all \(report.threads) threads")
    }
}

/// What the drop does, and its checks.
enum PrivilegeDrop {
    struct Report {
        var threads: Int
        /// The sets emptied: the bounding set only with CAP_SETPCAP.
        var sets: String
        /// `uid 0, gid 0` or `uid 65534 (nobody), gid 65534 (nogroup)`.
        var identity: String
    }

    /// Why the drop failed or left the pipeline unable to go on; exit 1.
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Drops, then checks the threads and what the stages of `plan` need.
    static func perform(plan: PipelinePlan, file: String?) throws -> Report {
        let settings = plan.settings
        // Without CAP_SETPCAP (not started as root) the bounding set stays.
        let emptiesBounding = (ThreadCredentials(status: FileIO.readText("/proc/self/status") ?? "").capabilities["CapEff"] ?? 0) & (1 << 8) != 0
        raiseNiceLimit(boost: settings.priorityBoost)
        var request = pl_drop_plan()
        var groups: [gid_t] = []
        if let account = settings.runAs {
            request.switch_ids = 1
            request.uid = account.uid
            request.gid = account.gid
            groups = [account.gid]
        }
        var result = pl_drop_result()
        let status = groups.withUnsafeBufferPointer { buffer in
            request.ngroups = Int32(buffer.count)
            request.groups = buffer.baseAddress
            return pl_drop_privileges(&request, &result)
        }
        if status != 0 {
            let step = result.step.map { String(cString: $0) } ?? "?"
            throw Failure(description: "cannot drop privileges (settings.drop_privileges): \(step): \(String(cString: strerror(result.error)))")
        }
        try checkThreads(uid: settings.runAs?.uid ?? getuid(), gid: settings.runAs?.gid ?? getgid(), emptiesBounding: emptiesBounding)
        try checkAccess(plan: plan, file: file, account: settings.runAs)
        if settings.seccomp != .off {
            if pl_install_seccomp(settings.seccomp == .kill ? 1 : 0) != 0 {
                throw Failure(description: "cannot install the seccomp filter (settings.seccomp: \(settings.seccomp.rawValue)): \(String(cString: strerror(errno)))")
            }
        }
        var identity = settings.runAs.map { "uid \($0.uid) (\($0.user)), gid \($0.gid) (\($0.group))" } ?? "uid \(getuid()), gid \(getgid())"
        if settings.seccomp != .off { identity += ", seccomp allow-list (\(settings.seccomp.rawValue) others)" }
        let sets = emptiesBounding ? "effective, permitted, inheritable, bounding, ambient" : "effective, permitted, inheritable, ambient; the bounding set stays, as the process started without CAP_SETPCAP"
        return Report(threads: Int(result.threads), sets: sets, identity: identity)
    }

    /// Lets the process lower its nice value to what `priority_boost` asks
    /// without CAP_SYS_NICE (setrlimit(2): the floor is 20 - RLIMIT_NICE).
    static func raiseNiceLimit(boost: Int) {
        guard boost > 0 else { return }
        errno = 0
        let current = getpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0)
        guard errno == 0 else { return }
        // Without CAP_SYS_RESOURCE (not root to begin with) the boost is only not applied, as before.
        _ = pl_allow_nice(Int32(max(-20, Int(current) - boost)))
    }

    /// The credentials of one thread, from /proc/self/task/TID/status.
    struct ThreadCredentials: Equatable {
        var capabilities: [String: UInt64] = [:]
        var noNewPrivs: Int?
        var uids: [UInt32] = []
        var gids: [UInt32] = []

        init(status: String) {
            for line in status.split(separator: "\n") {
                let parts = line.split(whereSeparator: { $0 == ":" || $0 == "\t" || $0 == " " })
                guard let key = parts.first else { continue }
                switch key {
                case "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb":
                    capabilities[String(key)] = parts.count > 1 ? UInt64(parts[1], radix: 16) : nil
                case "NoNewPrivs": noNewPrivs = parts.count > 1 ? Int(parts[1]) : nil
                case "Uid": uids = parts.dropFirst().compactMap { UInt32($0) }
                case "Gid": gids = parts.dropFirst().compactMap { UInt32($0) }
                default: break
                }
            }
        }
    }

    /// Every thread: no capability in any set, no_new_privs, the ids wanted.
    static func checkThreads(uid: UInt32, gid: UInt32, emptiesBounding: Bool) throws {
        guard let directory = opendir("/proc/self/task") else { throw Failure(description: "cannot list /proc/self/task to check the privilege drop") }
        defer { closedir(directory) }
        var problems: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard Int(name) != nil, let status = FileIO.readText("/proc/self/task/\(name)/status") else { continue }
            let thread = ThreadCredentials(status: status)
            let kept = thread.capabilities.filter { $0.value != 0 && ($0.key != "CapBnd" || emptiesBounding) }.map { "\($0.key) \(String($0.value, radix: 16))" }.sorted()
            if thread.capabilities.count != 5 || !kept.isEmpty || thread.noNewPrivs != 1
                || thread.uids != [uid, uid, uid, uid] || thread.gids != [gid, gid, gid, gid] {
                problems.append("thread \(name): \(kept.isEmpty ? "" : "keeps \(kept.joined(separator: ", ")); ")NoNewPrivs \(thread.noNewPrivs.map(String.init) ?? "?"), Uid \(thread.uids), Gid \(thread.gids)")
            }
        }
        if !problems.isEmpty {
            throw Failure(description: "the privilege drop did not reach every thread: \(problems.joined(separator: "; "))")
        }
    }

    /// What the running stages will need after the drop, checked with the
    /// privileges they will have (faccessat with AT_EACCESS: mode bits, ACLs
    /// and read-only mounts all count): a sink writes new files and sockets in
    /// its directory (rotation, sealing, retention, a socket's bind after a
    /// reload) and appends to an archive's manifest; a reload reads the
    /// pipeline file; a nats stage rereads its credentials at each reconnect.
    static func checkAccess(plan: PipelinePlan, file: String?, account: RunAsIdentity?) throws {
        var problems: [String] = []
        func need(_ path: String, _ mode: Int32, _ what: String) {
            if faccessat(AT_FDCWD, path, mode, AT_EACCESS) != 0 {
                problems.append("\(what) '\(path)' is not \(mode & W_OK != 0 ? "writable" : "readable") after the drop (\(String(cString: strerror(errno))))")
            }
        }
        for stage in plan.stages {
            let option = { (key: String) in stage.options[key]?.scalarText }
            switch (stage.kind, stage.type) {
            case (.sink, "file"), (.sink, "unix_socket"):
                guard let path = option("path"), path != "-" else { continue }
                need(directoryOf(path), W_OK | X_OK, "sink '\(stage.id)': directory")
            case (.sink, "lz4_segments"):
                guard let directory = option("directory") else { continue }
                need(directory, R_OK | W_OK | X_OK, "sink '\(stage.id)': directory")
                let manifest = directory + "/manifest.jsonl"
                if access(manifest, F_OK) == 0 { need(manifest, W_OK, "sink '\(stage.id)': manifest") }
            case (_, "nats"):
                if let credentials = option("credentials") { need(credentials, R_OK, "\(stage.kind) '\(stage.id)': credentials") }
            default:
                continue
            }
        }
        if let file { need(file, R_OK, "the pipeline file (read again on reload)") }
        guard problems.isEmpty else {
            let who = account.map { "user \($0.user) (uid \($0.uid))" } ?? "uid \(getuid()) without capabilities"
            throw Failure(description: "after dropping privileges (settings.drop_privileges) the pipeline could not go on as \(who): \(problems.joined(separator: "; ")). Make them accessible to \(who), or set settings.drop_privileges: false")
        }
    }

    /// `a/b/c` → `a/b`, `c` → `.`, `/c` → `/`.
    static func directoryOf(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
