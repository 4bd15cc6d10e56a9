import Testing

@testable import pipelined

/// `top`'s table from two scrapes of the Prometheus text the daemon serves:
/// the rates, the queue cell and the kernel column, computed exactly.
@Suite("top table")
struct TopTableTests {
    /// Two readings one second apart of a pipeline with a kernel source
    /// (exit-only capture: one `tp_ret_` program per event, plus execve's
    /// entry and exit pair) and a file sink with a queue.
    private func scrapes(runSecondsBefore: Double, runSecondsAfter: Double) -> (Scrape, Scrape) {
        func text(eventsIn: Int, lost: Int, depth: Int, runSeconds: Double, connectRuns: Int, execveEntryRuns: Int, execveExitRuns: Int) -> String {
            """
            # HELP pipelined_stage_events_in_total records that entered the stage
            # TYPE pipelined_stage_events_in_total counter
            pipelined_stage_events_in_total{stage="kernel",type="syscall_monitor"} \(eventsIn)
            pipelined_stage_events_in_total{stage="log",type="file"} \(eventsIn)
            pipelined_stage_events_out_total{stage="kernel",type="syscall_monitor"} \(eventsIn)
            pipelined_stage_events_out_total{stage="log",type="file"} \(eventsIn - lost)
            pipelined_stage_events_lost_total{stage="log",type="file",where="queue"} \(lost)
            pipelined_stage_events_lost_total{stage="log",type="file",where="sink"} 0
            pipelined_stage_queue_depth_events{stage="log",type="file"} \(depth)
            pipelined_stage_queue_capacity_events{stage="log",type="file"} 65536
            pipelined_stage_bpf_run_seconds_total{stage="kernel",type="syscall_monitor",program="tp_ret_connect",id="12"} \(runSeconds * 0.75)
            pipelined_stage_bpf_run_seconds_total{stage="kernel",type="syscall_monitor",program="tp_enter_execve",id="13"} \(runSeconds * 0.125)
            pipelined_stage_bpf_run_seconds_total{stage="kernel",type="syscall_monitor",program="tp_exit_execve",id="14"} \(runSeconds * 0.125)
            pipelined_stage_bpf_runs_total{stage="kernel",type="syscall_monitor",program="tp_ret_connect",id="12"} \(connectRuns)
            pipelined_stage_bpf_runs_total{stage="kernel",type="syscall_monitor",program="tp_enter_execve",id="13"} \(execveEntryRuns)
            pipelined_stage_bpf_runs_total{stage="kernel",type="syscall_monitor",program="tp_exit_execve",id="14"} \(execveExitRuns)

            """
        }
        let before = Scrape(
            text: text(eventsIn: 1000, lost: 10, depth: 0, runSeconds: runSecondsBefore, connectRuns: 5000, execveEntryRuns: 100, execveExitRuns: 100),
            monotonicNs: 7_000_000_000)
        let after = Scrape(
            text: text(eventsIn: 251_000, lost: 2010, depth: 16384, runSeconds: runSecondsAfter, connectRuns: 24_000, execveEntryRuns: 1100, execveExitRuns: 1100),
            monotonicNs: 9_000_000_000)
        return (before, after)
    }

    private func rows(_ table: String) -> [String: [String]] {
        var result: [String: [String]] = [:]
        for line in table.split(separator: "\n") {
            let cells = line.split(separator: " ").map(String.init)
            if let first = cells.first { result[first] = cells }
        }
        return result
    }

    @Test func ratesQueueAndKernelTimePerTracedSyscall() throws {
        let (before, after) = scrapes(runSecondsBefore: 0.001, runSecondsAfter: 0.005)
        let table = TopTable(previous: before, current: after).render(title: nil)
        let rows = rows(table)
        #expect(rows["STAGE"] == ["STAGE", "TYPE", "IN/S", "OUT/S", "LOST/S", "LOST", "QUEUE", "BPF", "NS/SYSCALL"], "\(table)")
        // Two seconds apart: 250,000 in is 125,000/s, shown as 125k.
        // The kernel: 4 ms of program time over the exit programs' runs
        // (19,000 connects + 1,000 execves; the 1,000 entries are not
        // syscalls of their own): 4e6 ns / 20,000 = 200 ns.
        #expect(rows["kernel"] == ["kernel", "syscall_monitor", "125k", "125k", "-", "-", "-", "200"], "\(table)")
        // The sink: 2,000 lost in 2 s; 2,010 in all (both sites summed); a quarter full.
        #expect(rows["log"] == ["log", "file", "125k", "124k", "1000", "2010", "16384/65536", "25%", "-"], "\(table)")
        #expect(!table.contains("\u{1B}"))
    }

    /// No runs between the scrapes (bpf_stats_enabled off, or nothing
    /// traced): the cell says nothing rather than dividing by zero.
    @Test func noRunsShowsADash() {
        let (before, _) = scrapes(runSecondsBefore: 0.001, runSecondsAfter: 0.001)
        let table = TopTable(previous: before, current: before).render(title: "pipelined top")
        let kernel = rows(table)["kernel"]
        #expect(kernel?.last == "-", "\(table)")
        #expect(table.hasPrefix("pipelined top\n\n"))
    }

    @Test func numbers() {
        #expect(TopTable.number(0) == "0")
        #expect(TopTable.number(99_999) == "99999")
        #expect(TopTable.number(100_000) == "100k")
        #expect(TopTable.number(9_999_999) == "10000k")
        #expect(TopTable.number(10_000_000) == "10M")
    }
}
