import PipelineCore

extension LossSite {
    /// A `unix_socket` client's buffer was full (docs/socket.md): the `where`
    /// of the `lost` record that client receives, and of the stage's counter.
    public static let client = LossSite("client")
}

extension UnixSocketSink.ClientCounters {
    /// Lists the sink's client counts among its stage's series (read from
    /// these atomics, which the event loop updates: no second count).
    func declare(in metrics: StageMetrics) {
        // Listed from the start, at 0, as Prometheus expects of a counter.
        metrics.loss(.client)
        metrics.observe(.gauge, "clients_connected", help: "clients connected now") { [connected] in
            Int64(connected.load(ordering: .relaxed))
        }
        metrics.observe(.counter, "clients_accepted", help: "clients admitted since the sink opened") { [accepted] in
            Int64(truncatingIfNeeded: accepted.load(ordering: .relaxed))
        }
        metrics.observe(.counter, "clients_refused", help: "clients refused because their uid is not in allow_uids") { [refused] in
            Int64(truncatingIfNeeded: refused.load(ordering: .relaxed))
        }
        metrics.observe(.counter, "clients_dropped", help: "clients disconnected because their buffer was full (when_full: disconnect)") { [disconnected] in
            Int64(truncatingIfNeeded: disconnected.load(ordering: .relaxed))
        }
    }
}
