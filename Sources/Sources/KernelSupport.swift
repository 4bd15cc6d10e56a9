#if canImport(Glibc)
import Glibc
#endif
import CBPF
import PipelineCore

/// What this kernel and process can do for an eBPF source, found out before
/// anything is loaded so that failures name their reason.
enum KernelSupport {
    static let capSysAdmin = 21
    static let capPerfmon = 38
    static let capBPF = 39

    /// The effective capability set of this process, from /proc/self/status.
    static func effectiveCapabilities() -> UInt64? {
        guard let status = FileIO.readText("/proc/self/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix("CapEff:") {
            return UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(in: " \t"), radix: 16)
        }
        return nil
    }

    /// nil when the process may load and attach tracing programs; otherwise
    /// what is missing, in words (exit status 77).
    static func missingPrivilege() -> String? {
        guard let caps = effectiveCapabilities() else {
            return geteuid() == 0 ? nil : "not running as root, and /proc/self/status is unreadable to check capabilities"
        }
        func has(_ bit: Int) -> Bool { caps & (1 << UInt64(bit)) != 0 }
        if has(capSysAdmin) || (has(capBPF) && has(capPerfmon)) { return nil }
        var missing: [String] = []
        if !has(capBPF) { missing.append("CAP_BPF") }
        if !has(capPerfmon) { missing.append("CAP_PERFMON") }
        return "missing privilege: run as root, or grant CAP_BPF and CAP_PERFMON (this process lacks \(missing.joined(separator: " and ")); euid \(geteuid()))"
    }

    /// nil when this machine can run `syscall_monitor` through the syscall
    /// tracepoints; otherwise why not (privilege, BTF, tracefs, tracepoints).
    /// What the kernel tests check before they run.
    static var unavailableReason: String? {
        if let missing = missingPrivilege() { return missing }
        if access("/sys/kernel/btf/vmlinux", F_OK) != 0 {
            return "the kernel has no BTF (/sys/kernel/btf/vmlinux), which the program's CO-RE reads need"
        }
        if let problem = ensureTracefs() { return problem }
        if !hasTracepoint("syscalls", "sys_enter_connect") {
            return "the kernel has no syscall tracepoints (CONFIG_FTRACE_SYSCALLS)"
        }
        return nil
    }

    /// True when the kernel can attach kprobes: the kprobe PMU exists (what
    /// libbpf uses) or tracefs offers kprobe_events.
    static func hasKprobes() -> Bool {
        access("/sys/bus/event_source/devices/kprobe/type", F_OK) == 0
            || access(tracefsRoot() + "/kprobe_events", F_OK) == 0
    }

    /// True when the kernel has BPF ring buffers (Linux 5.8 and later): libbpf
    /// creates a small one to find out. Needs the privilege to create maps.
    static func hasRingbuf() -> Bool {
        libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nil) == 1
    }

    /// nil when the kernel can run the exit-only programs (BTF, and the
    /// `bpf_task_pt_regs` helper for the program type: Linux 5.15 and
    /// later); otherwise why not. libbpf loads a tiny program to find out,
    /// so this needs the privilege to load programs.
    static func exitCaptureUnavailableReason(kprobes: Bool) -> String? {
        if access("/sys/kernel/btf/vmlinux", F_OK) != 0 {
            return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
        }
        let type = kprobes ? BPF_PROG_TYPE_KPROBE : BPF_PROG_TYPE_TRACEPOINT
        let result = libbpf_probe_bpf_helper(type, BPF_FUNC_task_pt_regs, nil)
        guard result == 1 else {
            let programs = kprobes ? "kprobe" : "tracepoint"
            let why = result < 0 ? " (the probe failed: \(String(cString: strerror(-result))))" : ""
            return "the kernel has no bpf_task_pt_regs helper for \(programs) programs (Linux 5.15+)\(why)"
        }
        return nil
    }

    /// Where tracefs is, mounting it at /sys/kernel/tracing when it is not
    /// mounted yet (tracepoint attachment reads event ids from it).
    static func tracefsRoot() -> String {
        for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] where access(root + "/events", F_OK) == 0 {
            return root
        }
        return "/sys/kernel/tracing"
    }

    /// Makes sure tracefs is reachable; returns an error message if it cannot be.
    static func ensureTracefs() -> String? {
        if access(tracefsRoot() + "/events", F_OK) == 0 { return nil }
        if mount("nodev", "/sys/kernel/tracing", "tracefs", 0, nil) == 0 { return nil }
        let reason = String(cString: strerror(errno))
        return "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: \(reason)"
    }

    /// True when tracefs has the syscall tracepoint `category/name`.
    static func hasTracepoint(_ category: String, _ name: String) -> Bool {
        access("\(tracefsRoot())/events/\(category)/\(name)/id", F_OK) == 0
    }
}

extension Substring {
    func trimmingCharacters(in set: String) -> String {
        var view = self
        while let first = view.first, set.contains(first) { view.removeFirst() }
        while let last = view.last, set.contains(last) { view.removeLast() }
        return String(view)
    }
}
