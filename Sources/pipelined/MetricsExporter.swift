#if canImport(Glibc)
import Glibc
#endif
import Atomics
import CoreMetrics
import PipelineCore
import Prometheus
import Synchronization

/// Publishes the running pipeline's counters in the Prometheus text format.
///
/// Stages never call swift-metrics: they count into their ``StageMetrics``
/// with relaxed atomics, and nothing on the hot path changes when metrics are
/// on. At each scrape, ``render()`` reads every stage's counters (the stages
/// of the plan running now, so a reload's new stages appear and removed ones
/// go) and brings swift-metrics counters and gauges, backed by a
/// `PrometheusCollectorRegistry` of the exporter's own, up to date; the
/// registry then writes the exposition. Counter handles only go up: each
/// scrape adds what the stage counted since the last one.
final class MetricsExporter: Sendable {
    private let runtime: PipelineRuntime
    private let registry = PrometheusCollectorRegistry()
    private let factory: PrometheusMetricsFactory
    /// Reloads, for `pipelined_reloads_total` and the last good one's time.
    let reloads = ReloadCounts()
    private let published = Mutex(Published())

    init(runtime: PipelineRuntime) {
        self.runtime = runtime
        factory = PrometheusMetricsFactory(registry: registry)
    }

    /// True once every source is attached (`GET /-/ready`).
    var isReady: Bool { runtime.isReady }

    /// The exposition, with every series read now.
    func render() -> [UInt8] {
        let samples = MetricsCatalog.samples(runtime: runtime, reloads: reloads)
        return published.withLock { published in
            published.update(samples, factory: factory)
            return registry.emitToBuffer()
        }
    }
}

/// What one series reads at a scrape.
struct MetricSample {
    enum Kind {
        /// A count that only goes up (published through a swift-metrics `Counter`).
        case counter
        /// Seconds that only go up (a `FloatingPointCounter`).
        case secondsCounter
        case gauge
    }

    var name: String
    var kind: Kind
    var labels: [(String, String)]
    var value: Double

    var key: String { name + "{" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",") + "}" }
}

/// The swift-metrics handles that have been published, by series.
private struct Published: ~Copyable {
    var counters: [String: (handle: CoreMetrics.Counter, value: Int64)] = [:]
    var secondsCounters: [String: (handle: FloatingPointCounter, value: Double)] = [:]
    var gauges: [String: CoreMetrics.Gauge] = [:]

    mutating func update(_ samples: [MetricSample], factory: PrometheusMetricsFactory) {
        var seen = Set<String>()
        for sample in samples {
            let key = sample.key
            seen.insert(key)
            // A counter below what was published restarted (its stage was
            // replaced under another type): it starts again from zero.
            switch sample.kind {
            case .counter:
                var entry = counters[key] ?? (CoreMetrics.Counter(label: sample.name, dimensions: sample.labels, factory: factory), 0)
                let value = Int64(clamping: UInt64(sample.value))
                if value < entry.value {
                    entry.handle.reset()
                    entry.value = 0
                }
                if value > entry.value {
                    entry.handle.increment(by: value - entry.value)
                    entry.value = value
                }
                counters[key] = entry
            case .secondsCounter:
                var entry = secondsCounters[key] ?? (FloatingPointCounter(label: sample.name, dimensions: sample.labels, factory: factory), 0)
                if sample.value < entry.value {
                    entry.handle.reset()
                    entry.value = 0
                }
                if sample.value > entry.value {
                    entry.handle.increment(by: sample.value - entry.value)
                    entry.value = sample.value
                }
                secondsCounters[key] = entry
            case .gauge:
                let gauge = gauges[key] ?? CoreMetrics.Gauge(label: sample.name, dimensions: sample.labels, factory: factory)
                gauge.record(sample.value)
                gauges[key] = gauge
            }
        }
        // A stage the last reload removed: its series go.
        for (key, entry) in counters where !seen.contains(key) {
            entry.handle.destroy()
            counters[key] = nil
        }
        for (key, entry) in secondsCounters where !seen.contains(key) {
            entry.handle.destroy()
            secondsCounters[key] = nil
        }
        for (key, gauge) in gauges where !seen.contains(key) {
            gauge.destroy()
            gauges[key] = nil
        }
    }
}

/// Reload outcomes, counted by the SIGHUP handler.
final class ReloadCounts: Sendable {
    let succeeded = ManagedAtomic<UInt64>(0)
    let failed = ManagedAtomic<UInt64>(0)
    /// Wall-clock time of the last good reload, in nanoseconds; 0 for none yet.
    let lastSuccessNs = ManagedAtomic<Int64>(0)
}

/// Every series pipelined serves, and how each is read (README, "Metrics").
enum MetricsCatalog {
    static func samples(runtime: PipelineRuntime, reloads: ReloadCounts) -> [MetricSample] {
        var samples = processSamples(reloads: reloads)
        // Every series each stage declared, named for Prometheus.
        for series in runtime.series {
            let labels = series.labels.sorted { Self.labelOrder($0.key) < Self.labelOrder($1.key) }.map { ($0.key, $0.value) }
            switch series.kind {
            case .counter:
                let kind: MetricSample.Kind = series.name.hasSuffix("_ns") ? .secondsCounter : .counter
                let value = kind == .secondsCounter ? Double(series.value) / 1e9 : Double(series.value)
                samples.append(MetricSample(name: counterName(series.name), kind: kind, labels: labels, value: value))
            case .gauge:
                samples.append(MetricSample(name: "pipelined_stage_" + series.name, kind: .gauge, labels: labels, value: Double(series.value)))
            }
        }
        // The runtime's own: each sink's queue.
        for stage in runtime.stages {
            guard let depth = stage.queueDepth, let capacity = stage.queueCapacity else { continue }
            let labels = [("stage", stage.id), ("type", stage.type)]
            samples.append(MetricSample(name: "pipelined_stage_queue_depth_events", kind: .gauge, labels: labels, value: Double(depth)))
            samples.append(MetricSample(name: "pipelined_stage_queue_capacity_events", kind: .gauge, labels: labels, value: Double(capacity)))
        }
        return samples
    }

    /// `stage` and `type` first, then the series' own labels.
    private static func labelOrder(_ key: String) -> String {
        key == "stage" ? "0" : key == "type" ? "1" : "2" + key
    }

    /// The Prometheus name of a stage's counter: `pipelined_stage_` and
    /// `_total` around it, the common counters named for what they count,
    /// nanoseconds published as seconds (base units).
    static func counterName(_ name: String) -> String {
        let renamed: String
        switch name {
        case "records_in": renamed = "events_in"
        case "records_out": renamed = "events_out"
        case "lost": renamed = "events_lost"
        case "malformed": renamed = "malformed_records"
        default: renamed = name.hasSuffix("_ns") ? String(name.dropLast(3)) + "_seconds" : name
        }
        return "pipelined_stage_" + renamed + "_total"
    }

    static func processSamples(reloads: ReloadCounts) -> [MetricSample] {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let cpu = Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        let last = reloads.lastSuccessNs.load(ordering: .relaxed)
        return [
            MetricSample(name: "pipelined_build_info", kind: .gauge, labels: [("version", PipelineCoreInfo.version)], value: 1),
            MetricSample(name: "pipelined_process_resident_memory_bytes", kind: .gauge, labels: [], value: Double(residentBytes())),
            MetricSample(name: "pipelined_process_cpu_seconds_total", kind: .secondsCounter, labels: [], value: cpu),
            MetricSample(name: "pipelined_reloads_total", kind: .counter, labels: [("result", "success")], value: Double(reloads.succeeded.load(ordering: .relaxed))),
            MetricSample(name: "pipelined_reloads_total", kind: .counter, labels: [("result", "failure")], value: Double(reloads.failed.load(ordering: .relaxed))),
            MetricSample(name: "pipelined_last_reload_success_timestamp_seconds", kind: .gauge, labels: [], value: Double(last) / 1e9),
        ]
    }

    /// The resident set, from /proc/self/statm (its second field, in pages).
    static func residentBytes() -> Int {
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return 0 }
        let fields = buffer[0..<count].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
